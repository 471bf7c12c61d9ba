//! `/v1/secrets`: set a secret's value (the raw request body), list names
//! with version, SHA-256 and size, remove. Unscoped admin only. No answer
//! ever carries a value.

use super::auth::allow;
use super::{ApiState, AppError};
use crate::access::{Caller, Request as Access};
use crate::hub::{SecretInfo, SecretOutcome};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use zeroize::Zeroizing;

pub(super) async fn list_secrets(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<SecretInfo>>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    Ok(Json(s.hub.secrets()?))
}

/// `PUT /v1/secrets/{name}` with the value as the body (any bytes).
pub(super) async fn set_secret(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    raw: Bytes,
) -> Result<Json<SecretOutcome>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    let value = Zeroizing::new(raw.to_vec());
    drop(raw);
    Ok(Json(s.hub.set_secret(name, value, caller.who()).await?))
}

pub(super) async fn remove_secret(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<SecretInfo>, AppError> {
    allow(&s, &caller, Access::ManageSecrets).await?;
    Ok(Json(s.hub.remove_secret(name, caller.who()).await?))
}
