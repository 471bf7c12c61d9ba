//! Authentication and authorization of API requests: the middleware that turns
//! the bearer token into a [`Caller`] (401 when it is missing, unknown or
//! revoked), and [`allow`], which asks `access::decide` and turns a denial
//! into an audited 403.

use super::{ApiState, AppError};
use crate::access::{self, Caller, Denied, Request};
use crate::store::AuditEntry;

use axum::extract::{Request as HttpRequest, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

/// Look the bearer token up (by its hash) and attach the [`Caller`]. The
/// store is read on every request, so a revoked token fails at once.
pub(super) async fn authenticate(
    State(s): State<ApiState>,
    mut req: HttpRequest,
    next: Next,
) -> Result<Response, AppError> {
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let Some(secret) = secret else {
        return Err(AppError::unauthorized());
    };
    let store = s.hub.store.clone();
    let now = s.hub.now();
    let caller =
        tokio::task::spawn_blocking(move || crate::tokens::authenticate(&store, &secret, now))
            .await
            .map_err(|e| AppError::from(crate::hub::HubError::Internal(e.to_string())))??;
    let Some(caller) = caller else {
        // Not audited: anyone who can reach the port could fill the log.
        tracing::warn!(method = %req.method(), path = %req.uri().path(), "API request with an unknown or revoked token");
        return Err(AppError::unauthorized());
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// May `caller` make `request`? A denial is recorded in the audit log
/// (`access.refused`, by `token:<name>`) and answered with 403.
pub(super) async fn allow(
    s: &ApiState,
    caller: &Caller,
    request: Request<'_>,
) -> Result<(), AppError> {
    match access::decide(caller, &request) {
        Ok(()) => Ok(()),
        Err(denied) => Err(refuse(s, denied).await),
    }
}

/// Audit a denial and make its 403.
pub(super) async fn refuse(s: &ApiState, denied: Denied) -> AppError {
    tracing::warn!(token = %denied.token, role = %denied.role, scope = %denied.scope, refused = %denied.refused, reason = %denied.reason, "API request refused");
    let entry = AuditEntry {
        seq: 0,
        at: s.hub.now(),
        who: format!("token:{}", denied.token),
        action: "access.refused".into(),
        target: denied.refused.clone(),
        detail: serde_json::json!({
            "role": denied.role,
            "scope": denied.scope,
            "reason": denied.reason,
        }),
    };
    let store = s.hub.store.clone();
    let audited =
        tokio::task::spawn_blocking(move || store.write(|tx| tx.append_audit(entry))).await;
    match audited {
        Ok(Ok(_)) => AppError::forbidden(denied),
        // The refusal stands either way; failing to record it is logged.
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot audit a refused API request");
            AppError::forbidden(denied)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot audit a refused API request");
            AppError::forbidden(denied)
        }
    }
}
