//! The network policy of a cloud workspace, on top of the sandbox's closed default: an egress
//! proxy on the host, one Unix socket per workspace, that checks every destination.
//!
//! Inside bubblewrap (`--unshare-net`) a process has only its own loopback. The [`ProxyEgress`]
//! hook binds the workspace's proxy socket and a tiny forwarder into the sandbox; the forwarder
//! ([`forward_main`]) listens on the sandbox's loopback port [`INSIDE_PORT`], carries each
//! connection to the socket, and runs the command with `HTTP_PROXY`/`HTTPS_PROXY` pointing at it.
//! So the only way out is an HTTP `CONNECT` or a plain-HTTP proxy request to the host's proxy,
//! which allows it or answers 403:
//!
//! - [`NetworkPolicy::Off`]: nothing (no proxy at all: the closed default).
//! - [`NetworkPolicy::Allow`]: host names on the list (`example.org` exactly, `*.example.org`
//!   any subdomain); by default the package registries a setup needs ([`DEFAULT_ALLOW`]).
//! - [`NetworkPolicy::Full`]: any name.
//!
//! Whatever the policy, the proxy connects to the address it resolved itself (no second lookup
//! to rebind) and never to loopback, link-local (cloud metadata), private or shared ranges
//! ([`forbidden_destination`]), nor to an address of this machine's own interfaces — that is
//! where the server's own ports and its neighbours are.
//! The one exception is [`ProxyConfig::test_resolve`], names pinned to addresses, which only a
//! test build of the server fills (see `JARVIS_EGRESS_TEST`): tests need a name that reaches a
//! loopback server, and that bypass is explicit there and nowhere else.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sandbox::{Egress, EgressRoute, forbidden_destination};

/// The loopback port of the sandbox's own network namespace the forwarder listens on.
pub const INSIDE_PORT: u16 = 3128;
/// Where the proxy's socket and the forwarder appear inside the sandbox.
pub const INSIDE_SOCKET: &str = "/run/jarvis/egress.sock";
pub const INSIDE_FORWARDER: &str = "/run/jarvis/egress-forward";
/// The argument that selects the forwarder in a binary that has other jobs too.
pub const FORWARD_ARG: &str = "egress-forward";

/// Package registries: what `policy = "allow"` reaches when it lists no hosts.
pub const DEFAULT_ALLOW: &[&str] = &[
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "pypi.org",
    "files.pythonhosted.org",
    "crates.io",
    "index.crates.io",
    "static.crates.io",
    "proxy.golang.org",
    "sum.golang.org",
    "rubygems.org",
    "repo.maven.apache.org",
];

/// The largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPolicy {
    Off,
    Allow(Vec<String>),
    Full,
}

impl NetworkPolicy {
    /// `allow` with no list: the package registries.
    pub fn allow_default() -> NetworkPolicy {
        NetworkPolicy::Allow(DEFAULT_ALLOW.iter().map(|s| (*s).to_owned()).collect())
    }

    /// Whether a host name may be asked for (before resolving it).
    pub fn permits(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self {
            NetworkPolicy::Off => false,
            NetworkPolicy::Full => true,
            NetworkPolicy::Allow(list) => list.iter().any(|entry| {
                let entry = entry.trim_end_matches('.').to_ascii_lowercase();
                match entry.strip_prefix("*.") {
                    Some(domain) => {
                        host.len() > domain.len() + 1
                            && host.ends_with(domain)
                            && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                    }
                    None => host == entry,
                }
            }),
        }
    }

    /// One line for the session view.
    pub fn describe(&self) -> String {
        match self {
            NetworkPolicy::Off => "network off".into(),
            NetworkPolicy::Full => {
                "network full (never loopback, link-local or private ranges)".into()
            }
            NetworkPolicy::Allow(list) => {
                let shown: Vec<&str> = list.iter().take(6).map(String::as_str).collect();
                let more = list.len().saturating_sub(shown.len());
                format!(
                    "network allow-list: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )
            }
        }
    }
}

/// What one workspace's proxy enforces.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub policy: NetworkPolicy,
    /// Test builds only: names pinned to an address, which may be loopback. Never filled from
    /// a workspace's configuration.
    pub test_resolve: HashMap<String, SocketAddr>,
}

impl ProxyConfig {
    pub fn new(policy: NetworkPolicy) -> Self {
        ProxyConfig {
            policy,
            test_resolve: HashMap::new(),
        }
    }

