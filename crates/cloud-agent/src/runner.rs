//! The cloud runner: the always-on device inside the server. It is a sync peer like any other
//! (its own store, one loopback socket to this hub with an in-memory system token), keeps the
//! workspaces of the sessions it runs materialised under `<data>/workspaces/<id>` with the file
//! mirror, and runs each session whose lease it holds with the agent runtime — bash contained by
//! bubblewrap or resource limits, at most `max_concurrent` sessions at once (the rest queue).
//!
//! Handoff, both ways, is coordinated here because this is where the lease authority (the
//! control plane) and a runner meet: a request moves a free lease at once, or asks the holder
//! to yield (a device through `meta.handoff` in the session document, this runner through its
//! stop token); the holder stops at a safe point, flushes, and releases with the state it left;
//! the new holder waits for that state before it continues.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_agent::anthropic::Provider;
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::Mode;
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::sandbox::Sandbox;
use jarvis_agent::settings::{ClaudeSetup, ConfigApproval, Unapproved};
use jarvis_agent::tools::ToolBox;
use jarvis_device::Hold;
use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::doc::{
    HandoffRequest, Role, SessionDoc, SessionStatus, UpdateSignal, WorkspaceIndex,
};
use jarvis_sync::handoff::{self, ExpectedDoc};
use jarvis_sync::hub::Hub;
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::SqliteStore;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::control::{CLOUD_DEVICE, Control, ControlError, HandoffState, Identity, Lease, now_ms};
use crate::leases::{ControlLeases, LeaseWatcher, wire_lease};

/// How long a yielding cloud runner waits for the hub to acknowledge what it wrote.
const RELEASE_FLUSH: Duration = Duration::from_secs(30);

/// The control plane's run settings as every runner reads them.
fn wire_settings(s: &crate::control::RunSettings) -> jarvis_wire::device::RunSettings {
    jarvis_wire::device::RunSettings {
        permission_mode: s.permission_mode.clone(),
        allow: s.allow.clone(),
        deny: s.deny.clone(),
        budget_micros: s.budget_micros,
        model: s.model.clone(),
    }
}

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub data_dir: PathBuf,
    pub lease_ttl_ms: u64,
    pub max_concurrent: usize,
    pub default_model: String,
    pub sandbox: Sandbox,
    /// Where the secrets a workspace's configuration names come from.
    pub secrets: Arc<crate::secrets::SecretStore>,
    /// Owners' approvals of configuration that runs code (settings, hooks, commands).
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Session owners' "always allow" rules and memory text (see `user_rules`).
    pub user_rules: Arc<crate::user_rules::UserRules>,
    /// How long a new holder waits for the handed-off state to arrive.
    pub reach_timeout: Duration,
}

struct Active {
    epoch: u64,
    stop: CancellationToken,
    fence: CancellationToken,
}

