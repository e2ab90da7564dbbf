//! [`Body`]: a JSON body of at most `MAX` bytes, read with the server's idle timeout, whose
//! refusals are `{code, message}` like every other error.

use axum::http::header;

use crate::http::error::{ApiError, ErrorCode};

/// A JSON body of at most `MAX` bytes (413), whose parse errors are `{code, message}` too.
/// Extracted last, so the caller is authenticated (from headers) before a byte of it is read.
/// The route's group caps bodies before this (`RequestBodyLimitLayer`, [`limit`]) and the app
/// times out stalled ones (`RequestBodyTimeoutLayer`, 408); `MAX` is the handler's own, smaller
/// where one route of a group takes less.
pub struct Body<T, const MAX: usize = DEFAULT>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync, const MAX: usize> axum::extract::FromRequest<S>
    for Body<T, MAX>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::invalid("expected Content-Type: application/json"));
        }
        let bytes = crate::limits::read_body(&parts.headers, body, MAX).await?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the request body is not valid: {e}"),
            )
        })
    }
}

/// A large JSON body: a handoff's or a release's expected state for a large workspace (about
/// 40 bytes per file).
pub type LargeBody<T> = Body<T, LARGE>;
/// What anonymous endpoints accept.
pub type SmallBody<T> = Body<T, SMALL>;

/// Bodies one group of routes accepts: its largest handler's. Refused by tower-http before the
/// handler when the declared length is larger, and cut off when a streamed one grows past it.
pub fn limit(max: usize) -> tower_http::limit::RequestBodyLimitLayer {
    tower_http::limit::RequestBodyLimitLayer::new(max)
}

/// What pairing's anonymous endpoints accept.
pub const SMALL: usize = 4096;
/// What most JSON routes accept.
pub const DEFAULT: usize = 65_536;
/// A message or a new session's first message.
pub const MESSAGE: usize = 1024 * 1024;
/// A handoff's or a release's expected state for a large workspace (about 40 bytes per file).
pub const LARGE: usize = 8 * 1024 * 1024;
