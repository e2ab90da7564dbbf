//! [`ApiError`]: `{code, message}` with the status its [`ErrorCode`] implies, and
//! `Retry-After` when there is a time to wait. Every route of the hub answers errors with it
//! (the API, blobs, updates, webhooks, the web UI's unknown `/api` paths) — except the LLM
//! gateway, whose clients are Anthropic's SDKs and expect Anthropic's error shape
//! (`crate::gateway::error`).
//!
//! The status is the code's ([`ErrorCode::status`]), never chosen beside it, so a client that
//! branches on the code and one that branches on the status agree.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use jarvis_wire::{ErrorBody, ErrorCode};

use crate::control::ControlError;

/// `{code, message}`, and the seconds to wait for `rate_limited`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

pub type ApiResult<T = Json<serde_json::Value>> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `invalid_request`: the request is malformed or a value is out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    /// `rate_limited` with `Retry-After: wait`.
    pub fn rate_limited(wait: u64, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(ErrorCode::RateLimited, message)
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut r = (
            status,
            Json(ErrorBody {
                code: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let code = match &e {
            ControlError::Unauthorized(_) => ErrorCode::Unauthorized,
            ControlError::Forbidden(_) => ErrorCode::Forbidden,
            ControlError::NotFound(_) => ErrorCode::NotFound,
            ControlError::Conflict(_) => ErrorCode::Conflict,
            ControlError::Invalid(_) => ErrorCode::InvalidRequest,
            ControlError::Pending(_) => ErrorCode::AuthorizationPending,
            ControlError::Db(err) => {
                tracing::error!(error = %err, "control database error");
                ErrorCode::Storage
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<jarvis_sync::hub::HubError> for ApiError {
    fn from(e: jarvis_sync::hub::HubError) -> Self {
        ApiError::new(ErrorCode::Unavailable, e.to_string())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::from(ControlError::Db(e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_body_is_the_wire_error_and_the_status_is_the_codes() {
        for code in ErrorCode::ALL {
            let r = ApiError::new(code, "why").into_response();
            assert_eq!(r.status().as_u16(), code.status(), "{code}");
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                body,
                ErrorBody {
                    code,
                    message: "why".into()
                }
            );
        }
        let r = ApiError::rate_limited(7, "slow down").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }
}
