//! The cloud's egress proxies: one per workspace folder, started when a sandboxed process of
//! that workspace first needs one, following the workspace's approved network policy (read
//! again for every process, so an approval or an edit applies to the next command).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jarvis_agent::egress::{EgressProxy, NetworkPolicy, ProxyConfig, ProxyEgress};
use jarvis_agent::sandbox::{Egress, EgressRoute, Sandbox};

use crate::secrets::ENVIRONMENT_FILE;

/// Test builds only: `name=ip:port,…` pins names to addresses (loopback allowed), honoured
/// only with [`TEST_FLAG`]`=1`; a server started with it otherwise refuses to start.
pub const RESOLVE_ENV: &str = "JARVIS_EGRESS_RESOLVE";
pub const TEST_FLAG: &str = "JARVIS_EGRESS_TEST";

pub struct Proxies {
    dir: PathBuf,
    approvals: Arc<crate::approvals::Approvals>,
    test_resolve: HashMap<String, SocketAddr>,
    running: Mutex<HashMap<PathBuf, EgressProxy>>,
}

impl Proxies {
    pub fn new(
        data_dir: &Path,
        approvals: Arc<crate::approvals::Approvals>,
        test_resolve: HashMap<String, SocketAddr>,
    ) -> Proxies {
        Proxies {
            dir: data_dir.join("devenv/egress"),
            approvals,
            test_resolve,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for a workspace folder (`<data>/workspaces/<id>`) and a line for
    /// the session view.
    pub fn policy(&self, root: &Path) -> (NetworkPolicy, String) {
        policy(&self.approvals, root)
    }

    /// The socket of the workspace's proxy (started or updated), None when its policy is off.
    pub fn proxy_for(&self, root: &Path) -> Result<Option<PathBuf>, String> {
        let (policy, _) = self.policy(root);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if policy == NetworkPolicy::Off {
            running.remove(root);
            return Ok(None);
        }
        let config = ProxyConfig {
            policy,
            test_resolve: self.test_resolve.clone(),
        };
        if let Some(p) = running.get(root) {
            p.set_config(config);
            return Ok(Some(p.socket().to_owned()));
        }
        // Short names: a Unix socket path has about 100 bytes.
        let name = &crate::approvals::content_hash(&root.to_string_lossy())[..16];
        let proxy = EgressProxy::start(self.dir.join(format!("{name}.sock")), config)
            .map_err(|e| format!("starting the egress proxy: {e}"))?;
        let socket = proxy.socket().to_owned();
        running.insert(root.to_owned(), proxy);
        Ok(Some(socket))
    }
}

/// The approved network policy of a workspace folder (`<data>/workspaces/<id>`) and a line
/// for the session view; never in an untrusted (review) workspace.
pub fn policy(approvals: &crate::approvals::Approvals, root: &Path) -> (NetworkPolicy, String) {
    let Some(workspace) = root.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return (NetworkPolicy::Off, NetworkPolicy::Off.describe());
    };
    let approved = |hash: &str| {
        !approvals.untrusted(&workspace).unwrap_or(true)
            && approvals
                .is_approved(&workspace, "environment", ENVIRONMENT_FILE, hash)
                .unwrap_or(false)
    };
    super::environment::effective_policy(root, &approved)
}

/// Pins from [`RESOLVE_ENV`], refused without [`TEST_FLAG`].
pub fn test_resolve_from_env() -> anyhow::Result<HashMap<String, SocketAddr>> {
    let Some(spec) = std::env::var(RESOLVE_ENV).ok().filter(|s| !s.is_empty()) else {
        return Ok(HashMap::new());
    };
    if std::env::var(TEST_FLAG).as_deref() != Ok("1") {
        anyhow::bail!(
            "{RESOLVE_ENV} lets sandboxed commands reach loopback; it is for tests only and needs {TEST_FLAG}=1"
        );
    }
    let mut out = HashMap::new();
    for pair in spec.split(',') {
        let (name, addr) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("{RESOLVE_ENV}: {pair:?} is not name=ip:port"))?;
        out.insert(name.to_ascii_lowercase(), addr.parse()?);
    }
    tracing::warn!(names = ?out.keys().collect::<Vec<_>>(), "TEST MODE: egress names pinned, loopback reachable through them");
    Ok(out)
}

/// The server's sandbox with the workspace hook (bubblewrap only): the egress proxy (the
/// forwarder is this binary, run as `jarvis-cloud egress-forward`) and the cached dependency
/// folders bound over the workspace.
pub fn attach(
    sandbox: Sandbox,
    data_dir: &Path,
    approvals: Arc<crate::approvals::Approvals>,
) -> anyhow::Result<(Sandbox, Arc<Proxies>)> {
    let proxies = Arc::new(Proxies::new(data_dir, approvals, test_resolve_from_env()?));
    let forwarder = std::env::current_exe()?;
    let p = proxies.clone();
    let hook = WorkspaceHook {
        proxy: ProxyEgress {
            forwarder,
            proxy_for: Arc::new(move |root: &Path| p.proxy_for(root)),
        },
        data_dir: data_dir.to_owned(),
    };
    Ok((sandbox.with_egress(Arc::new(hook)), proxies))
}

/// What a sandboxed process of a workspace gets besides its folder: the proxy, and its cache.
#[derive(Debug)]
struct WorkspaceHook {
    proxy: ProxyEgress,
    data_dir: PathBuf,
}

impl Egress for WorkspaceHook {
    fn route(&self, root: &Path) -> Result<EgressRoute, String> {
        let mut route = self.proxy.route(root)?;
        let Some(workspace) = root.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(route);
        };
        // A malformed file is said by the setup; the folders are then simply not cached.
        if let Ok(Some(env)) = super::environment::load(root) {
            for rel in env.cache {
                let host = super::setup::cache_folder(&self.data_dir, &workspace, &rel);
                std::fs::create_dir_all(&host)
                    .map_err(|e| format!("the cache folder {}: {e}", host.display()))?;
                route.sockets.push((host, root.join(&rel)));
            }
        }
        Ok(route)
    }

    fn describe(&self) -> String {
        format!(
            "{}; cached dependency folders per workspace",
            self.proxy.describe()
        )
    }
}
