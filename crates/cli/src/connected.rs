//! The device when it is logged in to a hub: sessions and workspaces are registered with the
//! cloud agent, documents sync through one socket, the folder is mirrored, and a session runs
//! here only while this device holds its lease. Continue in cloud / Continue here are
//! `jarvis handoff`; `jarvis attach` follows a session wherever it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use jarvis_agent::anthropic::Provider;
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::Permissions;
use jarvis_agent::runner::{Outcome, RunEvent, Runner, RunnerConfig};
use jarvis_agent::settings::{ClaudeSetup, HubAllowStore, OwnDevice};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::doc::{Block, Decision, SessionDoc, UpdateSignal};
use jarvis_sync::handoff::{self, ExpectedDoc};
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The hub's HTTP API with this device's token.
pub struct Api {
    pub hub: String,
    token: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Lease {
    pub device: Option<String>,
    pub epoch: u64,
    /// When the hub lets the lease lapse unless renewed (the hub's clock, ms since the epoch).
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub expect: Vec<ExpectedDoc>,
}

/// An API error with the hub's code, so callers can tell a conflict from a failure.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The longest a device waits in total on one call that the hub keeps rate-limiting.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(120);

/// The hub's `Retry-After` (whole seconds), at least 50 ms and at most 30 s; 1 s when absent
/// or unreadable.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs_f64(s.clamp(0.05, 30.0))
        })
}

impl Api {
    pub fn new(hub: &str, token: &str) -> Self {
        Api {
            hub: hub.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        // A hub that rate-limits this token says how long to wait (`Retry-After`); a device
        // waits and goes on rather than failing the session or the benchmark it serves. The
        // total wait is bounded so a hub that never relents still surfaces as an error.
        let mut waited = Duration::ZERO;
        let resp = loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.hub))
                .bearer_auth(&self.token)
                .timeout(Duration::from_secs(150));
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .with_context(|| format!("calling {}{path}", self.hub))?;
            if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
                break resp;
            }
            let wait = retry_after(resp.headers());
            if waited + wait > MAX_RATE_LIMIT_WAIT {
                break resp;
            }
            tokio::time::sleep(wait).await;
            waited += wait;
        };
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status >= 400 {
            return Err(ApiError {
                status,
                code: v["code"].as_str().unwrap_or("error").to_owned(),
                message: v["message"].as_str().unwrap_or("request failed").to_owned(),
            }
            .into());
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn lease(&self, session: &str, op: Value) -> Result<Lease> {
        let v = self
            .post(&format!("/api/sessions/{session}/lease"), op)
            .await?;
        Ok(serde_json::from_value(v)?)
    }
}

