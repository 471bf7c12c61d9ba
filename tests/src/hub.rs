//! The hub as the scenarios drive it: `outpost-hub init` in a temp data dir,
//! `serve` through `outpost-test-support` (HTTP API on port 0, found through the
//! ready file), and the operator's command line (`device add`, `apply`,
//! `status`, `events`, `stats`) against it.
//!
//! The embedded broker keeps its address across [`Hub::stop`] / [`Hub::serve`],
//! as a real hub's does: devices are provisioned with it. So it listens on a
//! leased port ([`PortLease`]) rather than port 0, and a restart binds it again
//! with no window for anyone else to take it.

use crate::apps::AppDef;
use crate::bins::bins;
use crate::registry::{set_registry_section, Registry};
use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use outpost_test_support::hub::{HubProcess, HubServe};
use outpost_test_support::process::{run, tail};
use outpost_test_support::PortLease;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A hub in a temp data dir, with its embedded broker or an external one.
#[derive(Debug)]
pub struct Hub {
    pub dir: tempfile::TempDir,
    /// The port of the broker the hub uses: its embedded one (leased, kept
    /// across restarts) or the external one's.
    pub mqtt_port: u16,
    mqtt_lease: Option<PortLease>,
    external: Option<String>,
    /// Where the HTTP API listens (this run's, or the last run's when stopped).
    http: Option<SocketAddr>,
    proc: Option<HubProcess>,
}

impl Hub {
    pub fn start(registry: &Registry) -> Result<Hub> {
        Hub::start_inner(registry, None)
    }

    /// `external`: `(mqtts://host:port, CA file)` of a broker the hub connects to
    /// instead of starting its embedded one.
    pub fn start_with(registry: &Registry, external: Option<(&str, &Path)>) -> Result<Hub> {
        Hub::start_inner(registry, external.map(|(url, ca)| (url, Some(ca))))
    }

    /// A hub that uses the plain `mqtt://` broker at `url` (e.g.
    /// [`crate::Mosquitto`]) instead of its embedded one.
    pub fn start_with_broker(registry: &Registry, url: &str) -> Result<Hub> {
        Hub::start_inner(registry, Some((url, None)))
    }

    fn start_inner(registry: &Registry, external: Option<(&str, Option<&Path>)>) -> Result<Hub> {
        let dir = tempfile::tempdir()?;
        let mut init = Command::new(&bins().hub);
        init.arg("--data-dir").arg(dir.path()).arg("init");
        if let Some((url, _)) = external {
            init.args(["--broker", url]);
        }
        run(&mut init)?;
        let cfg_path = dir.path().join("hub.toml");
        if let Some((_, Some(ca))) = external {
            let cfg = std::fs::read_to_string(&cfg_path)?.replace(
                "[mqtt]\n",
                &format!("[mqtt]\nca_file = \"{}\"\n", ca.display()),
            );
            std::fs::write(&cfg_path, cfg)?;
        }
        set_registry_section(&cfg_path, registry.client_settings(true))?;
        let (mqtt_lease, mqtt_port) = match external {
            None => {
                let lease = PortLease::new()?;
                let port = lease.port();
                (Some(lease), port)
            }
            Some((url, _)) => {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
                    .with_context(|| format!("no port in the broker URL {url}"))?;
                (None, port)
            }
        };
        let mut hub = Hub {
            dir,
            mqtt_port,
            mqtt_lease,
            external: external.map(|(url, _)| url.to_string()),
            http: None,
            proc: None,
        };
        hub.serve()?;
        Ok(hub)
    }

    /// A hub whose broker is a Mosquitto running the configuration
    /// `outpost-hub broker-config mosquitto` wrote (on a leased loopback port
    /// instead of 8883 of every address), with the `hub.toml` lines it
    /// printed and `on_revoke` sending that Mosquitto SIGHUP. Returns the
    /// Mosquitto (keep it alive) and its CA file for agents.
    pub fn start_with_locked_mosquitto(
        registry: &Registry,
    ) -> Result<(
        Hub,
        outpost_test_support::mosquitto::Mosquitto,
        std::path::PathBuf,
    )> {
        Hub::start_with_locked_mosquitto_acl(registry, str::to_string)
    }

