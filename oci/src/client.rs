//! The registry client shared by the hub (tag → digest at apply time) and the
//! agent (manifests and resumable blob downloads).
//!
//! The OCI distribution protocol itself (auth challenges, bearer-token exchange,
//! manifest content negotiation, ranged blob GETs) is `oci-client`'s job; this
//! module adds Outpost's rules on top: references come back pinned by digest,
//! every manifest is checked against the digest we asked for, and errors name the
//! reference that failed. TLS is rustls with the *ring* provider (aws-lc-rs is
//! hard to cross-compile to ARM); plain HTTP only for hosts listed as insecure.

use crate::OciError;
use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use outpost_protocol::{Digest, ImageRef};
use rustls::pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A stalled link must fail (and be retried, resuming) rather than hang a
/// pull forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// HTTP basic auth, or the username/password a token service exchanges for a
    /// bearer token when the registry answers with a `Bearer` challenge.
    Basic { username: String, password: String },
    /// A bearer token obtained out of band.
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never log secrets.
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `host[:port]` of registries reached over plain HTTP. Everything else is HTTPS.
    pub insecure_hosts: Vec<String>,
    /// Credentials by registry `host[:port]`; hosts not listed are accessed anonymously.
    pub credentials: BTreeMap<String, Credentials>,
    /// Extra PEM root certificates to trust besides the system's (a private
    /// registry's CA). Appended to the platform verifier's roots.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
}

/// A blob body being downloaded.
pub(crate) struct BlobBody {
    /// `true` when the registry honoured the `Range` request; `false` means the
    /// body starts at byte 0 and the caller must discard what it already has.
    pub resumed: bool,
    pub stream: BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
}

/// One registry client; cheap to share behind an `Arc` (it caches tokens).
pub struct Client {
    inner: oci_client::Client,
    /// Manifest GETs go through this client (same roots and timeouts) instead of
    /// oci-client's, which reads a manifest body whole with no size limit.
    http: reqwest::Client,
    config: RegistryConfig,
}