pub fn ws_url(hub: &str) -> String {
    let base = hub
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    format!("{base}/sync")
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

/// Everything a connected command needs.
pub struct Device {
    pub api: Api,
    pub client: Arc<SyncClient>,
    /// This device's id as the hub knows it (leases are held under it).
    pub id: String,
}

impl Device {
    pub async fn connect(hub: &str, token: &str, store: Arc<dyn Store>) -> Result<Device> {
        let api = Api::new(hub, token);
        let me = api
            .get("/api/me")
            .await
            .context("asking the hub who we are")?;
        let id = me["device"]
            .as_str()
            .ok_or_else(|| anyhow!("the hub did not say which device this is"))?
            .to_owned();
        let client = Arc::new(SyncClient::start(
            ClientConfig::new(ws_url(hub), token),
            store,
        ));
        Ok(Device { api, client, id })
    }

    pub async fn session(&self, id: &str) -> Result<SessionDoc> {
        let name = format!("session/{id}");
        let doc = self.client.open(&name).await?;
        self.client
            .wait_synced(&name, Duration::from_secs(20))
            .await
            .with_context(|| format!("syncing session {id}"))?;
        Ok(SessionDoc::new(doc))
    }

    pub async fn mirror(&self, dir: &Path, workspace: &str) -> Result<FileMirror> {
        self.api
            .post("/api/workspaces", json!({"id": workspace}))
            .await
            .with_context(|| format!("registering workspace {workspace}"))?;
        FileMirror::start(dir, workspace, self.client.clone(), None)
            .await
            .with_context(|| format!("mirroring {}", dir.display()))
    }

    /// Flushes the folder and every document, then gives the lease up with the state left.
    pub async fn release(
        &self,
        session: &str,
        workspace: &str,
        epoch: u64,
        mirror: &FileMirror,
    ) -> Result<Lease> {
        mirror.rescan().await;
        mirror.settle(false).await;
        self.client
            .flush_all(Duration::from_secs(60))
            .await
            .context("the hub did not acknowledge this device's changes")?;
        let docs = handoff::session_documents(session, workspace, mirror.index());
        let expect = handoff::snapshot(&self.client, &docs).await?;
        self.api
            .lease(
                session,
                json!({"op": "release", "epoch": epoch, "expect": expect}),
            )
            .await
            .context("releasing the lease")
    }
}

pub struct RunOptions {
    pub prompt: String,
    pub dir: PathBuf,
    pub workspace: Option<String>,
    pub session: Option<String>,
    pub model: String,
    /// None: the session's own setting (what its earlier runners used), else ask.
    pub permission_mode: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub budget_usd: Option<f64>,
    /// A mirror of `dir` the caller keeps running (the desktop keeps one per opened folder);
    /// None starts one for this run.
    pub mirror: Option<Arc<FileMirror>>,
}

/// What `run_here` did, for the caller to print.
pub struct RunReport {
    pub session: String,
    pub outcome: Outcome,
    /// Where the session went when this device yielded.
    pub handed_to: Option<String>,
}

/// Runs a session on this device under its lease: registers it, mirrors the folder, takes
/// the lease (or uses one already granted by a handoff), waits for the handed-off state, runs,
/// and yields at a safe point when another device or the cloud asks for the session.
pub async fn run_here(
    device: &Device,
    provider: &dyn Provider,
    opts: RunOptions,
    granted: Option<Lease>,
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    cancel: CancellationToken,
) -> Result<RunReport> {
    let dir = opts
        .dir
        .canonicalize()
        .with_context(|| format!("folder {} is not accessible", opts.dir.display()))?;
    let session = opts
        .session
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand_u64()));
    let workspace = match &opts.workspace {
        Some(w) => w.clone(),
        None => {
            // A session that exists already names its workspace.
            match device.api.get(&format!("/api/sessions/{session}")).await {
                Ok(v) => v["workspace"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| workspace_id(&dir)),
                Err(_) => workspace_id(&dir),
            }
        }
    };
    let mirror = match opts.mirror.clone() {
        Some(m) => m,
        None => Arc::new(device.mirror(&dir, &workspace).await?),
    };
    let mut body = json!({
        "id": session, "workspace": workspace, "model": opts.model,
        "allow": opts.allow, "deny": opts.deny,
    });
    if let Some(m) = &opts.permission_mode {
        body["permission_mode"] = json!(m);
    }
    if !opts.prompt.is_empty() {
        body["title"] = json!(opts.prompt.chars().take(80).collect::<String>());
    }
    if let Some(b) = opts.budget_usd {
        body["budget_usd"] = json!(b);
    }
    device
        .api
        .post("/api/sessions", body)
        .await
        .with_context(|| format!("registering session {session}"))?;
    let doc = device.session(&session).await?;
    let lease = match granted {
        Some(l) => l,
        // A conflict stays a typed `ApiError` (code `conflict`): each front end says in its
        // own words how to take the session (the CLI names a command, the window a button).
        None => device.api.lease(&session, json!({"op": "acquire"})).await?,
    };
    handoff::reach(&device.client, &lease.expect, Duration::from_secs(60))
        .await
        .context("waiting for the handed-off state")?;
    mirror.settle(true).await;
    if !opts.prompt.is_empty() {
        Runner::send_user_message(&doc, &device.id, &opts.prompt);
    }
    let stop = CancellationToken::new();
    let fence = CancellationToken::new();
    let keeper = tokio::spawn(keep_lease(
        Api::new(&device.api.hub, &device.api.token),
        doc.clone(),
        session.clone(),
        device.id.clone(),
        lease.clone(),
        stop.clone(),
        fence.clone(),
    ));
    // The session's own settings come from the hub's control plane (the document's copy is
    // for display: any member can write it).
    let recorded = device
        .api
        .get(&format!("/api/sessions/{session}/settings"))
        .await
        .context("reading the session's run settings")?;
    let mode_name = opts
        .permission_mode
        .clone()
        .or_else(|| recorded["permission_mode"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "ask".into());
    let mode = jarvis_agent::permissions::Mode::parse(&mode_name)
        .ok_or_else(|| anyhow!("unknown permission mode {mode_name:?}"))?;
    let recorded_rules = |key: &str| -> Vec<String> {
        recorded[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut permissions = Permissions::new(mode);
    // This run's own allow rules, else the session's; the session's deny rules always hold
    // (a deny set when the session was made is not lifted by moving it to a device).
    let allow = if opts.allow.is_empty() {
        recorded_rules("allow")
    } else {
        opts.allow.clone()
    };
    for r in &allow {
        permissions
            .allow
            .push(jarvis_agent::permissions::Rule::parse(r)?);
    }
    for r in opts.deny.iter().cloned().chain(recorded_rules("deny")) {
        permissions
            .deny
            .push(jarvis_agent::permissions::Rule::parse(&r)?);
    }
    let mut config = RunnerConfig::new(&opts.model, &device.id);
    // Run settings as the hub recorded them when the session was created (the authority),
    // unless this command named its own.
    config.budget_micros = opts
        .budget_usd
        .map(|d| (d * 1e6) as u64)
        .or_else(|| recorded["budget_micros"].as_u64());
    config.apply_session_settings(&doc);
    // The user's own device: the workspace's Claude Code setup and their ~/.claude apply.
    let user_dir = ClaudeSetup::user_dir();
    let setup = ClaudeSetup::load(
        &dir,
        user_dir.as_deref(),
        Location::Device(device.id.clone()),
        &OwnDevice,
    );
    let explicit_mode =
        opts.permission_mode.is_some() || recorded["permission_mode"].as_str().is_some();
    // This user's "always allow" answers in this workspace, as the hub keeps them (the hub
    // records them where they are answered; another member's never come back here).
    let allow = device
        .api
        .get(&format!("/api/workspaces/{workspace}/always-allow"))
        .await
        .context("reading this workspace's \"always allow\" rules")?;
    let allow = HubAllowStore::new(
        allow["rules"]
            .as_array()
            .map(|a| a.iter().map(|r| r["entry"].clone()).collect())
            .unwrap_or_default(),
    );
    let permissions = setup.permissions(permissions.with_root(&dir), explicit_mode, Some(&allow));
    let mut tools = ToolBox::new(&dir);
    tools.env = setup.settings.env.clone();
    let hooks = setup.hooks(&dir, tools.sandbox.clone(), &session, permissions.mode);
    let mut runner = Runner::new(doc.clone(), provider, tools, permissions, config)
        .with_context(setup.context.clone())
        .with_hooks(hooks)
        .with_commands(setup.commands.clone())
        .with_notes(setup.notes())
        .with_stop(stop.clone())
        .with_fence(fence.clone())
        // The mode read from the hub at the start holds for this run (any member can write
        // the document's copy); a change through the API applies from the next run here.
        .with_mode_source(Arc::new(|| None));
    if let Some(tx) = events {
        runner = runner.with_events(tx);
    }
    let outcome = runner.drive(&cancel).await;
    drop(runner);
    keeper.abort();
    let mut handed_to = None;
    match outcome {
        Outcome::LeaseLost => {}
        _ => {
            // Yielding to the cloud: the repository goes with the session.
            if doc.handoff().is_some_and(|h| h.to == "cloud")
                && let Err(e) = jarvis_sync::gitstate::send_to_cloud(
                    &device.api.hub,
                    &device.api.token,
                    &session,
                    &workspace,
                    &dir,
                )
                .await
            {
                eprintln!("warning: the repository's git state did not reach the cloud: {e}");
            }
            let l = device
                .release(&session, &workspace, lease.epoch, &mirror)
                .await?;
            handed_to = l.device;
        }
    }
    Ok(RunReport {
        session,
        outcome,
        handed_to,
    })
}

/// How soon to retry a renewal that did not reach the hub.
const RENEW_RETRY: Duration = Duration::from_millis(500);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When to renew a lease that expires at `expires_ms` (the hub's clock): after a third of the
/// time that remains, so two renewals can fail before it lapses, whatever TTL the hub chose.
/// Clock skew only makes this earlier or later within [100 ms, 10 s]; without a deadline, 5 s.
fn renew_after(expires_ms: Option<u64>, now_ms: u64) -> Duration {
    match expires_ms {
        Some(at) => Duration::from_millis((at.saturating_sub(now_ms) / 3).clamp(100, 10_000)),
        None => Duration::from_secs(5),
    }
}

/// Renews the lease and watches the session for a handoff request addressed elsewhere.
async fn keep_lease(
    api: Api,
    doc: SessionDoc,
    session: String,
    me: String,
    lease: Lease,
    stop: CancellationToken,
    fence: CancellationToken,
) {
    let epoch = lease.epoch;
    let changed = UpdateSignal::subscribe(doc.doc()).await;
    let mut renew_at = tokio::time::Instant::now() + renew_after(lease.expires_ms, now_ms());
    loop {
        if let Some(h) = doc.handoff()
            && h.to != me
        {
            stop.cancel();
        }
        if tokio::time::Instant::now() >= renew_at {
            let mut next = RENEW_RETRY;
            match api
                .lease(&session, json!({"op": "renew", "epoch": epoch}))
                .await
            {
                Ok(l) => next = renew_after(l.expires_ms, now_ms()),
                Err(e) => match e.downcast_ref::<ApiError>() {
                    Some(a) if a.code == "conflict" => {
                        eprintln!("lost the lease of {session}: {}", a.message);
                        fence.cancel();
                        return;
                    }
                    // Offline: keep running; the hub decides when the lease expires.
                    _ => tracing::warn!(error = %e, "renewing the lease failed"),
                },
            }
            renew_at = tokio::time::Instant::now() + next;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(renew_at) => {}
        }
    }
}

pub fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// `jarvis handoff <session> --to cloud|here|<device>`.
pub async fn request_handoff(
    device: &Device,
    session: &str,
    to: &str,
    dir: Option<&Path>,
) -> Result<Option<Lease>> {
    // A device handing a free session to the cloud first makes sure its folder is in.
    let mut expect: Vec<ExpectedDoc> = Vec::new();
    if to != "here"
        && let Some(dir) = dir
    {
        let v = device.api.get(&format!("/api/sessions/{session}")).await?;
        let workspace = v["workspace"].as_str().unwrap_or_default().to_owned();
        let mirror = device.mirror(dir, &workspace).await?;
        mirror.rescan().await;
        mirror.settle(false).await;
        device.session(session).await?;
        device.client.flush_all(Duration::from_secs(60)).await?;
        let docs = handoff::session_documents(session, &workspace, mirror.index());
        expect = handoff::snapshot(&device.client, &docs).await?;
        // The repository travels too (`.git` is never synced as files).
        if to == "cloud" {
            jarvis_sync::gitstate::send_to_cloud(
                &device.api.hub,
                &device.api.token,
                session,
                &workspace,
                dir,
            )
            .await
            .context("sending the repository's git state")?;
        }
    }
    let v = device
        .api
        .post(
            &format!("/api/sessions/{session}/handoff"),
            json!({"to": to, "expect": expect, "wait_ms": 120_000}),
        )
        .await?;
    match v["state"].as_str() {
        Some("granted") => Ok(Some(serde_json::from_value(v["lease"].clone())?)),
        Some("pending") => Ok(None),
        _ => bail!("unexpected answer from the hub: {v}"),
    }
}

/// Follows a session: prints what is there, then every change as it arrives (text as it
/// streams, tool calls, results, approvals, status), until interrupted or, with `until_done`,
/// until the session rests (done, failed, interrupted, waiting for approval with `until_done`
/// off only).
pub async fn attach(
    device: &Device,
    session: &str,
    json_lines: bool,
    until_done: bool,
    approve: Option<Decision>,
) -> Result<()> {
    use std::io::Write;
    let doc = device.session(session).await?;
    let changed = UpdateSignal::subscribe(doc.doc()).await;
    // (message id, block index) → characters printed so far.
    let mut printed: std::collections::HashMap<(String, usize), usize> = Default::default();
    let mut last_status = String::new();
    let mut answered: std::collections::HashSet<String> = Default::default();
    let mut seen_busy = false;
    loop {
        {
            let mut out = std::io::stdout().lock();
            for m in doc.messages() {
                for (i, b) in m.blocks.iter().enumerate() {
                    let key = (m.id.clone(), i);
                    let done = printed.get(&key).copied();
                    match b {
                        Block::Text { text } => {
                            let start = done.unwrap_or(0);
                            if text.len() > start && text.is_char_boundary(start) {
                                let delta = &text[start..];
                                if json_lines {
                                    writeln!(
                                        out,
                                        "{}",
                                        json!({"type": "text", "message": m.id, "role": m.role, "author": m.author, "text": delta})
                                    )?;
                                } else {
                                    write!(out, "{delta}")?;
                                }
                                printed.insert(key, text.len());
                            }
                        }
                        Block::ToolUse {
                            id, name, input, ..
                        } if done.is_none() => {
                            if json_lines {
                                writeln!(
                                    out,
                                    "{}",
                                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                                )?;
                            } else {
                                writeln!(out, "\n[{name}] {input}")?;
                            }
                            printed.insert(key, 0);
                        }
                        Block::ToolResult {
                            tool_use_id,
                            content,
                            is_error,
                        } if done.is_none() => {
                            if json_lines {
                                writeln!(
                                    out,
                                    "{}",
                                    json!({"type": "tool_result", "id": tool_use_id, "content": content, "is_error": is_error})
                                )?;
                            } else if *is_error {
                                writeln!(out, "[error] {}", content.lines().next().unwrap_or(""))?;
                            }
                            printed.insert(key, 0);
                        }
                        Block::Approval {
                            id,
                            tool,
                            summary,
                            decision: None,
                            ..
                        } if done.is_none() => {
                            if json_lines {
                                writeln!(
                                    out,
                                    "{}",
                                    json!({"type": "approval_needed", "id": id, "tool": tool, "summary": summary})
                                )?;
                            } else {
                                writeln!(
                                    out,
                                    "\n[approval needed {id}] {tool}: {summary}  (jarvis approve {session} {id})"
                                )?;
                            }
                            printed.insert(key, 0);
                        }
                        _ => {}
                    }
                }
            }
            let meta = doc.meta();
            let status = meta.status.as_str().to_owned();
            if status != last_status {
                let runner = meta.runner.map(|r| r.device).unwrap_or_default();
                if json_lines {
                    writeln!(
                        out,
                        "{}",
                        json!({"type": "status", "status": status, "runner": runner})
                    )?;
                } else {
                    writeln!(
                        out,
                        "\n[{status}{}]",
                        if runner.is_empty() {
                            String::new()
                        } else {
                            format!(" on {runner}")
                        }
                    )?;
                }
                last_status = status.clone();
            }
            out.flush()?;
            if matches!(status.as_str(), "running" | "waiting_approval") {
                seen_busy = true;
            }
            if until_done
                && seen_busy
                && matches!(status.as_str(), "done" | "failed" | "interrupted")
            {
                return Ok(());
            }
        }
        if let Some(decision) = approve {
            for (_, b) in doc.pending_approvals() {
                if let Block::Approval { id, .. } = b
                    && answered.insert(id.clone())
                {
                    device
                        .api
                        .post(
                            &format!("/api/sessions/{session}/approvals/{id}"),
                            json!({"decision": decision.as_str()}),
                        )
                        .await?;
                }
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// `jarvis login <hub>` without a token: pair by a code approved where the person is signed
/// in (the web view, or `POST /api/pair/approve`).
/// A pairing in progress: show `code` to the person, then [`Pairing::wait`].
pub struct Pairing {
    pub hub: String,
    pub code: String,
    pub device_code: String,
    pub expires_in: u64,
}

impl Pairing {
    /// Asks the hub for a pairing code for a device called `name`.
    pub async fn start(hub: &str, name: &str) -> Result<Pairing> {
        let v: Value = reqwest::Client::new()
            .post(format!("{hub}/api/pair/start"))
            .json(&json!({"name": name}))
            .send()
            .await
            .with_context(|| format!("contacting {hub}"))?
            .error_for_status()?
            .json()
            .await?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the hub's pairing answer has no {k}: {v}"))
        };
        Ok(Pairing {
            hub: hub.to_owned(),
            code: field("code")?,
            device_code: field("device_code")?,
            expires_in: v["expires_in"].as_u64().unwrap_or(600),
        })
    }

    /// Polls until the code is approved; returns (token, device id).
    pub async fn wait(&self) -> Result<(String, String)> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(self.expires_in);
        loop {
            if tokio::time::Instant::now() >= deadline {
                bail!("the pairing code expired; sign in again");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let resp = http
                .post(format!("{}/api/pair/poll", self.hub))
                .json(&json!({"device_code": self.device_code}))
                .send()
                .await?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                let token = v["token"].as_str().unwrap_or_default().to_owned();
                let id = v["device"]["id"].as_str().unwrap_or_default().to_owned();
                return Ok((token, id));
            }
            if v["code"] != "authorization_pending" && v["code"] != "rate_limited" {
                bail!(
                    "pairing failed: {}",
                    v["message"].as_str().unwrap_or("unknown error")
                );
            }
        }
    }
}

/// `jarvis login` without a token: shows the code and waits for its approval.
pub async fn pair(hub: &str, name: &str) -> Result<(String, String)> {
    let pairing = Pairing::start(hub, name).await?;
    println!(
        "To pair this device, approve code {} in My Jarvis (Devices → Pair) within {} minutes.",
        pairing.code,
        pairing.expires_in / 60
    );
    pairing.wait().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A hub stand-in on loopback: answers the first `limited` requests with 429 and a
    /// `Retry-After`, then 200; returns its address and the count of requests it saw.
    async fn limiting_hub(limited: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let n = seen2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let (status, extra, body) = if n < limited {
                    (
                        "429 Too Many Requests",
                        "Retry-After: 0\r\n",
                        r#"{"code":"rate_limited","message":"slow down"}"#,
                    )
                } else {
                    ("200 OK", "", r#"{"ok":true}"#)
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_rate_limited_device_waits_and_continues() {
        let (hub, seen) = limiting_hub(3).await;
        let v = Api::new(&hub, "jt_test").get("/api/me").await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[test]
    fn leases_are_renewed_at_a_third_of_what_remains() {
        assert_eq!(renew_after(Some(2_000), 0), Duration::from_millis(666));
        assert_eq!(renew_after(Some(600_000), 0), Duration::from_secs(10));
        assert_eq!(renew_after(Some(5), 1_000), Duration::from_millis(100));
        assert_eq!(renew_after(None, 0), Duration::from_secs(5));
    }

    #[test]
    fn retry_after_is_read_and_bounded() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::from_secs(1));
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(2));
        h.insert(reqwest::header::RETRY_AFTER, "3600".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(30));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), Duration::from_secs(1));
    }
}
