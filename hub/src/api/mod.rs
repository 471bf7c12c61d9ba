//! The HTTP API (axum): JSON in and out, served over TLS ([`server`]).
//! Everything but `/v1/health` needs a bearer token ([`auth`]); every
//! handler asks `access::decide` whether the token's role and scope allow
//! what it is about to do, and list answers are cut down to the scope.
//! Documented in `docs/api.md`.
//!
//! Request bodies are decoded here (not with axum's `Json` extractor) so every
//! decoding error is a 400 that names the offending field path, unknown fields
//! included.

mod auth;
mod config;
pub mod dashboard;
mod error;
pub mod human;
mod logs;
mod metrics;
mod secrets;
pub mod server;
mod tokens;
mod views;

pub use error::AppError;
pub use views::{AppCounts, DeviceDetail, DeviceState, DeviceSummary, GenerationView, Stats};

use crate::access::{Caller, Request as Access};
use crate::deploy::DeploymentSpec;
use crate::hub::{ApplyOutcome, Hub};
use crate::publish::PublishStats;
use auth::allow;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{delete, get, patch, post};
use axum::{Extension, Json, Router};
use outpost_protocol::{DeviceId, PublicKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What handlers share. Tokens live in the hub's store.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub publish: Arc<PublishStats>,
    /// What the embedded broker refused; `None` with an external broker.
    pub broker: Option<Arc<crate::broker::access::Refused>>,
    /// What the ingest task measures (`/metrics`).
    pub ingest: Arc<crate::ingest::IngestStats>,
    /// Is the API served over TLS? (The dashboard's cookie is `Secure` then.)
    pub tls: bool,
    /// The dashboard's one-time login links.
    pub links: Arc<dashboard::Links>,
}

/// Build the router.
pub fn router(state: ApiState) -> Router {
    let authed = Router::new()
        .route("/v1/devices", get(list_devices).post(add_device))
        .route("/v1/devices/batch", post(add_devices))
        .route("/v1/devices/{id}", get(get_device).delete(remove_device))
        .route("/v1/devices/{id}/labels", patch(label_device))
        .route("/v1/devices/{id}/broker-cert", post(device_broker_cert))
        .route("/v1/devices/{id}/events", get(device_events))
        .route("/v1/devices/{id}/logs/{app}", get(device_logs))
        .route("/v1/devices/{id}/config", get(config::device_config))
        .route(
            "/v1/config",
            get(config::list_config).patch(config::change_config),
        )
        .route("/v1/deployments", get(list_deployments).put(apply))
        .route(
            "/v1/deployments/{name}",
            get(get_deployment).delete(delete_deployment),
        )
        .route("/v1/rollouts", get(list_rollouts))
        .route("/v1/rollouts/{name}", get(get_rollout))
        .route("/v1/rollouts/{name}/{command}", post(rollout_command))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/ui/links", post(dashboard::create_link))
        .route("/v1/audit", get(audit))
        .route("/v1/secrets", get(secrets::list_secrets))
        .route(
            "/v1/secrets/{name}",
            axum::routing::put(secrets::set_secret).delete(secrets::remove_secret),
        )
        .route(
            "/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/v1/tokens/{name}", delete(tokens::revoke_token))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({ "ok": true })) }),
        )
        .merge(authed)
        .merge(dashboard::routes())
        .with_state(state)
}

/// Decode a JSON body; errors name the field path.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, AppError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        AppError::bad_request(field, format!("invalid request body: {}", e.inner()))
    })
}

fn device_id(id: &str) -> Result<DeviceId, AppError> {
    id.parse().map_err(|e: outpost_protocol::DeviceIdError| {
        AppError::bad_request(Some("id".into()), e.to_string())
    })
}

fn internal(e: tokio::task::JoinError) -> AppError {
    AppError::from(crate::hub::HubError::Internal(e.to_string()))
}

/// A registered device, or 404.
fn device_record(s: &ApiState, id: &DeviceId) -> Result<crate::store::DeviceRecord, AppError> {
    s.hub
        .store
        .device(id)?
        .ok_or_else(|| AppError::not_found(format!("device {id:?} not found")))
}

/// Device `id`'s record, if the caller may read it (`GET` of the device and
/// of its events).
async fn readable_device(
    s: &ApiState,
    caller: &Caller,
    id: &DeviceId,
) -> Result<crate::store::DeviceRecord, AppError> {
    let rec = device_record(s, id)?;
    allow(
        s,
        caller,
        Access::ReadDevice {
            id: id.as_str(),
            labels: &rec.labels,
        },
    )
    .await?;
    Ok(rec)
}

