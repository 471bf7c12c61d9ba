//! `outpost-hub serve` as a child process. It binds port 0 (HTTP API and
//! embedded broker) unless told otherwise and writes the addresses it got to
//! its ready file (`--ready-file`, see `hub/src/serve.rs`), which is how the
//! fixture knows it is up and where.
//!
//! Crates wrap this with their own client: `hub/tests` with the hub's API
//! client, the end-to-end crate with the `outpost-hub` command line.

use crate::process::{tail, ProcessGuard};
use crate::{eventually, STARTUP};
use anyhow::{anyhow, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The addresses a hub reported in its ready file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubAddrs {
    pub http: SocketAddr,
    /// The embedded broker; `None` when the hub uses an external one.
    pub mqtt: Option<SocketAddr>,
}

impl HubAddrs {
    /// Parse a ready file's JSON (`http_addr`, `mqtt_addr`).
    pub fn parse(json: &str) -> Result<HubAddrs> {
        let v: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("ready file {json:?}"))?;
        let addr = |key: &str| -> Result<Option<SocketAddr>> {
            match &v[key] {
                serde_json::Value::Null => Ok(None),
                serde_json::Value::String(s) => {
                    Ok(Some(s.parse().with_context(|| {
                        format!("{key} {s:?} in the ready file")
                    })?))
                }
                other => Err(anyhow!("{key} is {other} in the ready file")),
            }
        };
        Ok(HubAddrs {
            http: addr("http_addr")?.context("the ready file has no http_addr")?,
            mqtt: addr("mqtt_addr")?,
        })
    }

    /// `https://ADDR`, what `outpost-hub --url` wants (the API serves TLS;
    /// the CLI pins the certificate of its `--data-dir`).
    pub fn url(&self) -> String {
        format!("https://{}", self.http)
    }
}

/// How to run `outpost-hub serve`: port 0 for both listeners unless set.
#[derive(Debug, Clone)]
pub struct HubServe {
    bin: PathBuf,
    data_dir: PathBuf,
    http_listen: SocketAddr,
    mqtt_listen: SocketAddr,
    broker: Option<String>,
    rust_log: String,
    log: PathBuf,
}

/// A running hub.
#[derive(Debug)]
pub struct HubProcess {
    pub proc: ProcessGuard,
    pub addrs: HubAddrs,
}

impl HubServe {
    /// `bin --data-dir DATA_DIR serve`, logging to `DATA_DIR/hub.log`.
    pub fn new(bin: &Path, data_dir: &Path) -> HubServe {
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        HubServe {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            http_listen: any,
            mqtt_listen: any,
            broker: None,
            rust_log: "info".into(),
            log: data_dir.join("hub.log"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The HTTP API's listen address (default 127.0.0.1:0).
    pub fn http_listen(mut self, addr: SocketAddr) -> HubServe {
        self.http_listen = addr;
        self
    }

    /// The embedded broker's listen address (default 127.0.0.1:0).
    pub fn mqtt_listen(mut self, addr: SocketAddr) -> HubServe {
        self.mqtt_listen = addr;
        self
    }

    /// Use an external broker (`mqtt://…`, `mqtts://…`) instead.
    pub fn broker(mut self, url: &str) -> HubServe {
        self.broker = Some(url.to_string());
        self
    }

    /// `RUST_LOG` of the hub (default `info`).
    pub fn rust_log(mut self, filter: &str) -> HubServe {
        self.rust_log = filter.to_string();
        self
    }

    /// Where stdout and stderr go (emptied first).
    pub fn log(mut self, path: &Path) -> HubServe {
        self.log = path.to_path_buf();
        self
    }

    /// Start and wait for the ready file. An error with the log if the hub
    /// exits first (a bad config, an address in use).
    pub fn start(&self) -> Result<HubProcess> {
        let ready = self.data_dir.join("ready.json");
        // A file left by an earlier run would announce the old addresses.
        match std::fs::remove_file(&ready) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", ready.display()))
            }
            _ => {}
        }
        let mut cmd = Command::new(&self.bin);
        cmd.env("RUST_LOG", &self.rust_log)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("serve")
            .arg("--http-listen")
            .arg(self.http_listen.to_string())
            .arg("--mqtt-listen")
            .arg(self.mqtt_listen.to_string())
            .arg("--ready-file")
            .arg(&ready);
        if let Some(url) = &self.broker {
            cmd.arg("--broker").arg(url);
        }
        let mut proc = ProcessGuard::spawn("outpost-hub serve", &mut cmd, &self.log)?;
        let addrs = eventually(STARTUP, "the hub's ready file", || {
            if let Some(status) = proc.try_exit() {
                return Ok(Err(anyhow!(
                    "outpost-hub serve exited ({status}) before it was ready; log:\n{}",
                    tail(&proc.log_text(), 40)
                )));
            }
            match std::fs::read_to_string(&ready) {
                Ok(json) => Ok(HubAddrs::parse(&json)),
                Err(e) => Err(format!("{}: {e}", ready.display())),
            }
        })?;
        Ok(HubProcess { proc, addrs })
    }
}

/// GET `path` from the API of the hub of `data_dir` at `addr`, over TLS
/// trusting that directory's `api.crt` and with its `token`, without the
/// hub's client (for crates that drive only the binaries): the status code
/// and the body.
pub fn api_get(data_dir: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::io::{Read, Write};
    let cert_path = data_dir.join("api.crt");
    let cert = CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("the hub's certificate {}", cert_path.display()))?;
    let token = std::fs::read_to_string(data_dir.join("token"))
        .with_context(|| format!("the token in {}", data_dir.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .with_context(|| format!("GET {path} over TLS"))?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify, after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("reading the answer to GET {path}")),
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer to GET {path}: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in the answer to GET {path}: {head}"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ready_file() -> Result<()> {
        let a = HubAddrs::parse(r#"{"http_addr":"127.0.0.1:4000","mqtt_addr":"127.0.0.1:4001"}"#)?;
        assert_eq!(a.http, "127.0.0.1:4000".parse()?);
        assert_eq!(a.mqtt, Some("127.0.0.1:4001".parse()?));
        assert_eq!(a.url(), "https://127.0.0.1:4000");
        let external = HubAddrs::parse(r#"{"http_addr":"127.0.0.1:4000","mqtt_addr":null}"#)?;
        assert_eq!(external.mqtt, None);
        assert!(HubAddrs::parse(r#"{"mqtt_addr":null}"#).is_err());
        assert!(HubAddrs::parse(r#"{"http_addr":"nonsense"}"#).is_err());
        assert!(HubAddrs::parse("{").is_err());
        Ok(())
    }
}
