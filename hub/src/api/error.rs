//! The one HTTP error type: a status, the bad field when there is one, and a
//! message that says what was wrong without exposing internals.

use crate::hub::HubError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub field: Option<String>,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl AppError {
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        AppError {
            status: StatusCode::BAD_REQUEST,
            field,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        AppError {
            status: StatusCode::NOT_FOUND,
            field: None,
            message: message.into(),
        }
    }

    pub fn unauthorized() -> Self {
        AppError {
            status: StatusCode::UNAUTHORIZED,
            field: None,
            message: "missing or wrong bearer token".into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.message,
            field: self.field.as_deref(),
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
            },
            HubError::Resolve { field, .. } => {
                AppError::bad_request(Some(field.clone()), e.to_string())
            }
            HubError::Render(_) | HubError::TooLarge { .. } | HubError::InvalidManifest { .. } => {
                AppError::bad_request(None, e.to_string())
            }
            HubError::NotFound { .. } => AppError::not_found(e.to_string()),
            HubError::Conflict(_) | HubError::Rollout(_) => AppError {
                status: StatusCode::CONFLICT,
                field: None,
                message: e.to_string(),
            },
            // The operator's own command failed: say how, and that the
            // device is removed and its certificate in the CRL.
            HubError::BrokerCa(crate::broker::ca::CaError::Hook { .. }) => {
                tracing::error!(error = %e, "on_revoke command failed");
                AppError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    field: None,
                    message: format!("the device is removed, but the broker was not told: {e}"),
                }
            }
            HubError::Store(_)
            | HubError::Keys(_)
            | HubError::BrokerCa(_)
            | HubError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                AppError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    field: None,
                    message: "internal error; see the hub log".into(),
                }
            }
        }
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(e: crate::store::StoreError) -> Self {
        HubError::from(e).into()
    }
}
