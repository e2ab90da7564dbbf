//! HTTP and WebSocket transport over the hub: `/sync` (the Hocuspocus protocol), `/healthz`,
//! `/metrics`. Handlers are a few lines over `jarvis_sync::hub`; the socket task only moves
//! bytes between the WebSocket and a [`HubConnection`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use jarvis_sync::hub::{CloseReason, Hub, HubConfig, Outbound, close_code};
use jarvis_sync::store::SqliteStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;
use jarvis_agent::sandbox::{Limits, Sandbox};

#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub shutdown: CancellationToken,
    pub sockets: TaskTracker,
    pub blobs: Arc<crate::blobs::BlobService>,
    /// The HTTP API and the cloud runner; None serves the hub alone (benchmarks).
    pub api: Option<crate::api::Api>,
}

pub fn app(state: AppState) -> Router {
    let blobs = crate::blobs::router(state.blobs.clone());
    let api = state.api.clone().map(crate::api::router);
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/sync", get(sync_socket))
        .with_state(state)
        .merge(blobs);
    match api {
        Some(api) => router.merge(api),
        None => router,
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// `/metrics` answers an admin user's token whose scopes cover `metrics` (read-only is fine);
/// a server without the API (benchmarks) has no tokens and answers anyone.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(api) = &state.api {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let allowed = api
            .control
            .identify(token)
            .map_err(crate::api::ApiError::from)
            .and_then(|who| {
                who.may(crate::access::Target::Metrics, crate::access::Action::Read)
                    .map_err(crate::api::ApiError::from)
            });
        if let Err(e) = allowed {
            return e.into_response();
        }
    }
    let m = state.hub.metrics();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!(
            "# HELP jarvis_hub_{name} {help}\n# TYPE jarvis_hub_{name} {kind}\njarvis_hub_{name} {value}\n"
        ));
    };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "connections_open",
        "gauge",
        "Open sync sockets.",
        get(&m.connections_open),
    );
    metric(
        "connections_total",
        "counter",
        "Sync sockets accepted.",
        get(&m.connections_total),
    );
    metric(
        "documents_in_memory",
        "gauge",
        "Documents held in memory.",
        state.hub.loaded_documents() as u64,
    );
    metric(
        "documents_loaded_total",
        "counter",
        "Documents loaded from the store.",
        get(&m.documents_loaded),
    );
    metric(
        "updates_received_total",
        "counter",
        "Sync step 2 and update messages received.",
        get(&m.updates_received),
    );
    metric(
        "updates_committed_total",
        "counter",
        "Updates durably committed.",
        get(&m.updates_committed),
    );
    metric(
        "commit_batches_total",
        "counter",
        "Store transactions committed.",
        get(&m.commit_batches),
    );
    metric(
        "frames_relayed_total",
        "counter",
        "Frames relayed to other subscribers.",
        get(&m.frames_relayed),
    );
    metric(
        "auth_denied_total",
        "counter",
        "Document authentications refused.",
        get(&m.auth_denied),
    );
    metric(
        "compactions_total",
        "counter",
        "Document logs compacted.",
        get(&m.compactions),
    );
    metric(
        "store_errors_total",
        "counter",
        "Store operations that failed.",
        get(&m.store_errors),
    );
    metric(
        "slow_consumers_closed_total",
        "counter",
        "Connections closed for not keeping up.",
        get(&m.slow_consumers_closed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn sync_socket(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let limit = state.hub.config().limits.max_frame_bytes;
    // The socket layer allows a little more than the protocol limit, so a moderately oversized
    // frame reaches the decoder and gets a clean 1009 close with a reason; anything larger is
    // cut off by the socket layer itself.
    // Small buffers: thousands of idle-ish sockets must not cost 256 KiB each; frames larger
    // than a buffer still arrive whole (the buffer grows for them).
    ws.read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(limit.saturating_mul(2))
        .max_frame_size(limit.saturating_mul(2))
        .on_upgrade(move |socket| {
            let tracker = state.sockets.clone();
            tracker.track_future(serve_socket(socket, state))
        })
}

async fn serve_socket(socket: WebSocket, state: AppState) {
    let (mut conn, mut outbox, kill) = state.hub.connect();
    let id = conn.id();
    let (mut sink, mut stream) = socket.split();
    let close = loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if let Err(reason) = conn.handle(&bytes).await {
                        break Some(reason);
                    }
                }
                Some(Ok(WsMessage::Text(_))) => {
                    break Some(CloseReason::new(close_code::UNSUPPORTED_DATA, "binary frames only"));
                }
                Some(Ok(WsMessage::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::info!(conn = id, error = %e, "socket error");
                    break Some(CloseReason::new(close_code::MESSAGE_TOO_BIG, format!("socket error: {e}")));
                }
            },
            out = outbox.recv() => {
                let Some(first) = out else { break None };
                // Write everything already queued before one flush: under load this turns many
                // small frames into few syscalls.
                let mut next = Some(first);
                let mut closing = None;
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Frame(f) => {
                            if sink.feed(WsMessage::Binary(f.into())).await.is_err() {
                                break;
                            }
                        }
                        Outbound::Close(reason) => { closing = Some(reason); break; }
                    }
                    next = outbox.try_recv().ok();
                }
                if sink.flush().await.is_err() { break None; }
                if closing.is_some() { break closing; }
            }
            _ = kill.cancelled() => {
                break Some(CloseReason::new(close_code::TRY_AGAIN_LATER, "connection fell behind or storage failed; reconnect"));
            }
            _ = state.shutdown.cancelled() => {
                break Some(CloseReason::new(close_code::GOING_AWAY, "server shutting down"));
            }
        }
    };
    if let Some(reason) = close {
        tracing::info!(conn = id, code = reason.code, reason = %reason.reason, "closing socket");
        let _ = sink
            .send(WsMessage::Close(Some(CloseFrame {
                code: reason.code,
                reason: reason.reason.into(),
            })))
            .await;
    }
    drop(conn);
}

