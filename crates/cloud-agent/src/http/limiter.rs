//! Budgets: a token bucket per key ([`RateLimiter`]: a token id for the API, a user in the
//! gateway) and the per-address budgets of the endpoints anyone may call ([`Anonymous`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::http::error::ApiError;

/// A token bucket per key: `burst` requests at once, refilled at `per_second`.
pub struct RateLimiter<K = i64> {
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
    pub burst: f64,
    pub per_second: f64,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(burst: u32, per_second: f64) -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst),
            per_second,
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, key: K) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = b.entry(key).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// Per-address budgets for anonymous callers: a request rate and bodies read at once.
pub struct Anonymous {
    pub rate: crate::limits::AddressLimiter,
    pub bodies: Arc<crate::limits::InFlight>,
}

impl Anonymous {
    pub fn new(burst: u32, per_second: f64, bodies_per_address: usize) -> Arc<Self> {
        Arc::new(Anonymous {
            rate: crate::limits::AddressLimiter::new(burst, per_second),
            bodies: crate::limits::InFlight::new(bodies_per_address),
        })
    }

    /// Admits one request from `addr`, holding a body slot until the returned guard drops.
    pub fn admit(&self, addr: &str) -> Result<crate::limits::Slot, ApiError> {
        self.rate.check(addr).map_err(crate::limits::too_many)?;
        self.bodies.enter(addr)
    }
}
