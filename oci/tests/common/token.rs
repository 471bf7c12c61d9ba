//! A minimal registry token service (the Docker/OCI "bearer token" flow): checks
//! HTTP basic credentials and issues ES256 JWTs signed by a throwaway key whose
//! self-signed certificate (rcgen) the registry trusts (`auth.token.rootcertbundle`).

use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SERVICE: &str = "outpost-test-registry";
pub const ISSUER: &str = "outpost-test-issuer";

pub struct TokenServer {
    pub addr: SocketAddr,
    pub cert_pem: PathBuf,
    key: Arc<(EcdsaKeyPair, String)>,
    task: tokio::task::JoinHandle<()>,
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn sign_token(key: &(EcdsaKeyPair, String), scope_repo: &str, actions: &[&str]) -> String {
    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [key.1]});
    // A JWT's `iat`/`nbf`/`exp` are wall time by definition: the registry
    // under test checks them against its own wall clock.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "edge", "aud": SERVICE,
        "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("t{now}"),
        "access": [{"type": "repository", "name": scope_repo, "actions": actions}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = key.0.sign(&rng, signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64url(sig.as_ref()))
}

impl TokenServer {
    /// Start on a free port; accepts `user:password` only.
    pub async fn start(dir: &Path, user: &'static str, password: &'static str) -> TokenServer {
        // The token signer: an ECDSA P-256 key and a self-signed certificate
        // the registry trusts (`rootcertbundle`) and each token names (`x5c`).
        let signer = outpost_test_support::tls::self_signed_signer("token signer").unwrap();
        std::fs::write(dir.join("token.pem"), &signer.cert_pem).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &signer.key_pkcs8, &rng)
                .unwrap();
        let cert_b64 = base64::engine::general_purpose::STANDARD.encode(&signer.cert_der);
        let key = Arc::new((pair, cert_b64));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let k = key.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (k, expected) = (k.clone(), expected.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).to_string();
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                        })
                    });
                    // scope=repository:NAME:ACTIONS
                    let target = head.split_whitespace().nth(1).unwrap_or("");
                    let scope = target
                        .split(['?', '&'])
                        .find_map(|kv| kv.strip_prefix("scope="))
                        .unwrap_or("")
                        .replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ",");
                    let mut parts = scope.splitn(3, ':');
                    let (_, repo, actions) = (
                        parts.next(),
                        parts.next().unwrap_or(""),
                        parts.next().unwrap_or(""),
                    );
                    let response = if authorized {
                        let acts: Vec<&str> =
                            actions.split(',').filter(|a| !a.is_empty()).collect();
                        let token = sign_token(&k, repo, &acts);
                        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                    };
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        TokenServer {
            addr,
            cert_pem: dir.join("token.pem"),
            key,
            task,
        }
    }

    /// A token obtained out of band, for `Credentials::Bearer`.
    pub fn token_for(&self, repo: &str) -> String {
        sign_token(&self.key, repo, &["pull"])
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
