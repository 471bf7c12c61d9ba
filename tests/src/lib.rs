//! Shared fixtures for Outpost's end-to-end tests: the real `outpost-hub` and
//! `outpost-agent` binaries, a real `docker-registry` holding the sample image
//! (open over HTTP, or private: TLS from a test CA plus htpasswd auth), a
//! cuttable TCP proxy between agent and broker, and polling helpers.
//!
//! Every fixture owns what it starts and tears it down in `Drop`, so a failing
//! test still stops its processes and removes its containers (the agent guard
//! runs `outpost-agent stop-all`). Tests run as root (real containers).
//!
//! Binaries are built once per test process with `cargo build` (the same target
//! dir as the tests), so `cargo test -p outpost-e2e` is all a developer runs.

pub mod reboot;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for any wait; only reached when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Workspace root (parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Paths of the binaries under test, built once.
#[derive(Debug, Clone)]
pub struct Bins {
    pub hub: PathBuf,
    pub agent: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args([
                "build",
                "-p",
                "outpost-hub",
                "-p",
                "outpost-edge-agent",
                "-p",
                "outpost-runtime",
                "--bins",
            ])
            .status()
            .expect("running cargo build for the e2e binaries");
        assert!(status.success(), "cargo build of the binaries failed");
        let dir = target_dir().join("debug");
        Bins {
            hub: dir.join("outpost-hub"),
            agent: dir.join("outpost-agent"),
        }
    })
}

/// The sample image as an OCI layout (built once by `images/build.sh`).
pub fn sample_layout() -> &'static PathBuf {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        // build.sh serializes concurrent runs itself (a lock in the output
        // dir), so a failure here is a real one: no retry.
        let out = Command::new("bash")
            .arg(workspace().join("images/build.sh"))
            .arg(target_dir().join("images"))
            .output()
            .expect("running images/build.sh");
        assert!(
            out.status.success(),
            "images/build.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        PathBuf::from(last.split_whitespace().next().unwrap_or_default())
    })
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a free port")
}

/// Poll `f` until it returns `Some`, or fail after [`PATIENCE`] with `what`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > PATIENCE {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_port(port: u16) -> Result<()> {
    wait_for(&format!("port {port} to accept"), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .map(|_| ())
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let f =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let f2 = f.try_clone()?;
        let child = cmd
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            child: Some(child),
            name: name.into(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
        }
    }

    /// Send `sig` and wait for the process to end.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) {
        self.signal(sig);
        if let Some(mut c) = self.child.take() {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if start.elapsed() > Duration::from_secs(30) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `docker-registry` on a free loopback port with storage in a temp dir.
#[derive(Debug)]
pub struct Registry {
    pub port: u16,
    /// Set for [`Registry::start_private`].
    pub private: Option<PrivateAccess>,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

/// How to get into a private registry. The files live in the registry's temp
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

    /// HTTPS with a certificate from a CA made here (rcgen) and htpasswd
    /// (bcrypt) auth for one user with a random password: anonymous access,
    /// including pulls, is refused.
    pub fn start_private() -> Result<Registry> {
        Registry::spawn(Some("edge"))
    }

    fn spawn(user: Option<&str>) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        let private = match user {
            None => None,
            Some(username) => {
                let access = private_files(dir.path(), username)?;
                yaml += &format!(
                    "  tls:\n    certificate: {0}/server.pem\n    key: {0}/server.key\nauth:\n  htpasswd:\n    realm: outpost-e2e\n    path: {0}/htpasswd\n",
                    dir.path().display()
                );
                Some(access)
            }
        };
        std::fs::write(&conf, yaml)?;
        let proc = Proc::spawn(
            "docker-registry",
            Command::new("docker-registry").arg("serve").arg(&conf),
            &dir.path().join("registry.log"),
        )?;
        wait_port(port)?;
        Ok(Registry {
            port,
            private,
            _proc: proc,
            _dir: dir,
        })
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Push the sample image (all platforms) as `hello:<tag>`.
    pub fn push_sample(&self, tag: &str) -> Result<String> {
        let layout = sample_layout();
        let dest = format!("{}/hello:{tag}", self.host());
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet"]);
        match &self.private {
            // skopeo trusts the CA through a directory of `*.crt` files.
            Some(p) => {
                let certs = p.ca_file.with_file_name("skopeo-certs");
                std::fs::create_dir_all(&certs)?;
                std::fs::copy(&p.ca_file, certs.join("ca.crt"))?;
                cmd.arg("--dest-cert-dir")
                    .arg(&certs)
                    .arg("--dest-creds")
                    .arg(format!("{}:{}", p.username, p.password))
            }
            None => cmd.arg("--dest-tls-verify=false"),
        };
        run(cmd
            .arg(format!("oci:{}:latest", layout.display()))
            .arg(format!("docker://{dest}")))?;
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
}

/// Write a private registry's CA, server certificate and key, htpasswd and
/// password file into `dir`.
fn private_files(dir: &Path, username: &str) -> Result<PrivateAccess> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "outpost e2e registry CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    // An IP string becomes an IP subject alternative name.
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server = server_params.signed_by(&server_key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), server.pem())?;
    std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;

    let password = format!("pw-{:016x}", rand::random::<u64>());
    // Cost 4: the minimum, the registry checks it on every request.
    let hash = bcrypt::hash(&password, 4)?;
    std::fs::write(dir.join("htpasswd"), format!("{username}:{hash}\n"))?;
    let password_file = dir.join("registry.pass");
    std::fs::write(&password_file, format!("{password}\n"))?;
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    Ok(PrivateAccess {
        username: username.to_string(),
        password,
        password_file,
        ca_file: dir.join("ca.pem"),
    })
}

