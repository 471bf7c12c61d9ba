//! The registry the scenarios pull from: a real `docker-registry` (from
//! `outpost-test-support`, on the port it bound) holding the sample image, open
//! over HTTP or private (TLS from a CA made for it, htpasswd auth for one user
//! with a random password), and the `[registry]` sections of `hub.toml` and
//! `agent.toml` that reach it.

use crate::bins::sample_layout;
use anyhow::{Context, Result};
use outpost_test_support::registry::{self as fixture, skopeo_copy, CopyTo, RegistryConfig};
use outpost_test_support::tls::TestCa;
use std::path::{Path, PathBuf};

/// A `docker-registry` with storage in a temp dir.
#[derive(Debug)]
pub struct Registry {
    pub port: u16,
    /// Set for [`Registry::start_private`].
    pub private: Option<PrivateAccess>,
    _registry: fixture::Registry,
    _files: tempfile::TempDir,
}

/// How to get into a private registry. The files live in the fixture's temp
/// dir; configs point at them as an operator's would.
#[derive(Debug, Clone)]
pub struct PrivateAccess {
    pub username: String,
    /// Random per registry, so finding it in a log or API answer is meaningful.
    pub password: String,
    /// The password alone, as `password_file` wants it.
    pub password_file: PathBuf,
    /// PEM of the CA that signed the registry's certificate.
    pub ca_file: PathBuf,
}

impl Registry {
    pub fn start() -> Result<Registry> {
        Registry::spawn(None)
    }

    /// HTTPS with a certificate from a CA made here and htpasswd auth for one
    /// user with a random password: anonymous access, including pulls, is
    /// refused.
    pub fn start_private() -> Result<Registry> {
        Registry::spawn(Some("edge"))
    }

    fn spawn(user: Option<&str>) -> Result<Registry> {
        let files = tempfile::tempdir()?;
        let (config, private) = match user {
            None => (RegistryConfig::default(), None),
            Some(username) => {
                let (config, access) = private_files(files.path(), username)?;
                (config, Some(access))
            }
        };
        let registry = fixture::Registry::start_with(&config)?;
        Ok(Registry {
            port: registry.addr.port(),
            private,
            _registry: registry,
            _files: files,
        })
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push the sample image (all platforms) as `hello:<tag>`.
    pub fn push_sample(&self, tag: &str) -> Result<String> {
        let dest = format!("{}/hello:{tag}", self.host());
        let to = match &self.private {
            // skopeo trusts the CA through a directory of `*.crt` files.
            Some(p) => {
                let certs = p.ca_file.with_file_name("skopeo-certs");
                std::fs::create_dir_all(&certs)?;
                std::fs::copy(&p.ca_file, certs.join("ca.crt"))?;
                CopyTo {
                    creds: Some(format!("{}:{}", p.username, p.password)),
                    cert_dir: Some(certs),
                }
            }
            None => CopyTo::default(),
        };
        skopeo_copy(sample_layout(), "latest", &dest, &to)?;
        Ok(dest)
    }

    /// The `[registry]` section of `hub.toml` / `agent.toml` that reaches this
    /// registry: `insecure` for an open one; for a private one its CA and,
    /// with `with_credentials`, the username and password file.
    pub fn client_settings(&self, with_credentials: bool) -> toml::Table {
        let mut section = toml::Table::new();
        match &self.private {
            None => {
                section.insert("insecure".into(), vec![self.host()].into());
            }
            Some(p) => {
                section.insert("ca_file".into(), p.ca_file.display().to_string().into());
                if with_credentials {
                    let mut login = toml::Table::new();
                    login.insert("username".into(), p.username.clone().into());
                    login.insert(
                        "password_file".into(),
                        p.password_file.display().to_string().into(),
                    );
                    let mut auth = toml::Table::new();
                    auth.insert(self.host(), login.into());
                    section.insert("auth".into(), auth.into());
                }
            }
        }
        section
    }

    /// Push `hello:<tag>`: the sample image for this machine's platform plus a
    /// layer of `extra_bytes` random bytes (incompressible), so versions share
    /// the sample's base layer and each has a layer of its own of a known size.
    pub fn push_variant(&self, tag: &str, extra_bytes: usize) -> Result<String> {
        use outpost_oci::build::{reproducible_tar, Entry, Layer, LayoutWriter};
        use outpost_oci::spec::{ConfigFile, ImageIndex, ImageManifest};
        let layout = sample_layout();
        let blob = |digest: &str| -> Result<Vec<u8>> {
            let hex = digest.trim_start_matches("sha256:");
            Ok(std::fs::read(layout.join("blobs/sha256").join(hex))?)
        };
        // index.json → image index → this platform's manifest → config + layers.
        let top: ImageIndex = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
        let index: ImageIndex = serde_json::from_slice(&blob(&top.manifests[0].digest)?)?;
        let arch = outpost_protocol::Platform::current().architecture;
        let entry = index
            .manifests
            .iter()
            .find(|m| m.platform.as_ref().is_some_and(|p| p.architecture == arch))
            .context("the sample image has no manifest for this platform")?;
        let manifest: ImageManifest = serde_json::from_slice(&blob(&entry.digest)?)?;
        let config: ConfigFile = serde_json::from_slice(&blob(&manifest.config.digest)?)?;
        let base = Layer {
            media_type: manifest.layers[0].media_type.clone(),
            blob: blob(&manifest.layers[0].digest)?,
            diff_id: config.rootfs.diff_ids[0].parse()?,
        };
        let noise: Vec<u8> = (0..extra_bytes).map(|_| rand::random::<u8>()).collect();
        let extra = Layer::gzip(&reproducible_tar(&[Entry::File {
            path: format!("variant/{tag}"),
            mode: 0o644,
            contents: noise,
        }])?)?;
        let dir = tempfile::tempdir()?;
        let writer = LayoutWriter::create(dir.path())?;
        let platform = entry.platform.clone().context("platform")?;
        let desc = writer.add_image(&platform, &[base, extra], config.config.clone())?;
        writer.finish(tag, &desc)?;
        let dest = format!("{}/hello:{tag}", self.host());
        skopeo_copy(dir.path(), tag, &dest, &CopyTo::default())?;
        Ok(dest)
    }
}

/// Write a private registry's CA, server certificate and key, and password
/// file into `dir`; the registry configuration that uses them.
fn private_files(dir: &Path, username: &str) -> Result<(RegistryConfig, PrivateAccess)> {
    let ca = TestCa::new("outpost e2e registry CA")?;
    let ca_file = dir.join("ca.pem");
    ca.write_cert(&ca_file)?;
    // An IP string becomes an IP subject alternative name.
    let tls = ca.server_cert(&["127.0.0.1"])?.write(dir, "server")?;
    let password = format!("pw-{:016x}", rand::random::<u64>());
    let password_file = dir.join("registry.pass");
    std::fs::write(&password_file, format!("{password}\n"))?;
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let config = RegistryConfig {
        tls: Some(tls),
        users: vec![(username.to_string(), password.clone())],
        ..RegistryConfig::default()
    };
    let access = PrivateAccess {
        username: username.to_string(),
        password,
        password_file,
        ca_file,
    };
    Ok((config, access))
}

/// Replace the `[registry]` section of the TOML config at `path`.
pub(crate) fn set_registry_section(path: &Path, section: toml::Table) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut config: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    config.insert("registry".into(), section.into());
    std::fs::write(path, toml::to_string_pretty(&config)?)?;
    Ok(())
}