/// Options of `jarvis-cloud serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "JARVIS_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Where the database and workspaces live.
    #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
    pub data_dir: PathBuf,
    /// Largest sync frame accepted, in bytes.
    #[arg(long, env = "JARVIS_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Largest blob (binary or large file) accepted, in bytes.
    #[arg(long, env = "JARVIS_MAX_BLOB_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub max_blob_bytes: u64,
    /// Sessions the cloud runner runs at once; more wait in a queue.
    #[arg(long, env = "JARVIS_MAX_CONCURRENT", default_value_t = 4)]
    pub max_concurrent: usize,
    /// How long a runner's lease lasts without renewal, in milliseconds.
    #[arg(long, env = "JARVIS_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// API requests a token may make in a burst, and per second after it.
    #[arg(long, env = "JARVIS_RATE_BURST", default_value_t = 120)]
    pub rate_burst: u32,
    #[arg(long, env = "JARVIS_RATE_PER_SECOND", default_value_t = 20.0)]
    pub rate_per_second: f64,
    /// Model for cloud sessions that name none.
    #[arg(long, env = "ANTHROPIC_MODEL", default_value = jarvis_agent::models::DEFAULT_MODEL)]
    pub model: String,
    /// Containment for commands of cloud sessions: auto (bubblewrap when it can create its
    /// namespaces here), bwrap, limits (no namespaces: needs --allow-unsandboxed). Without
    /// namespaces bash and allow-all cloud sessions are refused unless an operator opts in.
    #[arg(long, env = "JARVIS_SANDBOX", default_value = "auto")]
    pub sandbox: String,
    /// Accept running commands WITHOUT namespace confinement where bubblewrap cannot work:
    /// they can then read every file this server can (other users' workspaces, the hub
    /// database, keys) and reach its network. Only for a server trusted users share.
    #[arg(long, env = "JARVIS_ALLOW_UNSANDBOXED", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unsandboxed: bool,
    /// Memory of one sandboxed command (per process, and for all of it where a memory cgroup
    /// is writable), in MiB.
    #[arg(long, env = "JARVIS_SANDBOX_MEMORY_MB", default_value_t = 4096)]
    pub sandbox_memory_mb: u64,
    /// Processes one sandboxed command may have at once.
    #[arg(long, env = "JARVIS_SANDBOX_PROCESSES", default_value_t = 512)]
    pub sandbox_processes: u64,
    /// The longest one command may run, in seconds.
    #[arg(long, env = "JARVIS_SANDBOX_WALL_SECS", default_value_t = 600)]
    pub sandbox_wall_secs: u64,
    /// The secret store's key (64 hex digits); default: <data>/secret.key, made at first start.
    #[arg(long, env = "JARVIS_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Requests one address may make to the anonymous endpoints (pairing, webhooks) in a
    /// burst, and per second after it.
    #[arg(long, env = "JARVIS_ANON_RATE_BURST", default_value_t = 30)]
    pub anon_rate_burst: u32,
    #[arg(long, env = "JARVIS_ANON_RATE_PER_SECOND", default_value_t = 5.0)]
    pub anon_rate_per_second: f64,
    /// Anonymous request bodies one address may have the server read at once.
    #[arg(long, env = "JARVIS_ANON_BODIES_PER_ADDRESS", default_value_t = 2)]
    pub anon_bodies_per_address: usize,
    /// A request body that sends nothing for this long is refused (408), in milliseconds.
    #[arg(long, env = "JARVIS_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_timeout_ms: u64,
    /// Documents one user may create (workspaces, sessions, workspace files); 0: no limit.
    #[arg(long, env = "JARVIS_MAX_DOCUMENTS_PER_USER", default_value_t = 200_000)]
    pub max_documents_per_user: u64,
    /// Bytes of blobs one user may upload; 0: no limit.
    #[arg(long, env = "JARVIS_MAX_BLOB_BYTES_PER_USER", default_value_t = 20 * 1024 * 1024 * 1024)]
    pub max_blob_bytes_per_user: u64,
    /// Request headers must arrive within this long, in milliseconds.
    #[arg(long, env = "JARVIS_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Reverse proxies (addresses and CIDR ranges, comma-separated) whose word on the client's
    /// address is taken for the per-address anonymous limits. Empty (the default): the TCP
    /// peer is the client and forwarding headers are ignored. Set it only to the proxy's own
    /// ranges: anyone inside them can name any address.
    #[arg(
        long = "trusted-proxy",
        env = "JARVIS_TRUSTED_PROXIES",
        default_value = ""
    )]
    pub trusted_proxies: String,
    /// Where a trusted proxy names the client: x-forwarded-for (its right-most entry that is
    /// not a trusted proxy) or fly-client-ip (only behind Fly.io's proxy).
    #[arg(
        long,
        env = "JARVIS_CLIENT_IP_HEADER",
        default_value = "x-forwarded-for"
    )]
    pub client_ip_header: String,
    #[command(flatten)]
    pub ui: crate::webui::UiArgs,
    #[command(flatten)]
    pub gateway: crate::gateway::GatewayArgs,
    #[command(flatten)]
    pub github: Box<crate::webhooks::GithubArgs>,
    #[command(flatten)]
    pub agents: Box<crate::schedule::AgentArgs>,
}