/// Replace the `[registry]` section of the TOML config at `path`.
fn set_registry_section(path: &Path, section: toml::Table) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut config: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    config.insert("registry".into(), section.into());
    std::fs::write(path, toml::to_string_pretty(&config)?)?;
    Ok(())
}

impl Registry {
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
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", dir.path().display()))
            .arg(format!("docker://{dest}")))?;
        Ok(dest)
    }
}

/// A cuttable TCP proxy (agent → broker), run on its own thread and runtime.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Result<Proxy> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(tx);
        let (u, g) = (up.clone(), generation.clone());
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !u.load(Ordering::SeqCst) {
                    // Cut: accept and drop at once, like an unreachable peer
                    // that resets.
                    drop(inbound);
                    continue;
                }
                let mut cut = g.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            up,
            generation,
            _rt: rt,
        })
    }

    /// Drop every connection and refuse new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A running hub (embedded broker) in a temp data dir.
#[derive(Debug)]
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub http_port: u16,
    pub mqtt_port: u16,
    external: bool,
    proc: Option<Proc>,
}

impl Hub {
    pub fn start(registry: &Registry) -> Result<Hub> {
        Hub::start_with(registry, None)
    }

    /// `external`: `(mqtts://host:port, CA file)` of a broker the hub connects to
    /// instead of starting its embedded one.
    pub fn start_with(registry: &Registry, external: Option<(&str, &Path)>) -> Result<Hub> {
        Hub::start_retrying(registry, external.map(|(url, ca)| (url, Some(ca))))
    }

    /// A hub that uses the plain `mqtt://` broker at `url` (e.g. [`Mosquitto`])
    /// instead of its embedded one.
    pub fn start_with_broker(registry: &Registry, url: &str) -> Result<Hub> {
        Hub::start_retrying(registry, Some((url, None)))
    }

