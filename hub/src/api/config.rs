//! `/v1/config`: configuration variables. `GET` lists them (cut down to the
//! scopes the caller sees), `PATCH` changes one scope's (operators and admins
//! whose token scope covers every device the variable can reach), and
//! `GET /v1/devices/{id}/config` shows what each app on a device gets and
//! from where.

use super::auth::allow;
use super::{body, device_id, readable_device, selector_of, ApiState, AppError};
use crate::access::{Caller, Request as Access};
use crate::hub::{ConfigChange, ConfigEntry, ConfigOutcome, DeviceConfig};
use crate::vars::Scope;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use std::collections::BTreeMap;

/// The labels every device a variable at `scope` can reach carries; `None`:
/// the whole fleet. An unknown device or deployment reaches nothing known,
/// which only an unscoped token covers (the hub then says it is not found).
fn reach(s: &ApiState, scope: &Scope) -> Result<Option<BTreeMap<String, String>>, AppError> {
    if let Some(d) = &scope.device {
        let labels = match d.parse() {
            Ok(id) => s.hub.store.device(&id)?.map(|r| r.labels),
            Err(_) => None,
        };
        return Ok(Some(labels.unwrap_or_default()));
    }
    if !scope.selector.is_empty() {
        return Ok(Some(scope.selector.clone()));
    }
    if let Some(name) = &scope.deployment {
        return Ok(Some(selector_of(s, name)?));
    }
    Ok(None)
}

pub(super) async fn list_config(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<ConfigEntry>>, AppError> {
    allow(&s, &caller, Access::List).await?;
    let mut out = Vec::new();
    for e in s.hub.config()? {
        let seen = match reach(&s, &e.scope)? {
            None => true,
            Some(labels) => caller.sees_deployment(&labels),
        };
        if seen {
            out.push(e);
        }
    }
    Ok(Json(out))
}

pub(super) async fn change_config(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Result<Json<ConfigOutcome>, AppError> {
    let change: ConfigChange = body(&raw)?;
    change.scope.check().map_err(crate::hub::HubError::from)?;
    let reach = reach(&s, &change.scope)?;
    let text = change.scope.to_string();
    allow(
        &s,
        &caller,
        Access::ChangeConfig {
            scope: &text,
            reach: reach.as_ref(),
        },
    )
    .await?;
    Ok(Json(s.hub.change_config(change, caller.who()).await?))
}

pub(super) async fn device_config(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<DeviceConfig>, AppError> {
    let id = device_id(&id)?;
    readable_device(&s, &caller, &id).await?;
    Ok(Json(s.hub.device_config(id).await?))
}
