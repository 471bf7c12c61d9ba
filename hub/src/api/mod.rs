//! The HTTP API (axum): JSON in and out, bearer-token auth on everything but
//! `/v1/health`. Documented in `docs/api.md`.
//!
//! Request bodies are decoded here (not with axum's `Json` extractor) so every
//! decoding error is a 400 that names the offending field path, unknown fields
//! included.

mod error;
mod views;

pub use error::AppError;
pub use views::{AppCounts, DeviceDetail, DeviceSummary, GenerationView, Stats};

use crate::deploy::DeploymentSpec;
use crate::hub::{ApplyOutcome, Hub};
use crate::publish::PublishStats;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use outpost_protocol::{DeviceId, PublicKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub hub: Arc<Hub>,
    pub token: Arc<String>,
    pub publish: Arc<PublishStats>,
    /// What the embedded broker refused; `None` with an external broker.
    pub broker: Option<Arc<crate::broker::access::Refused>>,
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
        .route("/v1/deployments", get(list_deployments).put(apply))
        .route(
            "/v1/deployments/{name}",
            get(get_deployment).delete(delete_deployment),
        )
        .route("/v1/rollouts", get(list_rollouts))
        .route("/v1/rollouts/{name}", get(get_rollout))
        .route("/v1/rollouts/{name}/{command}", post(rollout_command))
        .route("/v1/stats", get(stats))
        .route("/v1/audit", get(audit))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({ "ok": true })) }),
        )
        .merge(authed)
        .with_state(state)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret; the content comparison does not stop early.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<ApiState>, req: Request, next: Next) -> Result<Response, AppError> {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), s.token.as_bytes()));
    if !ok {
        return Err(AppError::unauthorized());
    }
    Ok(next.run(req).await)
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

/// Header the CLI sets to `user@host`. The bearer token is the only
/// credential, so this is informational; the audit log records it as
/// `api:<actor>` so operators sharing a token can still be told apart.
pub const ACTOR_HEADER: &str = "x-outpost-actor";

fn who(headers: &HeaderMap) -> String {
    let actor = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    match actor {
        Some(a) => format!("api:{a}"),
        None => "api".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
    public_key: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
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
    headers: HeaderMap,
    raw: Bytes,
) -> Result<(StatusCode, Json<AddedDevice>), AppError> {
    let req: NewDevice = body(&raw)?;
    let id = device_id(&req.id)?;
    let key: PublicKey = req
        .public_key
        .parse()
        .map_err(|e: outpost_protocol::KeyError| {
            AppError::bad_request(Some("public_key".into()), e.to_string())
        })?;
    let rec = s.hub.add_device(id, key, req.labels, who(&headers)).await?;
    let broker_cert = if s.hub.has_broker_ca() {
        Some(
            s.hub
                .issue_broker_cert(rec.id.clone(), who(&headers))
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<crate::hub::BrokerCert>), AppError> {
    let id = device_id(&id)?;
    let cert = s.hub.issue_broker_cert(id, who(&headers)).await?;
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
    headers: HeaderMap,
    raw: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
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
        new.push(crate::hub::NewDevice {
            id,
            public_key,
            labels: d.labels,
        });
    }
    let recs = s.hub.add_devices(new, who(&headers)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "registered": recs.len() })),
    ))
}

