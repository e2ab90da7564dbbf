//! Limits applied before anything is read: request bodies (per route, with an idle timeout),
//! request headers (a read timeout on every connection), and per-address budgets for the
//! endpoints anyone may call (pairing, webhooks). Each anonymous budget is per address, so one
//! client can spend only its own; nothing here is one shared counter.
//!
//! Never: buffer a body before the caller is authenticated where headers can authenticate it,
//! or keep per-address state without a bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::http::error::{ApiError, ErrorCode};

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

/// The caller's address key (see [`serve`]: the connection's peer, or the client a trusted
/// proxy names).
pub struct ClientAddr(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Every request `serve` accepts carries its client's address; a router driven some
        // other way (a test's `oneshot` without MockConnectInfo) shares one key.
        let key = parts
            .extensions
            .get::<ClientIp>()
            .map(|c| c.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
            })
            .map(address_key)
            .unwrap_or_else(|| "unknown".into());
        Ok(ClientAddr(key))
    }
}

/// The client's address as [`TrustedProxies::client_ip`] found it, on every request `serve`
/// accepts.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// Which header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`: the right-most entry that is not a trusted proxy (each proxy appends
    /// the address it saw; everything left of that is whatever the client wrote).
    #[default]
    XForwardedFor,
    /// Fly.io's `Fly-Client-IP`, which Fly's proxy sets (replacing any the client sent).
    /// Only where Fly's proxy is the one in front: any other proxy passes a client's own
    /// `Fly-Client-IP` through.
    FlyClientIp,
}

/// Proxies whose word on the client's address is taken. Empty (the default): every header is
/// ignored and the TCP peer is the client, because a client must not choose its own budget.
/// Behind a reverse proxy every client's peer is the proxy, so they would all share one
/// anonymous budget; naming the proxy's addresses here gives each client its own.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
    header: ClientIpHeader,
}

/// `10.0.0.0/8`, `fd00::/8` or a bare address (all its bits).
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
    let ip = canonical(ip);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
    };
    Ok((ip, bits))
}

/// An IPv4 address reaching a dual-stack socket arrives as `::ffff:a.b.c.d`; compare it as the
/// IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, (net, bits): (IpAddr, u8)) -> bool {
    let mask = |width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (u128::MAX << (width - u32::from(bits))) & (u128::MAX >> (128 - width))
        }
    };
    match (canonical(ip), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = mask(32);
            u128::from(u32::from(a)) & m == u128::from(u32::from(n)) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = mask(128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

impl TrustedProxies {
    /// `list`: comma-separated addresses and CIDR ranges (empty: trust no proxy); `header`:
    /// `x-forwarded-for` or `fly-client-ip`.
    pub fn parse(list: &str, header: &str) -> Result<Self, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(parse_cidr)
            .collect::<Result<Vec<_>, _>>()?;
        let header = match header.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" | "" => ClientIpHeader::XForwardedFor,
            "fly-client-ip" => ClientIpHeader::FlyClientIp,
            other => {
                return Err(format!(
                    "unknown client address header {other:?} (x-forwarded-for or fly-client-ip)"
                ));
            }
        };
        // Trusting every address with X-Forwarded-For makes every hop "a proxy", and the
        // left-most entry, which the client wrote, the client: anyone picks their own budget.
        // (Fly-Client-IP is set by Fly's proxy itself, so there a /0 only trusts that the
        // proxy is the only way in.)
        if header == ClientIpHeader::XForwardedFor && nets.iter().any(|(_, bits)| *bits == 0) {
            return Err(
                "a /0 range with x-forwarded-for would let every client name its own \
                        address: list the proxy's own ranges"
                    .into(),
            );
        }
        Ok(TrustedProxies { nets, header })
    }

    /// Whether any proxy is trusted (off by default).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| in_net(ip, *n))
    }

    /// The client of a request that came from `peer`: `peer` itself unless `peer` is a
    /// trusted proxy that names the client in the configured header. In `X-Forwarded-For`
    /// (every such header, in order, as one list) that is the right-most entry that is not a
    /// trusted proxy; an entry that is not an address where one is needed means the chain
    /// cannot be read, and the peer is the client.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        match self.header {
            ClientIpHeader::FlyClientIp => headers
                .get("fly-client-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .map_or(peer, canonical),
            ClientIpHeader::XForwardedFor => {
                let mut entries = Vec::new();
                for v in headers.get_all("x-forwarded-for") {
                    let Ok(v) = v.to_str() else { return peer };
                    entries.extend(v.split(',').map(str::trim));
                }
                let mut client = peer;
                for entry in entries.into_iter().rev() {
                    let Some(ip) = parse_forwarded_entry(entry) else {
                        return peer;
                    };
                    client = ip;
                    if !self.trusts(ip) {
                        return ip;
                    }
                }
                // Every hop was a trusted proxy: the left-most is the closest to a client.
                client
            }
        }
    }
}