/// The containment `--sandbox` and `--allow-unsandboxed` ask for, said at start-up: where
/// namespaces do not work, commands are refused unless the operator accepted the risk.
pub fn choose_sandbox(mode: &str, allow_unsandboxed: bool, limits: Limits) -> Result<Sandbox> {
    let sandbox = match mode {
        "auto" => Sandbox::detect(limits, allow_unsandboxed),
        "bwrap" => match Sandbox::probe_bubblewrap(&limits) {
            Ok(()) => Sandbox::bubblewrap(limits),
            Err(reason) => Sandbox::Refused { reason },
        },
        "limits" if allow_unsandboxed => Sandbox::Unconfined {
            limits,
            why: "--sandbox limits was chosen".into(),
        },
        "limits" => Sandbox::Refused {
            reason: "--sandbox limits does not confine commands".into(),
        },
        other => anyhow::bail!("unknown sandbox {other:?}: use auto, bwrap or limits"),
    };
    match &sandbox {
        Sandbox::Bubblewrap { .. } => {
            tracing::info!(sandbox = %sandbox.describe(), "commands run sandboxed")
        }
        Sandbox::Unconfined { .. } => tracing::warn!(
            sandbox = %sandbox.describe(),
            "RISK: commands of cloud sessions run without a sandbox (--allow-unsandboxed)"
        ),
        _ => tracing::warn!(
            sandbox = %sandbox.describe(),
            "this server cannot sandbox commands: bash and allow-all cloud sessions are refused"
        ),
    }
    Ok(sandbox)
}