    /// Where a request for `host:port` goes, or why it does not.
    pub async fn destination(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !self.policy.permits(&name) {
            return Err(format!(
                "{name} is not allowed ({})",
                self.policy.describe()
            ));
        }
        if let Some(pinned) = self.test_resolve.get(&name) {
            return Ok(*pinned);
        }
        let candidates: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .collect(),
        };
        let own = own_addresses();
        candidates
            .into_iter()
            .find(|a| !forbidden_destination(a.ip()) && !own.contains(&a.ip()))
            .ok_or_else(|| {
                format!(
                    "{name} resolves only to loopback, link-local, private or this server's own addresses"
                )
            })
    }
}

/// Every address of this machine's interfaces: a public one is still the server itself (its
/// own ports), which no policy reaches.
pub fn own_addresses() -> &'static [IpAddr] {
    static OWN: std::sync::OnceLock<Vec<IpAddr>> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address)
                    .filter_map(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| IpAddr::V4(v4.ip()))
                            .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// One workspace's proxy: a Unix socket and the task accepting on it (stopped when dropped).
pub struct EgressProxy {
    socket: PathBuf,
    config: Arc<RwLock<ProxyConfig>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("socket", &self.socket)
            .finish()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl EgressProxy {
    /// Listens on `socket` (replacing a stale one). Needs a tokio runtime.
    pub fn start(socket: PathBuf, config: ProxyConfig) -> std::io::Result<EgressProxy> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let std_listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let config = Arc::new(RwLock::new(config));
        let shared = config.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "the egress proxy cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let cfg = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &cfg).await {
                        tracing::debug!(error = %e, "egress connection ended");
                    }
                });
            }
        });
        Ok(EgressProxy {
            socket,
            config,
            task,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Applies to connections made from now on.
    pub fn set_config(&self, config: ProxyConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    pub fn policy(&self) -> NetworkPolicy {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .policy
            .clone()
    }
}

/// One proxied connection: read the request head, check, connect, relay.
async fn serve(mut client: tokio::net::UnixStream, cfg: &ProxyConfig) -> Result<(), String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                return Ok(i + 4);
            }
            if buf.len() > MAX_HEAD {
                return Err("request head too large".to_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before a request".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .map_err(|_| "no request head in time".to_owned())??;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let parsed = if method.eq_ignore_ascii_case("CONNECT") {
        split_host_port(target, 443).map(|(h, p)| (h, p, None))
    } else if let Some(after) = target.strip_prefix("http://") {
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        split_host_port(authority, 80).map(|(h, p)| (h, p, Some(path.to_owned())))
    } else {
        None
    };
    let Some((host, port, path)) = parsed else {
        return refuse(&mut client, 400, "not a proxy request").await;
    };
    let addr = match cfg.destination(&host, port).await {
        Ok(a) => a,
        Err(why) => {
            tracing::info!(%host, port, "egress refused");
            return refuse(&mut client, 403, &why).await;
        }
    };
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return refuse(&mut client, 502, &format!("{host}: {e}")).await,
            Err(_) => return refuse(&mut client, 504, &format!("{host}: connect timed out")).await,
        };
    match path {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
        }
        Some(path) => {
            // Origin form for the server; the proxy's own headers stay here.
            let mut out = format!("{method} {path} {version}\r\n");
            for line in lines.filter(|l| !l.is_empty()) {
                let name = line.split(':').next().unwrap_or_default().trim();
                if name.eq_ignore_ascii_case("proxy-connection")
                    || name.eq_ignore_ascii_case("proxy-authorization")
                {
                    continue;
                }
                out.push_str(line);
                out.push_str("\r\n");
            }
            out.push_str("\r\n");
            upstream
                .write_all(out.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    upstream.write_all(&rest).await.map_err(|e| e.to_string())?;
    // Later requests on a kept-alive plain-HTTP connection still go to this checked address.
    tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    // Credentials in the authority (`user:pass@host`) are the server's business, not ours.
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (h.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (authority.to_owned(), default_port),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

async fn refuse(client: &mut tokio::net::UnixStream, status: u16, why: &str) -> Result<(), String> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Gateway Timeout",
    };
    let body = format!("jarvis egress: {why}\n");
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client
        .write_all(answer.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let _ = client.shutdown().await;
    Err(why.to_owned())
}

/// Finds (or starts) the proxy of a workspace: `None` when its policy is off.
pub type ProxyFor = dyn Fn(&Path) -> Result<Option<PathBuf>, String> + Send + Sync;

/// The sandbox hook: binds the workspace's proxy socket and the forwarder in, and sets the
/// proxy variables every HTTP client reads.
pub struct ProxyEgress {
    /// The forwarder on the host: a binary that runs [`forward_main`] when its first argument
    /// is [`FORWARD_ARG`].
    pub forwarder: PathBuf,
    pub proxy_for: Arc<ProxyFor>,
}

impl std::fmt::Debug for ProxyEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyEgress")
            .field("forwarder", &self.forwarder)
            .finish()
    }
}

impl Egress for ProxyEgress {
    fn route(&self, workspace: &Path) -> Result<EgressRoute, String> {
        let Some(socket) = (self.proxy_for)(workspace)? else {
            return Ok(EgressRoute::default());
        };
        let url = format!("http://127.0.0.1:{INSIDE_PORT}");
        let mut env = Vec::new();
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "npm_config_proxy",
            "npm_config_https_proxy",
        ] {
            env.push((k.to_owned(), url.clone()));
        }
        Ok(EgressRoute {
            env,
            sockets: vec![(socket, PathBuf::from(INSIDE_SOCKET))],
            files: vec![(self.forwarder.clone(), PathBuf::from(INSIDE_FORWARDER))],
            wrapper: vec![
                INSIDE_FORWARDER.to_owned(),
                FORWARD_ARG.to_owned(),
                INSIDE_SOCKET.to_owned(),
                INSIDE_PORT.to_string(),
                "--".to_owned(),
            ],
        })
    }

    fn describe(&self) -> String {
        "egress only through the workspace's proxy, per its network policy".into()
    }
}