    /// [`Hub::start_with_locked_mosquitto`] with the generated ACL file
    /// changed by `edit` before Mosquitto reads it: a broker whose operator
    /// (or intruder) withholds a topic.
    pub fn start_with_locked_mosquitto_acl(
        registry: &Registry,
        edit: impl Fn(&str) -> String,
    ) -> Result<(
        Hub,
        outpost_test_support::mosquitto::Mosquitto,
        std::path::PathBuf,
    )> {
        use outpost_test_support::mosquitto::{Mosquitto, MosquittoConfig, LEASED_PORT};
        let dir = tempfile::tempdir()?;
        run(Command::new(&bins().hub)
            .arg("--data-dir")
            .arg(dir.path())
            .arg("init"))?;
        let out = dir.path().join("mosquitto");
        run(Command::new(&bins().hub)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["broker-config", "mosquitto", "--host", "127.0.0.1", "--out"])
            .arg(&out))?;
        let acl = std::fs::read_to_string(out.join("acl"))?;
        std::fs::write(out.join("acl"), edit(&acl))?;
        let conf = std::fs::read_to_string(out.join("mosquitto.conf"))?;
        ensure!(
            conf.contains("\nlistener 8883\n"),
            "unexpected listener in\n{conf}"
        );
        let conf = conf.replace(
            "\nlistener 8883\n",
            &format!("\nlistener {LEASED_PORT} 127.0.0.1\n"),
        );
        let mosquitto = Mosquitto::start_with(MosquittoConfig {
            custom: Some(conf),
            ..MosquittoConfig::default()
        })?;
        let port = mosquitto.tls_port().context("the TLS listener")?;
        let pid = mosquitto.pid().context("Mosquitto's pid")?;
        let ca = dir.path().join("broker-ca");
        let cfg_path = dir.path().join("hub.toml");
        let cfg = std::fs::read_to_string(&cfg_path)?.replacen(
            "[mqtt]\n",
            &format!(
                "[mqtt]\nca_file = \"{}\"\ncrl_file = \"{}\"\non_revoke = [\"kill\", \"-HUP\", \"{pid}\"]\n",
                out.join("ca.pem").display(),
                out.join("crl.pem").display()
            ),
            1,
        ) + &format!(
            "\n[mqtt.client_auth]\ningest_cert = \"{c}/hub-ingest.pem\"\ningest_key = \"{c}/hub-ingest.key\"\n\
             publish_cert = \"{c}/hub-publish.pem\"\npublish_key = \"{c}/hub-publish.key\"\n",
            c = ca.display()
        );
        std::fs::write(&cfg_path, cfg)?;
        set_registry_section(&cfg_path, registry.client_settings(true))?;
        let mut hub = Hub {
            dir,
            mqtt_port: port,
            mqtt_lease: None,
            external: Some(format!("mqtts://127.0.0.1:{port}")),
            http: None,
            proc: None,
        };
        hub.serve()?;
        Ok((hub, mosquitto, out.join("ca.pem")))
    }

    /// Start (again) `outpost-hub serve`; returns once it reported its
    /// addresses, or with its log if it exited first.
    pub fn serve(&mut self) -> Result<()> {
        let mut serve = HubServe::new(&bins().hub, self.dir.path())
            .rust_log("info")
            .log(&self.dir.path().join("hub.log"));
        if let Some(lease) = &self.mqtt_lease {
            serve = serve.mqtt_listen(lease.addr());
        }
        if let Some(url) = &self.external {
            serve = serve.broker(url);
        }
        let proc = serve.start()?;
        let want = self.mqtt_lease.as_ref().map(PortLease::addr);
        ensure!(
            proc.addrs.mqtt == want,
            "the hub reports its broker at {:?}, not {want:?}",
            proc.addrs.mqtt
        );
        self.http = Some(proc.addrs.http);
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGTERM and wait for the hub to end.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.proc.stop(Signal::SIGTERM, Duration::from_secs(30));
        }
    }

    /// SIGKILL the hub (a crash or a power cut of the hub's machine): nothing
    /// is flushed or closed; what survives is what redb committed.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.proc.stop(Signal::SIGKILL, Duration::from_secs(30));
        }
    }

    /// `outpost-hub apply -f` of a deployment file written from `toml`.
    pub fn apply_toml(&self, file_name: &str, toml: &str) -> Result<String> {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, toml)?;
        self.cli(&["apply", "-f", &path.display().to_string()])
    }

    /// `outpost-hub rollout status DEPLOYMENT --json`.
    pub fn rollout(&self, deployment: &str) -> Result<Value> {
        let out = self.cli(&["rollout", "status", deployment, "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("rollout status output: {out}"))
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt_port))
    }

    /// `outpost-hub --data-dir … [--url …] ARGS…`; its standard output.
    /// `outpost-hub ARGS` against this hub, not waited for (e.g. `logs
    /// --follow`); stdout piped.
    pub fn spawn_cli(&self, args: &[&str]) -> Result<std::process::Child> {
        let mut cmd = Command::new(&bins().hub);
        cmd.arg("--data-dir").arg(self.dir.path());
        if let Some(http) = self.http {
            cmd.arg("--url").arg(format!("https://{http}"));
        }
        Ok(cmd
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&bins().hub);
        cmd.arg("--data-dir").arg(self.dir.path());
        // hub.toml says port 0: the address is the one the hub reported.
        if let Some(http) = self.http {
            cmd.arg("--url").arg(format!("https://{http}"));
        }
        let out = run(cmd.args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Hub::add_device`], writing the device's broker certificate to `cert_out`.
    pub fn add_device_with_cert(&self, id: &str, public_key: &str, cert_out: &Path) -> Result<()> {
        let out = cert_out.to_str().context("a UTF-8 path")?;
        self.add_device_with(id, public_key, &["--cert-out", out])
    }

    /// [`Hub::add_device`] with the device's encryption key (`--encryption-key`),
    /// so secrets can be sealed to it.
    pub fn add_device_sealed(
        &self,
        id: &str,
        public_key: &str,
        encryption_key: &str,
    ) -> Result<()> {
        self.add_device_with(id, public_key, &["--encryption-key", encryption_key])
    }

    /// `outpost-hub secret set NAME --from-file FILE` with `value`; the CLI's
    /// JSON answer.
    pub fn set_secret(&self, name: &str, value: &[u8]) -> Result<Value> {
        self.set_secret_at(name, value, &[])
    }

    /// [`Hub::set_secret`] at a scope (`["--device", id]`, ...).
    pub fn set_secret_at(&self, name: &str, value: &[u8], scope: &[&str]) -> Result<Value> {
        let path = self.dir.path().join(format!("secret-input-{name}"));
        std::fs::write(&path, value)?;
        let file = path.display().to_string();
        let mut args = vec!["secret", "set", name, "--from-file", &file, "--json"];
        args.extend_from_slice(scope);
        let out = self.cli(&args);
        // The operator's copy goes once the hub has it.
        let _ = std::fs::remove_file(&path);
        let out = out?;
        serde_json::from_str(&out).with_context(|| format!("secret set output: {out}"))
    }

    pub fn add_device(&self, id: &str, public_key: &str) -> Result<()> {
        self.add_device_with(id, public_key, &[])
    }

    /// `device add ID --public-key KEY --label e2e=ID` and `extra` flags.
    fn add_device_with(&self, id: &str, public_key: &str, extra: &[&str]) -> Result<()> {
        let label = format!("e2e={id}");
        let mut args = vec![
            "device",
            "add",
            id,
            "--public-key",
            public_key,
            "--label",
            &label,
        ];
        args.extend_from_slice(extra);
        self.cli(&args).map(|_| ())
    }

    /// Apply a deployment of the sample image to exactly one device. Its
    /// releases commit after 2 s of stability (tests wait for the commit
    /// before they reboot: a trial cut short rolls back) and roll back after
    /// 60 s at the latest.
    pub fn deploy(&self, device: &str, apps: &[AppDef]) -> Result<()> {
        self.deploy_with(device, apps, "stable_secs = 2\ntrial_deadline_secs = 60\n")
    }

    /// [`Hub::deploy`] with its own `[release]` table body.
    pub fn deploy_with(&self, device: &str, apps: &[AppDef], release: &str) -> Result<()> {
        let mut toml = format!(
            "name = \"{device}\"\nselector = {{ e2e = \"{device}\" }}\n[release]\n{release}"
        );
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

    /// Events the hub received: (seq, kind name, the event as JSON), from
    /// `outpost-hub events --json` (the human form is for people).
    pub fn events(&self, id: &str) -> Result<Vec<(u64, String, String)>> {
        let out = self.cli(&["events", id, "--json"])?;
        let records: Vec<Value> =
            serde_json::from_str(&out).with_context(|| format!("hub events output: {out}"))?;
        Ok(records
            .iter()
            .filter_map(|r| {
                let e = &r["event"];
                let seq = e["seq"].as_u64()?;
                let kind = match &e["kind"] {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o.keys().next()?.clone(),
                    _ => return None,
                };
                Some((seq, kind, e.to_string()))
            })
            .collect())
    }

    /// The hub's `/v1/stats` (`outpost-hub stats`): ingest counters and more.
    pub fn stats(&self) -> Result<Value> {
        let out = self.cli(&["stats", "--json"])?;
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

    /// The log of the current (or last) run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// Replace hub.toml's `[registry]` section (takes effect at the next `serve`).
    pub fn set_registry(&self, section: toml::Table) -> Result<()> {
        set_registry_section(&self.dir.path().join("hub.toml"), section)
    }

    /// Set `[freshness]` in hub.toml (takes effect at the next `serve`).
    pub fn set_freshness(&self, heartbeat_secs: u64, manifest_valid_secs: u64) -> Result<()> {
        let path = self.dir.path().join("hub.toml");
        let mut doc: toml::Table = std::fs::read_to_string(&path)?.parse()?;
        let mut section = toml::Table::new();
        section.insert(
            "heartbeat_secs".into(),
            i64::try_from(heartbeat_secs)?.into(),
        );
        section.insert(
            "manifest_valid_secs".into(),
            i64::try_from(manifest_valid_secs)?.into(),
        );
        doc.insert("freshness".into(), section.into());
        std::fs::write(&path, toml::to_string(&doc)?)?;
        Ok(())
    }

    /// GET an HTTP API path with the hub's token, over TLS trusting the
    /// hub's certificate; the raw response body.
    pub fn api_get(&self, path: &str) -> Result<String> {
        let http = self.http.context("the hub has not been started")?;
        let (status, body) = outpost_test_support::hub::api_get(self.dir.path(), http, path)?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
        // Captured by the test harness; shown when the test fails.
        eprintln!("---- hub log (tail) ----\n{}", tail(&self.log(), 40));
    }
}
