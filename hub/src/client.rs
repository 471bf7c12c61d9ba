//! The CLI's HTTP client for the hub API, over TLS by default.
//!
//! How the client trusts the hub ([`Trust`]): on the hub's own machine it
//! pins the exact certificate of the data directory (`api.crt`, or hub.toml's
//! `[api] tls_cert`); elsewhere it trusts a CA file (`--ca-file`,
//! `OUTPOST_HUB_CA`; the hub's `api.crt` copied over is one), or the system's
//! roots when neither is at hand.

use crate::config::{DataDir, HubConfig};
use outpost_oci::client::error_chain;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the hub at {url} ({trust}): {detail}")]
    Http {
        url: String,
        /// How the hub's certificate was checked, naming the file.
        trust: String,
        /// The whole cause chain (the TLS error sits under reqwest's
        /// "error sending request").
        detail: String,
    },
    #[error("hub refused {method} {path} ({status}): {message}{}", field.as_ref().map(|f| format!(" [field: {f}]")).unwrap_or_default())]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
        field: Option<String>,
    },
    #[error("unexpected answer from the hub for {path}: {detail}")]
    Decode { path: String, detail: String },
    #[error("cannot find the hub: {0}")]
    Locate(String),
    #[error("cannot reach the hub at {url}: {mismatch}")]
    Pin {
        url: String,
        mismatch: crate::tls::PinMismatch,
    },
    #[error("cannot set up TLS to the hub at {url}: {source}")]
    Tls {
        url: String,
        source: Box<crate::tls::TlsError>,
    },
}

/// How the client checks the hub's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Exactly this certificate (PEM; the first of the file): the hub's own,
    /// from its data directory.
    Pin(PathBuf),
    /// The CA certificates of this PEM file (names checked).
    CaFile(PathBuf),
    /// The system's trusted roots.
    System,
}

impl Trust {
    fn describe(&self) -> String {
        match self {
            Trust::Pin(p) => format!("certificate pinned from {}", p.display()),
            Trust::CaFile(p) => format!("CA file {}", p.display()),
            Trust::System => "system CA roots; --ca-file or OUTPOST_HUB_CA names another".into(),
        }
    }

    /// What trust the CLI uses for `url`: `ca_file` when given, else the
    /// data directory's certificate when it exists, else the system roots.
    pub fn choose(ca_file: Option<PathBuf>, dir: &DataDir) -> Trust {
        if let Some(ca) = ca_file {
            return Trust::CaFile(ca);
        }
        let cert = HubConfig::load(&dir.config())
            .map(|c| c.api.cert_path(dir))
            .unwrap_or_else(|_| dir.api_cert());
        if cert.exists() {
            Trust::Pin(cert)
        } else {
            Trust::System
        }
    }
}

