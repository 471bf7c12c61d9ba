//! `/v1/tokens`: list, create and revoke API tokens (unscoped admin only).

use super::auth::allow;
use super::{body, ApiState, AppError};
use crate::access::{Caller, Request as Access, Role};
use crate::scope::Scope;
use crate::tokens::{self, NewToken, TokenView};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

fn internal(e: tokio::task::JoinError) -> AppError {
    AppError::from(crate::hub::HubError::Internal(e.to_string()))
}

/// Every token, revoked ones included; never a secret or hash.
pub(super) async fn list_tokens(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<TokenView>>, AppError> {
    allow(&s, &caller, Access::ManageTokens).await?;
    let all = s.hub.store.tokens()?;
    Ok(Json(all.iter().map(TokenView::from).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenRequest {
    name: String,
    role: Role,
    /// `"k=v,k2=v2"` or `{ "k": "v" }`; absent: the whole fleet.
    #[serde(default)]
    scope: Scope,
}

/// → 201 with the secret, the only time it is shown.
pub(super) async fn create_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    raw: Bytes,
) -> Result<(StatusCode, Json<NewToken>), AppError> {
    allow(&s, &caller, Access::ManageTokens).await?;
    let req: NewTokenRequest = body(&raw)?;
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let who = caller.who();
    let made = tokio::task::spawn_blocking(move || {
        tokens::create(&store, &req.name, req.role, req.scope, &who, now)
    })
    .await
    .map_err(internal)??;
    Ok((StatusCode::CREATED, Json(made)))
}

pub(super) async fn revoke_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, AppError> {
    allow(&s, &caller, Access::ManageTokens).await?;
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let who = caller.who();
    let revoked = tokio::task::spawn_blocking(move || tokens::revoke(&store, &name, &who, now))
        .await
        .map_err(internal)??;
    Ok(Json(revoked))
}