    fn start_retrying(registry: &Registry, external: Option<(&str, Option<&Path>)>) -> Result<Hub> {
        // A port picked free can be taken by another test before the hub binds
        // it: retry with fresh ports.
        let mut last = None;
        for _ in 0..3 {
            match Hub::try_start(registry, external) {
                Ok(h) => return Ok(h),
                Err(e) => {
                    eprintln!("hub start failed, retrying: {e:#}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("hub did not start")))
    }

    fn try_start(registry: &Registry, external: Option<(&str, Option<&Path>)>) -> Result<Hub> {
        let dir = tempfile::tempdir()?;
        let http_port = free_port();
        let mqtt_port = free_port();
        let mut init = Command::new(&bins().hub);
        init.arg("--data-dir")
            .arg(dir.path())
            .args(["init", "--http-listen"])
            .arg(format!("127.0.0.1:{http_port}"));
        match external {
            Some((url, _)) => init.args(["--broker", url]),
            None => init
                .arg("--mqtt-listen")
                .arg(format!("127.0.0.1:{mqtt_port}")),
        };
        run(&mut init)?;
        let cfg_path = dir.path().join("hub.toml");
        let mut cfg = std::fs::read_to_string(&cfg_path)?;
        if let Some((_, Some(ca))) = external {
            cfg = cfg.replace(
                "[mqtt]\n",
                &format!("[mqtt]\nca_file = \"{}\"\n", ca.display()),
            );
        }
        std::fs::write(&cfg_path, cfg)?;
        set_registry_section(&cfg_path, registry.client_settings(true))?;
        let mut hub = Hub {
            dir,
            http_port,
            mqtt_port,
            external: external.is_some(),
            proc: None,
        };
        hub.serve()?;
        Ok(hub)
    }

    pub fn serve(&mut self) -> Result<()> {
        let log = self.dir.path().join("hub.log");
        let proc = Proc::spawn(
            "outpost-hub",
            Command::new(&bins().hub)
                .env("RUST_LOG", "info")
                .arg("--data-dir")
                .arg(self.dir.path())
                .arg("serve"),
            &log,
        )?;
        self.proc = Some(proc);
        let mut ports = vec![self.http_port];
        if !self.external {
            ports.push(self.mqtt_port);
        }
        for port in ports {
            wait_for(&format!("the hub to listen on {port}"), || {
                if !self.proc.as_mut().is_some_and(Proc::is_running) {
                    return Some(Err(anyhow::anyhow!("hub exited: {}", self.log())));
                }
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| Ok(()))
            })??;
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGTERM);
        }
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt_port))
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new(&bins().hub)
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn add_device(&self, id: &str, public_key: &str) -> Result<()> {
        self.cli(&[
            "device",
            "add",
            id,
            "--public-key",
            public_key,
            "--label",
            &format!("e2e={id}"),
        ])
        .map(|_| ())
    }

    /// Apply a deployment of the sample image to exactly one device.
    pub fn deploy(&self, device: &str, apps: &[AppDef]) -> Result<()> {
        let mut toml = format!("name = \"{device}\"\nselector = {{ e2e = \"{device}\" }}\n");
        for a in apps {
            toml.push_str(&a.to_toml());
        }
        let path = self.dir.path().join(format!("deploy-{device}.toml"));
        std::fs::write(&path, toml)?;
        self.cli(&["apply", "-f", &path.display().to_string()])
            .map(|_| ())
    }

    /// The hub's view of a device (`outpost-hub status DEVICE --json`).
    pub fn device(&self, id: &str) -> Result<Value> {
        let out = self.cli(&["status", id, "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("hub status output: {out}"))
    }

    /// Events the hub received: (seq, kind name, full line).
    pub fn events(&self, id: &str) -> Result<Vec<(u64, String, String)>> {
        let out = self.cli(&["events", id])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let seq = it.next()?.parse().ok()?;
                let _at = it.next()?;
                let kind = it.next()?.to_string();
                Some((seq, kind, l.to_string()))
            })
            .collect())
    }

    /// The hub's `/v1/stats` (`outpost-hub stats`): ingest counters and more.
    pub fn stats(&self) -> Result<Value> {
        let out = self.cli(&["stats"])?;
        serde_json::from_str(&out).with_context(|| format!("hub stats output: {out}"))
    }

    /// One ingest counter (0 when absent).
    pub fn counter(&self, name: &str) -> Result<u64> {
        Ok(self.stats()?["counters"][name].as_u64().unwrap_or(0))
    }

