//! The CLI's HTTP client for the hub API.

use crate::config::{DataDir, HubConfig};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the hub at {url}: {source}")]
    Http { url: String, source: reqwest::Error },
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
}

/// `user@host` of whoever runs the CLI, for the audit log (informational).
fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// Talks to one hub.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        // reqwest is built without a default TLS provider (the OCI client shares it
        // and must not pull aws-lc-rs); install ring. Err = already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ApiClient {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// Address and token from a data directory (`hub.toml`, `token`).
    pub fn from_data_dir(dir: &DataDir) -> Result<Self, ClientError> {
        let config =
            HubConfig::load(&dir.config()).map_err(|e| ClientError::Locate(e.to_string()))?;
        let token = std::fs::read_to_string(dir.token()).map_err(|e| {
            ClientError::Locate(format!("cannot read {}: {e}", dir.token().display()))
        })?;
        let mut addr = config.http_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(ApiClient::new(format!("http://{addr}"), token.trim()))
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .header(crate::api::ACTOR_HEADER, actor());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Http {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Http { url, source })?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(ClientError::Api {
                method,
                path: path.to_string(),
                status,
                message: v["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).to_string()),
                field: v["field"].as_str().map(str::to_string),
            });
        }
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

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None).await
    }
}