pub fn database_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("hub.db")
}

/// What [`build`] makes: the router exactly as served (without the web UI's static files, and
/// without the limits layer [`crate::limits::serve`] adds), and the parts a caller drives or
/// inspects.
pub struct Built {
    pub router: Router,
    pub state: AppState,
    pub control: Arc<Control>,
    pub limits: crate::limits::Limits,
    gateway_usage: Arc<crate::gateway::UsageLog>,
}

/// Opens the data directory and builds the server: the hub, the control plane, the cloud
/// runner (which reaches the hub at `local` over loopback), the API and its background tasks.
/// `serve` runs this on a real listener; tests drive the router with `oneshot`.
pub async fn build(
    args: &ServeArgs,
    local: SocketAddr,
    shutdown: CancellationToken,
) -> Result<Built> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let db = database_path(&args.data_dir);
    let store = SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?;
    let (mut control, system_token) = Control::open(&db)?;
    control.quotas = crate::control::Quotas {
        documents: args.max_documents_per_user,
        blob_bytes: args.max_blob_bytes_per_user,
    };
    if control.token_count()? == 0 {
        let token = control.create_token(
            crate::control::ADMIN_USER,
            None,
            "admin (first start)",
            &["*".to_owned()],
            false,
        )?;
        println!("first start: admin token (shown once, keep it safe): {token}");
    }
    let mut config = HubConfig::default();
    config.limits.max_frame_bytes = args.max_frame_bytes;
    let control = Arc::new(control);
    let hub = Hub::new(Arc::new(store), control.clone(), config);
    let limits = Limits {
        memory_bytes: args.sandbox_memory_mb.max(16) << 20,
        processes: args.sandbox_processes.max(8),
        wall: std::time::Duration::from_secs(args.sandbox_wall_secs.max(1)),
        ..Limits::default()
    };
    let sandbox = choose_sandbox(&args.sandbox, args.allow_unsandboxed, limits)?;
    let secrets =
        crate::secrets::SecretStore::open(&db, &args.data_dir, args.secret_key.as_deref())?;
    let approvals = Arc::new(crate::approvals::Approvals::open(&db)?);
    let (sandbox, _egress) =
        crate::devenv::egress::attach(sandbox, &args.data_dir, approvals.clone())?;
    let user_rules = Arc::new(crate::user_rules::UserRules::open(&db)?);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let provider_config =
        jarvis_agent::providers::ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))
            .map_err(|e| e.to_string());
    let provider = provider_config
        .clone()
        .and_then(|c| c.build().map_err(|e| e.to_string()))
        .map(Arc::from);
    let gateway_usage = crate::gateway::UsageLog::open(&db)?;
    let gateway = crate::gateway::Gateway::new(
        control.clone(),
        provider_config,
        gateway_usage.clone(),
        &args.gateway,
    );
    // The cloud runner is a device like any other: it reaches this hub over loopback.
    let loopback = if local.ip().is_unspecified() {
        if local.is_ipv4() {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port()))
        }
    } else {
        local
    };
    let cloud = crate::runner::Cloud::start(
        control.clone(),
        hub.clone(),
        crate::runner::CloudConfig {
            data_dir: args.data_dir.clone(),
            lease_ttl_ms: args.lease_ttl_ms.max(100),
            max_concurrent: args.max_concurrent,
            default_model: args.model.clone(),
            sandbox,
            secrets: secrets.clone(),
            approvals: approvals.clone(),
            user_rules: user_rules.clone(),
            reach_timeout: std::time::Duration::from_secs(60),
        },
        format!("ws://{loopback}/sync"),
        system_token,
        provider,
        shutdown.clone(),
    )?;
    // Uploads cut off by a crash left `.part` files nobody will finish.
    match jarvis_sync::blob::remove_partials(&args.data_dir.join("blobs")) {
        Ok((0, _)) => {}
        Ok((files, bytes)) => tracing::info!(files, bytes, "removed partial blob uploads"),
        Err(e) => tracing::warn!(error = %e, "cannot clean partial blob uploads"),
    }
    let state = AppState {
        hub: hub.clone(),
        shutdown: shutdown.clone(),
        sockets: TaskTracker::new(),
        blobs: Arc::new(crate::blobs::BlobService {
            root: args.data_dir.join("blobs"),
            authorizer: control.clone(),
            max_bytes: args.max_blob_bytes,
            quota: Some(control.clone()),
        }),
        api: Some(crate::api::Api {
            control: control.clone(),
            cloud,
            hub: hub.clone(),
            limiter: Arc::new(crate::api::RateLimiter::new(
                args.rate_burst,
                args.rate_per_second,
            )),
            gateway,
            webhooks: crate::webhooks::Webhooks::open(&db, &args.data_dir, (*args.github).clone())?,
            agents: crate::schedule::Agents::open(&db, (*args.agents).clone())?,
            secrets,
            approvals,
            user_rules,
            anonymous: crate::api::Anonymous::new(
                args.anon_rate_burst,
                args.anon_rate_per_second,
                args.anon_bodies_per_address,
            ),
        }),
    };
    if let Some(api) = &state.api {
        crate::webhooks::resume(api);
        crate::schedule::start(api.clone(), shutdown.clone());
    }
    let limits = crate::limits::Limits {
        body_idle: std::time::Duration::from_millis(args.body_timeout_ms.max(1)),
        header_read: std::time::Duration::from_millis(args.header_timeout_ms.max(1)),
    };
    Ok(Built {
        router: app(state.clone()).merge(crate::updates::router(args.data_dir.clone())),
        state,
        control,
        limits,
        gateway_usage,
    })
}