pub struct Cloud {
    pub control: Arc<Control>,
    hub: Hub,
    config: CloudConfig,
    client: Arc<SyncClient>,
    /// Replaced at run time when an admin saves a provider in the browser (`onboarding`):
    /// every turn reads it afresh, so no restart is needed.
    provider: std::sync::RwLock<Result<Arc<dyn Provider>, String>>,
    mirrors: tokio::sync::Mutex<HashMap<String, Arc<FileMirror>>>,
    active: Mutex<HashMap<String, Active>>,
    slots: Arc<Semaphore>,
    /// Bumped after every lease change, so waiters re-read the lease.
    lease_changes: watch::Sender<u64>,
    shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cloud {
    /// Starts the cloud device against this server's own hub at `sync_url`.
    pub fn start(
        control: Arc<Control>,
        hub: Hub,
        config: CloudConfig,
        sync_url: String,
        system_token: String,
        provider: Result<Arc<dyn Provider>, String>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Cloud>> {
        use anyhow::Context;
        let store_path = config.data_dir.join("cloud-device.db");
        let store = SqliteStore::open(&store_path)
            .with_context(|| format!("opening {}", store_path.display()))?;
        let client = Arc::new(SyncClient::start(
            ClientConfig::new(sync_url, system_token),
            Arc::new(store),
        ));
        tracing::info!(sandbox = %config.sandbox.describe(), "cloud runner: bash containment");
        if let Err(e) = &provider {
            tracing::warn!(error = %e, "cloud runner has no model provider; sessions handed to the cloud will fail until one is configured");
        }
        let cloud = Arc::new(Cloud {
            control,
            hub,
            slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            client,
            provider: std::sync::RwLock::new(provider),
            mirrors: tokio::sync::Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            lease_changes: watch::channel(0).0,
            shutdown,
        });
        tokio::spawn(cloud.clone().maintain());
        Ok(cloud)
    }

    /// The model provider the next turn uses (a provider saved in the browser replaces the
    /// one from the environment at once).
    pub fn set_provider(&self, provider: Arc<dyn Provider>) {
        *self.provider.write().unwrap_or_else(|p| p.into_inner()) = Ok(provider);
    }

    /// Why there is no provider, or None when one is configured.
    pub fn provider_problem(&self) -> Option<String> {
        self.provider
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .err()
            .cloned()
    }

    /// The workspace's folder here, materialised and mirrored (onboarding fills it with
    /// uploaded or cloned files, then rescans).
    pub async fn workspace_mirror(&self, workspace: &str) -> anyhow::Result<Arc<FileMirror>> {
        self.mirror(workspace).await
    }

    /// Waits until the hub has acknowledged every change this runner made so far (files a
    /// rescan just turned into documents), so what an API answer reports is what others read.
    pub async fn flush(&self, timeout: Duration) -> Result<(), jarvis_sync::client::ClientError> {
        self.client.flush_all(timeout).await
    }

    /// Cancelled when the server shuts down (long-lived responses end with it).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn lease_ttl_ms(&self) -> u64 {
        self.config.lease_ttl_ms
    }

    /// The control plane as this runner's lease authority; a handover is mirrored into the
    /// session document.
    fn leases(self: &Arc<Self>) -> ControlLeases {
        ControlLeases::new(
            self.control.clone(),
            self.config.lease_ttl_ms,
            Arc::new(Watcher(self.clone())),
        )
    }

    /// How commands of cloud sessions are contained.
    pub fn sandbox(&self) -> &Sandbox {
        &self.config.sandbox
    }

    /// Why a session in `mode` may not run here: allow-all runs commands without asking, so
    /// it is refused where commands cannot be sandboxed.
    fn mode_refusal(&self, mode: Option<Mode>) -> Option<String> {
        let refusal = self.config.sandbox.refusal()?;
        (mode == Some(Mode::AllowAll)).then(|| {
            format!("allow-all sessions cannot run in the cloud on this server: {refusal}")
        })
    }

    /// Completes handoffs whose holder vanished, and resumes (at start) every session whose
    /// lease it holds. (Each hosted session keeps its own lease: see [`Cloud::host`].)
    async fn maintain(self: Arc<Self>) {
        match self.control.leases_of(CLOUD_DEVICE) {
            Ok(leases) => {
                for l in leases {
                    tracing::info!(session = %l.session, epoch = l.epoch, "resuming a session whose lease the cloud holds");
                    self.kick(&l.session);
                }
            }
            Err(e) => tracing::error!(error = %e, "listing the cloud's leases failed"),
        }
        let period = Duration::from_millis((self.config.lease_ttl_ms / 3).clamp(50, 10_000));
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            match self
                .control
                .complete_expired_handoffs(self.config.lease_ttl_ms)
            {
                Ok(moved) => {
                    for l in moved {
                        self.lease_changed(&l).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "completing expired handoffs failed"),
            }
        }
    }

    /// Mirrors a lease into the session document (for display and for the holder to see a
    /// pending handoff at once), wakes waiters, and starts the session here if it is ours.
    pub async fn lease_changed(self: &Arc<Self>, lease: &Lease) {
        let runner = lease.device.as_ref().map(|d| jarvis_sync::doc::Runner {
            device: d.clone(),
            epoch: lease.epoch,
            expires_ms: lease.expires_ms,
        });
        let handoff = lease.pending_to.as_ref().map(|to| HandoffRequest {
            to: to.clone(),
            by: lease.pending_by.clone().unwrap_or_default(),
            requested_ms: now_ms(),
        });
        let name = format!("session/{}", lease.session);
        let edited = self
            .hub
            .edit(&name, |doc| {
                let s = SessionDoc::new(doc.clone());
                s.set_runner(runner.as_ref());
                if s.handoff() != handoff {
                    s.set_handoff(handoff.as_ref());
                }
            })
            .await;
        if let Err(e) = edited {
            tracing::error!(session = %lease.session, error = %e, "mirroring the lease into the session failed");
        }
        self.lease_changes.send_modify(|n| *n += 1);
        if lease.device.as_deref() == Some(CLOUD_DEVICE) {
            self.kick(&lease.session);
        }
    }

    /// Starts running a session here if this runner holds its lease and is not running it.
    pub fn kick(self: &Arc<Self>, session: &str) {
        let lease = match self.control.lease(session) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%session, error = %e, "reading a lease failed");
                return;
            }
        };
        if lease.device.as_deref() != Some(CLOUD_DEVICE) {
            return;
        }
        let (stop, fence) = {
            let mut active = lock(&self.active);
            if let Some(a) = active.get(session) {
                if a.epoch == lease.epoch {
                    return;
                }
                // An older epoch's task is still winding down: it is fenced off.
                a.fence.cancel();
            }
            let a = Active {
                epoch: lease.epoch,
                stop: CancellationToken::new(),
                fence: CancellationToken::new(),
            };
            let tokens = (a.stop.clone(), a.fence.clone());
            active.insert(session.to_owned(), a);
            tokens
        };
        let me = self.clone();
        let session = session.to_owned();
        tokio::spawn(async move {
            let epoch = lease.epoch;
            if let Err(e) = me.host(&session, lease, stop, fence).await {
                tracing::error!(%session, error = %e, "the cloud runner stopped on an error");
            }
            let mut active = lock(&me.active);
            if active.get(&session).is_some_and(|a| a.epoch == epoch) {
                active.remove(&session);
            }
        });
    }

    /// The workspace's folder under the data dir, mirrored (started once, kept).
    async fn mirror(&self, workspace: &str) -> anyhow::Result<Arc<FileMirror>> {
        use anyhow::Context;
        let mut mirrors = self.mirrors.lock().await;
        if let Some(m) = mirrors.get(workspace) {
            return Ok(m.clone());
        }
        let dir = self.config.data_dir.join("workspaces").join(workspace);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let m = Arc::new(
            FileMirror::start(&dir, workspace, self.client.clone(), None)
                .await
                .with_context(|| format!("materialising workspace {workspace}"))?,
        );
        mirrors.insert(workspace.to_owned(), m.clone());
        Ok(m)
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.data_dir
    }

    /// Where a workspace is materialised (tests and the API read files from here).
    pub fn workspace_dir(&self, workspace: &str) -> PathBuf {
        self.config.data_dir.join("workspaces").join(workspace)
    }

    /// Holds one session while the cloud has its lease: materialises the handed-off state,
    /// runs whenever there is something to answer, and yields when asked.
    async fn host(
        self: &Arc<Self>,
        session: &str,
        lease: Lease,
        stop: CancellationToken,
        fence: CancellationToken,
    ) -> anyhow::Result<()> {
        // The lease is kept from the first moment (materialising a large workspace or waiting
        // for the handed-off state can outlast a short TTL), by the keeper every device uses:
        // renewed at a fraction of what the control plane left, fenced when it is lost.
        let hold = Hold::keep(
            Arc::new(self.leases()),
            session,
            wire_lease(&lease),
            stop.clone(),
            fence.clone(),
        );
        let row = self
            .control
            .session(session)?
            .ok_or_else(|| anyhow::anyhow!("session {session} is not registered"))?;
        let doc = SessionDoc::new(self.client.open(&format!("session/{session}")).await?);
        let mirror = self.mirror(&row.workspace).await?;
        hold.reach(&self.client, self.config.reach_timeout).await?;
        mirror.settle(true).await;
        // The repository the device sent, rebuilt under the working tree that just arrived.
        if let Some(line) = crate::devenv::git::restore_pending(
            &self.config.data_dir,
            &self.config.sandbox,
            session,
            mirror.root(),
        )
        .await
        {
            crate::devenv::note(&doc, &line);
        }
        // "running" with nobody running it: the previous runner died mid-reply (this process,
        // killed, or a device that vanished). A reply it was streaming is kept but asked again.
        if doc.meta().status == SessionStatus::Running
            && let Some(last) = doc
                .messages()
                .into_iter()
                .rev()
                .find(|m| m.role != Role::System)
            && last.role == Role::Assistant
            && !last
                .blocks
                .iter()
                .any(|b| matches!(b, jarvis_sync::doc::Block::ToolUse { .. }))
        {
            tracing::info!(%session, message = %last.id, "resuming after an interrupted reply");
            doc.mark_cut(&last.id)?;
        }
        tracing::info!(%session, epoch = lease.epoch, "the cloud holds the session");
        let changed = UpdateSignal::subscribe(doc.doc()).await;
        let result = self
            .host_loop(
                session,
                &row.workspace,
                &doc,
                &mirror,
                &stop,
                &fence,
                &changed,
            )
            .await;
        drop(changed);
        if hold.lost() || self.shutdown.is_cancelled() {
            return result;
        }
        result?;
        // Asked to yield: everything this runner wrote reaches the hub before the lease moves.
        hold.release(&self.client, &row.workspace, &mirror, RELEASE_FLUSH)
            .await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn host_loop(
        self: &Arc<Self>,
        session: &str,
        workspace: &str,
        doc: &SessionDoc,
        mirror: &Arc<FileMirror>,
        stop: &CancellationToken,
        fence: &CancellationToken,
        changed: &UpdateSignal,
    ) -> anyhow::Result<()> {
        // After a turn that ended without finishing the task (failed, interrupted, out of
        // budget), wait for a new message instead of trying again on the same transcript —
        // also when that turn ended before this process started: a restart never re-runs a
        // failed or interrupted session unasked.
        let mut quiet_at: Option<u32> = match doc.meta().status {
            SessionStatus::Failed | SessionStatus::Interrupted => Some(doc.len()),
            _ => None,
        };
        loop {
            if stop.is_cancelled() || fence.is_cancelled() || self.shutdown.is_cancelled() {
                return Ok(());
            }
            if quiet_at != Some(doc.len()) && needs_turn(doc) {
                let slot = tokio::select! {
                    s = self.slots.clone().acquire_owned() => s?,
                    _ = stop.cancelled() => return Ok(()),
                    _ = fence.cancelled() => return Ok(()),
                };
                let outcome = self.drive(session, doc, mirror, stop, fence).await;
                drop(slot);
                tracing::info!(%session, ?outcome, "cloud turn ended");
                // Tool writes reach the workspace documents through the mirror's watcher;
                // settle so a reader (or the next holder) sees them.
                mirror.rescan().await;
                if matches!(outcome, Outcome::Yielded | Outcome::LeaseLost) {
                    return Ok(());
                }
                quiet_at = Some(doc.len());
                continue;
            }
            let _ = workspace;
            tokio::select! {
                _ = changed.changed() => {}
                _ = stop.cancelled() => {}
                _ = fence.cancelled() => {}
                _ = self.shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// Whether a workspace configuration file (settings allow rules, defaultMode, env, hooks,
    /// command allowed-tools) may widen what the cloud runs: only content an owner approved
    /// (by hash, through the API), never in an untrusted review checkout; deny and ask rules
    /// and memory files apply regardless.
    fn config_approval(&self, session: &str) -> Box<dyn ConfigApproval> {
        match self.control.session(session) {
            Ok(Some(row)) => Box::new(crate::approvals::WorkspaceApproval {
                approvals: self.config.approvals.clone(),
                workspace: row.workspace,
            }),
            _ => Box::new(Unapproved),
        }
    }

    /// The session owner's memory text (written as the only file of a folder of this
    /// session's, outside the workspace, standing in for their `~/.claude`) and their "always
    /// allow" rules for the session's workspace, from the control DB.
    fn owner_setup(
        &self,
        session: &str,
    ) -> Result<(Option<PathBuf>, jarvis_agent::settings::HubAllowStore), String> {
        let row = match self.control.session(session) {
            Ok(Some(row)) => row,
            Ok(None) => return Ok((None, jarvis_agent::settings::HubAllowStore::default())),
            Err(e) => return Err(format!("reading the session's owner: {e}")),
        };
        let rules = &self.config.user_rules;
        // A review checkout's code is a stranger's: an answer given there once does not run
        // the next pull request's `npm test` unasked.
        let untrusted = self
            .config
            .approvals
            .untrusted(&row.workspace)
            .map_err(|e| format!("reading the workspace's trust: {e}"))?;
        let entries = if untrusted {
            Vec::new()
        } else {
            rules
                .entries(&row.owner, &row.workspace)
                .map_err(|e| format!("reading \"always allow\" rules: {e}"))?
        };
        let memory = rules
            .memory(&row.owner)
            .map_err(|e| format!("reading the owner's memory: {e}"))?;
        let dir = self
            .config
            .data_dir
            .join("user-memory")
            .join(&crate::approvals::content_hash(session)[..32]);
        let dir = match memory {
            Some(text) => {
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(dir.join("CLAUDE.md"), text))
                    .map_err(|e| format!("preparing the owner's memory: {e}"))?;
                Some(dir)
            }
            None => match std::fs::remove_dir_all(&dir) {
                Ok(()) => None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                // A stale copy must not stand in for memory the owner removed.
                Err(e) => return Err(format!("removing the owner's old memory: {e}")),
            },
        };
        Ok((dir, jarvis_agent::settings::HubAllowStore::new(entries)))
    }

    async fn drive(
        self: &Arc<Self>,
        session: &str,
        doc: &SessionDoc,
        mirror: &Arc<FileMirror>,
        stop: &CancellationToken,
        fence: &CancellationToken,
    ) -> Outcome {
        let current = self
            .provider
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let provider = match &current {
            Ok(p) => p.clone(),
            Err(e) => {
                let _ = doc.append_message(&jarvis_sync::doc::Message {
                    id: format!("s-{:016x}", rand::random::<u64>()),
                    role: Role::System,
                    author: CLOUD_DEVICE.into(),
                    created_ms: now_ms(),
                    blocks: vec![jarvis_sync::doc::Block::Text {
                        text: format!("The cloud agent has no model provider configured: {e}"),
                    }],
                });
                doc.set_status(&SessionStatus::Failed);
                return Outcome::Failed(e.clone());
            }
        };
        // The run settings come from the control plane, never from the session document:
        // any member's socket can write the document. A session that has none recorded (made
        // on a device and handed here) runs with the safest: ask for everything.
        let settings = match self.control.run_settings(session) {
            Ok(s) => s.unwrap_or_default(),
            Err(e) => {
                tracing::error!(%session, error = %e, "reading the run settings failed");
                return Outcome::Failed(format!("reading the run settings: {e}"));
            }
        };
        let model = settings
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| self.config.default_model.clone());
        // Run settings become permissions and a budget the one way every runner reads them.
        let resolved = match jarvis_device::settings::resolve(
            &wire_settings(&settings),
            &jarvis_device::RunOverrides::default(),
        ) {
            Ok(r) => r,
            // A deny rule that cannot be read would allow what it refuses: fail closed.
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        for w in &resolved.warnings {
            tracing::warn!(%session, warning = %w, "run settings");
        }
        let mode = resolved.permissions.mode;
        // Said in the session itself, so whoever reads it sees how its commands run.
        let sandbox = self.config.sandbox.describe();
        if doc.setting("sandbox").as_deref() != Some(sandbox.as_str()) {
            doc.set_setting("sandbox", &sandbox);
        }
        if let Some(why) = self.mode_refusal(Some(mode)) {
            return self.fail_run(doc, why);
        }
        let permissions = resolved.permissions;
        let mut tools = ToolBox::new(mirror.root());
        tools.sandbox = self.config.sandbox.clone();
        // The workspace's Claude Code setup. No user ~/.claude here (this is not the user's
        // machine); what widens what runs waits for an owner's approval.
        // The session owner's own hub setup: their memory text stands in for their
        // ~/.claude/CLAUDE.md, their "always allow" rules for this workspace join the matcher.
        // Another member's session loads that member's, never these.
        let (user_dir, allow) = match self.owner_setup(session) {
            Ok(x) => x,
            Err(why) => return self.fail_run(doc, why),
        };
        let setup = ClaudeSetup::load(
            mirror.root(),
            user_dir.as_deref(),
            Location::Cloud,
            self.config_approval(session).as_ref(),
        );
        let permissions = setup.permissions(permissions, resolved.explicit_mode, Some(&allow));
        // A settings file's approved `defaultMode` may widen the mode: checked again.
        if let Some(why) = self.mode_refusal(Some(permissions.mode)) {
            return self.fail_run(doc, why);
        }
        // A settings file's `env`, then the secrets the workspace names (they win a clash, and
        // only they are redacted from output).
        tools.env = setup.settings.env.clone();
        match self.secret_env(session, mirror.root()) {
            Ok(env) => {
                tools.redact = env.clone();
                tools.env.extend(env);
            }
            Err(why) => return self.fail_run(doc, why),
        }
        // The agent's branch and the remote; the network policy in force, said once.
        tools
            .env
            .extend(crate::devenv::session_env(&self.config.data_dir, session));
        let (_, network) = crate::devenv::egress::policy(&self.config.approvals, mirror.root());
        crate::devenv::note_once(doc, &format!("Network: {network}."));
        // The environment file's variables (secrets win a clash), then its setup script, run
        // once per approved content.
        if let Ok(Some(e)) = crate::devenv::environment::load(mirror.root()) {
            let mut env = e.env;
            env.append(&mut tools.env);
            tools.env = env;
        }
        let workspace = mirror
            .root()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(line) = crate::devenv::setup::ensure(
            &self.config.data_dir,
            &self.config.approvals,
            &tools.sandbox,
            &workspace,
            mirror.root(),
            &tools.env,
        )
        .await
        {
            crate::devenv::note_once(doc, &line);
        }
        let scope = tools.scope.clone();
        let hooks = setup.hooks(
            mirror.root(),
            tools.sandbox.clone(),
            session,
            permissions.mode,
        );
        let mut config = RunnerConfig::new(&model, CLOUD_DEVICE);
        config.budget_micros = resolved.budget_micros;
        config.apply_session_settings(doc);
        let mut runner = Runner::new(doc.clone(), provider.as_ref(), tools, permissions, config)
            .with_context(setup.context.clone())
            .with_hooks(hooks)
            .with_commands(setup.commands.clone())
            .with_notes(setup.notes())
            .with_stop(stop.clone())
            .with_fence(fence.clone())
            .with_mode_source(self.mode_source(session));
        let cancel = self.shutdown.child_token();
        let outcome = runner.drive(&cancel).await;
        // Nothing a run started outlives it.
        scope.kill_all();
        outcome
    }

    /// The session's permission mode as the control plane holds it (changed through `PATCH
    /// /api/sessions/{id}`), read before each request; a mode this server must refuse (allow-all
    /// without a sandbox) is not taken up.
    fn mode_source(self: &Arc<Self>, session: &str) -> jarvis_agent::runner::ModeSource {
        let (cloud, session) = (self.clone(), session.to_owned());
        Arc::new(move || {
            let mode = cloud
                .control
                .run_settings(&session)
                .ok()
                .flatten()
                .and_then(|s| s.permission_mode)
                .and_then(|m| Mode::parse(&m))?;
            cloud.mode_refusal(Some(mode)).is_none().then_some(mode)
        })
    }

    /// Ends a turn that cannot run, saying why in the session.
    fn fail_run(&self, doc: &SessionDoc, why: String) -> Outcome {
        let appended = doc.append_message(&jarvis_sync::doc::Message {
            id: format!("s-{:016x}", rand::random::<u64>()),
            role: Role::System,
            author: CLOUD_DEVICE.into(),
            created_ms: now_ms(),
            blocks: vec![jarvis_sync::doc::Block::Text { text: why.clone() }],
        });
        if let Err(e) = appended {
            tracing::error!(error = %e, "recording why a cloud turn cannot run failed");
        }
        doc.set_status(&SessionStatus::Failed);
        Outcome::Failed(why)
    }

    /// The secrets the workspace's `.jarvis/environment.toml` names, for this session's run
    /// (see [`crate::secrets`] for which scopes a run may use). Names only are logged.
    fn secret_env(
        &self,
        session: &str,
        root: &std::path::Path,
    ) -> Result<Vec<(String, String)>, String> {
        let names = crate::secrets::requested_names(root)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let row = self
            .control
            .session(session)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("session {session} is not registered"))?;
        let store = &self.config.secrets;
        let ws_owner = store
            .workspace_owner(&row.workspace)
            .map_err(|e| e.to_string())?;
        let (env, missing) = store
            .for_run(&row.owner, &row.workspace, ws_owner.as_deref(), &names)
            .map_err(|e| e.to_string())?;
        if !missing.is_empty() {
            tracing::warn!(%session, ?missing, "secrets named by the workspace are not available to this run");
        }
        Ok(env)
    }

    /// Flushes what this runner wrote and gives the lease to the pending target (a session
    /// held but not hosted; a hosted one releases through its [`Hold`]).
    async fn release(
        self: &Arc<Self>,
        session: &str,
        workspace: &str,
        epoch: u64,
        mirror: &Arc<FileMirror>,
    ) -> anyhow::Result<()> {
        jarvis_device::handoff::leave(
            &self.leases(),
            &self.client,
            session,
            workspace,
            epoch,
            mirror,
            RELEASE_FLUSH,
        )
        .await?;
        Ok(())
    }

    /// A handoff request from the API: `to` is `cloud`, or a device id.
    pub async fn request_handoff(
        self: &Arc<Self>,
        who: &Identity,
        session: &str,
        to: &str,
        expect: Vec<ExpectedDoc>,
        wait: Duration,
    ) -> Result<HandoffState, ControlError> {
        self.control.check_session(who, session)?;
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        if to == CLOUD_DEVICE && self.config.sandbox.refusal().is_some() {
            let mode = self
                .hub
                .read(&format!("session/{session}"), |doc| {
                    SessionDoc::new(doc.clone()).setting("permission_mode")
                })
                .await
                .map_err(|e| ControlError::Conflict(e.to_string()))?;
            if let Some(why) = self.mode_refusal(mode.as_deref().and_then(Mode::parse)) {
                return Err(ControlError::Forbidden(why));
            }
        }
        let state = self.control.request_handoff(
            session,
            to,
            &who.device_id(),
            expect,
            self.config.lease_ttl_ms,
        )?;
        self.control
            .audit(Some(who), "session.handoff", session, &format!("to {to}"));
        let lease = match &state {
            HandoffState::Granted { lease } | HandoffState::Pending { lease } => lease.clone(),
        };
        self.lease_changed(&lease).await;
        if let HandoffState::Granted { .. } = state {
            return Ok(state);
        }
        if lease.device.as_deref() == Some(CLOUD_DEVICE) {
            self.yield_session(session).await;
        }
        self.wait_for_holder(session, to, wait).await
    }

    /// Waits until `to` holds the lease (or the wait ends: then the state is still pending).
    pub async fn wait_for_holder(
        &self,
        session: &str,
        to: &str,
        wait: Duration,
    ) -> Result<HandoffState, ControlError> {
        let mut changes = self.lease_changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let lease = self.control.lease(session)?;
            if lease.device.as_deref() == Some(to) && lease.pending_to.is_none() {
                return Ok(HandoffState::Granted { lease });
            }
            if lease.pending_to.as_deref() != Some(to) {
                return Err(ControlError::Conflict(format!(
                    "the handoff to {to} was superseded: the session is held by {}",
                    lease.device.as_deref().unwrap_or("nobody")
                )));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(HandoffState::Pending { lease });
                }
            }
        }
    }

    /// Asks this runner to give a session up: a running one stops at its next safe point, an
    /// idle one is released at once.
    async fn yield_session(self: &Arc<Self>, session: &str) {
        let running = lock(&self.active).get(session).map(|a| a.stop.clone());
        match running {
            Some(stop) => stop.cancel(),
            None => {
                // Held but not hosted (a restart before the host started): release directly.
                let Ok(lease) = self.control.lease(session) else {
                    return;
                };
                let Ok(Some(row)) = self.control.session(session) else {
                    return;
                };
                match self.mirror(&row.workspace).await {
                    Ok(m) => {
                        if let Err(e) = self.release(session, &row.workspace, lease.epoch, &m).await
                        {
                            tracing::error!(%session, error = %e, "releasing an idle session failed");
                        }
                    }
                    Err(e) => {
                        tracing::error!(%session, error = %e, "releasing an idle session failed")
                    }
                }
            }
        }
    }

    /// A device releases its lease (after yielding): the hub must hold the state it reports.
    pub async fn device_release(
        self: &Arc<Self>,
        who: &Identity,
        session: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
    ) -> Result<Lease, ControlError> {
        self.control.check_session(who, session)?;
        for e in &expect {
            self.control.document_access(who, &e.doc)?;
            let want = handoff::decode_sv(&e.doc, &e.sv)
                .map_err(|err| ControlError::Invalid(err.to_string()))?;
            let have = self
                .hub
                .state_vector(&e.doc)
                .await
                .map_err(|err| ControlError::Invalid(err.to_string()))?;
            if !handoff::covers(&have, &want) {
                return Err(ControlError::Conflict(format!(
                    "the hub does not yet have your latest changes to {}; flush and retry",
                    e.doc
                )));
            }
        }
        let lease = self.control.release(
            session,
            &who.device_id(),
            epoch,
            expect,
            self.config.lease_ttl_ms,
        )?;
        self.control.audit(
            Some(who),
            "lease.release",
            session,
            &format!("→ {}", lease.device.as_deref().unwrap_or("nobody")),
        );
        self.lease_changed(&lease).await;
        Ok(lease)
    }

    /// A device takes (or renews) a free lease for itself.
    pub async fn device_acquire(
        self: &Arc<Self>,
        who: &Identity,
        session: &str,
    ) -> Result<Lease, ControlError> {
        self.control.check_session(who, session)?;
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        let before = self.control.lease(session)?;
        let lease = self
            .control
            .acquire(session, &who.device_id(), self.config.lease_ttl_ms)?;
        if before.epoch != lease.epoch || before.device != lease.device {
            self.control.audit(
                Some(who),
                "lease.acquire",
                session,
                &format!("epoch {}", lease.epoch),
            );
            self.lease_changed(&lease).await;
        }
        Ok(lease)
    }

    pub fn device_renew(
        &self,
        who: &Identity,
        session: &str,
        epoch: u64,
    ) -> Result<Lease, ControlError> {
        self.control.check_session(who, session)?;
        self.control
            .renew(session, &who.device_id(), epoch, self.config.lease_ttl_ms)
    }

    /// Opens a document on this runner's own sync client (a live replica: remote edits arrive
    /// as they are committed). The background-agent scheduler watches workspaces through it.
    pub async fn open_document(&self, name: &str) -> anyhow::Result<yrs::Doc> {
        let doc = self.client.open(name).await?;
        self.client
            .wait_synced(name, self.config.reach_timeout)
            .await?;
        Ok(doc)
    }

    /// The workspace index as this runner sees it (for listing files).
    pub async fn index(&self, workspace: &str) -> anyhow::Result<WorkspaceIndex> {
        let doc = self.client.open(&format!("ws/{workspace}/index")).await?;
        Ok(WorkspaceIndex::new(doc))
    }
}