async fn list_devices(State(s): State<ApiState>) -> Result<Json<Vec<DeviceSummary>>, AppError> {
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<DeviceSummary>, AppError> {
        let devices = store.devices()?;
        let metas = store.manifest_metas()?;
        let statuses = store.statuses()?;
        Ok(devices
            .iter()
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
    .map_err(|e| AppError::from(crate::hub::HubError::Internal(e.to_string())))??;
    Ok(Json(out))
}

async fn get_device(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, AppError> {
    let id = device_id(&id)?;
    let rec = s
        .hub
        .store
        .device(&id)?
        .ok_or_else(|| AppError::not_found(format!("device {id:?} not found")))?;
    let meta = s.hub.store.manifest_meta(&id)?;
    let status = s.hub.store.status(&id)?;
    Ok(Json(DeviceDetail::new(&rec, meta, status, s.hub.now())))
}

async fn remove_device(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id = device_id(&id)?;
    s.hub.remove_device(id, who(&headers)).await?;
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
    headers: HeaderMap,
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
    let (rec, _) = s.hub.label_device(id, changes, who(&headers)).await?;
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
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<crate::store::EventRecord>>, AppError> {
    let id = device_id(&id)?;
    if s.hub.store.device(&id)?.is_none() {
        return Err(AppError::not_found(format!("device {id:?} not found")));
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    Ok(Json(s.hub.store.events(&id, q.after, limit)?))
}

async fn apply(
    State(s): State<ApiState>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Json<ApplyOutcome>, AppError> {
    let spec: DeploymentSpec = body(&raw)?;
    Ok(Json(s.hub.apply(spec, who(&headers)).await?))
}

async fn list_deployments(
    State(s): State<ApiState>,
) -> Result<Json<Vec<crate::store::DeploymentRecord>>, AppError> {
    Ok(Json(s.hub.store.deployments()?))
}

async fn get_deployment(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::store::DeploymentRecord>, AppError> {
    s.hub
        .store
        .deployment(&name)?
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("deployment {name:?} not found")))
}

async fn delete_deployment(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ApplyOutcome>, AppError> {
    Ok(Json(s.hub.delete_deployment(name, who(&headers)).await?))
}

async fn stats(State(s): State<ApiState>) -> Result<Json<Stats>, AppError> {
    let counters = s.hub.store.counters()?;
    let statuses = s.hub.store.statuses()?;
    let devices = s.hub.store.devices()?.len();
    let now = s.hub.now();
    let online = statuses
        .values()
        .filter(|st| views::is_online(st.received_at, now))
        .count();
    Ok(Json(Stats {
        devices,
        online,
        counters,
        manifests_published: s
            .publish
            .manifests_published
            .load(std::sync::atomic::Ordering::Relaxed),
        republish_all: s
            .publish
            .republish_all
            .load(std::sync::atomic::Ordering::Relaxed),
        publish_errors: s
            .publish
            .publish_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        broker_logins_refused: s
            .broker
            .as_ref()
            .map(|r| r.logins.load(std::sync::atomic::Ordering::Relaxed)),
        broker_topics_refused: s
            .broker
            .as_ref()
            .map(|r| r.topics.load(std::sync::atomic::Ordering::Relaxed)),
        watermarks_published: s
            .publish
            .watermarks_published
            .load(std::sync::atomic::Ordering::Relaxed),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(s): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<crate::store::AuditEntry>>, AppError> {
    Ok(Json(s.hub.store.audit(q.limit.unwrap_or(100).min(10_000))?))
}

async fn list_rollouts(
    State(s): State<ApiState>,
) -> Result<Json<Vec<crate::hub::rollouts::view::RolloutView>>, AppError> {
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let out = tokio::task::spawn_blocking(move || crate::hub::rollouts::views(&store, now))
        .await
        .map_err(|e| AppError::from(crate::hub::HubError::Internal(e.to_string())))??;
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
        .map_err(|e| AppError::from(crate::hub::HubError::Internal(e.to_string())))??
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no rollout of deployment {name:?}")))
}

async fn get_rollout(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<crate::hub::rollouts::view::RolloutView>, AppError> {
    rollout_view(&s, name).await
}

/// `POST /v1/rollouts/{name}/pause|resume|abort`: answers with the rollout's
/// view after the command.
async fn rollout_command(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<crate::hub::rollouts::view::RolloutView>, AppError> {
    use crate::hub::rollouts::Command;
    let cmd = match command.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        other => {
            return Err(AppError::not_found(format!(
                "no rollout command {other:?}; use pause, resume or abort"
            )))
        }
    };
    s.hub
        .rollout_command(name.clone(), cmd, who(&headers))
        .await?;
    rollout_view(&s, name).await
}