impl Client {
    /// Build a client. Installs rustls' ring provider as the process default if no
    /// provider is installed yet (reqwest needs one; we never want aws-lc-rs).
    /// A bad extra root certificate is logged and left out; use
    /// [`Client::try_new`] to get the error instead.
    pub fn new(config: RegistryConfig) -> Client {
        match Client::try_new(config.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "ignoring the extra root certificates");
                let without_certs = RegistryConfig {
                    extra_root_certificates_pem: Vec::new(),
                    ..config
                };
                // Without certificates the only inputs are plain strings; should
                // the TLS backend still fail to start, fall back to defaults.
                let inner = oci_client::Client::new(client_config(&without_certs, &[]));
                let http = http_client(&[]).unwrap_or_default();
                Client {
                    inner,
                    http,
                    config: without_certs,
                }
            }
        }
    }

    /// Like [`Client::new`] but fails on unusable TLS settings (bad PEM).
    pub fn try_new(config: RegistryConfig) -> Result<Client, OciError> {
        // Err means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        for (i, pem) in config.extra_root_certificates_pem.iter().enumerate() {
            roots.extend(pem_certificates(pem).map_err(|reason| {
                OciError::Config(format!(
                    "extra root certificate bundle #{}: {reason}",
                    i + 1
                ))
            })?);
        }
        let inner = oci_client::Client::try_from(client_config(&config, &roots))
            .map_err(|e| OciError::Config(e.to_string()))?;
        let http = http_client(&roots).map_err(|e| OciError::Config(error_chain(&e)))?;
        Ok(Client {
            inner,
            http,
            config,
        })
    }

    fn auth_for(&self, reference: &Reference) -> RegistryAuth {
        match self.config.credentials.get(reference.registry()) {
            Some(Credentials::Basic { username, password }) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Some(Credentials::Bearer(token)) => RegistryAuth::Bearer(token.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Resolve `repo[:tag]` or `repo@sha256:…` to a reference pinned by the digest
    /// the registry serves for it now. For a multi-arch image this is the digest of
    /// the image index, so every device picks its own platform from the same index.
    pub async fn resolve(&self, reference: &str) -> Result<ImageRef, OciError> {
        let parsed: Reference =
            reference
                .parse()
                .map_err(|e: oci_client::ParseError| OciError::InvalidReference {
                    reference: reference.to_string(),
                    reason: e.to_string(),
                })?;
        let repository = format!("{}/{}", parsed.registry(), parsed.repository());
        ImageRef::validate_repository(&repository).map_err(|why| OciError::InvalidReference {
            reference: reference.to_string(),
            reason: why.to_string(),
        })?;
        let auth = self.auth_for(&parsed);
        // A GET rather than oci-client's HEAD: the bytes are what a device will
        // fetch by digest, so their size is checked here, at apply time, and the
        // pinned digest is the sha256 of exactly those bytes.
        let (bytes, header_digest) = self.get_manifest(&parsed, &auth).await?;
        let digest = Digest::of(&bytes);
        let claimed = parsed
            .digest()
            .map(|d| (d.to_string(), "the reference"))
            .into_iter()
            .chain(header_digest.map(|d| (d, "the Docker-Content-Digest header")));
        for (text, source) in claimed {
            // Only sha256 claims can be compared; we pin by sha256 of the bytes.
            if let Ok(expected) = text.parse::<Digest>() {
                if expected != digest {
                    return Err(OciError::DigestMismatch {
                        what: format!("manifest served for {reference} (digest from {source})"),
                        expected,
                        actual: digest,
                    });
                }
            }
        }
        tracing::debug!(%reference, %digest, "resolved image reference");
        Ok(ImageRef { repository, digest })
    }

    /// Answer the registry's auth challenge for this repository (a `GET /v2/`, then
    /// a token request if it asks for a bearer token). oci-client does not do this
    /// by itself before manifest or blob requests. Done before every operation:
    /// cheap, and it renews tokens that expired during a long pull. Returns the
    /// bearer token, if the registry issued one.
    async fn authenticate(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<Option<String>, OciError> {
        self.inner
            .auth(reference, auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(|e| self.classify(reference, e))
    }

    /// GET the manifest or index `reference` names (by tag or digest), reading at
    /// most [`crate::spec::MAX_DOCUMENT_BYTES`]: checked against Content-Length
    /// before reading and again while reading (a chunked or lying response).
    /// Returns the body and the registry's `Docker-Content-Digest` header.
    async fn get_manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, Option<String>), OciError> {
        use futures_util::StreamExt;
        let limit = crate::spec::MAX_DOCUMENT_BYTES;
        let shown = reference.whole();
        let token = self.authenticate(reference, auth).await?;
        let registry = reference.resolve_registry();
        let scheme = if self.config.insecure_hosts.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        };
        let target = reference.digest().or(reference.tag()).unwrap_or("latest");
        let mut url = format!(
            "{scheme}://{registry}/v2/{}/manifests/{target}",
            reference.repository()
        );
        if let Some(ns) = reference.namespace() {
            url.push_str(&format!("?ns={ns}"));
        }
        let mut request = self.http.get(&url).header(
            reqwest::header::ACCEPT,
            crate::spec::ACCEPTED_MANIFEST_TYPES.join(", "),
        );
        request = match (&token, auth) {
            (Some(token), _) | (None, RegistryAuth::Bearer(token)) => request.bearer_auth(token),
            (None, RegistryAuth::Basic(username, password)) => {
                request.basic_auth(username, Some(password))
            }
            (None, RegistryAuth::Anonymous) => request,
        };
        let failed = |detail: String| OciError::Registry {
            reference: shown.clone(),
            detail,
        };
        let response = request.send().await.map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(self.unauthorized(reference));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(OciError::NotFound { reference: shown });
        }
        if !status.is_success() {
            return Err(failed(format!("GET {url} answered HTTP {status}")));
        }
        let too_large = |detail: String| OciError::ManifestTooLarge {
            reference: shown.clone(),
            limit,
            detail,
        };
        if let Some(announced) = response.content_length().filter(|n| *n > limit) {
            return Err(too_large(format!(
                "the registry announced {announced} bytes"
            )));
        }
        let header_digest = response
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| failed(error_chain(&e)))?;
            if body.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large(format!("more than {limit} bytes arrived")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, header_digest))
    }

    /// The oci-client reference of blob or manifest `digest` in `image`'s
    /// repository. Built from its parts rather than parsed: oci-spec's parser
    /// compiles a Unicode regex into a static on first use, which kept ~13 MiB
    /// of heap alive in the agent for good (heaptrack; docs/benchmarks.md).
    /// `ImageRef` repositories are already validated, so only the registry
    /// split (the same rules as oci-spec's `split_domain`) is needed here.
    fn pinned(image: &ImageRef, digest: &Digest) -> Result<Reference, OciError> {
        let (registry, repository) = split_registry(&image.repository);
        if repository.is_empty() || repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(OciError::InvalidReference {
                reference: format!("{image}"),
                reason: "the repository path must be non-empty and lowercase".into(),
            });
        }
        Ok(Reference::with_digest(
            registry,
            repository,
            digest.to_string(),
        ))
    }

    /// Fetch the manifest `digest` from `image`'s repository and check its digest.
    pub(crate) async fn fetch_manifest(
        &self,
        image: &ImageRef,
        digest: &Digest,
    ) -> Result<Vec<u8>, OciError> {
        let reference = Self::pinned(image, digest)?;
        let auth = self.auth_for(&reference);
        let (bytes, _) = self.get_manifest(&reference, &auth).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what: format!("manifest served for {reference}"),
                expected: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Start downloading blob `digest` of `image`'s repository at byte `offset`.
    pub(crate) async fn fetch_blob(
        &self,
        image: &ImageRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobBody, OciError> {
        let reference = Self::pinned(image, digest)?;
        let auth = self.auth_for(&reference);
        self.authenticate(&reference, &auth).await?;
        let digest_str = digest.to_string();
        let response = self
            .inner
            .pull_blob_stream_partial(&reference, &digest_str.as_str(), offset, None)
            .await
            .map_err(|e| self.classify(&reference, e))?;
        Ok(match response {
            BlobResponse::Full(s) => BlobBody {
                resumed: offset == 0,
                stream: s.stream,
            },
            BlobResponse::Partial(s) => BlobBody {
                resumed: true,
                stream: s.stream,
            },
        })
    }
}

/// Split `registry/path` as the OCI distribution reference grammar does: the
/// first segment is a registry host only if it has a `.` or `:` or is
/// `localhost`; otherwise the image is on Docker Hub (`library/` for one-segment
/// names).
fn split_registry(name: &str) -> (String, String) {
    const HUB: &str = "docker.io";
    let (registry, path) = match name.split_once('/') {
        Some((host, path)) if host.contains(['.', ':']) || host == "localhost" => (host, path),
        _ => (HUB, name),
    };
    let registry = if registry == "index.docker.io" {
        HUB
    } else {
        registry
    };
    let path = if registry == HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    (registry.to_string(), path)
}

/// The certificates of a PEM bundle, each checked to be usable as a trust
/// anchor. Errors never quote the input (a mistyped path could point at a
/// secret).
pub(crate) fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::{Error as PemError, PemObject};
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        let cert = item.map_err(|e| match e {
            PemError::IllegalSectionStart { .. } => "a PEM section start line is malformed".into(),
            other => format!("it is not valid PEM ({other})"),
        })?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "certificate #{} is not a usable CA certificate: {e}",
                    certs.len() + 1
                )
            })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