    pub fn signing_key(&self) -> Result<outpost_protocol::SigningKey> {
        let bytes = std::fs::read(self.dir.path().join("signing.key"))?;
        Ok(outpost_protocol::SigningKey::from_pkcs8(&bytes)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// Replace hub.toml's `[registry]` section (takes effect at the next `serve`).
    pub fn set_registry(&self, section: toml::Table) -> Result<()> {
        set_registry_section(&self.dir.path().join("hub.toml"), section)
    }

    /// GET an HTTP API path with the hub's token; the raw response body.
    pub fn api_get(&self, path: &str) -> Result<String> {
        let token = std::fs::read_to_string(self.dir.path().join("token"))?;
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            token.trim()
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let (head, body) = buf
            .split_once("\r\n\r\n")
            .with_context(|| format!("malformed answer to GET {path}"))?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("GET {path}: {head}");
        }
        Ok(body.to_string())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
        // Captured by the test harness; shown when the test fails.
        eprintln!("---- hub log (tail) ----\n{}", tail(&self.log(), 40));
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One app of a test deployment (the sample image).
#[derive(Debug, Clone)]
pub struct AppDef {
    pub name: String,
    pub image: String,
    pub port: u16,
    pub version: String,
    pub health: bool,
    /// More environment variables (e.g. the sample's `TICK_MS`).
    pub extra_env: Vec<(String, String)>,
}

impl AppDef {
    pub fn hello(name: &str, image: &str) -> AppDef {
        AppDef {
            name: name.into(),
            image: image.into(),
            port: free_port(),
            version: "1".into(),
            health: false,
            extra_env: Vec::new(),
        }
    }

    fn to_toml(&self) -> String {
        let extra: String = self
            .extra_env
            .iter()
            .map(|(k, v)| format!(", {k} = \"{v}\""))
            .collect();
        let mut s = format!(
            "\n[[apps]]\nname = \"{}\"\nimage = \"{}\"\nenv = {{ PORT = \"{}\", HELLO_VERSION = \"{}\"{extra} }}\nvolumes = [{{ name = \"data\", path = \"/data\" }}]\n",
            self.name, self.image, self.port, self.version
        );
        if self.health {
            s.push_str(&format!(
                "health = {{ http_path = \"/health\", port = {}, interval_secs = 1, timeout_secs = 2, retries = 2 }}\n",
                self.port
            ));
        }
        s
    }

    /// GET `path` from the app on the host network.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get(self.port, path)
    }
}

/// Minimal HTTP/1.0 GET against 127.0.0.1; `None` on any failure.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// An agent with its own data and run dirs; containers removed on drop.
#[derive(Debug)]
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub device_id: String,
    pub public_key: String,
    proc: Option<Proc>,
    boots: Mutex<u32>,
}

impl Agent {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// `outpost-agent init` against the hub's root key and key set.
    pub fn init(
        hub: &Hub,
        device_id: &str,
        broker_port: u16,
        registry: &Registry,
    ) -> Result<Agent> {
        Agent::init_with(
            hub,
            device_id,
            &format!("mqtt://127.0.0.1:{broker_port}"),
            None,
            registry,
        )
    }

