//! Turning image references into digest-pinned `ImageRef`s at apply time.
//!
//! The [`ImageResolver`] trait is the seam: the hub uses the registry client
//! shared with the agent (`outpost-oci`), unit tests use a fake. References that
//! are already pinned (`repo@sha256:…`) never touch the network.

use outpost_protocol::ImageRef;
use std::future::Future;
use std::pin::Pin;

/// Why an image reference could not be pinned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image {reference:?} cannot be resolved: {reason}")]
pub struct ResolveError {
    pub reference: String,
    pub reason: String,
}

pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ImageRef, ResolveError>> + Send + 'a>>;

/// Resolves `repo:tag` to `repo@sha256:…` by asking a registry.
pub trait ImageResolver: Send + Sync {
    fn resolve<'a>(&'a self, reference: &'a str) -> ResolveFuture<'a>;
}

/// Pin `reference`: parse it if already pinned, otherwise ask `resolver`.
pub async fn pin(resolver: &dyn ImageResolver, reference: &str) -> Result<ImageRef, ResolveError> {
    let reference = reference.trim();
    if reference.contains('@') {
        return reference
            .parse()
            .map_err(|e: outpost_protocol::image::ImageRefError| ResolveError {
                reference: reference.to_string(),
                reason: e.to_string(),
            });
    }
    resolver.resolve(reference).await
}

/// A resolver that knows no registry: only pinned references work.
#[derive(Debug, Default, Clone)]
pub struct PinnedOnly;

impl ImageResolver for PinnedOnly {
    fn resolve<'a>(&'a self, reference: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            Err(ResolveError {
                reference: reference.to_string(),
                reason:
                    "no registry client is configured; name the image by digest (repo@sha256:...)"
                        .into(),
            })
        })
    }
}

/// The real resolver: the registry client shared with the agent (`outpost-oci`).
pub struct OciResolver {
    client: outpost_oci::Client,
}

impl OciResolver {
    /// `insecure` lists `host:port` registries reached over plain HTTP.
    pub fn new(insecure: Vec<String>) -> Self {
        OciResolver {
            client: outpost_oci::Client::new(outpost_oci::RegistryConfig {
                insecure_hosts: insecure,
                ..Default::default()
            }),
        }
    }

    /// A resolver with everything `hub.toml`'s `[registry]` section configured
    /// (already loaded: credentials and CA read from their files). Fails on an
    /// unusable CA rather than resolving without it.
    pub fn with_config(config: outpost_oci::RegistryConfig) -> Result<Self, outpost_oci::OciError> {
        Ok(OciResolver {
            client: outpost_oci::Client::try_new(config)?,
        })
    }
}

impl std::fmt::Debug for OciResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OciResolver")
    }
}

impl ImageResolver for OciResolver {
    fn resolve<'a>(&'a self, reference: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            self.client
                .resolve(reference)
                .await
                .map_err(|e| ResolveError {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })
        })
    }
}

/// A fixed table of tag → pinned reference, for tests.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver(pub std::collections::BTreeMap<String, ImageRef>);

impl ImageResolver for StaticResolver {
    fn resolve<'a>(&'a self, reference: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            self.0.get(reference).cloned().ok_or_else(|| ResolveError {
                reference: reference.to_string(),
                reason: "manifest unknown to the registry".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pinned_references_skip_the_resolver() {
        let pinned = format!("reg:5000/app@sha256:{}", "ab".repeat(32));
        let r = pin(&PinnedOnly, &pinned).await.unwrap();
        assert_eq!(r.to_string(), pinned);
        let e = pin(&PinnedOnly, "reg:5000/app:1.0").await.unwrap_err();
        assert_eq!(e.reference, "reg:5000/app:1.0");
        let bad = pin(&PinnedOnly, "reg/app@sha256:zz").await.unwrap_err();
        assert!(bad.reason.contains("sha256"), "{bad}");
    }
}