/// Whether the session waits for a model turn: the last word (ignoring system notes) is the
/// user's, or a reply was cut by a handoff, or tool calls are unsettled.
fn needs_turn(doc: &SessionDoc) -> bool {
    let messages = doc.messages();
    let cut = doc.cut_messages();
    let Some(last) = messages.iter().rev().find(|m| m.role != Role::System) else {
        return false;
    };
    match last.role {
        Role::User => true,
        Role::Assistant => {
            if cut.contains(&last.id) {
                return true;
            }
            // Unsettled tool calls, including ones waiting for an approval that was answered.
            let pending_approval = last
                .blocks
                .iter()
                .any(|b| matches!(b, jarvis_sync::doc::Block::Approval { decision: None, .. }));
            let has_tools = last
                .blocks
                .iter()
                .any(|b| matches!(b, jarvis_sync::doc::Block::ToolUse { .. }));
            has_tools && !pending_approval
        }
        Role::System => false,
    }
}

/// Mirrors the cloud's handovers into the session document ([`Cloud::lease_changed`]).
struct Watcher(Arc<Cloud>);

impl LeaseWatcher for Watcher {
    fn changed(&self, lease: Lease) -> futures_util::future::BoxFuture<'static, ()> {
        let cloud = self.0.clone();
        Box::pin(async move { cloud.lease_changed(&lease).await })
    }

    fn request_handoff(
        &self,
        session: String,
        to: String,
        expect: Vec<ExpectedDoc>,
        wait: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<HandoffState, ControlError>> {
        let cloud = self.0.clone();
        Box::pin(async move {
            cloud
                .request_handoff(
                    &crate::control::system_identity(),
                    &session,
                    &to,
                    expect,
                    wait,
                )
                .await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jarvis_sync::doc::{Block, Message};

    fn msg(id: &str, role: Role, blocks: Vec<Block>) -> Message {
        Message {
            id: id.into(),
            role,
            author: "t".into(),
            created_ms: 0,
            blocks,
        }
    }

    #[test]
    fn a_turn_is_needed_after_a_user_message_a_cut_or_open_tools() {
        let d = SessionDoc::new(yrs::Doc::new());
        assert!(!needs_turn(&d));
        d.append_message(&msg(
            "u1",
            Role::User,
            vec![Block::Text { text: "hi".into() }],
        ))
        .unwrap();
        assert!(needs_turn(&d));
        d.append_message(&msg(
            "a1",
            Role::Assistant,
            vec![Block::Text { text: "yo".into() }],
        ))
        .unwrap();
        assert!(!needs_turn(&d));
        d.mark_cut("a1").unwrap();
        assert!(needs_turn(&d));
        d.append_message(&msg(
            "a2",
            Role::Assistant,
            vec![Block::ToolUse {
                id: "t1".into(),
                name: "bash".into(),
                input: "{}".into(),
                status: "pending".into(),
            }],
        ))
        .unwrap();
        assert!(needs_turn(&d));
        d.append_block(
            "a2",
            &Block::Approval {
                id: "ap-t1".into(),
                tool_use_id: "t1".into(),
                tool: "bash".into(),
                summary: "x".into(),
                decision: None,
                decided_by: None,
                decided_at: None,
            },
        )
        .unwrap();
        assert!(!needs_turn(&d));
    }
}
