//! Shared fixtures for the hub's integration tests: a hub process (on port 0,
//! found through its ready file), a plain MQTT subscriber, provisioning as an
//! agent does, deployment files, and an in-process hub. Processes, polling,
//! Mosquitto and the registry come from `outpost-test-support`; every process
//! is killed by a drop guard, so a failing test leaves nothing running.
#![allow(dead_code, clippy::unwrap_used)]

use outpost_hub::client::ApiClient;
use outpost_hub::config::DataDir;
use outpost_protocol::{topics, DeviceId, KeySet, PublicKey, SignedKeySet, TrustState, Verifier};
use outpost_test_support::hub::{HubAddrs, HubServe};
use outpost_test_support::ProcessGuard;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_outpost-hub");

/// Upper bound for waiting on something asynchronous; a hang guard, not a
/// performance assertion.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Run a local command (`keys …`) on data directory `dir`, with `--json`;
/// its answer, after asserting it succeeded.
pub fn local_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
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
    pub proc: ProcessGuard,
    pub dir: PathBuf,
    /// What the hub reported in its ready file.
    pub addrs: HubAddrs,
    pub api: ApiClient,
}

impl HubProc {
    /// Serve `dir` on port 0 with the embedded broker (or `broker` when given);
    /// returns once the hub reported its addresses.
    pub async fn start(dir: &Path, broker: Option<&str>) -> HubProc {
        let serve = HubServe::new(Path::new(BIN), dir);
        HubProc::start_with(match broker {
            Some(b) => serve.broker(b),
            None => serve,
        })
        .await
    }

    /// Serve as `serve` says (debug logs, a log file per start in the data dir).
    pub async fn start_with(serve: HubServe) -> HubProc {
        let dir = serve.data_dir().to_path_buf();
        let starts = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("serve-"))
            .count();
        let serve = serve
            .rust_log("info,outpost_hub=debug")
            .log(&dir.join(format!("serve-{}.log", starts + 1)));
        let hub = tokio::task::spawn_blocking(move || serve.start())
            .await
            .unwrap()
            .unwrap();
        let api = ApiClient::for_data_dir(hub.addrs.url(), &DataDir::new(&dir)).unwrap();
        HubProc {
            proc: hub.proc,
            dir,
            addrs: hub.addrs,
            api,
        }
    }

    /// The embedded broker's port.
    pub fn mqtt_port(&self) -> u16 {
        self.addrs
            .mqtt
            .expect("this hub runs no embedded broker")
            .port()
    }

    /// Run a CLI command against this hub; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "outpost-hub {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a CLI command expected to fail; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            !out.status.success(),
            "outpost-hub {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Run a CLI command against this hub, whatever its outcome.
    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--url")
            .arg(self.addrs.url())
            .args(args)
            .output()
            .unwrap()
    }

    /// Stop hard (SIGKILL): the restart test relies on commits being durable.
    pub fn kill(self) {
        drop(self.proc);
    }
}