/// Runs the server until `shutdown` is cancelled, then closes sockets and commits everything
/// queued before returning.
pub async fn serve(args: ServeArgs, shutdown: CancellationToken) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid listen address {}:{}", args.host, args.port))?;
    let proxies =
        crate::limits::TrustedProxies::parse(&args.trusted_proxies, &args.client_ip_header)
            .map_err(anyhow::Error::msg)
            .context("--trusted-proxy / --client-ip-header")?;
    if !proxies.is_empty() {
        tracing::info!(
            proxies = %args.trusted_proxies,
            header = %args.client_ip_header,
            "anonymous limits count the client a trusted proxy names"
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let built = build(&args, local, shutdown.clone()).await?;
    // Tests and scripts read this line to find the port.
    println!("listening on {local}");
    tracing::info!(%local, data_dir = %args.data_dir.display(), "jarvis-cloud serving");
    let sockets = built.state.sockets.clone();
    let hub = built.state.hub.clone();
    crate::limits::serve(
        listener,
        crate::webui::with_ui(built.router, &args.ui),
        built.limits,
        proxies,
        shutdown.clone(),
    )
    .await;
    sockets.close();
    sockets.wait().await;
    hub.shutdown().await;
    built.gateway_usage.close();
    tracing::info!("jarvis-cloud stopped; every queued update is committed");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unconfined_commands_need_the_operators_opt_in() {
        let refused = choose_sandbox("limits", false, Limits::default()).unwrap();
        assert!(refused.refusal().is_some() && !refused.confines());
        assert!(refused.describe().contains("--allow-unsandboxed"));
        let unconfined = choose_sandbox("limits", true, Limits::default()).unwrap();
        assert!(unconfined.refusal().is_none() && !unconfined.confines());
        assert!(unconfined.describe().starts_with("UNCONFINED"));
        assert!(choose_sandbox("chroot", true, Limits::default()).is_err());
        // Whatever this machine offers, auto never silently runs commands unconfined.
        let auto = choose_sandbox("auto", false, Limits::default()).unwrap();
        assert!(
            auto.confines() || auto.refusal().is_some(),
            "{}",
            auto.describe()
        );
    }
}