    pub fn init_with(
        hub: &Hub,
        device_id: &str,
        broker: &str,
        ca_file: Option<&Path>,
        registry: &Registry,
    ) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("agent.toml");
        let mut cmd = Command::new(&bins().agent);
        cmd.arg("--config")
            .arg(&config)
            .args(["init", "--device-id", device_id, "--broker", broker])
            .arg("--root-key")
            .arg(hub.dir.path().join("root.pub"))
            .arg("--keyset")
            .arg(hub.dir.path().join("keyset.bin"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--run-dir")
            .arg(dir.path().join("run"));
        match &registry.private {
            Some(p) => cmd
                .arg("--registry-ca-file")
                .arg(&p.ca_file)
                .arg("--registry-auth")
                .arg(format!(
                    "{}={}:{}",
                    registry.host(),
                    p.username,
                    p.password_file.display()
                )),
            None => cmd.arg("--registry-insecure").arg(registry.host()),
        };
        if let Some(ca) = ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        let out = run(&mut cmd)?;
        // The run dir is a real tmpfs, as `/run` on a device: a power cut
        // (`Agent::power_cut`) loses it.
        reboot::mount_tmpfs(&dir.path().join("run"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let public_key = stdout
            .lines()
            .find_map(|l| l.strip_prefix("public-key: "))
            .context("init printed no public key")?
            .trim()
            .to_string();
        Ok(Agent {
            dir,
            device_id: device_id.into(),
            public_key,
            proc: None,
            boots: Mutex::new(0),
        })
    }

    pub fn start(&mut self) -> Result<()> {
        self.start_with(None)
    }

    /// Start inside a fresh network namespace with only loopback (no route, no
    /// DNS): a device booting with its network down. Host-network apps started
    /// by this agent live in that namespace too: reach them with
    /// [`Agent::http_get_in_netns`].
    pub fn start_without_network(&mut self) -> Result<()> {
        self.start_with(Some(&[
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ]))
    }

    /// Cut the power: SIGKILL the agent, its helpers and every container
    /// process, lose the kernel's state (mounts, cgroups) and the tmpfs run dir,
    /// keep the data dir (see [`reboot`]). The agent is not started again.
    pub fn power_cut(&mut self) -> Result<()> {
        let containers: std::collections::BTreeSet<String> =
            std::fs::read_dir(self.dir.path().join("data/containers"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
        // The harness's handle: killed from outside below, reaped here.
        let proc = self.proc.take();
        reboot::power_cut(self.dir.path(), &self.dir.path().join("run"), &containers)?;
        if let Some(mut p) = proc {
            p.stop_with(nix::sys::signal::Signal::SIGKILL);
        }
        Ok(())
    }

    /// What restarting the agent's own container does on balenaOS (`pid: host`,
    /// run dir on the container's tmpfs): the agent's mounts leave with its
    /// mount namespace (containers keep their detached roots) and the run dir
    /// comes back empty; the apps' processes live on. Kill the agent first.
    pub fn lose_run_dir_and_mounts(&mut self) -> Result<()> {
        reboot::unmount_all_under(self.dir.path());
        reboot::mount_tmpfs(&self.dir.path().join("run"))
    }

    /// A faithful reboot into a device with no network: [`Agent::power_cut`],
    /// then start the agent in a fresh network namespace with only loopback.
    pub fn reboot_offline(&mut self) -> Result<()> {
        self.power_cut()?;
        self.start_without_network()
    }

    /// `GET path` on `port` from inside the running agent's network namespace
    /// (where its host-network apps live after [`Agent::start_without_network`]).
    pub fn http_get_in_netns(&self, port: u16, path: &str) -> Option<String> {
        let pid = self.proc.as_ref()?.pid()?;
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
        let path = path.to_string();
        // setns changes only the calling thread's namespace.
        std::thread::spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            http_get(port, &path)
        })
        .join()
        .ok()
        .flatten()
    }

    fn start_with(&mut self, wrapper: Option<&[&str]>) -> Result<()> {
        let n = {
            let mut b = self.boots.lock().unwrap_or_else(|p| p.into_inner());
            *b += 1;
            *b
        };
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let mut cmd = match wrapper {
            Some([program, args @ ..]) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bins().agent);
                c
            }
            _ => Command::new(&bins().agent),
        };
        cmd.env("RUST_LOG", "info,outpost_edge_agent=debug")
            .arg("--config")
            .arg(self.config())
            .arg("run");
        let proc = Proc::spawn("outpost-agent", &mut cmd, &log)?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGTERM: graceful, apps keep running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGTERM);
        }
    }