/// Connect with `o`; the CONNACK's verdict (`Ok` = accepted, `Err` with the
/// refusal or the network error) and the live client.
pub async fn mqtt_connect(
    o: MqttOptions,
) -> Result<(AsyncClient, rumqttc::EventLoop), rumqttc::ConnectionError> {
    let (c, mut el) = AsyncClient::new(o, 16);
    let verdict = tokio::time::timeout(DEADLINE, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no CONNACK and no error");
    verdict.map(|()| (c, el))
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
    /// An anonymous client (brokers that allow them: the tests' Mosquitto).
    pub async fn connect(id: &str, port: u16, topics: &[String]) -> Subscriber {
        Subscriber::start(MqttOptions::new(id, "127.0.0.1", port), topics)
    }

    /// A client logged in as device `id` with its key, as an agent logs in
    /// (`outpost_protocol::login`); the embedded broker admits nothing else.
    pub async fn device(
        id: &DeviceId,
        key: &outpost_protocol::SigningKey,
        port: u16,
        topics: &[String],
    ) -> Subscriber {
        let mut o = MqttOptions::new(id.as_str(), "127.0.0.1", port);
        o.set_credentials(
            id.as_str(),
            outpost_protocol::login::device_password(key, id),
        );
        Subscriber::start(o, topics)
    }

    fn start(mut o: MqttOptions, topics: &[String]) -> Subscriber {
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

/// A device's status report with what a test rarely cares about filled in:
/// boot 1, uptime `seq`, no apps, events, rejections, release or heartbeat.
pub fn status_report(
    id: &DeviceId,
    seq: u64,
    applied: Option<(u64, u64)>,
) -> outpost_protocol::StatusReport {
    outpost_protocol::StatusReport {
        applied,
        agent_version: "test".into(),
        uptime_secs: seq,
        ..outpost_protocol::StatusReport::blank(id.clone(), 1, seq)
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
        SignedKeySet::verify(&std::fs::read(d.keyset()).unwrap(), &root, None, 0).unwrap();
    Verifier::new(
        device.clone(),
        TrustState {
            root,
            root_version: keyset.root_version,
            keyset,
            last: None,
            time_floor: 0,
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
        match v.verify(&p.payload, outpost_hub::clock::now_secs()) {
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
        outpost_hub::tls::create_self_signed(&dir, outpost_hub::tls::default_names(None)).unwrap();
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
        let api = ApiClient::for_data_dir(format!("https://{}", running.http_addr), &dir).unwrap();
        InProcessHub {
            tmp,
            dir,
            running,
            shutdown,
            api,
        }
    }
}

/// A device played by the test: registered through the CLI, logged in to the
/// embedded broker as itself, publishing device-signed statuses and events
/// as an agent does.
pub struct FakeDevice {
    pub id: outpost_protocol::DeviceId,
    pub key: outpost_protocol::SigningKey,
    pub seq: u64,
    pub link: Subscriber,
}

impl FakeDevice {
    /// Register `id` with `labels` (`k=v`) and connect it.
    pub async fn register(hub: &HubProc, id: &str, labels: &[&str]) -> FakeDevice {
        let key = outpost_protocol::SigningKey::generate().unwrap();
        let pk = key.public_key().to_string();
        let mut args = vec!["device", "add", id, "--public-key", pk.as_str()];
        for l in labels {
            args.extend(["-l", l]);
        }
        hub.cli(&args);
        let id: DeviceId = id.parse().unwrap();
        let link = Subscriber::device(&id, &key, hub.mqtt_port(), &[]).await;
        FakeDevice {
            id,
            key,
            seq: 0,
            link,
        }
    }

    /// Publish a signed status: `applied`, these apps, this release.
    pub async fn report(
        &mut self,
        applied: (u64, u64),
        apps: Vec<outpost_protocol::AppStatus>,
        release: Option<outpost_protocol::ReleaseStatus>,
    ) {
        self.seq += 1;
        let st = outpost_protocol::StatusReport {
            uptime_secs: 200,
            apps,
            release,
            ..status_report(&self.id, self.seq, Some(applied))
        };
        self.link
            .client
            .publish(
                topics::status(&self.id),
                QoS::AtLeastOnce,
                false,
                st.seal(&self.key),
            )
            .await
            .unwrap();
    }

    /// Publish signed event `seq`.
    pub async fn event(&self, seq: u64, kind: outpost_protocol::EventKind) {
        let e = outpost_protocol::Event {
            device_id: self.id.clone(),
            seq,
            at: 5,
            dropped_before: 0,
            kind,
        };
        self.link
            .client
            .publish(
                topics::events(&self.id),
                QoS::AtLeastOnce,
                false,
                e.seal(&self.key),
            )
            .await
            .unwrap();
    }
}

/// An app as an agent reports it.
pub fn app(name: &str, state: outpost_protocol::AppState) -> outpost_protocol::AppStatus {
    outpost_protocol::AppStatus {
        name: name.into(),
        state,
        restarts: 0,
        last_error: None,
        image_digest: None,
        ready: None,
    }
}

/// The desired `(epoch, generation)` of device `id`, as the API says.
pub async fn desired_of(hub: &HubProc, id: &str) -> (u64, u64) {
    let d: outpost_hub::api::DeviceDetail =
        hub.api.get(&format!("/v1/devices/{id}")).await.unwrap();
    let g = d.summary.desired.unwrap();
    (g.epoch, g.generation)
}

/// A deployment `web` of sites `a` with image byte `byte`, and (`rollout`)
/// a canary of 1 then everyone.
pub fn web_file(dir: &Path, byte: u8, rollout: bool) -> String {
    let mut s = format!(
        "name = \"web\"\nselector = {{ site = \"a\" }}\n\n[[apps]]\nname = \"web\"\nimage = \"{}\"\n",
        pinned("reg/web", byte)
    );
    if rollout {
        s.push_str("\n[rollout]\ncanary = 1\nwaves = [\"100%\"]\n");
    }
    let path = dir.join(format!("web-{byte}-{}.toml", u8::from(rollout)));
    std::fs::write(&path, s).unwrap();
    path.to_str().unwrap().to_string()
}
