//! `jarvis-cloud serve`: its options, opening the data directory and building every part
//! ([`build`]), and serving it until shutdown ([`serve`]). What is served is
//! `crate::app::app`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use jarvis_sync::hub::{Hub, HubConfig};
use jarvis_sync::store::SqliteStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Control;
use crate::hub_routes::AppState;
use jarvis_agent::sandbox::{Limits, Sandbox};

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
    pub onboarding: Box<crate::onboarding::OnboardingArgs>,
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

/// What [`build`] makes: the router exactly as served ([`crate::app::app`]; the limits layer
/// [`crate::limits::serve`] adds works on connections), and the parts a caller drives or
/// inspects.
pub struct Built {
    pub router: Router,
    pub parts: crate::app::Parts,
    pub state: AppState,
    pub control: Arc<Control>,
    pub limits: crate::limits::Limits,
    /// Onboarding: tests make a setup code with it.
    pub onboarding: Option<crate::onboarding::Onboarding>,
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
    let fresh = control.token_count()? == 0;
    if fresh {
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
    // Secrets, approvals and user rules share the control plane's store (one connection).
    let secrets = crate::secrets::SecretStore::open(
        control.store(),
        &args.data_dir,
        args.secret_key.as_deref(),
    )?;
    let approvals = Arc::new(crate::approvals::Approvals::new(control.store()));
    // Every command of a cloud session reaches the network only through its workspace's
    // egress proxy (the approved `.jarvis/environment.toml` says how far).
    let (sandbox, _egress) =
        crate::devenv::egress::attach(sandbox, &args.data_dir, approvals.clone())?;
    let user_rules = Arc::new(crate::user_rules::UserRules::new(control.store()));
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let provider_config =
        jarvis_agent::providers::ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))
            .map_err(|e| e.to_string());
    // A provider an admin saved in the browser wins over the environment.
    let provider = crate::onboarding::providers::stored(&secrets).unwrap_or_else(|| {
        provider_config
            .clone()
            .and_then(|c| c.build().map_err(|e| e.to_string()))
            .map(Arc::from)
    });
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
        control: Some(control.clone()),
    };
    let scheduler = Arc::new(crate::services::Wake::default());
    let services = crate::services::Services {
        control: control.clone(),
        cloud: cloud.clone(),
        hub: hub.clone(),
        auth: crate::http::Auth {
            control: control.clone(),
            limiter: Arc::new(crate::http::RateLimiter::new(
                args.rate_burst,
                args.rate_per_second,
            )),
        },
        anonymous: crate::http::Anonymous::new(
            args.anon_rate_burst,
            args.anon_rate_per_second,
            args.anon_bodies_per_address,
        ),
        sessions: Arc::new(crate::sessions::Sessions {
            control: control.clone(),
            hub: hub.clone(),
            cloud,
        }),
        secrets,
        approvals,
        user_rules,
        gateway_usage: gateway_usage.clone(),
        scheduler: scheduler.clone(),
    };
    let onboarding = crate::onboarding::Onboarding::open(
        &db,
        &args.data_dir,
        services.clone(),
        &args.onboarding,
        &args.model,
        fresh,
        &format!("http://{loopback}"),
    )?;
    let parts = crate::app::Parts {
        hub: state.clone(),
        services,
        onboarding: Some(onboarding),
        gateway,
        webhooks: crate::webhooks::Webhooks::open(&db, &args.data_dir, (*args.github).clone())?,
        agents: crate::schedule::Agents::open(&db, (*args.agents).clone(), scheduler)?,
        data_dir: args.data_dir.clone(),
        ui: args.ui.clone(),
        body_idle: std::time::Duration::from_millis(args.body_timeout_ms.max(1)),
    };
    crate::webhooks::resume(&parts.github());
    crate::schedule::start(parts.scheduler(), shutdown.clone());
    let limits = crate::limits::Limits {
        body_idle: std::time::Duration::from_millis(args.body_timeout_ms.max(1)),
        header_read: std::time::Duration::from_millis(args.header_timeout_ms.max(1)),
    };
    Ok(Built {
        router: crate::app::app(&parts),
        onboarding: parts.onboarding.clone(),
        parts,
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
        built.router,
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