    /// SIGKILL: as if the agent crashed.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGKILL);
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::is_running)
    }

    /// Pid of the running agent process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// `outpost-agent status --json`.
    pub fn status(&self) -> Result<Value> {
        let out = run(Command::new(&bins().agent)
            .arg("--config")
            .arg(self.config())
            .args(["status", "--json"]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("agent status output: {text}"))?;
        // A file left behind by an earlier (killed) agent process is not this
        // agent's view.
        if let Some(pid) = self.proc.as_ref().and_then(Proc::pid) {
            if v["agent_pid"].as_u64() != Some(u64::from(pid)) {
                bail!("status file is not from the running agent (pid {pid}) yet");
            }
        }
        Ok(v)
    }

    /// Pid of a running app according to the agent's status.
    pub fn app_pid(&self, app: &str) -> Option<u64> {
        let st = self.status().ok()?;
        st["apps"][app]["state"]["Running"]["pid"].as_u64()
    }

    pub fn connected(&self) -> Option<bool> {
        self.status().ok()?["connected"].as_bool()
    }

    pub fn outbox_pending(&self) -> Option<u64> {
        self.status().ok()?["outbox_pending"].as_u64()
    }

    /// Lines in the app's `data` volume's start log (the sample app appends one
    /// per start), read from the host side.
    pub fn volume_starts(&self, app: &str) -> usize {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("data/volumes")
                .join(app)
                .join("data/starts.log"),
        )
        .map(|s| s.lines().count())
        .unwrap_or(0)
    }

    /// Replace agent.toml's `[registry]` section (read at the next start).
    pub fn set_registry(&self, section: toml::Table) -> Result<()> {
        set_registry_section(&self.config(), section)
    }

    /// Rewrite the broker URL in the agent's config.
    pub fn set_broker(&self, url: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.config())?;
        let out: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("broker = ") {
                    format!("broker = \"{url}\"")
                } else {
                    l.to_string()
                }
            })
            .collect();
        std::fs::write(self.config(), out.join("\n") + "\n")?;
        Ok(())
    }

    /// Set a top-level `key = value` (TOML) in the agent's config, replacing an
    /// existing line for `key`; takes effect at the next start.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.config())?;
        let line = format!("{key} = {value}");
        let mut out: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} = ")))
            .map(str::to_string)
            .collect();
        // Top-level keys go before the first table header.
        let at = out
            .iter()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(out.len());
        out.insert(at, line);
        std::fs::write(self.config(), out.join("\n") + "\n")?;
        Ok(())
    }

    pub fn applied_generation(&self) -> Option<u64> {
        let st = self.status().ok()?;
        st["applied"][1].as_u64()
    }

    pub fn rejected_total(&self) -> u64 {
        self.status()
            .ok()
            .and_then(|st| {
                st["rejected"]
                    .as_object()
                    .map(|o| o.values().filter_map(Value::as_u64).sum())
            })
            .unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut names: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            names.sort();
            for p in names {
                if p.extension().is_some_and(|e| e == "log") {
                    s.push_str(&format!("==> {} <==\n", p.display()));
                    s.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        s
    }

    /// `outpost-agent --config … ARGS…`; its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new(&bins().agent)
            .arg("--config")
            .arg(self.config())
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Set `key = value` (value as TOML) in `[section]` of the agent's config.
    pub fn set_config(&self, section: &str, key: &str, value: &str) -> Result<()> {
        let text = std::fs::read_to_string(self.config())?;
        let header = format!("[{section}]");
        let mut out = Vec::new();
        let mut in_section = false;
        let mut done = false;
        for line in text.lines() {
            if line.trim_start().starts_with('[') {
                if in_section && !done {
                    out.push(format!("{key} = {value}"));
                    done = true;
                }
                in_section = line.trim() == header;
            } else if in_section && line.split('=').next().map(str::trim) == Some(key) {
                out.push(format!("{key} = {value}"));
                done = true;
                continue;
            }
            out.push(line.to_string());
        }
        if !done {
            if !in_section {
                out.push(header);
            }
            out.push(format!("{key} = {value}"));
        }
        std::fs::write(self.config(), out.join("\n") + "\n")?;
        Ok(())
    }

    /// Stop and remove every container of this agent (needs the agent stopped).
    pub fn stop_all(&self) -> Result<()> {
        run(Command::new(&bins().agent)
            .arg("--config")
            .arg(self.config())
            .arg("stop-all"))
        .map(|_| ())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if let Err(e) = self.stop_all() {
            eprintln!("cleanup of agent {}: {e:#}", self.device_id);
        }
        // The tmpfs run dir and any overlay a failed cleanup left.
        reboot::unmount_all_under(self.dir.path());
        // Captured by the test harness; shown when the test fails.
        eprintln!(
            "---- agent {} logs (tail) ----\n{}",
            self.device_id,
            tail(&self.logs(), 80)
        );
    }
}

/// A short unique suffix for device and app names (tests run in parallel and
/// container cgroups are host-global).
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}-{:06x}", n & 0xff_ffff)
}