/// The selector of deployment `name`; empty when there is none (which only
/// an unscoped token covers: a scoped one learns nothing about it).
fn selector_of(s: &ApiState, name: &str) -> Result<BTreeMap<String, String>, AppError> {
    Ok(s.hub
        .store
        .deployment(name)?
        .map(|d| d.spec.selector)
        .unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
    public_key: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Hex X25519 key secrets are sealed to; optional.
    #[serde(default)]
    encryption_key: Option<String>,
}

/// The optional `encryption_key` field of a new device, parsed.
fn encryption_key(
    field: String,
    hex: Option<&str>,
) -> Result<Option<outpost_protocol::EncryptionKey>, AppError> {
    hex.map(|h| {
        h.parse().map_err(|e: outpost_protocol::SecretError| {
            AppError::bad_request(Some(field.clone()), e.to_string())
        })
    })
    .transpose()
}

/// `POST /v1/devices`'s answer: the device, and its broker certificate
/// (for an external Mosquitto; `None` from a hub without a broker CA).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct AddedDevice {
    #[serde(flatten)]
    pub device: DeviceSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cert: Option<crate::hub::BrokerCert>,
}

async fn add_device(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Result<(StatusCode, Json<AddedDevice>), AppError> {
    allow(&s, &caller, Access::AddDevice).await?;
    let req: NewDevice = body(&raw)?;
    let id = device_id(&req.id)?;
    let key: PublicKey = req
        .public_key
        .parse()
        .map_err(|e: outpost_protocol::KeyError| {
            AppError::bad_request(Some("public_key".into()), e.to_string())
        })?;
    let encryption_key = encryption_key("encryption_key".into(), req.encryption_key.as_deref())?;
    for (k, v) in &req.labels {
        crate::deploy::check_label("labels", k, v).map_err(crate::hub::HubError::from)?;
    }
    let rec = s
        .hub
        .add_devices(
            vec![crate::hub::NewDevice {
                id,
                public_key: key,
                labels: req.labels,
                encryption_key,
            }],
            caller.who(),
        )
        .await?
        .pop()
        .ok_or_else(|| crate::hub::HubError::Internal("registration returned no record".into()))?;
    let broker_cert = if s.hub.has_broker_ca() {
        Some(
            s.hub
                .issue_broker_cert(rec.id.clone(), caller.who())
                .await?,
        )
    } else {
        None
    };
    let meta = s.hub.store.manifest_meta(&rec.id)?;
    Ok((
        StatusCode::CREATED,
        Json(AddedDevice {
            device: DeviceSummary::new(&rec, meta.as_ref(), None, s.hub.now()),
            broker_cert,
        }),
    ))
}

/// A new broker certificate for a registered device (one registered before
/// the hub had a CA, or one whose certificate file was lost).
async fn device_broker_cert(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<crate::hub::BrokerCert>), AppError> {
    allow(&s, &caller, Access::IssueBrokerCert { id: id.as_str() }).await?;
    let id = device_id(&id)?;
    let cert = s.hub.issue_broker_cert(id, caller.who()).await?;
    Ok((StatusCode::CREATED, Json(cert)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevices {
    devices: Vec<NewDevice>,
}

/// Register many devices at once (one transaction).
async fn add_devices(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    allow(&s, &caller, Access::AddDevice).await?;
    let req: NewDevices = body(&raw)?;
    let mut new = Vec::with_capacity(req.devices.len());
    for (i, d) in req.devices.into_iter().enumerate() {
        let id: DeviceId = d.id.parse().map_err(|e: outpost_protocol::DeviceIdError| {
            AppError::bad_request(Some(format!("devices[{i}].id")), e.to_string())
        })?;
        let public_key: PublicKey =
            d.public_key
                .parse()
                .map_err(|e: outpost_protocol::KeyError| {
                    AppError::bad_request(Some(format!("devices[{i}].public_key")), e.to_string())
                })?;
        let encryption_key = encryption_key(
            format!("devices[{i}].encryption_key"),
            d.encryption_key.as_deref(),
        )?;
        new.push(crate::hub::NewDevice {
            id,
            public_key,
            labels: d.labels,
            encryption_key,
        });
    }
    let recs = s.hub.add_devices(new, caller.who()).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "registered": recs.len() })),
    ))
}

/// The devices inside the caller's scope.
async fn list_devices(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<DeviceSummary>>, AppError> {
    allow(&s, &caller, Access::List).await?;
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<DeviceSummary>, AppError> {
        let devices = store.devices()?;
        let metas = store.manifest_metas()?;
        let statuses = store.statuses()?;
        Ok(devices
            .iter()
            .filter(|d| caller.sees_device(&d.labels))
            .map(|d| {
                DeviceSummary::new(
                    d,
                    metas.get(d.id.as_str()),
                    statuses.get(d.id.as_str()),
                    now,
                )
            })
            .collect())
    })
    .await
    .map_err(internal)??;
    Ok(Json(out))
}

