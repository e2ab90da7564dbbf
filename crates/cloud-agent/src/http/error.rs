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

/// Why a request body could not be read, from the error its stream ended with: past a size
/// limit (a route's `RequestBodyLimitLayer`, or the reader's own `max`), idle longer than the
/// server's body timeout (`RequestBodyTimeoutLayer`), or the client's connection.
pub fn body_error(e: &(dyn std::error::Error + 'static), max: usize) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(
                ErrorCode::TooLarge,
                format!("the request body is larger than {max} bytes"),
            );
        }
        if c.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(ErrorCode::Timeout, "the request body stalled");
        }
        cause = c.source();
    }
    ApiError::invalid(format!("reading the request body: {e}"))
}

/// Refusals made by tower-http's layers before a handler runs (a `Content-Length` past a
/// route's `RequestBodyLimitLayer` is a bare 413) become `{code, message}` like every other.
pub async fn layer_refusals(r: Response) -> Response {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !json => ApiError::new(
            ErrorCode::TooLarge,
            "the request body is larger than this route accepts",
        )
        .into_response(),
        _ => r,
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

    #[tokio::test]
    async fn tower_http_body_refusals_become_codes() {
        use axum::routing::post;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/",
                post(|body: axum::body::Body| async move {
                    crate::limits::read_body(&axum::http::HeaderMap::new(), body, 1 << 20)
                        .await
                        .map(|b| b.len().to_string())
                }),
            )
            .layer(tower_http::limit::RequestBodyLimitLayer::new(8))
            .layer(axum::middleware::map_response(layer_refusals));
        let send = |req: axum::http::Request<axum::body::Body>| app.clone().oneshot(req);
        // Declared too large: the layer refuses before the handler, as `{code, message}`.
        let r = send(
            axum::http::Request::post("/")
                .header(header::CONTENT_LENGTH, "9")
                .body(axum::body::Body::from("123456789"))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body: ErrorBody = serde_json::from_slice(&b).unwrap();
        assert_eq!(body.code, ErrorCode::TooLarge);
        // Streamed past the limit (no length): the stream's error is `too_large` too.
        let chunks = futures_util::stream::iter(
            ["12345", "6789"].map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c))),
        );
        let r = send(
            axum::http::Request::post("/")
                .body(axum::body::Body::from_stream(chunks))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let ok = send(
            axum::http::Request::post("/")
                .body(axum::body::Body::from("1234"))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