/// Everything most scenarios need: registry with the sample image, a hub, a
/// proxy between agent and broker, and a registered, running agent.
#[derive(Debug)]
pub struct World {
    // Field order is drop order: the agent (and its containers) goes first.
    pub agent: Agent,
    pub proxy: Proxy,
    pub hub: Hub,
    pub registry: Registry,
    pub image: String,
}

impl World {
    pub fn start(name: &str) -> Result<World> {
        let registry = Registry::start()?;
        let image = registry.push_sample("v1")?;
        let hub = Hub::start(&registry)?;
        let proxy = Proxy::start(hub.mqtt_addr())?;
        let device = unique(name);
        let mut agent = Agent::init(&hub, &device, proxy.port, &registry)?;
        hub.add_device(&device, &agent.public_key)?;
        agent.start()?;
        Ok(World {
            registry,
            hub,
            proxy,
            agent,
            image,
        })
    }

    pub fn app(&self, prefix: &str) -> AppDef {
        AppDef::hello(&unique(prefix), &self.image)
    }

    /// Deploy and wait until the agent runs every app and the app answers.
    pub fn deploy_and_wait(&self, apps: &[AppDef]) -> Result<()> {
        let before = self.agent.applied_generation().unwrap_or(0);
        self.hub.deploy(&self.agent.device_id, apps)?;
        wait_for("the agent to apply the new generation", || {
            self.agent.applied_generation().filter(|g| *g > before)
        })?;
        for a in apps {
            wait_for(&format!("app {} to answer", a.name), || {
                a.get("/")
                    .filter(|b| b.contains(&format!("version {}", a.version)))
            })?;
        }
        // The agent's local status file trails the apps answering by a moment
        // (writes are coalesced); callers read pids from it, so wait for one
        // written after the apps answered.
        // `written_at_ms` is the agent's wall clock (edge-agent/src/clock.rs),
        // on this same machine: compare wall time with wall time.
        #[allow(clippy::disallowed_methods)]
        let answered = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        wait_for("the agent's status file to catch up", || {
            let written = self.agent.status().ok()?["written_at_ms"].as_u64()?;
            (written > answered).then_some(())
        })?;
        Ok(())
    }
}

/// MQTT helpers speaking directly to the broker, as an attacker (or observer)
/// with network access to it would.
pub mod mqtt {
    use anyhow::{bail, Result};
    use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Publish every payload on `topic` from one connection (QoS 1, pipelined)
    /// and wait for all the broker's PUBACKs. Returns how many were acked.
    pub fn flood(addr: SocketAddr, topic: &str, payloads: Vec<Vec<u8>>) -> Result<usize> {
        rt()?.block_on(async {
            let (c, mut el) = client(addr);
            let n = payloads.len();
            let topic = topic.to_string();
            let sender = tokio::spawn(async move {
                for p in payloads {
                    c.publish(&topic, QoS::AtLeastOnce, false, p).await?;
                }
                Ok::<_, anyhow::Error>(c)
            });
            let mut acks = 0;
            let res = tokio::time::timeout(super::PATIENCE, async {
                while acks < n {
                    match el.poll().await {
                        Ok(Event::Incoming(Incoming::PubAck(_))) => acks += 1,
                        Ok(_) => {}
                        Err(e) => bail!("flood connection failed after {acks} acks: {e}"),
                    }
                }
                Ok(())
            })
            .await;
            match res {
                Ok(r) => r?,
                Err(_) => bail!("only {acks} of {n} publishes were acked"),
            }
            sender.await??;
            Ok(acks)
        })
    }

