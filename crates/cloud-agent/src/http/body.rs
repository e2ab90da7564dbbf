//! [`Body`]: a JSON body of at most `MAX` bytes, read with the server's idle timeout, whose
//! refusals are `{code, message}` like every other error.

use axum::http::header;

use crate::http::error::{ApiError, ErrorCode};

/// A JSON body of at most `MAX` bytes, read with the server's idle timeout (413 and 408),
/// whose parse errors are `{code, message}` too. Extracted last, so the caller is
/// authenticated (from headers) before a byte of it is read.
pub struct Body<T, const MAX: usize = 65_536>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync, const MAX: usize> axum::extract::FromRequest<S>
    for Body<T, MAX>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let limits = crate::limits::of(req.extensions());
        let (parts, body) = req.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::invalid("expected Content-Type: application/json"));
        }
        let bytes = crate::limits::read_body(&parts.headers, body, MAX, limits.body_idle).await?;
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
pub type LargeBody<T> = Body<T, { 8 * 1024 * 1024 }>;
/// What anonymous endpoints accept.
pub type SmallBody<T> = Body<T, 4096>;
