//! The leaf HTTP layer every feature's routes stand on: the one error type behind every
//! `{code, message}` ([`error`]), who is calling ([`caller`]), JSON bodies read within a limit
//! ([`body`]) and the per-token and per-address budgets ([`limiter`]).
//!
//! Never: name a feature (sessions, gateway, schedules, webhooks) or the API's state; features
//! import this, never the other way round (held by `tests/layout.rs`).

pub mod body;
pub mod caller;
pub mod error;
pub mod limiter;

pub use body::{Body, LargeBody, SmallBody};
pub use caller::{Auth, Caller, bearer};
pub use error::{ApiError, ApiResult, ErrorCode};
pub use limiter::{Anonymous, RateLimiter};