    fn client(addr: SocketAddr) -> (AsyncClient, rumqttc::EventLoop) {
        let id = super::unique("e2e-client");
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_max_packet_size(4 << 20, 4 << 20)
            .set_keep_alive(Duration::from_secs(30));
        AsyncClient::new(o, 16)
    }

    fn rt() -> Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?)
    }

    /// The retained message on `topic`.
    pub fn retained(addr: SocketAddr, topic: &str) -> Result<Vec<u8>> {
        rt()?.block_on(async {
            let (c, mut el) = client(addr);
            c.subscribe(topic, QoS::AtLeastOnce).await?;
            let res = tokio::time::timeout(super::PATIENCE, async {
                loop {
                    if let Event::Incoming(Incoming::Publish(p)) = el.poll().await? {
                        return Ok::<_, anyhow::Error>(p.payload.to_vec());
                    }
                }
            })
            .await;
            match res {
                Ok(r) => r,
                Err(_) => bail!("no retained message on {topic}"),
            }
        })
    }

    /// Publish once (QoS 1, not retained) and wait for the broker's PUBACK or
    /// for the broker to drop us (which it may do for an oversized payload).
    pub fn publish(addr: SocketAddr, topic: &str, payload: Vec<u8>) -> Result<bool> {
        rt()?.block_on(async {
            let (c, mut el) = client(addr);
            c.publish(topic, QoS::AtLeastOnce, false, payload).await?;
            let res = tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Incoming::PubAck(_))) => return true,
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await;
            Ok(res.unwrap_or(false))
        })
    }
}

/// Is a process with this pid alive?
/// Whether `pid` is a live process (a zombie waiting to be reaped is not).
pub fn pid_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// A plain Mosquitto broker on a loopback port, without persistence (its
/// default): killed and started again on the same port it has lost every
/// retained message, session and queued message, as a real restart does.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    proc: Option<Proc>,
    starts: u32,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Result<Mosquitto> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )?;
        let mut m = Mosquitto {
            port,
            proc: None,
            starts: 0,
            dir,
        };
        m.restart()?;
        Ok(m)
    }

    /// SIGKILL: whatever the broker held in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop_with(nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Start (again) on the same port, with the same config.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.starts += 1;
        let d = self.dir.path();
        let proc = Proc::spawn(
            "mosquitto",
            Command::new("mosquitto")
                .arg("-c")
                .arg(d.join("mosquitto.conf")),
            &d.join(format!("mosquitto-{}.log", self.starts)),
        )?;
        self.proc = Some(proc);
        wait_port(self.port)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Mosquitto with a TLS listener on a free loopback port, with a throwaway CA
/// (openssl) whose certificate clients must be given.
#[derive(Debug)]
pub struct TlsBroker {
    pub port: u16,
    pub ca: PathBuf,
    _proc: Proc,
    pub dir: tempfile::TempDir,
}

impl TlsBroker {
    pub fn start() -> Result<TlsBroker> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let ossl = |args: &[&str]| run(Command::new("openssl").current_dir(d).args(args));
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=outpost-e2e-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        ossl(&[
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
        ])?;
        let port = free_port();
        std::fs::write(
            d.join("mosquitto.conf"),
            format!(
                "user root\npersistence false\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
                d.display()
            ),
        )?;
        let proc = Proc::spawn(
            "mosquitto",
            Command::new("mosquitto")
                .arg("-c")
                .arg(d.join("mosquitto.conf")),
            &d.join("mosquitto.log"),
        )?;
        wait_port(port)?;
        Ok(TlsBroker {
            port,
            ca: d.join("ca.pem"),
            _proc: proc,
            dir,
        })
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }
}