/// Says once per process that a forwarding header came from a peer that is not a trusted
/// proxy, with the peer's address: behind a reverse proxy, that is the address (or range) to
/// trust, and until then every client shares its budget.
fn note_ignored_forwarding(peer: IpAddr, headers: &HeaderMap) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if (headers.contains_key("x-forwarded-for") || headers.contains_key("fly-client-ip"))
        && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::info!(
            %peer,
            "a request came with X-Forwarded-For or Fly-Client-IP from an address that is not a \
             trusted proxy: ignored, so the per-address anonymous limits count this peer; behind \
             a reverse proxy, set JARVIS_TRUSTED_PROXIES to its addresses"
        );
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    entry.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// The one rate limiter of the server, per key (a token id for the API, a user for the gateway,
/// an address for the anonymous endpoints): `burst` requests at once, then `per_second`. The
/// arithmetic is `governor`'s (GCRA, equivalent to a token bucket); the table of keys is ours,
/// because it must stay bounded under a flood of new addresses (see [`BoundedKeys`]).
pub struct RateLimiter<K: Hash + Eq + Clone = i64> {
    inner: governor::RateLimiter<K, BoundedKeys<K>, governor::clock::DefaultClock>,
}

/// Keys a limiter remembers at most.
const MAX_KEYS: usize = 100_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self::bounded(burst, per_second, MAX_KEYS)
    }

    fn bounded(burst: u32, per_second: f64, max_keys: usize) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / per_second.max(0.001));
        let quota = governor::Quota::with_period(period)
            .unwrap_or_else(|| governor::Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let store = BoundedKeys {
            keys: Mutex::new(HashMap::new()),
            max: max_keys.max(1),
        };
        RateLimiter {
            inner: governor::RateLimiter::new(
                quota,
                store,
                governor::clock::DefaultClock::default(),
            ),
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, key: K) -> Result<(), u64> {
        use governor::clock::Clock;
        self.inner.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.inner.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// `governor`'s state per key (the theoretical arrival time of the next request), at most `max`
/// keys: when a new key finds the table full, the tenth whose budgets refilled longest ago goes
/// (an idle key's state is the earliest arrival time, and one that has refilled is the same as a
/// fresh one). Governor's own stores only drop refilled keys, which a flood of busy new keys
/// would never let happen.
struct BoundedKeys<K> {
    keys: Mutex<HashMap<K, governor::nanos::Nanos>>,
    max: usize,
}

impl<K: Hash + Eq + Clone> governor::state::StateStore for BoundedKeys<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<governor::nanos::Nanos>) -> Result<(T, governor::nanos::Nanos), E>,
    {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let (out, next) = f(keys.get(key).copied())?;
        if keys.len() >= self.max && !keys.contains_key(key) {
            let mut by_age: Vec<(governor::nanos::Nanos, K)> =
                keys.iter().map(|(k, t)| (*t, k.clone())).collect();
            by_age.sort_by_key(|(t, _)| *t);
            for (_, k) in by_age.into_iter().take(self.max / 10 + 1) {
                keys.remove(&k);
            }
        }
        keys.insert(key.clone(), next);
        Ok(out)
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
    ApiError::rate_limited(
        wait,
        format!("too many requests from this address; retry in {wait} s"),
    )
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the request body is larger than {max} bytes"),
    )
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

/// Reads a body of at most `max` bytes. A stall is the idle timeout's (tower-http's
/// `RequestBodyTimeoutLayer`, which `crate::app::app` puts on every route) and a size past a
/// route's `RequestBodyLimitLayer` or this `max` ends the stream too: either error becomes its
/// `{code, message}` (408 `timeout`, 413 `too_large`) in [`crate::http::error::body_error`].
pub async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, ApiError> {
    check_length(headers, max)?;
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, max)).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(crate::http::error::body_error(&*e, max)),
    }
}

