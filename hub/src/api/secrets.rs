//! `/v1/secrets`: set a secret's value (the raw request body) for the fleet
//! or a scope (`?device=` | `?selector=k=v,k2=v2` | `?deployment=`, and
//! `&app=`), list names with scope, version, SHA-256 and size, remove.
//! Unscoped admin only. No answer ever carries a value.

use super::auth::allow;
use super::{ApiState, AppError};
use crate::access::{Caller, Request as Access};
use crate::hub::{SecretInfo, SecretOutcome};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use zeroize::Zeroizing;

pub(super) async fn list_secrets(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<SecretInfo>>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    Ok(Json(s.hub.secrets()?))
}

/// Where a value applies, as query parameters; none: the whole fleet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeQuery {
    device: Option<String>,
    /// `k=v[,k2=v2]`.
    selector: Option<String>,
    deployment: Option<String>,
    app: Option<String>,
}

impl ScopeQuery {
    fn scope(self) -> Result<crate::vars::Scope, AppError> {
        let selector = match self.selector.as_deref() {
            None => Default::default(),
            Some(text) => {
                crate::scope::Scope::parse(text)
                    .map_err(|e| AppError::bad_request(Some("selector".into()), e.to_string()))?
                    .0
            }
        };
        Ok(crate::vars::Scope {
            device: self.device,
            selector,
            deployment: self.deployment,
            app: self.app,
        })
    }
}

/// `PUT /v1/secrets/{name}` with the value as the body (any bytes).
pub(super) async fn set_secret(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(scope): Query<ScopeQuery>,
    raw: Bytes,
) -> Result<Json<SecretOutcome>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    let scope = scope.scope()?;
    let value = Zeroizing::new(raw.to_vec());
    drop(raw);
    Ok(Json(
        s.hub.set_secret(name, scope, value, caller.who()).await?,
    ))
}

pub(super) async fn remove_secret(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(scope): Query<ScopeQuery>,
) -> Result<Json<SecretInfo>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    let scope = scope.scope()?;
    Ok(Json(s.hub.remove_secret(name, scope, caller.who()).await?))
}