/// Talks to one hub.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    trust: String,
    /// Set by the pinned-certificate check when the hub showed another one.
    mismatch: Option<crate::tls::MismatchSeen>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for `base` trusting the system's roots (or plain `http://`).
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        install_ring();
        ApiClient {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            trust: Trust::System.describe(),
            mismatch: None,
            http: reqwest::Client::new(),
        }
    }

    /// A client for `base` that checks the hub's certificate as `trust` says.
    pub fn with_trust(
        base: impl Into<String>,
        token: impl Into<String>,
        trust: Trust,
    ) -> Result<Self, ClientError> {
        install_ring();
        let base = base.into().trim_end_matches('/').to_string();
        let tls_err = |source| ClientError::Tls {
            url: base.clone(),
            source: Box::new(source),
        };
        let (config, mismatch) = match &trust {
            Trust::Pin(p) => {
                let (config, seen) = crate::tls::pinned_client(p).map_err(tls_err)?;
                (Some(config), Some(seen))
            }
            Trust::CaFile(p) => (Some(crate::tls::ca_client(p).map_err(tls_err)?), None),
            Trust::System => (None, None),
        };
        let mut builder = reqwest::Client::builder();
        if let Some(config) = config {
            builder = builder.tls_backend_preconfigured(config);
        }
        let http = builder.build().map_err(|e| ClientError::Http {
            url: base.clone(),
            trust: trust.describe(),
            detail: error_chain(&e),
        })?;
        let trust = if base.starts_with("http://") {
            "plain HTTP; a hub with TLS on wants https://".to_string()
        } else {
            trust.describe()
        };
        Ok(ApiClient {
            base,
            token: token.into(),
            trust,
            mismatch,
            http,
        })
    }

    /// A client for the hub of a data directory at `base` (e.g. the address a
    /// hub on port 0 reported), with its token, pinning its certificate.
    pub fn for_data_dir(base: impl Into<String>, dir: &DataDir) -> Result<Self, ClientError> {
        let token = std::fs::read_to_string(dir.token()).map_err(|e| {
            ClientError::Locate(format!("cannot read {}: {e}", dir.token().display()))
        })?;
        ApiClient::with_trust(base, token.trim(), Trust::choose(None, dir))
    }

    /// Address, token and certificate from a data directory (`hub.toml`,
    /// `token`, `api.crt`).
    pub fn from_data_dir(dir: &DataDir) -> Result<Self, ClientError> {
        let base = base_url(dir)?;
        ApiClient::for_data_dir(base, dir)
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let bytes = self.raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// A text answer, e.g. `GET /metrics`.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let bytes = self.raw::<()>(Method::GET, path, None).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    /// Send a request; the body of a successful answer, or the API's error.
    async fn raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<axum::body::Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(method, path, url, req).await
    }

    /// `PUT` raw bytes (a secret's value): the JSON answer.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self
            .http
            .request(Method::PUT, &url)
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(bytes);
        let bytes = self.send(Method::PUT, path, url, req).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            path: path.to_string(),
            detail: e.to_string(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        url: String,
        req: reqwest::RequestBuilder,
    ) -> Result<axum::body::Bytes, ClientError> {
        let http_err = |e: reqwest::Error| {
            let pinned = self
                .mismatch
                .as_ref()
                .and_then(|m| m.lock().ok().and_then(|mut m| m.take()));
            match pinned {
                Some(mismatch) => ClientError::Pin {
                    url: url.clone(),
                    mismatch,
                },
                None => ClientError::Http {
                    url: url.clone(),
                    trust: self.trust.clone(),
                    detail: error_chain(&e),
                },
            }
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(api_error(method, path, status, &bytes));
        }
        Ok(bytes)
    }

    /// `GET path` and hand the body to `sink` piece by piece as it arrives
    /// (a streamed answer such as an app's logs).
    pub async fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let url = format!("{}{path}", self.base);
        let http_err = |e: reqwest::Error| ClientError::Http {
            url: url.clone(),
            trust: self.trust.clone(),
            detail: error_chain(&e),
        };
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(http_err)?;
            return Err(api_error(Method::GET, path, status, &bytes));
        }
        while let Some(piece) = resp.chunk().await.map_err(http_err)? {
            sink(&piece).map_err(|e| ClientError::Decode {
                path: path.to_string(),
                detail: format!("writing the answer: {e}"),
            })?;
        }
        Ok(())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }
}

/// The API's error answer (`{"error", "field"}`, else the raw body) as a
/// [`ClientError::Api`].
fn api_error(method: Method, path: &str, status: StatusCode, bytes: &[u8]) -> ClientError {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    ClientError::Api {
        method,
        path: path.to_string(),
        status,
        message: v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).to_string()),
        field: v["field"].as_str().map(str::to_string),
    }
}

/// `https://ADDR` (or `http://` when hub.toml turns TLS off) from the data
/// directory's hub.toml; an unspecified listen address means this machine.
pub fn base_url(dir: &DataDir) -> Result<String, ClientError> {
    let config = HubConfig::load(&dir.config()).map_err(|e| ClientError::Locate(e.to_string()))?;
    let mut addr = config.http_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("{}://{addr}", config.api.scheme()))
}

/// reqwest is built without a default TLS provider (the OCI client shares it
/// and must not pull aws-lc-rs); the system-roots client needs one installed.
/// Err = already installed.
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
