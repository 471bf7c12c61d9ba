//! Shared fixtures for the hub's integration tests: free ports, a hub process, a
//! Mosquitto process, a Docker registry process, a plain MQTT subscriber, and a
//! bounded "eventually" wait. Every process is killed by a Drop guard, so a
//! failing test leaves nothing running.
#![allow(dead_code, clippy::unwrap_used)]

use outpost_hub::client::ApiClient;
use outpost_hub::config::DataDir;
use outpost_protocol::{topics, DeviceId, KeySet, PublicKey, SignedKeySet, TrustState, Verifier};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost-hub");

/// Upper bound for waiting on something asynchronous; a hang guard, not a
/// performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns `Some`, or panic naming `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    Proc {
        child,
        log: log.to_path_buf(),
    }
}

/// Run `outpost-hub init` in `dir`.
pub fn init(dir: &Path) {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `outpost-hub serve`.
pub struct HubProc {
    pub proc: Proc,
    pub dir: PathBuf,
    pub http_port: u16,
    pub mqtt_port: u16,
    pub api: ApiClient,
}

impl HubProc {
    /// Start on `dir` with the embedded broker (or `broker` when given) and wait
    /// until the API answers.
    pub async fn start(
        dir: &Path,
        http_port: u16,
        mqtt_port: u16,
        broker: Option<&str>,
    ) -> HubProc {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("serve")
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .env("RUST_LOG", "info,outpost_hub=debug");
        if let Some(b) = broker {
            cmd.arg("--broker").arg(b);
        }
        let log = dir.join(format!("serve-{http_port}.log"));
        let proc = spawn(&mut cmd, &log);
        let token = std::fs::read_to_string(DataDir::new(dir).token()).unwrap();
        let api = ApiClient::new(format!("http://127.0.0.1:{http_port}"), token.trim());
        let hub = HubProc {
            proc,
            dir: dir.to_path_buf(),
            http_port,
            mqtt_port,
            api,
        };
        let url = format!("http://127.0.0.1:{http_port}/v1/health");
        let http = reqwest::Client::new();
        let start = std::time::Instant::now();
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "hub did not come up; log:\n{}",
                hub.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        hub
    }

    /// Run a CLI command against this hub; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", self.http_port))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "outpost-hub {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a CLI command expected to fail; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--url")
            .arg(format!("http://127.0.0.1:{}", self.http_port))
            .args(args)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "outpost-hub {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Stop hard (SIGKILL): the restart test relies on commits being durable.
    pub fn kill(self) {
        drop(self.proc);
    }
}

/// A Mosquitto broker on a free port with its own config file.
pub fn mosquitto(dir: &Path, port: u16) -> Proc {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let proc = spawn(
        Command::new("mosquitto").arg("-c").arg(&conf),
        &dir.join("mosquitto.log"),
    );
    wait_port(port, &proc);
    proc
}

/// A Docker registry (Debian `docker-registry`) with filesystem storage in `dir`.
pub fn registry(dir: &Path, port: u16) -> Proc {
    let storage = dir.join("registry-data");
    std::fs::create_dir_all(&storage).unwrap();
    let conf = dir.join("registry.yml");
    std::fs::write(
        &conf,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let proc = spawn(
        Command::new("docker-registry").arg("serve").arg(&conf),
        &dir.join("registry.log"),
    );
    wait_port(port, &proc);
    proc
}

fn wait_port(port: u16, proc: &Proc) {
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < DEADLINE,
            "process did not listen on {port}; log:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain MQTT client subscribed to some topics; publishes arrive on `rx`.
pub struct Subscriber {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    pub async fn connect(id: &str, port: u16, topics: &[String]) -> Subscriber {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20)
            .set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let subs = client.clone();
        let topics = topics.to_vec();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let subs = subs.clone();
                        let topics = topics.clone();
                        tokio::spawn(async move {
                            for t in topics {
                                let _ = subs.subscribe(t, QoS::AtLeastOnce).await;
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Subscriber { client, rx, task }
    }

    /// Next non-empty publish on `topic`.
    pub async fn next_on(&mut self, topic: &str) -> Publish {
        let deadline = tokio::time::sleep(DEADLINE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => panic!("no message on {topic}"),
                p = self.rx.recv() => {
                    let p = p.expect("subscriber stopped");
                    if p.topic == topic && !p.payload.is_empty() {
                        return p;
                    }
                }
            }
        }
    }
}

/// An agent-side verifier built the way agents are provisioned: `root.pub` and
/// `keyset.bin` from the hub's data directory.
pub fn verifier(dir: &Path, device: &DeviceId) -> Verifier {
    let d = DataDir::new(dir);
    let root: PublicKey = std::fs::read_to_string(d.root_pub())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let keyset: KeySet =
        SignedKeySet::verify(&std::fs::read(d.keyset()).unwrap(), &root, None).unwrap();
    Verifier::new(
        device.clone(),
        TrustState {
            root,
            keyset,
            last: None,
        },
    )
}

pub fn manifest_topic(id: &str) -> String {
    topics::manifest(&id.parse().unwrap())
}

pub fn pinned(repo: &str, byte: u8) -> String {
    format!("{repo}@sha256:{}", hex::encode([byte; 32]))
}

/// Write a deployment file and return its path.
pub fn deployment_file(dir: &Path, name: &str, selector: &str, apps: &[(&str, &str)]) -> PathBuf {
    let mut s = format!("name = \"{name}\"\nselector = {{ {selector} }}\n");
    for (app, image) in apps {
        s.push_str(&format!(
            "\n[[apps]]\nname = \"{app}\"\nimage = \"{image}\"\n"
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, s).unwrap();
    path
}

/// Read manifests on `topic`, verifying and committing each like an agent, until
/// one satisfies `pred` (an earlier retained manifest may arrive first: publishing
/// happens after the API call returns).
pub async fn manifest_where(
    sub: &mut Subscriber,
    topic: &str,
    v: &mut Verifier,
    pred: impl Fn(&outpost_protocol::Manifest) -> bool,
) -> (outpost_protocol::Manifest, Publish) {
    loop {
        let p = sub.next_on(topic).await;
        match v.verify(&p.payload) {
            Ok(outpost_protocol::Verdict::Accept(a)) => {
                v.commit(&a);
                if pred(&a.manifest) {
                    return (a.manifest, p);
                }
            }
            Ok(outpost_protocol::Verdict::Duplicate { .. }) => {}
            Err(e) => panic!("manifest on {topic} refused: {e}"),
        }
    }
}

/// A hub served inside the test process (`serve::start`) on a fresh data
/// directory, embedded broker and HTTP API on free ports, tags not resolved.
pub struct InProcessHub {
    pub tmp: tempfile::TempDir,
    pub dir: DataDir,
    pub running: outpost_hub::serve::Running,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub api: ApiClient,
}

impl InProcessHub {
    pub async fn start() -> InProcessHub {
        use outpost_hub::config::HubConfig;
        use outpost_hub::serve::{self, ServeOptions};
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        outpost_hub::signing::create_keys(&dir, 0).unwrap();
        let mut config = HubConfig {
            http_listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        };
        config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = serve::start(
            ServeOptions {
                data_dir: dir.clone(),
                config,
                resolver: std::sync::Arc::new(outpost_hub::resolve::PinnedOnly),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let token = std::fs::read_to_string(dir.token()).unwrap();
        let api = ApiClient::new(format!("http://{}", running.http_addr), token.trim());
        InProcessHub {
            tmp,
            dir,
            running,
            shutdown,
            api,
        }
    }
}
