//! Test fixtures: a real `docker-registry` process (from `outpost-test-support`,
//! configured here for TLS, basic or token auth), `skopeo` pushes, a
//! byte-counting TCP proxy that can cut connections, and helpers that build
//! small OCI layouts. Every process started here is stopped by a Drop guard,
//! even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod token;

use outpost_oci::build::{reproducible_tar, Entry, Layer, LayoutWriter};
use outpost_oci::spec::{Descriptor, OciPlatform, RuntimeConfig};
pub use outpost_test_support::registry::Registry;
use outpost_test_support::registry::{skopeo_copy, CopyTo, RegistryConfig, TokenAuth};
use outpost_test_support::tls::TestCa;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// TLS files for a registry: a CA and a 127.0.0.1 server certificate it signed.
pub struct TestTls {
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make a throwaway CA and a server certificate for 127.0.0.1 in `dir`.
pub fn make_tls(dir: &Path) -> TestTls {
    let ca = TestCa::new("outpost test CA").unwrap();
    let (cert, key) = ca
        .server_cert(&["127.0.0.1"])
        .unwrap()
        .write(dir, "server")
        .unwrap();
    TestTls {
        ca_pem: ca.cert_pem().into_bytes(),
        cert,
        key,
    }
}

/// An open registry over HTTP.
pub fn registry() -> Registry {
    Registry::start().unwrap()
}

/// A registry serving HTTPS with `tls`, requiring basic auth for `(user, password)`.
pub fn registry_with(tls: &TestTls, (user, password): (&str, &str)) -> Registry {
    Registry::start_with(&RegistryConfig {
        tls: Some((tls.cert.clone(), tls.key.clone())),
        users: vec![(user.into(), password.into())],
        ..RegistryConfig::default()
    })
    .unwrap()
}

/// A registry requiring bearer tokens from `token` (realm URL, trusted signing cert).
pub fn registry_with_token_auth(token: &token::TokenServer) -> Registry {
    Registry::start_with(&RegistryConfig {
        token: Some(TokenAuth {
            realm: format!("http://{}/token", token.addr),
            service: token::SERVICE.into(),
            issuer: token::ISSUER.into(),
            root_cert_bundle: token.cert_pem.clone(),
        }),
        ..RegistryConfig::default()
    })
    .unwrap()
}

/// Push an OCI layout (all platforms, digests preserved) with skopeo.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    skopeo_push_as(layout, tag, dest, None)
}

pub fn skopeo_push_as(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let to = CopyTo {
        creds: creds.map(str::to_string),
        cert_dir: None,
    };
    skopeo_copy(layout, tag, dest, &to).unwrap();
}

/// A TCP proxy that counts bytes sent from upstream to the client and can cut
/// every connection once a total number of such bytes has passed.
pub struct Proxy {
    pub addr: SocketAddr,
    pub downstream_bytes: Arc<AtomicU64>,
    /// Cut connections once `downstream_bytes` reaches this (u64::MAX: never).
    pub limit: Arc<AtomicU64>,
    /// At the limit, hold connections open without forwarding instead of
    /// closing them (a stalled link).
    pub stall: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let downstream_bytes = Arc::new(AtomicU64::new(0));
        let limit = Arc::new(AtomicU64::new(u64::MAX));
        let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, lim, stl) = (downstream_bytes.clone(), limit.clone(), stall.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (count, lim, stl) = (count.clone(), lim.clone(), stl.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = count.load(Ordering::SeqCst);
                        let allowed = lim.load(Ordering::SeqCst).saturating_sub(before);
                        let send = (n as u64).min(allowed) as usize;
                        if send > 0 && cw.write_all(&buf[..send]).await.is_err() {
                            break;
                        }
                        count.fetch_add(send as u64, Ordering::SeqCst);
                        if send < n {
                            if stl.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            break; // the "link drop"
                        }
                    }
                    up.abort();
                    // Dropping both halves closes the connection.
                });
            }
        });
        Proxy {
            addr,
            downstream_bytes,
            limit,
            stall,
            task,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn amd64() -> OciPlatform {
    OciPlatform {
        architecture: "amd64".into(),
        os: "linux".into(),
        variant: None,
    }
}

/// Write a one-platform layout with `layers`, tagged `latest`; returns the
/// layout dir's image manifest descriptor.
pub fn single_image_layout(dir: &Path, layers: &[Layer]) -> Descriptor {
    let w = LayoutWriter::create(dir).unwrap();
    let config = RuntimeConfig {
        entrypoint: Some(vec!["/app".into()]),
        ..RuntimeConfig::default()
    };
    let desc = w.add_image(&amd64(), layers, config).unwrap();
    w.finish("latest", &desc).unwrap();
    desc
}

pub fn file(path: &str, contents: &[u8]) -> Entry {
    Entry::File {
        path: path.into(),
        mode: 0o644,
        contents: contents.to_vec(),
    }
}

pub fn layer_of(entries: &[Entry]) -> Layer {
    Layer::gzip(&reproducible_tar(entries).unwrap()).unwrap()
}

/// A raw tar entry whose name bypasses the tar crate's own path checks, so
/// tests can craft hostile layers.
pub fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

/// Repository root (for images/build.sh).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Run images/build.sh into `out`; returns the index digest it printed.
pub fn build_sample_image(out: &Path) -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("images/build.sh"))
        .arg(out)
        .env(
            "OUTPOST_IMAGE_BUILD",
            env!("CARGO_BIN_EXE_outpost-image-build"),
        )
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "images/build.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap().to_string();
    last.split_whitespace().nth(1).unwrap().to_string()
}