fn client_config(config: &RegistryConfig, roots: &[CertificateDer<'static>]) -> ClientConfig {
    ClientConfig {
        protocol: ClientProtocol::HttpsExcept(config.insecure_hosts.clone()),
        // We pick the platform ourselves, from the raw index.
        platform_resolver: None,
        // One DER entry per certificate: oci-client's PEM path takes only the
        // first certificate of a bundle.
        extra_root_certificates: roots
            .iter()
            .map(|der| oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Der,
                data: der.to_vec(),
            })
            .collect(),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..ClientConfig::default()
    }
}

/// The HTTP client for manifest GETs: the same trust and timeouts as oci-client's.
fn http_client(roots: &[CertificateDer<'static>]) -> Result<reqwest::Client, reqwest::Error> {
    let certs = roots
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    reqwest::Client::builder()
        .tls_certs_merge(certs)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `e` and its causes (e.g. the TLS error under reqwest's "error sending
/// request"), since callers often log only `to_string()`. The hub's API
/// client uses it too.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        cause = c.source();
    }
    detail
}

impl Client {
    /// A 401/403 from `reference`'s registry, saying whether we sent credentials.
    fn unauthorized(&self, reference: &Reference) -> OciError {
        let registry = reference.registry().to_string();
        OciError::Unauthorized {
            reference: reference.whole(),
            anonymous: !self.config.credentials.contains_key(&registry),
            registry,
        }
    }

    /// Turn an oci-client error into one that says what went wrong with `reference`.
    fn classify(&self, reference: &Reference, e: OciDistributionError) -> OciError {
        let not_found = match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                            | oci_client::errors::OciErrorCode::BlobUnknown
                    )
                })
            }
            OciDistributionError::ServerError { code, .. } => *code == 404,
            _ => false,
        };
        if not_found {
            return OciError::NotFound {
                reference: reference.whole(),
            };
        }
        let unauthorized = match &e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => true,
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                })
            }
            OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
            _ => false,
        };
        if unauthorized {
            return self.unauthorized(reference);
        }
        OciError::Registry {
            reference: reference.whole(),
            detail: error_chain(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_references_match_what_the_oci_parser_gives() {
        let digest = Digest::of(b"x");
        for repo in [
            "127.0.0.1:5000/outpost/hello",
            "registry.example.com/team/app",
            "localhost/app",
            "docker.io/library/busybox",
            "index.docker.io/library/busybox",
            "docker.io/busybox",
            "busybox",
            "someuser/app",
        ] {
            let image = ImageRef {
                repository: repo.to_string(),
                digest,
            };
            let built = Client::pinned(&image, &digest).unwrap();
            let parsed: Reference = format!("{repo}@{digest}").parse().unwrap();
            assert_eq!(built, parsed, "{repo}");
        }
    }

    #[test]
    fn pinned_refuses_what_the_grammar_refuses() {
        let digest = Digest::of(b"x");
        let image = ImageRef {
            repository: "registry.example.com/Team/App".to_string(),
            digest,
        };
        let err = Client::pinned(&image, &digest).unwrap_err();
        assert!(err.to_string().contains("lowercase"), "{err}");
    }
}
