//! [`Caller`]: who is calling, from `Authorization: Bearer <token>`, after the token's rate
//! limit. Any router state that can hand out an [`Auth`] (`FromRef`) can extract it.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use crate::control::{Control, Identity};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::limiter::RateLimiter;

/// What authenticating a caller needs: the control plane and the per-token budget.
#[derive(Clone)]
pub struct Auth {
    pub control: Arc<Control>,
    pub limiter: Arc<RateLimiter>,
}

/// The caller, from `Authorization: Bearer <token>`, after the rate limit.
pub struct Caller(pub Identity);

/// The token of `Authorization: Bearer <token>`.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl Auth {
    /// The identity behind `headers`' bearer token, charged one request of its budget.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Identity, ApiError> {
        let token = bearer(headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing bearer token (Authorization: Bearer jt_…)",
            )
        })?;
        let who = self.control.identify(token)?;
        if let Err(wait) = self.limiter.check(who.token_id) {
            return Err(ApiError::rate_limited(
                wait,
                format!("too many requests with this token; retry in {wait} s"),
            ));
        }
        Ok(who)
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Auth: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Auth::from_ref(state).caller(&parts.headers).map(Caller)
    }
}