/// The forwarder, run inside the sandbox: `<socket> <port> -- program args…`. Listens on the
/// namespace's loopback `port`, carries each connection to the proxy's `socket`, runs the
/// program and exits with its status (the namespace, and this listener, end with it).
pub fn forward_main(args: &[String]) -> i32 {
    use std::io::Write;
    let fail = |why: String| {
        let _ = writeln!(std::io::stderr(), "jarvis egress forwarder: {why}");
        125
    };
    let Some(sep) = args.iter().position(|a| a == "--") else {
        return fail("usage: <socket> <port> -- program args…".into());
    };
    let (Some(socket), Some(port), Some(program)) = (
        args.first().filter(|_| sep >= 2),
        args.get(1).and_then(|p| p.parse::<u16>().ok()),
        args.get(sep + 1),
    ) else {
        return fail("usage: <socket> <port> -- program args…".into());
    };
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => return fail(format!("listening on 127.0.0.1:{port}: {e}")),
    };
    let socket = PathBuf::from(socket);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || relay(conn, &socket));
        }
    });
    match std::process::Command::new(program)
        .args(&args[sep + 2..])
        .status()
    {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
        }
        Err(e) => fail(format!("{program}: {e}")),
    }
}

fn relay(tcp: std::net::TcpStream, socket: &Path) {
    let Ok(unix) = std::os::unix::net::UnixStream::connect(socket) else {
        return;
    };
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_names_and_subdomains_only() {
        let p = NetworkPolicy::Allow(vec!["pypi.org".into(), "*.example.org".into()]);
        assert!(p.permits("pypi.org") && p.permits("PyPI.org."));
        assert!(!p.permits("evilpypi.org") && !p.permits("pypi.org.evil.com"));
        assert!(p.permits("a.example.org") && p.permits("a.b.example.org"));
        assert!(!p.permits("example.org") && !p.permits("badexample.org"));
        assert!(!NetworkPolicy::Off.permits("pypi.org"));
        assert!(NetworkPolicy::Full.permits("anything.test"));
        assert!(NetworkPolicy::allow_default().permits("registry.npmjs.org"));
    }

    #[tokio::test]
    async fn full_still_refuses_loopback_private_and_metadata() {
        let cfg = ProxyConfig::new(NetworkPolicy::Full);
        for host in [
            "127.0.0.1",
            "localhost",
            "169.254.169.254",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(cfg.destination(host, 80).await.is_err(), "{host}");
        }
        // Only a pinned test name may reach loopback.
        let mut pinned = ProxyConfig::new(NetworkPolicy::Full);
        pinned
            .test_resolve
            .insert("git.test".into(), "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            pinned.destination("git.test", 80).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(pinned.destination("127.0.0.1", 9).await.is_err());
    }

    #[tokio::test]
    async fn full_refuses_this_machines_own_addresses() {
        let cfg = ProxyConfig::new(NetworkPolicy::Full);
        for ip in own_addresses() {
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            assert!(cfg.destination(&host, 8080).await.is_err(), "{host}");
        }
        assert!(!own_addresses().is_empty());
    }

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_host_port("a.test:8080", 80),
            Some(("a.test".into(), 8080))
        );
        assert_eq!(
            split_host_port("u:p@a.test", 80),
            Some(("a.test".into(), 80))
        );
        assert_eq!(split_host_port("[::1]:5", 80), Some(("::1".into(), 5)));
        assert_eq!(split_host_port(":5", 80), None);
    }
}
