//! Running a session on the user's own device: online under the hub's lease ([`run_here`],
//! [`prepare`] then [`Prepared::run`]), or with no hub on the device's own copy
//! ([`run_offline`]). Both hold the session the one way ([`Hold`]), read run settings the one
//! way ([`crate::settings`]), and build the runner the one way ([`drive_here`]): the
//! workspace's Claude Code setup and the user's `~/.claude` apply, as they do for Claude Code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jarvis_agent::anthropic::Provider;
use jarvis_agent::memory::Location;
use jarvis_agent::runner::{Outcome, RunEvent, Runner, RunnerConfig};
use jarvis_agent::settings::{AllowStore, ClaudeSetup, HubAllowStore, OwnDevice};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::client::SyncClient;
use jarvis_sync::doc::SessionDoc;
use jarvis_sync::mirror::FileMirror;
use jarvis_wire::device::Lease;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::{DeviceResult, LocalContext};
use crate::lease::{HttpLeases, LeaseAuthority, OwnLeases};
use crate::session::{Device, Hold};
use crate::settings::{self, Resolved, RunOverrides};

/// How long a new holder waits for the handed-off state to arrive.
const REACH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a yielding device waits for the hub to acknowledge what it wrote.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RunOptions {
    pub prompt: String,
    pub dir: PathBuf,
    pub workspace: Option<String>,
    pub session: Option<String>,
    pub model: String,
    /// This run's own settings on top of the session's (see [`settings::resolve`]).
    pub overrides: RunOverrides,
    /// A mirror of `dir` the caller keeps running (the desktop keeps one per opened folder);
    /// None starts one for this run.
    pub mirror: Option<Arc<FileMirror>>,
}

/// What a run on this device came to.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub session: String,
    pub outcome: Outcome,
    /// Where the session went when this device yielded (None: it rests, or the lease was
    /// lost).
    pub handed_to: Option<String>,
    /// Yielding to the cloud, the repository's git state could not be sent (the session went
    /// anyway; the cloud copy has the files but not the history). For the user to read.
    pub git_warning: Option<String>,
}

/// A session's id for a new run.
pub fn new_session_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{:016x}",
        t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
    )
}

/// A workspace id from a folder name: what document names accept.
pub fn workspace_id(dir: &Path) -> String {
    dir.file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .take(64)
                .collect()
        })
        .filter(|s: &String| !s.is_empty())
        .unwrap_or_else(|| "workspace".into())
}

/// A session this device holds under the hub's lease, ready to run.
pub struct Prepared {
    session: String,
    workspace: String,
    dir: PathBuf,
    doc: SessionDoc,
    mirror: Arc<FileMirror>,
    hold: Hold<HttpLeases>,
    resolved: Resolved,
    model: String,
    me: String,
    client: Arc<SyncClient>,
    api: crate::api::Api,
    allow: HubAllowStore,
}

/// Registers the session, mirrors the folder, takes the lease (or uses one already granted by
/// a handoff), reads the run settings and waits for the handed-off state. A session held
/// elsewhere is a `conflict` here, before anything runs.
pub async fn prepare(
    device: &Device,
    opts: RunOptions,
    granted: Option<Lease>,
) -> DeviceResult<Prepared> {
    let dir = opts
        .dir
        .canonicalize()
        .local(|| format!("folder {} is not accessible", opts.dir.display()))?;
    let session = opts.session.clone().unwrap_or_else(new_session_id);
    let workspace = match &opts.workspace {
        Some(w) => w.clone(),
        // A session that exists already names its workspace.
        None => match device.api.session_workspace(&session).await {
            Ok(Some(w)) => w,
            Ok(None) => workspace_id(&dir),
            Err(e) if e.is_unreachable() => return Err(e),
            Err(_) => workspace_id(&dir),
        },
    };
    let mirror = match opts.mirror.clone() {
        Some(m) => m,
        None => Arc::new(device.mirror(&dir, &workspace).await?),
    };
    let o = &opts.overrides;
    let mut body = json!({
        "id": session, "workspace": workspace, "model": opts.model,
        "allow": o.allow, "deny": o.deny,
    });
    if let Some(m) = &o.permission_mode {
        body["permission_mode"] = json!(m);
    }
    if !opts.prompt.is_empty() {
        body["title"] = json!(opts.prompt.chars().take(80).collect::<String>());
    }
    if let Some(b) = o.budget_usd {
        body["budget_usd"] = json!(b);
    }
    device.api.post("/api/sessions", body).await?;
    let doc = device.session(&session).await?;
    let hold = Hold::take(Arc::new(device.leases()), &doc, &session, granted).await?;
    // The session's own settings come from the hub's control plane (the document's copy is
    // for display: any member can write it).
    let recorded = device.api.run_settings(&session).await?;
    let resolved = settings::resolve(&recorded, o)?;
    // This user's "always allow" answers in this workspace, as the hub keeps them (the hub
    // records them where they are answered; another member's never come back here).
    let allow = HubAllowStore::new(device.api.always_allow(&workspace).await?);
    hold.reach(&device.client, REACH_TIMEOUT).await?;
    mirror.settle(true).await;
    if !opts.prompt.is_empty() {
        Runner::send_user_message(&doc, &device.id, &opts.prompt);
    }
    Ok(Prepared {
        session,
        workspace,
        dir,
        doc,
        mirror,
        hold,
        resolved,
        model: opts.model,
        me: device.id.clone(),
        client: device.client.clone(),
        api: device.api.clone(),
        allow,
    })
}

