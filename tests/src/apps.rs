//! The apps the scenarios deploy: the sample image with a port of its own, and
//! plain HTTP to reach it.
//!
//! An app's port is written into its manifest (the sample listens on `PORT`,
//! the health check probes it) and kept by every version and restart of the
//! app, so it is a [`PortLease`], not port 0: reserved below the kernel's
//! ephemeral range for as long as any copy of the [`AppDef`] lives.

use outpost_test_support::PortLease;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

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
    /// More `key = value` lines of the app's table (e.g. `update = "hand-over"`).
    pub extra_toml: Vec<String>,
    /// Secrets mounted at `/run/secrets/NAME` (read back with `/secret?name=NAME`).
    pub secrets: Vec<String>,
    /// Holds `port` for this app (and its clones, e.g. a next version).
    _lease: Arc<PortLease>,
}

impl AppDef {
    pub fn hello(name: &str, image: &str) -> AppDef {
        let lease = PortLease::new().expect("leasing a port for an app");
        AppDef {
            name: name.into(),
            image: image.into(),
            port: lease.port(),
            version: "1".into(),
            health: false,
            extra_env: Vec::new(),
            extra_toml: Vec::new(),
            secrets: Vec::new(),
            _lease: Arc::new(lease),
        }
    }

    /// The app's `[[apps]]` table of a deployment file.
    pub fn to_toml(&self) -> String {
        let extra: String = self
            .extra_env
            .iter()
            .map(|(k, v)| format!(", {k} = \"{v}\""))
            .collect();
        let mut s = format!(
            "\n[[apps]]\nname = \"{}\"\nimage = \"{}\"\nenv = {{ PORT = \"{}\", HELLO_VERSION = \"{}\"{extra} }}\nvolumes = [{{ name = \"data\", path = \"/data\" }}]\n",
            self.name, self.image, self.port, self.version
        );
        if !self.secrets.is_empty() {
            let list: Vec<String> = self
                .secrets
                .iter()
                .map(|n| format!("{{ name = \"{n}\", path = \"/run/secrets/{n}\" }}"))
                .collect();
            s.push_str(&format!("secrets = [{}]\n", list.join(", ")));
        }
        for line in &self.extra_toml {
            s.push_str(line);
            s.push('\n');
        }
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
