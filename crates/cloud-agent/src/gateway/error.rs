//! The gateway's errors in the shape Anthropic's clients expect:
//! `{type: "error", error: {type, message}}` with Anthropic's error types
//! (`authentication_error`, `permission_error`, `rate_limit_error`, `api_error`, …).
//!
//! Deliberately not `crate::http::ApiError`: the gateway's clients are Anthropic's SDKs and
//! Claude Code, which parse the provider's wire format (its error types decide their retries),
//! not the hub's `{code, message}`. Every other route answers with `ApiError`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::control::ControlError;

/// An error in the shape Anthropic's clients expect: `{type: "error", error: {type, message}}`.
#[derive(Debug)]
pub struct GatewayError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

impl GatewayError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = json!({"type": "error", "error": {"type": self.kind, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<ControlError> for GatewayError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Unauthorized(m) => {
                GatewayError::new(StatusCode::UNAUTHORIZED, "authentication_error", m)
            }
            ControlError::Db(err) => {
                tracing::error!(error = %err, "gateway: control database error");
                GatewayError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "access check unavailable",
                )
            }
            other => {
                GatewayError::new(StatusCode::FORBIDDEN, "permission_error", other.to_string())
            }
        }
    }
}
