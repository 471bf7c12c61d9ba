//! The one HTTP error type: a status, the bad field when there is one, and a
//! message that says what was wrong without exposing internals.

use crate::access::{Denied, Role};
use crate::hub::{HubError, SecretProblem};
use crate::tokens::TokenError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
    /// For a 403 of the access rules: the token's role and scope and what
    /// was refused, also as fields of the body.
    pub denied: Option<Box<Denied>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    /// `""` for the whole fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a str>,
}

impl AppError {
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        AppError {
            status: StatusCode::BAD_REQUEST,
            field,
            message: message.into(),
            denied: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        AppError {
            status: StatusCode::NOT_FOUND,
            field: None,
            message: message.into(),
            denied: None,
        }
    }

    pub fn unauthorized() -> Self {
        AppError {
            status: StatusCode::UNAUTHORIZED,
            field: None,
            message: "missing, unknown or revoked bearer token".into(),
            denied: None,
        }
    }

    /// 403: the token's role or scope does not allow the request.
    pub fn forbidden(denied: Denied) -> Self {
        AppError {
            status: StatusCode::FORBIDDEN,
            field: None,
            message: denied.to_string(),
            denied: Some(Box::new(denied)),
        }
    }

    fn internal() -> Self {
        AppError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            field: None,
            message: "internal error; see the hub log".into(),
            denied: None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let d = self.denied.as_deref();
        let body = Body {
            error: &self.message,
            field: self.field.as_deref(),
            token: d.map(|d| d.token.as_str()),
            role: d.map(|d| d.role),
            scope: d.map(|d| d.scope.to_string()),
            refused: d.map(|d| d.refused.as_str()),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<HubError> for AppError {
    fn from(e: HubError) -> Self {
        match &e {
            HubError::Invalid(s) => AppError::bad_request(Some(s.field.clone()), e.to_string()),
            HubError::Refused(r) => AppError {
                status: StatusCode::FORBIDDEN,
                field: r.0.first().map(|r| r.field.clone()),
                message: e.to_string(),
                denied: None,
            },
            HubError::Resolve { field, .. } => {
                AppError::bad_request(Some(field.clone()), e.to_string())
            }
            HubError::Render(_) | HubError::TooLarge { .. } | HubError::InvalidManifest { .. } => {
                AppError::bad_request(None, e.to_string())
            }
            HubError::NotFound { .. } => AppError::not_found(e.to_string()),
            HubError::Secret(
                SecretProblem::NoEncryptionKey { .. }
                | SecretProblem::Unknown { .. }
                | SecretProblem::NotText { .. }
                | SecretProblem::Seal(_),
            ) => AppError::bad_request(None, e.to_string()),
            HubError::Secret(SecretProblem::InUse { .. } | SecretProblem::StillNeeded { .. }) => {
                AppError {
                    status: StatusCode::CONFLICT,
                    field: None,
                    message: e.to_string(),
                    denied: None,
                }
            }
            HubError::Secret(SecretProblem::NoKey | SecretProblem::AtRest(_)) => {
                tracing::error!(error = %e, "secret store failed");
                AppError::internal()
            }
            HubError::Conflict(_) | HubError::Rollout(_) => AppError {
                status: StatusCode::CONFLICT,
                field: None,
                message: e.to_string(),
                denied: None,
            },
            // The operator's own command failed: say how, and that the
            // device is removed and its certificate in the CRL.
            HubError::BrokerCa(crate::broker::ca::CaError::Hook { .. }) => {
                tracing::error!(error = %e, "on_revoke command failed");
                AppError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    field: None,
                    message: format!("the device is removed, but the broker was not told: {e}"),
                    denied: None,
                }
            }
            HubError::Store(_)
            | HubError::Keys(_)
            | HubError::BrokerCa(_)
            | HubError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                AppError::internal()
            }
        }
    }
}

impl From<TokenError> for AppError {
    fn from(e: TokenError) -> Self {
        match &e {
            TokenError::BadName { .. } => AppError::bad_request(Some("name".into()), e.to_string()),
            TokenError::ScopedAdmin { .. } => {
                AppError::bad_request(Some("scope".into()), e.to_string())
            }
            TokenError::NotFound { .. } => AppError::not_found(e.to_string()),
            TokenError::Exists { .. }
            | TokenError::AlreadyRevoked { .. }
            | TokenError::LastAdmin { .. } => AppError {
                status: StatusCode::CONFLICT,
                field: None,
                message: e.to_string(),
                denied: None,
            },
            TokenError::Secret(_)
            | TokenError::Read { .. }
            | TokenError::Empty { .. }
            | TokenError::Store(_) => {
                tracing::error!(error = %e, "token operation failed");
                AppError::internal()
            }
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        HubError::from(e).into()
    }
}
