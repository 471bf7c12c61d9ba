//! The agent as the scenarios drive it: `outpost-agent init` against a hub,
//! `run` under a process guard (optionally in a network namespace of its own),
//! its status and config files, and the ways a device goes down: SIGTERM,
//! SIGKILL, a power cut ([`crate::reboot`]). Its containers are removed on drop.

use crate::bins::bins;
use crate::hub::Hub;
use crate::netns;
use crate::reboot;
use crate::registry::{set_registry_section, Registry};
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use outpost_test_support::agent::{run_agent, AgentInit};
use outpost_test_support::process::{run, tail};
use outpost_test_support::ProcessGuard;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// How long a stopped agent may take to end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// An agent with its own data and run dirs; containers removed on drop.
#[derive(Debug)]
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub device_id: String,
    pub public_key: String,
    proc: Option<ProcessGuard>,
    boots: Mutex<u32>,
    /// How it was provisioned, to run `init` again ([`Agent::provision_broker_cert`]).
    init: AgentInit,
}

impl Agent {
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// The device's X25519 encryption key (hex), derived from the key file
    /// `init` made, as `init` prints it.
    pub fn encryption_key(&self) -> Result<String> {
        let path = self.dir.path().join("data").join("encryption.key");
        let key = outpost_protocol::DecryptionKey::from_bytes(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("encryption key {}: {e}", path.display()))?;
        Ok(key.public_key().to_string())
    }

    /// The broker login this agent uses, made from its key file as the agent
    /// makes it (`outpost_protocol::login`).
    pub fn broker_login(&self) -> Result<crate::mqtt::Login> {
        let key_file = self.dir.path().join("data").join("device.key");
        let key = outpost_protocol::SigningKey::from_pkcs8(&std::fs::read(&key_file)?)
            .map_err(|e| anyhow::anyhow!("device key {}: {e}", key_file.display()))?;
        let id: outpost_protocol::DeviceId = self.device_id.parse()?;
        Ok(crate::mqtt::Login {
            client_id: self.device_id.clone(),
            password: outpost_protocol::login::device_password(&key, &id),
        })
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
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        match &registry.private {
            Some(p) => {
                extra.push("--registry-ca-file".into());
                extra.push(p.ca_file.clone().into());
                extra.push("--registry-auth".into());
                extra.push(
                    format!(
                        "{}={}:{}",
                        registry.host(),
                        p.username,
                        p.password_file.display()
                    )
                    .into(),
                );
            }
            None => {
                extra.push("--registry-insecure".into());
                extra.push(registry.host().into());
            }
        }
        let init = AgentInit {
            bin: bins().agent.clone(),
            config: dir.path().join("agent.toml"),
            device_id: device_id.into(),
            broker: broker.into(),
            root_key: hub.dir.path().join("root.pub"),
            keyset: hub.dir.path().join("keyset.bin"),
            data_dir: dir.path().join("data"),
            run_dir: Some(dir.path().join("run")),
            ca_file: ca_file.map(Path::to_path_buf),
            extra,
        };
        let public_key = init.run()?;
        // The run dir is a real tmpfs, as `/run` on a device: a power cut
        // (`Agent::power_cut`) loses it.
        reboot::mount_tmpfs(&dir.path().join("run"))?;
        let agent = Agent {
            dir,
            device_id: device_id.into(),
            public_key,
            proc: None,
            boots: Mutex::new(0),
            init,
        };
        // Agents of parallel tests (and several agents of one test) share
        // this host, and containers are named by app and spec: a cgroup
        // parent each keeps one agent's orphan sweep off another's apps.
        agent.set_setting("cgroup_parent", &format!("\"{}\"", agent.cgroup_parent()))?;
        Ok(agent)
    }

    /// `outpost-agent init` again, as an operator provisions a device for a
    /// Mosquitto that knows devices by certificate: the same arguments plus
    /// `--broker-cert CERT` (issued by the hub for the key the first `init`
    /// made, which this one keeps).
    pub fn provision_broker_cert(&self, cert: &Path) -> Result<()> {
        let mut init = self.init.clone();
        init.extra.push("--broker-cert".into());
        init.extra.push(cert.into());
        let key = init.run()?;
        anyhow::ensure!(key == self.public_key, "init changed the device key");
        self.set_setting("cgroup_parent", &format!("\"{}\"", self.cgroup_parent()))
    }

    /// The cgroup holding this agent's apps (`cgroup_parent` in its config).
    pub fn cgroup_parent(&self) -> String {
        format!("/outpost-e2e/{}", self.device_id)
    }

    pub fn start(&mut self) -> Result<()> {
        self.start_with(&[])
    }

    /// Start inside a fresh network namespace with only loopback (no route, no
    /// DNS): a device booting with its network down. Host-network apps started
    /// by this agent live in that namespace too: reach them with
    /// [`Agent::http_get_in_netns`].
    pub fn start_without_network(&mut self) -> Result<()> {
        self.start_with(netns::OFFLINE)
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
            p.stop(Signal::SIGKILL, STOP_GRACE);
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
        netns::http_get_in_netns(self.pid()?, port, path)
    }

    fn start_with(&mut self, wrapper: &[&str]) -> Result<()> {
        let n = {
            let mut b = self.boots.lock().unwrap_or_else(|p| p.into_inner());
            *b += 1;
            *b
        };
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let proc = run_agent(
            &bins().agent,
            &self.config(),
            "info,outpost_edge_agent=debug",
            wrapper,
            &log,
        )?;
        self.proc = Some(proc);
        Ok(())
    }

    /// SIGTERM: graceful, apps keep running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGTERM, STOP_GRACE);
        }
    }

    /// SIGKILL: as if the agent crashed.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Signal::SIGKILL, STOP_GRACE);
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(ProcessGuard::is_running)
    }

    /// Pid of the running agent process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(ProcessGuard::pid)
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
        if let Some(pid) = self.pid() {
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

    /// The generation the agent last committed (its release passed its trial).
    pub fn committed_generation(&self) -> Option<u64> {
        let st = self.status().ok()?;
        st["release"]["committed"][1].as_u64()
    }

    /// The release phase in words as the status file has it (`"Committed"`,
    /// `"Trial"`, `"Downloading"`, or the name of a phase with fields such as
    /// `"RolledBack"`), with its fields when it has some.
    pub fn release_phase(&self) -> Option<(String, Value)> {
        let st = self.status().ok()?;
        match &st["release"]["phase"] {
            Value::String(s) => Some((s.clone(), Value::Null)),
            Value::Object(o) => o.iter().next().map(|(k, v)| (k.clone(), v.clone())),
            _ => None,
        }
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
        // The (now empty) cgroup parent, on a cgroup v2 host; best effort.
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup{}", self.cgroup_parent()));
        // Captured by the test harness; shown when the test fails.
        eprintln!(
            "---- agent {} logs (tail) ----\n{}",
            self.device_id,
            tail(&self.logs(), 80)
        );
    }
}
