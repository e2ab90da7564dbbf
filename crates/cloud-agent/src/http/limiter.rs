//! Budgets: a token bucket per key ([`RateLimiter`]: a token id for the API, a user in the
//! gateway) and the per-address budgets of the endpoints anyone may call ([`Anonymous`]).

use std::sync::Arc;

use crate::http::error::ApiError;
/// The token bucket per key (`governor`'s, keyed): see [`crate::limits::RateLimiter`].
pub use crate::limits::RateLimiter;

/// Per-address budgets for anonymous callers: a request rate and bodies read at once.
pub struct Anonymous {
    pub rate: RateLimiter<String>,
    pub bodies: Arc<crate::limits::InFlight>,
}

impl Anonymous {
    pub fn new(burst: u32, per_second: f64, bodies_per_address: usize) -> Arc<Self> {
        Arc::new(Anonymous {
            rate: RateLimiter::new(burst, per_second),
            bodies: crate::limits::InFlight::new(bodies_per_address),
        })
    }

    /// Admits one request from `addr`, holding a body slot until the returned guard drops.
    pub fn admit(&self, addr: &str) -> Result<crate::limits::Slot, ApiError> {
        self.rate
            .check(addr.to_owned())
            .map_err(crate::limits::too_many)?;
        self.bodies.enter(addr)
    }
}