/// The limits of this request (the defaults when the router was not wrapped by [`layer`]).
pub fn of(extensions: &axum::http::Extensions) -> Limits {
    extensions.get::<Limits>().copied().unwrap_or_default()
}

/// Serves `router` on `listener` until `shutdown`, with a header read timeout on every
/// connection (axum's own `serve` sets none, so half-sent headers would hold a connection
/// forever), the peer's address on every request (`ConnectInfo<SocketAddr>`) and the client's
/// ([`ClientIp`]: the peer, or whom a trusted proxy names). Returns when every connection has
/// closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: Limits,
    proxies: TrustedProxies,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let connections = tokio_util::task::TaskTracker::new();
    let router = layer(router, limits);
    let proxies = Arc::new(proxies);
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
        let proxies = proxies.clone();
        let service = hyper::service::service_fn(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                let client = proxies.client_ip(peer.ip(), req.headers());
                if !proxies.trusts(canonical(peer.ip())) {
                    note_ignored_forwarding(peer.ip(), req.headers());
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(ClientIp(client));
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
    use std::time::Instant;

    use super::*;
    use axum::http::StatusCode;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0; 4]))
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                "x-forwarded-for",
                v.parse()
                    .unwrap_or(header::HeaderValue::from_static("invalid")),
            );
        }
        h
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let none = TrustedProxies::default();
        let h = xff(&["203.0.113.9"]);
        assert_eq!(none.client_ip(ip("198.51.100.7"), &h), ip("198.51.100.7"));
        let fly = TrustedProxies::parse("10.0.0.0/8", "fly-client-ip").unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert(
            "fly-client-ip",
            header::HeaderValue::from_static("203.0.113.9"),
        );
        // A client outside the trusted range names itself: ignored.
        assert_eq!(fly.client_ip(ip("198.51.100.7"), &h), ip("198.51.100.7"));
        // Fly's proxy names it: taken.
        assert_eq!(fly.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.9"));
        // Configured for Fly, X-Forwarded-For is not read at all.
        assert_eq!(
            fly.client_ip(ip("10.1.2.3"), &xff(&["203.0.113.5"])),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_client_is_the_right_most_untrusted_entry() {
        let p = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8,fd00::/8", "x-forwarded-for")
            .unwrap_or_default();
        let peer = ip("127.0.0.1");
        // The client's own (spoofed) entries sit left of what the proxies appended.
        let h = xff(&["1.1.1.1, 2.2.2.2", "203.0.113.9, 10.0.0.5"]);
        assert_eq!(p.client_ip(peer, &h), ip("203.0.113.9"));
        assert_eq!(
            p.client_ip(peer, &xff(&["203.0.113.9:4711"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            p.client_ip(peer, &xff(&["[2001:db8::1]:443, fd00::2"])),
            ip("2001:db8::1")
        );
        // An IPv4 peer on a dual-stack socket is still the trusted 127.0.0.1.
        assert_eq!(
            p.client_ip(ip("::ffff:127.0.0.1"), &xff(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
        // No header, an unreadable hop, or only proxies: never an address the client chose.
        assert_eq!(p.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(p.client_ip(peer, &xff(&["203.0.113.9, junk"])), peer);
        assert_eq!(
            p.client_ip(peer, &xff(&["junk, 203.0.113.9"])),
            ip("203.0.113.9")
        );
        assert_eq!(
            p.client_ip(peer, &xff(&["10.0.0.7, 10.0.0.5"])),
            ip("10.0.0.7")
        );
    }

    #[test]
    fn trusted_ranges_parse_and_match_exactly() {
        assert!(TrustedProxies::parse("10.0.0.0/33", "").is_err());
        assert!(TrustedProxies::parse("fd00::/129", "").is_err());
        assert!(TrustedProxies::parse("proxy.internal", "").is_err());
        assert!(TrustedProxies::parse("10.0.0.1", "forwarded").is_err());
        let p = TrustedProxies::parse("172.16.0.0/12,::1", "").unwrap_or_default();
        assert!(p.trusts(ip("172.31.255.255")));
        assert!(!p.trusts(ip("172.32.0.0")));
        assert!(p.trusts(ip("::1")));
        assert!(!p.trusts(ip("::2")));
        // With X-Forwarded-For, trusting everyone is trusting the client's own entry.
        assert!(TrustedProxies::parse("0.0.0.0/0", "x-forwarded-for").is_err());
        assert!(TrustedProxies::parse("::/0", "").is_err());
        let all = TrustedProxies::parse("0.0.0.0/0", "fly-client-ip").unwrap_or_default();
        assert!(all.trusts(ip("8.8.8.8")));
        assert!(!all.trusts(ip("2001:db8::1")));
        assert!(TrustedProxies::parse("", "").is_ok_and(|p| p.nets.is_empty()));
    }

    #[test]
    fn one_address_spends_only_its_own_budget() {
        let l = RateLimiter::<String>::new(3, 0.001);
        for _ in 0..3 {
            assert!(l.check("10.0.0.1".into()).is_ok());
        }
        // One request per 1000 s: the wait says so.
        let Err(wait) = l.check("10.0.0.1".into()) else {
            panic!("a fourth request passed a burst of three");
        };
        assert!((990..=1000).contains(&wait), "{wait}");
        assert!(l.check("10.0.0.2".into()).is_ok());
    }

    #[test]
    fn the_budget_refills_at_the_given_rate() {
        let l = RateLimiter::<i64>::new(1, 1000.0);
        assert!(l.check(1).is_ok());
        let limited = l.check(1);
        assert_eq!(limited, Err(1), "the wait is rounded up to a whole second");
        let deadline = Instant::now() + Duration::from_secs(5);
        while l.check(1).is_err() {
            assert!(Instant::now() < deadline, "never refilled");
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_limiter_table_stays_bounded() {
        let l = RateLimiter::<String>::bounded(1, 0.001, 100);
        for i in 0..1000 {
            let _ = l.check(format!("10.0.{}.{}", i / 256, i % 256));
        }
        // The newest keys are kept (a key just limited stays limited).
        assert!(l.check("10.0.3.231".into()).is_err());
        let keys = l.inner.into_state_store().keys;
        assert!(keys.lock().unwrap_or_else(|p| p.into_inner()).len() <= 100);
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
        let e = read_body(&h, Body::from("x"), 10).await;
        assert_eq!(
            e.err().map(|e| e.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let e = read_body(&HeaderMap::new(), Body::from(vec![0u8; 11]), 10).await;
        assert_eq!(
            e.err().map(|e| e.status()),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        // The idle timeout is tower-http's, as `app()` puts it on every route.
        let stalled = Body::new(tower_http::timeout::TimeoutBody::new(
            Duration::from_millis(50),
            Body::from_stream(tokio_stream_from(rx)),
        ));
        let e = read_body(&HeaderMap::new(), stalled, 10).await;
        assert_eq!(
            e.err().map(|e| e.status()),
            Some(StatusCode::REQUEST_TIMEOUT)
        );
        let ok = read_body(&HeaderMap::new(), Body::from("hello"), 10).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"hello"[..]));
    }

    fn tokio_stream_from(
        rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
    }
}