async fn get_device(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, AppError> {
    let id = device_id(&id)?;
    let rec = readable_device(&s, &caller, &id).await?;
    let meta = s.hub.store.manifest_meta(&id)?;
    let status = s.hub.store.status(&id)?;
    Ok(Json(DeviceDetail::new(&rec, meta, status, s.hub.now())))
}

async fn remove_device(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id = device_id(&id)?;
    allow(&s, &caller, Access::RemoveDevice { id: id.as_str() }).await?;
    s.hub.remove_device(id, caller.who()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelChange {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

async fn label_device(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Json<DeviceSummary>, AppError> {
    let id = device_id(&id)?;
    let req: LabelChange = body(&raw)?;
    if req.set.is_empty() && req.remove.is_empty() {
        return Err(AppError::bad_request(
            None,
            "nothing to change: give `set` and/or `remove`",
        ));
    }
    let mut changes: BTreeMap<String, Option<String>> =
        req.remove.into_iter().map(|k| (k, None)).collect();
    changes.extend(req.set.into_iter().map(|(k, v)| (k, Some(v))));
    // Checked against the labels now; a change racing this one is the
    // admin's to sort out (see docs/api.md).
    let before = device_record(&s, &id)?.labels;
    let mut after = before.clone();
    for (k, v) in &changes {
        match v {
            Some(v) => after.insert(k.clone(), v.clone()),
            None => after.remove(k),
        };
    }
    allow(
        &s,
        &caller,
        Access::LabelDevice {
            id: id.as_str(),
            before: &before,
            after: &after,
        },
    )
    .await?;
    let (rec, _) = s.hub.label_device(id, changes, caller.who()).await?;
    let meta = s.hub.store.manifest_meta(&rec.id)?;
    let status = s.hub.store.status(&rec.id)?;
    Ok(Json(DeviceSummary::new(
        &rec,
        meta.as_ref(),
        status.as_ref(),
        s.hub.now(),
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn device_events(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<crate::store::EventRecord>>, AppError> {
    let id = device_id(&id)?;
    readable_device(&s, &caller, &id).await?;
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(s.hub.store.events(&id, q.after, limit)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<u32>,
    #[serde(default)]
    follow: bool,
}

/// An app's output, streamed from the device as it sends it (text/plain).
async fn device_logs(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, app)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<axum::response::Response, AppError> {
    use tokio_stream::StreamExt;
    let id = device_id(&id)?;
    let rec = device_record(&s, &id)?;
    allow(
        &s,
        &caller,
        Access::ReadLogs {
            id: id.as_str(),
            labels: &rec.labels,
        },
    )
    .await?;
    if !outpost_protocol::manifest::is_app_name(&app) {
        return Err(AppError::bad_request(
            Some("app".into()),
            format!("{app:?} is not an app name (lowercase letters, digits, '-')"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    tokio::spawn(logs::relay(
        Arc::clone(&s.hub),
        logs::Ask {
            device: id,
            app,
            tail: q.tail,
            follow: q.follow,
        },
        tx,
    ));
    let body = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|b| Ok::<_, std::convert::Infallible>(Bytes::from(b)));
    axum::response::Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(axum::body::Body::from_stream(body))
        .map_err(|e| AppError::from(crate::hub::HubError::Internal(e.to_string())))
}

async fn apply(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<ApplyOutcome>, AppError> {
    let spec: DeploymentSpec = body(&raw)?;
    let current = s.hub.store.deployment(&spec.name)?.map(|d| d.spec.selector);
    allow(
        &s,
        &caller,
        Access::ApplyDeployment {
            name: &spec.name,
            selector: &spec.selector,
            current: current.as_ref(),
        },
    )
    .await?;
    Ok(Json(s.hub.apply(spec, caller.who()).await?))
}

/// The deployments inside the caller's scope.
async fn list_deployments(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<crate::store::DeploymentRecord>>, AppError> {
    allow(&s, &caller, Access::List).await?;
    let mut all = s.hub.store.deployments()?;
    all.retain(|d| caller.sees_deployment(&d.spec.selector));
    Ok(Json(all))
}

async fn get_deployment(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<crate::store::DeploymentRecord>, AppError> {
    let d = s
        .hub
        .store
        .deployment(&name)?
        .ok_or_else(|| AppError::not_found(format!("deployment {name:?} not found")))?;
    allow(
        &s,
        &caller,
        Access::ReadDeployment {
            name: &name,
            selector: &d.spec.selector,
        },
    )
    .await?;
    Ok(Json(d))
}

async fn delete_deployment(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ApplyOutcome>, AppError> {
    let selector = selector_of(&s, &name)?;
    allow(
        &s,
        &caller,
        Access::DeleteDeployment {
            name: &name,
            selector: &selector,
        },
    )
    .await?;
    Ok(Json(s.hub.delete_deployment(name, caller.who()).await?))
}

/// Device counts over the caller's scope; the ingest and publish counters
/// are the hub's own (not about any device) and shown to every token.
async fn stats(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Stats>, AppError> {
    allow(&s, &caller, Access::List).await?;
    let counters = s.hub.store.counters()?;
    let statuses = s.hub.store.statuses()?;
    let inside: Vec<String> = s
        .hub
        .store
        .devices()?
        .into_iter()
        .filter(|d| caller.sees_device(&d.labels))
        .map(|d| d.id.to_string())
        .collect();
    let devices = inside.len();
    let now = s.hub.now();
    let online = inside
        .iter()
        .filter_map(|id| statuses.get(id))
        .filter(|st| views::is_online(st.received_at, now))
        .count();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(Stats {
        devices,
        online,
        scope: caller.scope.to_string(),
        counters,
        manifests_published: load(&s.publish.manifests_published),
        republish_all: load(&s.publish.republish_all),
        publish_errors: load(&s.publish.publish_errors),
        watermarks_published: load(&s.publish.watermarks_published),
        broker_logins_refused: s.broker.as_ref().map(|r| load(&r.logins)),
        broker_topics_refused: s.broker.as_ref().map(|r| load(&r.topics)),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

/// Admin only: the log names every token and every device.
async fn audit(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<crate::store::AuditEntry>>, AppError> {
    allow(&s, &caller, Access::ReadAudit).await?;
    Ok(Json(s.hub.store.audit(q.limit.unwrap_or(100).min(10_000))?))
}

/// The rollouts of deployments inside the caller's scope.
async fn list_rollouts(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<crate::hub::rollouts::view::RolloutView>>, AppError> {
    allow(&s, &caller, Access::List).await?;
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let mut out = tokio::task::spawn_blocking(move || crate::hub::rollouts::views(&store, now))
        .await
        .map_err(internal)??;
    if !caller.scope.is_everything() {
        let selectors: BTreeMap<String, BTreeMap<String, String>> = s
            .hub
            .store
            .deployments()?
            .into_iter()
            .map(|d| (d.spec.name, d.spec.selector))
            .collect();
        out.retain(|v| {
            selectors
                .get(&v.deployment)
                .is_some_and(|sel| caller.sees_deployment(sel))
        });
    }
    Ok(Json(out))
}

async fn rollout_view(
    s: &ApiState,
    name: String,
) -> Result<Json<crate::hub::rollouts::view::RolloutView>, AppError> {
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let n = name.clone();
    tokio::task::spawn_blocking(move || crate::hub::rollouts::view(&store, &n, now))
        .await
        .map_err(internal)??
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no rollout of deployment {name:?}")))
}

async fn get_rollout(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<crate::hub::rollouts::view::RolloutView>, AppError> {
    let selector = selector_of(&s, &name)?;
    allow(
        &s,
        &caller,
        Access::ReadDeployment {
            name: &name,
            selector: &selector,
        },
    )
    .await?;
    rollout_view(&s, name).await
}

/// `POST /v1/rollouts/{name}/pause|resume|abort`: answers with the rollout's
/// view after the command.
async fn rollout_command(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<crate::hub::rollouts::view::RolloutView>, AppError> {
    run_rollout_command(&s, &caller, &name, &command).await?;
    rollout_view(&s, name).await
}

/// Parse `command`, check the caller may give it for rollout `name`, give
/// it: the API's and the dashboard's forms share this.
pub(crate) async fn run_rollout_command(
    s: &ApiState,
    caller: &Caller,
    name: &str,
    command: &str,
) -> Result<(), AppError> {
    use crate::hub::rollouts::Command;
    let cmd = match command {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        other => {
            return Err(AppError::not_found(format!(
                "no rollout command {other:?}; use pause, resume or abort"
            )))
        }
    };
    let selector = selector_of(s, name)?;
    allow(
        s,
        caller,
        Access::RolloutCommand {
            name,
            command,
            selector: &selector,
        },
    )
    .await?;
    s.hub
        .rollout_command(name.to_string(), cmd, caller.who())
        .await?;
    Ok(())
}
