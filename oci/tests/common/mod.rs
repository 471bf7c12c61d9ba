//! Test fixtures: a real `docker-registry` process, `skopeo` pushes, a byte-counting
//! TCP proxy that can cut connections, and helpers that build small OCI layouts.
//! Every process started here is stopped by a Drop guard, even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod token;

use outpost_oci::build::{reproducible_tar, Entry, Layer, LayoutWriter};
use outpost_oci::spec::{Descriptor, OciPlatform, RuntimeConfig};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry serve` child process on a free loopback port.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// TLS files for a registry: a CA and a 127.0.0.1 server certificate it signed.
pub struct TestTls {
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make a throwaway CA and server certificate with the `openssl` CLI.
pub fn make_tls(dir: &Path) -> TestTls {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=outpost test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    TestTls {
        ca_pem: std::fs::read(dir.join("ca.pem")).unwrap(),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

impl Registry {
    pub fn start() -> Registry {
        Registry::start_with(None, None)
    }

    /// Optionally serve HTTPS with `tls` and require basic auth for `(user, password)`.
    pub fn start_with(tls: Option<&TestTls>, user: Option<(&str, &str)>) -> Registry {
        Registry::start_full(tls, user, None)
    }

    /// Require bearer tokens from `token` (realm URL, trusted signing cert).
    pub fn start_with_token_auth(token: &token::TokenServer) -> Registry {
        Registry::start_full(None, None, Some(token))
    }

    fn start_full(
        tls: Option<&TestTls>,
        user: Option<(&str, &str)>,
        token: Option<&token::TokenServer>,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(tls) = tls {
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tls.cert.display(),
                tls.key.display()
            );
        }
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{hash}\n")).unwrap();
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: outpost-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        if let Some(t) = token {
            yaml += &format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.addr,
                token::SERVICE,
                token::ISSUER,
                t.cert_pem.display()
            );
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (Debian package docker-registry)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        // Readiness: wait until the port accepts connections (bounded, not a
        // timing assertion).
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not start listening on {addr}");
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Push an OCI layout (all platforms, digests preserved) with skopeo.
pub fn skopeo_push(layout: &Path, tag: &str, dest: &str) {
    skopeo_push_as(layout, tag, dest, None)
}

pub fn skopeo_push_as(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    if let Some(creds) = creds {
        cmd.arg("copy").arg("--dest-creds").arg(creds);
    } else {
        cmd.arg("copy");
    }
    let out = cmd
        .args([
            "--all",
            "--preserve-digests",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo must be installed");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
