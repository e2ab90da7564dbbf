//! Limits applied before anything is read: request bodies (per route, with an idle timeout),
//! request headers (a read timeout on every connection), and per-address budgets for the
//! endpoints anyone may call (pairing, webhooks). Each anonymous budget is per address, so one
//! client can spend only its own; nothing here is one shared counter.
//!
//! Never: buffer a body before the caller is authenticated where headers can authenticate it,
//! or keep per-address state without a bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;

use crate::api::ApiError;

/// Server-wide knobs, carried to extractors as a request extension (see [`layer`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request body that sends nothing for this long is refused with 408.
    pub body_idle: Duration,
    /// Headers must be complete within this long after a connection (or its previous
    /// request) starts.
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_idle: Duration::from_secs(10),
            header_read: Duration::from_secs(10),
        }
    }
}

/// Adds the limits to every request, for the extractors.
pub fn layer(router: axum::Router, limits: Limits) -> axum::Router {
    router.layer(axum::Extension(limits))
}

/// The key anonymous budgets are kept under: the IPv4 address, or the /64 of an IPv6 address
/// (one host usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The caller's address key (from the connection; see [`serve`]).
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Every connection `serve` accepts carries its address; a router driven some other
        // way (a test's `oneshot` without MockConnectInfo) shares one key.
        let key = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| address_key(c.0.ip()))
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientAddr(key))
    }
}

/// Token buckets per address, bounded: when the table is full, buckets that have refilled
/// (their address is idle) are dropped first; if none has, the oldest are.
pub struct AddressLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    burst: f64,
    per_second: f64,
    max_addresses: usize,
}

impl AddressLimiter {
    pub fn new(burst: u32, per_second: f64) -> Self {
        AddressLimiter {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(0.001),
            max_addresses: 100_000,
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if b.len() >= self.max_addresses && !b.contains_key(key) {
            let (burst, rate) = (self.burst, self.per_second);
            b.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
            if b.len() >= self.max_addresses {
                let mut ages: Vec<(Instant, String)> =
                    b.iter().map(|(k, (_, at))| (*at, k.clone())).collect();
                ages.sort();
                for (_, k) in ages.into_iter().take(self.max_addresses / 10 + 1) {
                    b.remove(&k);
                }
            }
        }
        let (tokens, at) = b.entry(key.to_owned()).or_insert((self.burst, now));
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

/// Anonymous request bodies being read at once, per address: one address cannot make the
/// server hold more than `per_address` bodies of its own.
pub struct InFlight {
    counts: Mutex<HashMap<String, usize>>,
    per_address: usize,
}

/// Held while a body is read; the slot frees when it drops.
pub struct Slot {
    owner: Arc<InFlight>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

impl InFlight {
    pub fn new(per_address: usize) -> Arc<Self> {
        Arc::new(InFlight {
            counts: Mutex::new(HashMap::new()),
            per_address: per_address.max(1),
        })
    }

    pub fn enter(self: &Arc<Self>, key: &str) -> Result<Slot, ApiError> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(key.to_owned()).or_insert(0);
        if *n >= self.per_address {
            return Err(too_many(1));
        }
        *n += 1;
        Ok(Slot {
            owner: self.clone(),
            key: key.to_owned(),
        })
    }
}

pub fn too_many(wait: u64) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: "rate_limited",
        message: format!("too many requests from this address; retry in {wait} s"),
        retry_after: Some(wait),
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        code: "too_large",
        message: format!("the request body is larger than {max} bytes"),
        retry_after: None,
    }
}

/// Refuses a declared `Content-Length` over `max` before anything is read.
pub fn check_length(headers: &HeaderMap, max: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => Err(too_large(max)),
        _ => Ok(()),
    }
}

/// Reads a body of at most `max` bytes; a pause longer than `idle` between chunks is 408.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    check_length(headers, max)?;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(ApiError {
                    status: StatusCode::REQUEST_TIMEOUT,
                    code: "timeout",
                    message: format!(
                        "the request body stalled for more than {} ms",
                        idle.as_millis()
                    ),
                    retry_after: None,
                });
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Ok(Some(Err(e))) => {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "invalid_request",
                    message: format!("reading the request body: {e}"),
                    retry_after: None,
                });
            }
            Ok(Some(Ok(chunk))) => {
                if out.len() + chunk.len() > max {
                    return Err(too_large(max));
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// The limits of this request (the defaults when the router was not wrapped by [`layer`]).
pub fn of(extensions: &axum::http::Extensions) -> Limits {
    extensions.get::<Limits>().copied().unwrap_or_default()
}

/// Serves `router` on `listener` until `shutdown`, with a header read timeout on every
/// connection (axum's own `serve` sets none, so half-sent headers would hold a connection
/// forever) and the peer's address on every request (`ConnectInfo<SocketAddr>`). Returns when
/// every connection has closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let connections = tokio_util::task::TaskTracker::new();
    let router = layer(router, limits);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // Sync frames are small and latency-bound: without TCP_NODELAY, Nagle's algorithm
        // and delayed ACKs hold frames back for ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(req.map(Body::new))
            },
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            // Finishes the response in flight (long-lived ones end with the server).
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_spends_only_its_own_budget() {
        let l = AddressLimiter::new(3, 0.001);
        for _ in 0..3 {
            assert!(l.check("10.0.0.1").is_ok());
        }
        assert!(l.check("10.0.0.1").is_err());
        assert!(l.check("10.0.0.2").is_ok());
    }

    #[test]
    fn the_limiter_table_stays_bounded() {
        let mut l = AddressLimiter::new(1, 0.001);
        l.max_addresses = 100;
        for i in 0..1000 {
            let _ = l.check(&format!("10.0.{}.{}", i / 256, i % 256));
        }
        assert!(l.buckets.lock().unwrap_or_else(|p| p.into_inner()).len() <= 100);
    }

    #[test]
    fn ipv6_hosts_share_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::from([0; 4]));
        assert_eq!(address_key(a), address_key(b));
        assert_eq!(address_key("127.0.0.2".parse().unwrap_or(a)), "127.0.0.2");
    }

    #[test]
    fn in_flight_slots_are_per_address_and_freed() {
        let f = InFlight::new(1);
        let s = f.enter("a");
        assert!(s.is_ok());
        assert!(f.enter("a").is_err());
        assert!(f.enter("b").is_ok());
        drop(s);
        assert!(f.enter("a").is_ok());
    }

    #[tokio::test]
    async fn bodies_are_refused_by_declared_length_size_and_stall() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_LENGTH,
            "100"
                .parse()
                .unwrap_or(header::HeaderValue::from_static("0")),
        );
        let e = read_body(&h, Body::from("x"), 10, Duration::from_secs(1)).await;
        assert_eq!(
            e.err().map(|e| e.status),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let e = read_body(
            &HeaderMap::new(),
            Body::from(vec![0u8; 11]),
            10,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(
            e.err().map(|e| e.status),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stalled = Body::from_stream(tokio_stream_from(rx));
        let e = read_body(&HeaderMap::new(), stalled, 10, Duration::from_millis(50)).await;
        assert_eq!(e.err().map(|e| e.status), Some(StatusCode::REQUEST_TIMEOUT));
        let ok = read_body(
            &HeaderMap::new(),
            Body::from("hello"),
            10,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(ok.ok().as_deref(), Some(&b"hello"[..]));
    }

    fn tokio_stream_from(
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
    }
}
