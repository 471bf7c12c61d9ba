//! Running the hub: open the store, load keys, start (or connect to) the broker,
//! and run the two MQTT links (ingest and publish, each with its driver and its
//! one sending task), ingest, the rollout driver and the HTTP server until
//! shutdown.
//!
//! [`start`] returns once everything listens, with the bound addresses, so tests
//! and the fleet simulator can run a hub in-process on port 0. A hub run as a
//! process reports the same addresses through its ready file
//! ([`write_ready_file`], `outpost-hub serve --ready-file`).

use crate::api::{self, ApiState};
use crate::broker::access::BrokerAccess;
use crate::broker::{self, BrokerError};
use crate::config::{BrokerUrl, ConfigError, DataDir, HubConfig};
use crate::hub::Hub;
use crate::ingest::{self, Inbox};
use crate::link::{self, LinkError, LinkEvent};
use crate::publish::{self, Outbox, PublishStats};
use crate::resolve::ImageResolver;
use crate::signing::{KeyFileError, Signer};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the admission policy is invalid: {0}")]
    Admission(#[from] crate::admission::PolicyError),
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error(transparent)]
    SecretKey(#[from] crate::secrets::SecretKeyError),
    #[error(transparent)]
    SecretRotation(#[from] crate::secrets::RotateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    BrokerCa(#[from] crate::broker::ca::CaError),
    #[error("cannot re-sign manifests under the current signing key: {0}")]
    Reissue(#[from] crate::hub::HubError),
    #[error("the first admin API token: {0}")]
    Token(#[from] crate::tokens::TokenError),
    #[error(
        "the HTTP API's TLS: {0} (hub.toml [api]; `outpost-hub init` makes api.crt and api.key)"
    )]
    Tls(#[from] crate::tls::TlsError),
    #[error("HTTP API cannot listen on {addr}: {source}")]
    HttpBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything `start` needs. `resolver` pins image tags (the registry client).
pub struct ServeOptions {
    pub data_dir: DataDir,
    pub config: HubConfig,
    pub resolver: Arc<dyn ImageResolver>,
}

/// A running hub.
pub struct Running {
    pub http_addr: SocketAddr,
    /// Address of the embedded broker, if one was started.
    pub embedded_broker: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    pub publish_stats: Arc<PublishStats>,
    tracker: TaskTracker,
}

/// The addresses a running hub bound, as its ready file has them (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFile {
    pub http_addr: SocketAddr,
    /// The embedded broker's address; `None` when an external broker is used.
    pub mqtt_addr: Option<SocketAddr>,
}

impl Running {
    /// What the ready file says about this hub.
    pub fn ready_file(&self) -> ReadyFile {
        ReadyFile {
            http_addr: self.http_addr,
            mqtt_addr: self.embedded_broker,
        }
    }

    /// Wait until every task has stopped (after the shutdown token fired).
    pub async fn wait(self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Start the hub; returns when it listens.
pub async fn start(opts: ServeOptions, shutdown: CancellationToken) -> Result<Running, ServeError> {
    let dir = &opts.data_dir;
    // Read before anything listens: a bad certificate stops the hub here.
    let api_tls = api_tls(&opts.config, dir)?;
    let signer = Signer::load(dir)?;
    let db_path = dir.database();
    let store = tokio::task::spawn_blocking(move || Store::open(&db_path))
        .await
        .map_err(|e| StoreError::Corrupt {
            table: "-",
            key: "-".into(),
            detail: e.to_string(),
        })??;
    crate::tokens::bootstrap(&store, dir, crate::clock::now_secs())?;

    let ingest_id = opts.config.mqtt.client_id.clone();
    let publish_id = link::publisher_client_id(&ingest_id);
    let (embedded_broker, target, login, broker_refused) = match &opts.config.mqtt.broker {
        Some(url) => (None, BrokerUrl::parse(url)?, None, None),
        None => {
            let access = Arc::new(BrokerAccess::new(
                [ingest_id.clone(), publish_id.clone()],
                crate::signing::new_token()?,
                store.clone(),
            ));
            let login = Some(access.hub_password().to_string());
            let refused = Some(Arc::clone(&access.refused));
            let listen = opts.config.mqtt.listen;
            let max = opts.config.mqtt.max_connections;
            let tls = match (&opts.config.mqtt.tls_cert, &opts.config.mqtt.tls_key) {
                (Some(cert), Some(key)) => {
                    // The API's loader; MQTT clients offer no ALPN.
                    let mut config = (*crate::tls::server_config(cert, key)?).clone();
                    config.alpn_protocols.clear();
                    Some(Arc::new(config))
                }
                _ => None,
            };
            let embedded = tokio::task::spawn_blocking(move || {
                broker::start_embedded(listen, max, access, tls)
            })
            .await
            .map_err(|e| BrokerError::Thread(std::io::Error::other(e.to_string())))??;
            (
                Some(embedded.addr),
                BrokerUrl {
                    host: embedded.local.ip().to_string(),
                    port: embedded.local.port(),
                    tls: false,
                },
                login,
                refused,
            )
        }
    };

    // Two connections (see `link`): acks never queue behind manifest publishes.
    let certs = opts.config.mqtt.client_auth.as_ref();
    let ingest_opts = link::options(
        &ingest_id,
        &target,
        opts.config.mqtt.ca_file.as_deref(),
        login.as_deref(),
        certs.map(|c| (c.ingest_cert.as_path(), c.ingest_key.as_path())),
    )?;
    let publish_opts = link::options(
        &publish_id,
        &target,
        opts.config.mqtt.ca_file.as_deref(),
        login.as_deref(),
        certs.map(|c| (c.publish_cert.as_path(), c.publish_key.as_path())),
    )?;
    // The broker CA (made here for data directories older than it): devices
    // get certificates at `device add`, and its CRL is written afresh.
    let broker_ca = {
        let files = crate::broker::ca::CaFiles::new(dir.broker_ca());
        let on_revoke = opts.config.mqtt.on_revoke.clone();
        let crl_copy = opts.config.mqtt.crl_file.clone();
        let now = crate::clock::now_secs();
        tokio::task::spawn_blocking(move || {
            let ca = crate::broker::ca::BrokerCa::open_or_create(files, now, on_revoke)?
                .with_crl_copy(crl_copy);
            ca.write_crl(now)?;
            Ok::<_, crate::broker::ca::CaError>(Arc::new(ca))
        })
        .await
        .map_err(|e| BrokerError::Thread(std::io::Error::other(e.to_string())))??
    };
    let (ingest_client, ingest_eventloop) = link::client(ingest_opts);
    let (publish_client, publish_eventloop) = link::client(publish_opts);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(4 * ingest::BATCH);
    let freshness = opts.config.freshness.clone();
    let trust = crate::publish::Trust {
        keyset: signer.keyset_bytes().to_vec(),
        roots: crate::signing::root_links(dir)?,
        heartbeat_secs: u32::try_from(freshness.heartbeat_secs).unwrap_or(u32::MAX),
    };
    let now = crate::clock::now_secs();
    if signer.keyset_expires_at() <= now.saturating_add(30 * 86_400) {
        tracing::warn!(
            expires_at = signer.keyset_expires_at(),
            "the key set expires within 30 days (or has): devices provisioned or rotated after that refuse it; \
             run `outpost-hub keys rotate` with the root key"
        );
    }
    let policy = opts.config.admission_policy()?;
    // A `keys rotate-secrets` a crash cut short is completed or undone first.
    crate::secrets::settle(&dir.secret_key(), &dir.secret_key_next(), &store)?;
    let hub = Arc::new(
        Hub::new(store.clone(), signer, opts.resolver, outbox_tx.clone())
            .with_policy(policy)
            .with_broker_ca(broker_ca)
            .with_manifest_validity(freshness.manifest_valid_secs)
            .with_secret_key(crate::secrets::SecretKey::load_or_create(
                &dir.secret_key(),
            )?),
    );
    // Before the publisher's first republish-all, so that agents get manifests
    // signed by the current key right after its key set.
    hub.reissue_for_current_epoch().await?;
    let publish_stats = Arc::new(PublishStats::default());
    let tracker = TaskTracker::new();

    {
        let inbox = inbox_tx.clone();
        let outbox = outbox_tx.clone();
        tracker.spawn(link::drive(
            "ingest",
            ingest_eventloop,
            Some(incoming_tx),
            move |ev| match ev {
                LinkEvent::Connected { .. } => inbox.send(Inbox::Connected).is_ok(),
                // Subscribed: now a status sent by a device reaches us.
                LinkEvent::Subscribed => outbox.send(Outbox::Announce).is_ok(),
            },
            shutdown.clone(),
        ));
    }
    {
        let outbox = outbox_tx.clone();
        tracker.spawn(link::drive(
            "publish",
            publish_eventloop,
            None,
            move |ev| match ev {
                LinkEvent::Connected { .. } => outbox.send(Outbox::Connected).is_ok(),
                LinkEvent::Subscribed => true,
            },
            shutdown.clone(),
        ));
    }
    tracker.spawn(ingest::sender(ingest_client, inbox_rx, shutdown.clone()));
    tracker.spawn(heartbeats(
        Arc::clone(&hub),
        Duration::from_secs(freshness.heartbeat_secs.max(1)),
        shutdown.clone(),
    ));
    tracker.spawn(publish::run(
        publish_client,
        Arc::clone(&hub),
        trust,
        outbox_rx,
        Arc::clone(&publish_stats),
        shutdown.clone(),
    ));
    tracker.spawn(crate::hub::rollouts::drive(
        Arc::clone(&hub),
        shutdown.clone(),
    ));
    let ingest_stats = Arc::new(ingest::IngestStats::default());
    tracker.spawn(ingest::run(
        Arc::clone(&hub),
        incoming_rx,
        inbox_tx,
        Arc::clone(&ingest_stats),
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(opts.config.http_listen)
        .await
        .map_err(|source| ServeError::HttpBind {
            addr: opts.config.http_listen,
            source,
        })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| ServeError::HttpBind {
            addr: opts.config.http_listen,
            source,
        })?;
    let tls = api_tls.is_some();
    let app = api::router(ApiState {
        hub: Arc::clone(&hub),
        publish: Arc::clone(&publish_stats),
        broker: broker_refused,
        ingest: ingest_stats,
        tls,
        links: Default::default(),
    });
    tracker.spawn(api::server::serve(listener, app, api_tls, shutdown.clone()));
    tracing::info!(%http_addr, tls, broker = %format!("{}:{}", target.host, target.port), embedded = embedded_broker.is_some(), "hub started");
    Ok(Running {
        http_addr,
        embedded_broker,
        hub,
        publish_stats,
        tracker,
    })
}

/// Most manifests renewed per heartbeat tick: renewing a large fleet is spread
/// over ticks instead of stalling the store for one long transaction.
const RENEW_PER_TICK: usize = 500;

/// Ask for a signed heartbeat every `every`, and renew manifests past half
/// their validity.
async fn heartbeats(hub: Arc<Hub>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        hub.send(Outbox::Heartbeat);
        if let Err(e) = hub.renew_expiring(RENEW_PER_TICK).await {
            tracing::warn!(error = %e, "renewing manifests failed; retried at the next heartbeat");
        }
    }
}

/// The API's TLS server configuration from `[api]`; `None` (and a loud
/// warning) when the operator turned TLS off.
fn api_tls(
    config: &HubConfig,
    dir: &DataDir,
) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    if !config.api.tls {
        tracing::warn!(
            http_listen = %config.http_listen,
            "TLS IS OFF for the HTTP API ([api] tls = false in hub.toml): bearer tokens and \
             everything else cross the network in clear; only safe on loopback or behind a \
             TLS-terminating proxy"
        );
        return Ok(None);
    }
    let (cert, key) = (config.api.cert_path(dir), config.api.key_path(dir));
    let server = crate::tls::server_config(&cert, &key)?;
    if let Ok(certs) = crate::tls::load_certs(&cert) {
        tracing::info!(cert = %cert.display(), sha256 = %crate::tls::fingerprint(&certs[0]), "HTTP API serves TLS");
    }
    Ok(Some(server))
}

/// Start and run until `shutdown` fires. With `ready_file`, the bound addresses
/// are written there once everything listens.
pub async fn serve(
    opts: ServeOptions,
    ready_file: Option<&Path>,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let running = start(opts, shutdown.clone()).await?;
    if let Some(path) = ready_file {
        if let Err(e) = write_ready_file(path, &running.ready_file()) {
            // Whoever waits for the file would wait forever: stop instead.
            shutdown.cancel();
            running.wait().await;
            return Err(e);
        }
    }
    running.wait().await;
    Ok(())
}

/// Write `ready` to `path` as JSON: to a temporary file next to it, then
/// renamed over it, so a reader polling `path` sees nothing or all of it.
pub fn write_ready_file(path: &Path, ready: &ReadyFile) -> Result<(), ServeError> {
    let err = |source| ServeError::ReadyFile {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec(ready).map_err(|e| err(std::io::Error::other(e)))?;
    let name = path
        .file_name()
        .ok_or_else(|| err(std::io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, json).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_file_is_written_whole_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let ready = ReadyFile {
            http_addr: "127.0.0.1:41000".parse().unwrap(),
            mqtt_addr: None,
        };
        write_ready_file(&path, &ready).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, r#"{"http_addr":"127.0.0.1:41000","mqtt_addr":null}"#);
        assert_eq!(serde_json::from_str::<ReadyFile>(&text).unwrap(), ready);
        // Overwritten in place by a restart; no temporary file is left.
        let again = ReadyFile {
            mqtt_addr: Some("127.0.0.1:41001".parse().unwrap()),
            ..ready
        };
        write_ready_file(&path, &again).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("ready.json")]);
        let back: ReadyFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, again);
    }

    #[test]
    fn an_unwritable_ready_file_is_an_error_naming_it() {
        let path = Path::new("/nonexistent-dir/ready.json");
        let ready = ReadyFile {
            http_addr: "127.0.0.1:1".parse().unwrap(),
            mqtt_addr: None,
        };
        let err = write_ready_file(path, &ready).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/ready.json"),
            "{err}"
        );
    }
}