impl Prepared {
    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn lease(&self) -> &Lease {
        self.hold.lease()
    }

    /// Runs until the session rests, yields (then flushes and hands over), or loses its lease.
    pub async fn run(
        self,
        provider: &dyn Provider,
        events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
        cancel: CancellationToken,
    ) -> DeviceResult<RunReport> {
        let outcome = drive_here(
            &self.doc,
            &self.dir,
            &self.session,
            &self.me,
            &self.model,
            self.resolved,
            Some(&self.allow),
            &self.hold,
            provider,
            events,
            &cancel,
        )
        .await;
        if outcome == Outcome::LeaseLost || self.hold.lost() {
            return Ok(RunReport {
                session: self.session,
                outcome: Outcome::LeaseLost,
                handed_to: None,
                git_warning: None,
            });
        }
        // Yielding to the cloud: the repository goes with the session, before the lease does
        // (the cloud rebuilds it when it takes over).
        let mut git_warning = None;
        if self
            .doc
            .handoff()
            .is_some_and(|h| h.to == jarvis_wire::device::CLOUD_DEVICE)
            && let Err(e) = self
                .api
                .send_git_state(&self.session, &self.workspace, &self.dir)
                .await
        {
            tracing::warn!(session = %self.session, error = %e, "git state not sent");
            git_warning = Some(format!(
                "the repository's git state did not reach the cloud: {e}"
            ));
        }
        let lease = self
            .hold
            .release(&self.client, &self.workspace, &self.mirror, FLUSH_TIMEOUT)
            .await?;
        Ok(RunReport {
            session: self.session,
            outcome,
            handed_to: lease.device,
            git_warning,
        })
    }
}

/// Runs a session on this device under its lease: [`prepare`], then [`Prepared::run`].
pub async fn run_here(
    device: &Device,
    provider: &dyn Provider,
    opts: RunOptions,
    granted: Option<Lease>,
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    cancel: CancellationToken,
) -> DeviceResult<RunReport> {
    prepare(device, opts, granted)
        .await?
        .run(provider, events, cancel)
        .await
}

/// A session with no hub: the same hold and the same runner over the device's own copy of the
/// document; its settings are the document's copy (see [`settings::from_document`]).
#[allow(clippy::too_many_arguments)]
pub async fn run_offline(
    client: &SyncClient,
    provider: &dyn Provider,
    me: &str,
    session: &str,
    workspace: &str,
    dir: &Path,
    prompt: &str,
    model: &str,
    overrides: &RunOverrides,
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    cancel: &CancellationToken,
) -> DeviceResult<RunReport> {
    let doc = SessionDoc::new(
        client
            .open(&format!("session/{session}"))
            .await
            .local(|| format!("opening session {session}"))?,
    );
    if doc.meta().workspace.is_empty() {
        doc.set_workspace(workspace);
        doc.set_model(model);
        doc.set_title(&prompt.chars().take(80).collect::<String>());
    }
    let resolved = settings::resolve(&settings::from_document(&doc), overrides)?;
    let authority = Arc::new(OwnLeases::new(me));
    let lease = authority.acquire(session).await?;
    // No hub can move the session, so nothing in the document asks it to yield: a handoff
    // request left there from before the device went offline is not acted on.
    let hold = Hold::keep(
        authority,
        session,
        lease,
        CancellationToken::new(),
        CancellationToken::new(),
    );
    if !prompt.is_empty() {
        Runner::send_user_message(&doc, me, prompt);
    }
    let outcome = drive_here(
        &doc, dir, session, me, model, resolved, None, &hold, provider, events, cancel,
    )
    .await;
    Ok(RunReport {
        session: session.to_owned(),
        outcome,
        handed_to: None,
        git_warning: None,
    })
}

/// The turn loop on the user's own device, under `hold`.
#[allow(clippy::too_many_arguments)]
async fn drive_here<A: LeaseAuthority>(
    doc: &SessionDoc,
    dir: &Path,
    session: &str,
    me: &str,
    model: &str,
    resolved: Resolved,
    allow: Option<&dyn AllowStore>,
    hold: &Hold<A>,
    provider: &dyn Provider,
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    cancel: &CancellationToken,
) -> Outcome {
    let mut config = RunnerConfig::new(model, me);
    config.budget_micros = resolved.budget_micros;
    config.apply_session_settings(doc);
    let user_dir = ClaudeSetup::user_dir();
    let setup = ClaudeSetup::load(
        dir,
        user_dir.as_deref(),
        Location::Device(me.to_owned()),
        &OwnDevice,
    );
    let permissions = setup.permissions(
        resolved.permissions.with_root(dir),
        resolved.explicit_mode,
        allow,
    );
    let mut tools = ToolBox::new(dir);
    tools.env = setup.settings.env.clone();
    let hooks = setup.hooks(dir, tools.sandbox.clone(), session, permissions.mode);
    let mut notes = setup.notes();
    notes.extend(resolved.warnings.iter().map(|w| format!("Warning: {w}")));
    let mut runner = Runner::new(doc.clone(), provider, tools, permissions, config)
        .with_context(setup.context.clone())
        .with_hooks(hooks)
        .with_commands(setup.commands.clone())
        .with_notes(notes)
        .with_stop(hold.stop.clone())
        .with_fence(hold.fence.clone())
        // The mode read at the start holds for this run (any member can write the document's
        // copy); a change through the API applies from the next run here.
        .with_mode_source(Arc::new(|| None));
    if let Some(tx) = events {
        runner = runner.with_events(tx);
    }
    runner.drive(cancel).await
}
