//! The scheduler of background agents: every tick it reloads the definitions
//! ([`crate::agents`]) when due, turns due cron occurrences and file changes into runs, follows
//! running runs to their end, and starts queued runs within the concurrency limit and the
//! budgets. Each run is an ordinary session, created and handed to the cloud runner exactly as
//! `POST /api/sessions` does ([`crate::api::start_session`]).
//!
//! Stated policies (ARCHITECTURE.md repeats them):
//! - A run is a row in `agent_runs`, unique on (agent, scheduled time): a restart, a second
//!   tick or a racing request can never run one occurrence twice.
//! - Missed runs (the server was down): only the latest missed occurrence counts; with
//!   `missed: run_once` (default) it runs on catch-up if it is at most `--agents-catch-up-s`
//!   late, otherwise it is recorded as skipped; with `missed: skip` anything more than a minute
//!   late is skipped. An agent seen for the first time starts from now (no back-fill).
//! - File triggers: changes to matching paths (index entries and file contents, as the cloud's
//!   replica receives them) are coalesced until none arrived for the debounce time, then make
//!   one run listing the paths. Changes while a run of that agent is active are dropped, so an
//!   agent that edits files it watches does not trigger itself.
//! - Budgets: a run's session budget is the agent's `budget_usd` (default
//!   `--agents-default-budget-usd`), capped by what is left of the agent's `daily_budget_usd`
//!   and of the owner's `--agents-user-daily-budget-usd` (UTC day by the scheduler's clock);
//!   a run whose agent or owner has nothing left is recorded `over_budget` and not started.
//!   Cost is the session's, at list prices, cache writes and reads included.
//! - At most `--agents-max-concurrent` runs are active; more wait, oldest first.
//!
//! Time comes from a [`Clock`]; tests inject one (`--clock-file`) and move it by hand.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::TimeZone;
use jarvis_sync::doc::{Role, SessionDoc, SessionStatus, WorkspaceIndex};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::access::Action;
use crate::agents::{self, AgentDef, Missed, Trigger};
use crate::api::{Api, ApiError, Body, Caller, NewSession};
use crate::control::{CLOUD_DEVICE, ControlError, Identity};
use crate::limits::ClientAddr;

/// The scheduler's time, in milliseconds since the epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::control::now_ms()
    }
}

/// A clock set by hand (unit tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The time written in a file (milliseconds since the epoch), read on every call: the
/// end-to-end tests' clock, which they move by hand across restarts of the server.
pub struct FileClock {
    path: PathBuf,
    last: AtomicU64,
}

impl FileClock {
    pub fn new(path: &Path) -> Self {
        FileClock {
            path: path.to_path_buf(),
            last: AtomicU64::new(0),
        }
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> u64 {
        match std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            Some(t) => {
                self.last.store(t, Ordering::SeqCst);
                t
            }
            // Mid-write or missing: keep the last time read.
            None => self.last.load(Ordering::SeqCst),
        }
    }
}

/// Options of the scheduler (part of `jarvis-cloud serve`).
#[derive(Clone, clap::Args)]
pub struct AgentArgs {
    /// Background-agent runs active at once; more wait in a queue.
    #[arg(long, env = "JARVIS_AGENTS_MAX_CONCURRENT", default_value_t = 2)]
    pub agents_max_concurrent: usize,
    /// What a user's background agents may spend per UTC day, in US dollars.
    #[arg(
        long,
        env = "JARVIS_AGENTS_USER_DAILY_BUDGET_USD",
        default_value_t = 10.0
    )]
    pub agents_user_daily_budget_usd: f64,
    /// A run's budget when its definition names none, in US dollars.
    #[arg(long, env = "JARVIS_AGENTS_DEFAULT_BUDGET_USD", default_value_t = 1.0)]
    pub agents_default_budget_usd: f64,
    /// How late a missed cron run may still run on catch-up (missed: run_once), in seconds.
    #[arg(long, env = "JARVIS_AGENTS_CATCH_UP_S", default_value_t = 3600)]
    pub agents_catch_up_s: u64,
    /// How often the scheduler looks, in milliseconds.
    #[arg(long, env = "JARVIS_AGENTS_TICK_MS", default_value_t = 1000)]
    pub agents_tick_ms: u64,
    /// How often definitions are re-read from the workspaces, in seconds (the API's changes
    /// apply at once).
    #[arg(long, env = "JARVIS_AGENTS_RELOAD_S", default_value_t = 10)]
    pub agents_reload_s: u64,
    /// Quiet time after a file change before a files-triggered run starts, in milliseconds.
    #[arg(long, env = "JARVIS_AGENTS_FILE_DEBOUNCE_MS", default_value_t = 2000)]
    pub agents_file_debounce_ms: u64,
    /// Read the scheduler's time from this file (milliseconds since the epoch); for tests.
    #[arg(long, env = "JARVIS_CLOCK_FILE", hide = true)]
    pub clock_file: Option<PathBuf>,
}

impl std::fmt::Debug for AgentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentArgs")
            .field("max_concurrent", &self.agents_max_concurrent)
            .field("user_daily_budget_usd", &self.agents_user_daily_budget_usd)
            .field("catch_up_s", &self.agents_catch_up_s)
            .finish_non_exhaustive()
    }
}

/// Runs on time within this grace are on time, not missed.
const ON_TIME_MS: u64 = 60_000;

/// Occurrences of `cron` in `tz` after `after_ms` up to and including `upto_ms`, at most `cap`.
pub fn occurrences(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    after_ms: u64,
    upto_ms: u64,
    cap: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    let Some(mut t) = tz.timestamp_millis_opt(after_ms as i64).single() else {
        return out;
    };
    while out.len() < cap {
        let Ok(next) = cron.find_next_occurrence(&t, false) else {
            break;
        };
        let ms = next.timestamp_millis().max(0) as u64;
        if ms > upto_ms {
            break;
        }
        out.push(ms);
        t = next;
    }
    out
}

/// What to do with the occurrences found since the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Run { scheduled_ms: u64, missed: usize },
    Skip { scheduled_ms: u64, late_ms: u64 },
}

pub fn decide(occurrences: &[u64], now_ms: u64, missed: Missed, catch_up_ms: u64) -> Decision {
    let Some(&latest) = occurrences.last() else {
        return Decision::Nothing;
    };
    let late = now_ms.saturating_sub(latest);
    let limit = match missed {
        Missed::RunOnce => catch_up_ms.max(ON_TIME_MS),
        Missed::Skip => ON_TIME_MS,
    };
    if late <= limit {
        Decision::Run {
            scheduled_ms: latest,
            missed: occurrences.len() - 1,
        }
    } else {
        Decision::Skip {
            scheduled_ms: latest,
            late_ms: late,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub agent: String,
    pub workspace: String,
    pub name: String,
    pub scheduled_ms: u64,
    pub trigger: String,
    pub detail: String,
    pub status: String,
    pub session: Option<String>,
    pub owner: String,
    pub cost_micros: u64,
    pub note: String,
}

/// Changes seen by a files trigger's watch, waiting for the debounce.
#[derive(Default)]
struct Pending {
    paths: Vec<String>,
    first_ms: u64,
    last_ms: u64,
}

struct Watch {
    index: WorkspaceIndex,
    /// Changed paths and when (scheduler clock), filled by document observers.
    changes: Arc<Mutex<Vec<(String, u64)>>>,
    /// File documents already observed (by doc id).
    files: Mutex<HashSet<String>>,
    /// Set by the index observer: the index must be listed again for new files to observe.
    relist: Arc<std::sync::atomic::AtomicBool>,
}

struct Loaded {
    workspace: String,
    def: AgentDef,
}

pub struct Agents {
    pub args: AgentArgs,
    clock: Arc<dyn Clock>,
    conn: Mutex<Connection>,
    kick: Notify,
    reload: std::sync::atomic::AtomicBool,
    defs: Mutex<HashMap<String, Loaded>>,
    watches: tokio::sync::Mutex<HashMap<String, Arc<Watch>>>,
    pending: Mutex<HashMap<String, Pending>>,
    recovered: std::sync::atomic::AtomicBool,
    /// The clock's time at the end of the last complete tick.
    last_tick: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use crate::control::system_identity;

fn day_start(ms: u64) -> u64 {
    ms - ms % 86_400_000
}

impl Agents {
    pub fn open(db: &Path, args: AgentArgs) -> anyhow::Result<Arc<Agents>> {
        use anyhow::Context;
        let conn =
            Connection::open(db).with_context(|| format!("opening {} for agents", db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS agent_state (
                agent TEXT PRIMARY KEY,
                checked_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS agent_runs (
                id INTEGER PRIMARY KEY,
                agent TEXT NOT NULL,
                workspace TEXT NOT NULL,
                name TEXT NOT NULL,
                scheduled_ms INTEGER NOT NULL,
                trigger TEXT NOT NULL,
                detail TEXT NOT NULL,
                status TEXT NOT NULL,
                session TEXT,
                owner TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                cost_micros INTEGER NOT NULL DEFAULT 0,
                note TEXT NOT NULL DEFAULT '',
                UNIQUE (agent, scheduled_ms)
            );
            CREATE INDEX IF NOT EXISTS agent_runs_by_status ON agent_runs (status);
            CREATE TABLE IF NOT EXISTS agent_webhook_secrets (
                agent TEXT PRIMARY KEY,
                secret TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );",
        )
        .context("creating the agent tables")?;
        let clock: Arc<dyn Clock> = match &args.clock_file {
            Some(p) => {
                tracing::warn!(path = %p.display(), "the scheduler reads its time from a file (tests only)");
                Arc::new(FileClock::new(p))
            }
            None => Arc::new(SystemClock),
        };
        Ok(Arc::new(Agents {
            args,
            clock,
            conn: Mutex::new(conn),
            kick: Notify::new(),
            reload: std::sync::atomic::AtomicBool::new(true),
            defs: Mutex::new(HashMap::new()),
            watches: tokio::sync::Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            recovered: std::sync::atomic::AtomicBool::new(false),
            last_tick: AtomicU64::new(0),
        }))
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Re-read definitions and look again at once (after an API change).
    pub fn poke(&self) {
        self.reload.store(true, Ordering::SeqCst);
        self.kick.notify_one();
    }

    fn checked(&self, agent: &str) -> rusqlite::Result<Option<u64>> {
        self.conn()
            .query_row(
                "SELECT checked_ms FROM agent_state WHERE agent = ?1",
                params![agent],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.map(|v| v as u64))
    }

    /// Inserts a run unless one exists for (agent, scheduled); returns whether it was new.
    #[allow(clippy::too_many_arguments)]
    fn insert_run(
        conn: &Connection,
        agent: &str,
        workspace: &str,
        name: &str,
        scheduled_ms: u64,
        trigger: &str,
        detail: &str,
        status: &str,
        owner: &str,
        note: &str,
        now: u64,
    ) -> rusqlite::Result<bool> {
        let n = conn.execute(
            "INSERT OR IGNORE INTO agent_runs
               (agent, workspace, name, scheduled_ms, trigger, detail, status, owner, created_ms, note)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                agent,
                workspace,
                name,
                scheduled_ms as i64,
                trigger,
                detail,
                status,
                owner,
                now as i64,
                note
            ],
        )?;
        Ok(n == 1)
    }

    pub fn runs(&self, agent: Option<&str>, limit: u32) -> rusqlite::Result<Vec<RunRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent, workspace, name, scheduled_ms, trigger, detail, status, session,
                    owner, cost_micros, note
             FROM agent_runs WHERE ?1 IS NULL OR agent = ?1 ORDER BY scheduled_ms DESC, id DESC
             LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![agent, limit], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                agent: r.get(1)?,
                workspace: r.get(2)?,
                name: r.get(3)?,
                scheduled_ms: r.get::<_, i64>(4)? as u64,
                trigger: r.get(5)?,
                detail: r.get(6)?,
                status: r.get(7)?,
                session: r.get(8)?,
                owner: r.get(9)?,
                cost_micros: r.get::<_, i64>(10)? as u64,
                note: r.get(11)?,
            })
        })?;
        rows.collect()
    }

    fn active(&self, agent: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .query_row(
                "SELECT 1 FROM agent_runs WHERE agent = ?1
                   AND status IN ('queued', 'starting', 'running') LIMIT 1",
                params![agent],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn spent_since(&self, column: &str, key: &str, since: u64) -> rusqlite::Result<u64> {
        let sql = format!(
            "SELECT coalesce(sum(cost_micros), 0) FROM agent_runs WHERE {column} = ?1
               AND scheduled_ms >= ?2"
        );
        self.conn()
            .query_row(&sql, params![key, since as i64], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
    }

    fn set_status(&self, id: i64, status: &str, note: &str) {
        if let Err(e) = self.conn().execute(
            "UPDATE agent_runs SET status = ?2, note = ?3 WHERE id = ?1",
            params![id, status, note],
        ) {
            tracing::error!(run = id, error = %e, "updating a run failed");
        }
    }
}

/// Starts the scheduler loop; it ends with `shutdown`.
pub fn start(api: Api, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let agents = api.agents.clone();
        let tick = Duration::from_millis(agents.args.agents_tick_ms.max(10));
        let mut last_reload = tokio::time::Instant::now();
        loop {
            let reload_due =
                last_reload.elapsed() >= Duration::from_secs(agents.args.agents_reload_s.max(1));
            if reload_due || agents.reload.swap(false, Ordering::SeqCst) {
                last_reload = tokio::time::Instant::now();
                reload(&api).await;
            }
            if let Err(e) = tick_once(&api).await {
                tracing::error!(error = %e, "scheduler tick failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
                _ = agents.kick.notified() => {}
            }
        }
    });
}

/// Re-reads every workspace's definitions and sets up watches for file triggers.
async fn reload(api: &Api) {
    let agents = &api.agents;
    let workspaces = match api.control.workspaces(&system_identity()) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "listing workspaces failed");
            return;
        }
    };
    let mut defs = HashMap::new();
    for w in workspaces {
        // Review checkouts hold a stranger's files: nothing in them ever runs.
        match api.approvals.untrusted(&w.id) {
            Ok(false) => {}
            Ok(true) => continue,
            Err(e) => {
                tracing::error!(workspace = %w.id, error = %e, "checking a workspace's trust failed; skipping it");
                continue;
            }
        }
        for d in agents::load_hashed(&api.hub, &w.id).await {
            let name = d.name.clone();
            if !approved(api, &w.id, &d) {
                if d.def.is_ok() {
                    tracing::info!(workspace = %w.id, agent = %name, "agent waits for an owner's approval");
                }
                continue;
            }
            match d.def {
                Ok(def) => {
                    if matches!(def.trigger, Trigger::Files { .. })
                        && let Err(e) = watch(api, &w.id).await
                    {
                        tracing::warn!(workspace = %w.id, error = %e, "cannot watch the workspace for a files trigger");
                    }
                    defs.insert(
                        format!("{}/{name}", w.id),
                        Loaded {
                            workspace: w.id.clone(),
                            def,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(workspace = %w.id, agent = %name, error = %e, "invalid agent definition");
                }
            }
        }
    }
    *lock(&agents.defs) = defs;
}

/// Whether this exact definition may run: an owner wrote or approved its content.
fn approved(api: &Api, workspace: &str, d: &agents::Hashed) -> bool {
    let Some(hash) = &d.hash else { return false };
    match api.approvals.is_approved(workspace, "agent", &d.path, hash) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%workspace, agent = %d.name, error = %e, "checking an approval failed");
            false
        }
    }
}

/// The approved definition of one agent, for a run started by request: missing, invalid and
/// unapproved are refused.
async fn approved_def(api: &Api, workspace: &str, name: &str) -> Result<AgentDef, ApiError> {
    let d = agents::load_hashed(&api.hub, workspace)
        .await
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ControlError::NotFound(format!("no agent {name:?} in {workspace:?}")))?;
    if !approved(api, workspace, &d) || api.approvals.untrusted(workspace).unwrap_or(true) {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "approval_required",
            message: format!(
                "agent {name:?} waits for a workspace owner to approve its current content"
            ),
            retry_after: None,
        });
    }
    d.def
        .map_err(|e| invalid(format!("the definition is invalid: {e}")))
}

/// Observes a workspace's index (and the file documents of watched paths) on the cloud
/// runner's replica; changes are recorded with the scheduler's time.
async fn watch(api: &Api, workspace: &str) -> anyhow::Result<Arc<Watch>> {
    let agents = &api.agents;
    let mut watches = agents.watches.lock().await;
    if let Some(w) = watches.get(workspace) {
        // Definitions were re-read: a new agent's globs may cover files not yet observed.
        w.relist.store(true, Ordering::SeqCst);
        return Ok(w.clone());
    }
    let doc = api
        .cloud
        .open_document(&format!("ws/{workspace}/index"))
        .await?;
    let index = WorkspaceIndex::new(doc);
    let changes: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let relist = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (c, clock, r) = (changes.clone(), agents.clock.clone(), relist.clone());
    index.observe_paths("jarvis-agents", move |_, paths| {
        let now = clock.now_ms();
        lock(&c).extend(paths.into_iter().map(|p| (p, now)));
        r.store(true, Ordering::SeqCst);
    });
    let w = Arc::new(Watch {
        index,
        changes,
        files: Mutex::new(HashSet::new()),
        relist,
    });
    watches.insert(workspace.to_owned(), w.clone());
    Ok(w)
}

/// Observes the content of every file under a files trigger's globs (same-size edits do not
/// touch the index entry).
async fn watch_contents(api: &Api, workspace: &str, w: &Watch, globs: &globset::GlobSet) {
    // Listing a large index every tick would be the scheduler's main cost; only after a change.
    if !w.relist.swap(false, Ordering::SeqCst) {
        return;
    }
    let wanted: Vec<(String, String)> = w
        .index
        .list()
        .into_iter()
        .filter(|(p, _)| globs.is_match(p))
        .filter_map(|(p, e)| e.doc.map(|d| (p, d)))
        .filter(|(_, d)| !lock(&w.files).contains(d))
        .collect();
    for (path, doc_id) in wanted {
        let name = format!("ws/{workspace}/file/{doc_id}");
        match api.cloud.open_document(&name).await {
            Ok(doc) => {
                let (c, clock, p) = (w.changes.clone(), api.agents.clock.clone(), path.clone());
                jarvis_sync::doc::observe_updates(&doc, "jarvis-agents", move |_, _| {
                    lock(&c).push((p.clone(), clock.now_ms()));
                })
                .await;
                lock(&w.files).insert(doc_id);
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot open a watched file; retrying");
                w.relist.store(true, Ordering::SeqCst);
            }
        }
    }
}

fn globset(paths: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for p in paths {
        if let Ok(g) = globset::Glob::new(p) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

async fn tick_once(api: &Api) -> Result<(), ControlError> {
    let agents = &api.agents;
    let now = agents.now_ms();
    let defs: Vec<(String, String, AgentDef)> = lock(&agents.defs)
        .iter()
        .map(|(k, l)| (k.clone(), l.workspace.clone(), l.def.clone()))
        .collect();
    let owners: HashMap<String, String> = api
        .control
        .workspaces(&system_identity())?
        .into_iter()
        .map(|w| (w.id, w.owner))
        .collect();
    // File contents under any files agent's globs, per workspace, are observed first.
    let mut globs_by_ws: HashMap<&str, Vec<String>> = HashMap::new();
    for (_, workspace, def) in &defs {
        if let Trigger::Files { paths } = &def.trigger {
            globs_by_ws
                .entry(workspace.as_str())
                .or_default()
                .extend(paths.iter().cloned());
        }
    }
    for (workspace, paths) in globs_by_ws {
        let w = agents.watches.lock().await.get(workspace).cloned();
        if let Some(w) = w {
            watch_contents(api, workspace, &w, &globset(&paths)).await;
        }
    }
    for (key, workspace, def) in &defs {
        let Some(owner) = owners.get(workspace) else {
            continue;
        };
        match &def.trigger {
            Trigger::Cron { schedule, timezone } => {
                let (Ok(cron), Ok(tz)) = (
                    croner::Cron::from_str(schedule),
                    chrono_tz::Tz::from_str(timezone),
                ) else {
                    continue;
                };
                let Some(checked) = agents.checked(key)? else {
                    // First sight: from now on (no back-fill of the past).
                    agents.conn().execute(
                        "INSERT OR IGNORE INTO agent_state (agent, checked_ms) VALUES (?1, ?2)",
                        params![key, now as i64],
                    )?;
                    continue;
                };
                if checked >= now {
                    continue;
                }
                let occ = occurrences(&cron, tz, checked, now, 100_000);
                if occ.is_empty() {
                    // Nothing due: no write (a tick must not cost an fsync per agent).
                    continue;
                }
                let decision = decide(&occ, now, def.missed, agents.args.agents_catch_up_s * 1000);
                let mut conn = agents.conn();
                let tx = conn.transaction()?;
                match decision {
                    Decision::Nothing => {}
                    Decision::Run {
                        scheduled_ms,
                        missed,
                    } => {
                        let late = now.saturating_sub(scheduled_ms);
                        let note = if late > ON_TIME_MS {
                            format!("caught up {} s late", late / 1000)
                        } else {
                            String::new()
                        };
                        let note = if missed > 0 {
                            format!("{note} ({missed} earlier occurrence(s) missed, not run)")
                                .trim()
                                .to_owned()
                        } else {
                            note
                        };
                        Agents::insert_run(
                            &tx,
                            key,
                            workspace,
                            &def.name,
                            scheduled_ms,
                            "cron",
                            schedule,
                            "queued",
                            owner,
                            &note,
                            now,
                        )?;
                    }
                    Decision::Skip {
                        scheduled_ms,
                        late_ms,
                    } => {
                        Agents::insert_run(
                            &tx,
                            key,
                            workspace,
                            &def.name,
                            scheduled_ms,
                            "cron",
                            schedule,
                            "skipped",
                            owner,
                            &format!(
                                "missed by {} s while the server was down; policy {:?}",
                                late_ms / 1000,
                                def.missed
                            ),
                            now,
                        )?;
                    }
                }
                tx.execute(
                    "UPDATE agent_state SET checked_ms = ?2 WHERE agent = ?1",
                    params![key, now as i64],
                )?;
                tx.commit()?;
            }
            Trigger::Files { paths } => {
                let globs = globset(paths);
                let w = agents.watches.lock().await.get(workspace).cloned();
                let Some(w) = w else { continue };
                // Taken from the watch here; every other files agent of this workspace gets
                // the same changes through `requeue_for_siblings`.
                let seen: Vec<(String, u64)> = std::mem::take(&mut *lock(&w.changes));
                let active = agents.active(key)?;
                {
                    let mut pending = lock(&agents.pending);
                    let p = pending.entry(key.clone()).or_default();
                    for (path, at) in seen.iter().cloned() {
                        if !globs.is_match(&path) || path.starts_with(agents::AGENTS_DIR) {
                            continue;
                        }
                        if active {
                            // Policy: changes during an active run are not queued.
                            continue;
                        }
                        if p.paths.is_empty() {
                            p.first_ms = at;
                        }
                        p.last_ms = p.last_ms.max(at);
                        if !p.paths.contains(&path) {
                            p.paths.push(path);
                        }
                    }
                }
                requeue_for_siblings(agents, workspace, key, &seen);
                let fire = {
                    let mut pending = lock(&agents.pending);
                    match pending.get(key) {
                        Some(p)
                            if !p.paths.is_empty()
                                && now.saturating_sub(p.last_ms)
                                    >= agents.args.agents_file_debounce_ms =>
                        {
                            pending.remove(key)
                        }
                        _ => None,
                    }
                };
                if let Some(p) = fire {
                    let detail = p.paths.join("\n");
                    let conn = agents.conn();
                    Agents::insert_run(
                        &conn, key, workspace, &def.name, p.first_ms, "files", &detail, "queued",
                        owner, "", now,
                    )?;
                }
            }
            Trigger::Webhook => {}
        }
    }
    follow_active(api).await?;
    start_queued(api, &defs, now).await?;
    agents.last_tick.store(now, Ordering::SeqCst);
    Ok(())
}

/// Changes taken from a workspace's watch belong to every files agent there: hand them to the
/// siblings that have not looked yet in this tick.
fn requeue_for_siblings(agents: &Agents, workspace: &str, me: &str, seen: &[(String, u64)]) {
    if seen.is_empty() {
        return;
    }
    let siblings: Vec<(String, Vec<String>)> = lock(&agents.defs)
        .iter()
        .filter(|(k, l)| l.workspace == workspace && k.as_str() != me)
        .filter_map(|(k, l)| match &l.def.trigger {
            Trigger::Files { paths } => Some((k.clone(), paths.clone())),
            _ => None,
        })
        .collect();
    for (key, paths) in siblings {
        let globs = globset(&paths);
        let active = agents.active(&key).unwrap_or(true);
        if active {
            continue;
        }
        let mut pending = lock(&agents.pending);
        let p = pending.entry(key).or_default();
        for (path, at) in seen {
            if globs.is_match(path) && !path.starts_with(agents::AGENTS_DIR) {
                if p.paths.is_empty() {
                    p.first_ms = *at;
                }
                p.last_ms = p.last_ms.max(*at);
                if !p.paths.contains(path) {
                    p.paths.push(path.clone());
                }
            }
        }
    }
}

/// Follows starting and running runs: their cost, and their end.
async fn follow_active(api: &Api) -> Result<(), ControlError> {
    let agents = &api.agents;
    let active: Vec<(i64, String, Option<String>)> = {
        let conn = agents.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, status, session FROM agent_runs WHERE status IN ('starting', 'running')",
        )?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let first_pass = !agents.recovered.swap(true, Ordering::SeqCst);
    for (id, status, session) in active {
        let Some(session) = session else { continue };
        if status == "starting" {
            // A crash between choosing the session and starting it: start it again unless it
            // got as far as its first message.
            if !first_pass {
                continue;
            }
            let started = api.control.session(&session)?.is_some()
                && api
                    .hub
                    .read(&format!("session/{session}"), |d| {
                        !SessionDoc::new(d.clone()).messages().is_empty()
                    })
                    .await
                    .unwrap_or(false);
            if started {
                agents.set_status(id, "running", "");
            } else {
                agents.set_status(id, "queued", "restarted before the session began");
            }
            continue;
        }
        let Ok((state, cost, answered)) = api
            .hub
            .read(&format!("session/{session}"), |d| {
                let s = SessionDoc::new(d.clone());
                let m = s.meta();
                let answered = s
                    .messages()
                    .iter()
                    .rev()
                    .find(|m| m.role != Role::System)
                    .is_some_and(|m| m.role == Role::Assistant);
                (m.status, m.usage.cost_micros, answered)
            })
            .await
        else {
            continue;
        };
        let end = match state {
            SessionStatus::Done => Some(("done", String::new())),
            SessionStatus::Failed => Some(("failed", "the session failed; see it".to_owned())),
            SessionStatus::Interrupted => Some(("interrupted", String::new())),
            SessionStatus::Idle if answered => {
                Some(("done", "stopped by its budget or request limit".to_owned()))
            }
            _ => None,
        };
        let conn = agents.conn();
        match end {
            Some((status, note)) => {
                conn.execute(
                    "UPDATE agent_runs SET status = ?2, cost_micros = ?3,
                       note = trim(note || ' ' || ?4) WHERE id = ?1",
                    params![id, status, cost as i64, note],
                )?;
            }
            None => {
                conn.execute(
                    "UPDATE agent_runs SET cost_micros = ?2 WHERE id = ?1",
                    params![id, cost as i64],
                )?;
            }
        }
    }
    Ok(())
}

/// Starts queued runs, oldest first, within the concurrency limit and the budgets.
async fn start_queued(
    api: &Api,
    defs: &[(String, String, AgentDef)],
    now: u64,
) -> Result<(), ControlError> {
    let agents = &api.agents;
    let queued: Vec<RunRow> = {
        let conn = agents.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, agent, workspace, name, scheduled_ms, trigger, detail, status, session,
                    owner, cost_micros, note
             FROM agent_runs WHERE status = 'queued' ORDER BY scheduled_ms, id",
        )?;
        stmt.query_map([], |r| {
            Ok(RunRow {
                id: r.get(0)?,
                agent: r.get(1)?,
                workspace: r.get(2)?,
                name: r.get(3)?,
                scheduled_ms: r.get::<_, i64>(4)? as u64,
                trigger: r.get(5)?,
                detail: r.get(6)?,
                status: r.get(7)?,
                session: r.get(8)?,
                owner: r.get(9)?,
                cost_micros: r.get::<_, i64>(10)? as u64,
                note: r.get(11)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    for run in queued {
        let running: i64 = agents.conn().query_row(
            "SELECT count(*) FROM agent_runs WHERE status IN ('starting', 'running')",
            [],
            |r| r.get(0),
        )?;
        if running as usize >= agents.args.agents_max_concurrent.max(1) {
            return Ok(());
        }
        let Some((_, _, def)) = defs.iter().find(|(k, _, _)| *k == run.agent) else {
            agents.set_status(run.id, "failed", "the agent is no longer defined");
            continue;
        };
        let today = day_start(now);
        let user_spent = agents.spent_since("owner", &run.owner, today)?;
        let user_budget = (agents.args.agents_user_daily_budget_usd * 1e6) as u64;
        if user_spent >= user_budget {
            agents.set_status(
                run.id,
                "over_budget",
                &format!(
                    "the owner's agents spent ${:.2} of ${:.2} today",
                    user_spent as f64 / 1e6,
                    user_budget as f64 / 1e6
                ),
            );
            continue;
        }
        let mut left = user_budget - user_spent;
        if let Some(daily) = def.daily_budget_usd {
            let daily = (daily * 1e6) as u64;
            let spent = agents.spent_since("agent", &run.agent, today)?;
            if spent >= daily {
                agents.set_status(
                    run.id,
                    "over_budget",
                    &format!(
                        "this agent spent ${:.2} of ${:.2} today",
                        spent as f64 / 1e6,
                        daily as f64 / 1e6
                    ),
                );
                continue;
            }
            left = left.min(daily - spent);
        }
        let per_run = (def
            .budget_usd
            .unwrap_or(agents.args.agents_default_budget_usd)
            * 1e6) as u64;
        let budget = per_run.min(left);
        let owner = match api.control.user_by_name(&run.owner)? {
            Some(u) => Identity::acting_for(&u, CLOUD_DEVICE),
            None => {
                agents.set_status(run.id, "failed", "the workspace's owner no longer exists");
                continue;
            }
        };
        let ws_hash = hex::encode(&sha2::Sha256::digest(run.workspace.as_bytes())[..4]);
        let session = format!("agent-{}-{}-{ws_hash}", run.name, run.scheduled_ms);
        agents.conn().execute(
            "UPDATE agent_runs SET status = 'starting', session = ?2 WHERE id = ?1",
            params![run.id, session],
        )?;
        let when = chrono::DateTime::from_timestamp_millis(run.scheduled_ms as i64)
            .map(|d| d.to_rfc3339())
            .unwrap_or_default();
        let context = match run.trigger.as_str() {
            "cron" => format!("Scheduled run ({}) for {when}.", run.detail),
            "files" => format!("Changed files:\n{}", run.detail),
            _ => format!("Triggered by a request at {when}. Payload:\n{}", run.detail),
        };
        let message = format!(
            "{}\n\n---\nBackground agent `{}` in workspace `{}`. {context}",
            def.prompt, def.name, run.workspace
        );
        let new = NewSession {
            id: Some(session.clone()),
            workspace: run.workspace.clone(),
            title: format!("{} ({} run)", def.name, run.trigger),
            model: def.model.clone(),
            message: Some(message),
            permission_mode: Some(def.permission_mode.clone()),
            allow: def.tools.clone(),
            deny: unlisted_tools(&def.tools),
            budget_usd: Some(budget as f64 / 1e6),
            run: Some("cloud".into()),
        };
        match crate::api::start_session(api, &owner, new).await {
            Ok(_) => {
                agents.set_status(run.id, "running", &run.note);
                api.control.audit(
                    Some(&owner),
                    "agent.run",
                    &session,
                    &format!("{} {}", run.agent, run.trigger),
                );
            }
            Err(e) => {
                tracing::error!(agent = %run.agent, error = %e.message, "starting an agent run failed");
                agents.set_status(run.id, "failed", &e.message);
            }
        }
    }
    Ok(())
}

/// `tools` lists what an agent may use: every tool it does not name at all is denied (deny
/// beats allow), so `bash(cargo test:*)` allows that command and no other bash, while `write`
/// is refused outright if unlisted. No list means the permission mode alone decides. `todo`
/// (the agent's own checklist) is always allowed.
pub fn unlisted_tools(tools: &[String]) -> Vec<String> {
    if tools.is_empty() {
        return Vec::new();
    }
    let named: HashSet<&str> = tools
        .iter()
        .map(|t| t.split('(').next().unwrap_or(t).trim())
        .collect();
    jarvis_agent::tools::ToolBox::definitions()
        .into_iter()
        .map(|d| d.name)
        .filter(|n| n != "todo" && !named.contains(n.as_str()))
        // Reading and stopping background commands come with bash: they act only on commands
        // a permitted bash call started.
        .filter(|n| !(named.contains("bash") && matches!(n.as_str(), "bash_output" | "kill_shell")))
        .collect()
}

// ---- API ----------------------------------------------------------------------------------

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/workspaces/{id}/agents", get(list_agents))
        .route(
            "/api/workspaces/{id}/agents/{name}",
            get(get_agent).put(put_agent).delete(delete_agent),
        )
        .route(
            "/api/workspaces/{id}/agents/{name}/runs",
            post(trigger_run).get(agent_runs),
        )
        .route(
            "/api/workspaces/{id}/agents/{name}/webhook-secret",
            post(new_webhook_secret),
        )
        .route("/webhooks/agents/{id}/{name}", post(signed_trigger))
        .with_state(api)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_request",
        message: message.into(),
        retry_after: None,
    }
}

fn next_run(def: &AgentDef, agents: &Agents) -> Option<u64> {
    let Trigger::Cron { schedule, timezone } = &def.trigger else {
        return None;
    };
    let cron = croner::Cron::from_str(schedule).ok()?;
    let tz = chrono_tz::Tz::from_str(timezone).ok()?;
    let now = tz.timestamp_millis_opt(agents.now_ms() as i64).single()?;
    cron.find_next_occurrence(&now, false)
        .ok()
        .map(|t| t.timestamp_millis().max(0) as u64)
}

async fn list_agents(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let mut out = Vec::new();
    for d in agents::load_hashed(&api.hub, &id).await {
        let ok = approved(&api, &id, &d);
        let (name, def) = (d.name, d.def);
        let key = format!("{id}/{name}");
        let last = api
            .agents
            .runs(Some(&key), 1)
            .map_err(ControlError::Db)?
            .into_iter()
            .next();
        let checked = api.agents.checked(&key).map_err(ControlError::Db)?;
        let scheduled = lock(&api.agents.defs).contains_key(&key);
        out.push(match def {
            Ok(def) => json!({
                "name": name, "definition": def, "next_run_ms": next_run(&def, &api.agents),
                "scheduled": scheduled, "checked_ms": checked, "last_run": last,
                "approved": ok, "hash": d.hash,
            }),
            Err(e) => json!({"name": name, "error": e.to_string(), "last_run": last}),
        });
    }
    Ok(Json(json!({
        "agents": out,
        "now_ms": api.agents.now_ms(),
        "scheduler_ms": api.agents.last_tick.load(Ordering::SeqCst),
    })))
}

async fn get_agent(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let found = agents::load(&api.hub, &id)
        .await
        .into_iter()
        .find(|(n, _)| *n == name);
    let Some((_, def)) = found else {
        return Err(ControlError::NotFound(format!("no agent {name:?} in {id:?}")).into());
    };
    let key = format!("{id}/{name}");
    let runs = api.agents.runs(Some(&key), 50).map_err(ControlError::Db)?;
    // The file as written, for editing and a PUT back.
    let text = agents::read_text(&api.hub, &id, &name).await;
    Ok(Json(match def {
        Ok(def) => json!({"name": name, "definition": def, "text": text,
                          "next_run_ms": next_run(&def, &api.agents), "runs": runs}),
        Err(e) => json!({"name": name, "error": e.to_string(), "text": text, "runs": runs}),
    }))
}

#[derive(Deserialize)]
struct PutAgent {
    /// The whole file: front matter and prompt.
    definition: String,
}

async fn put_agent(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<PutAgent, { 256 * 1024 }>,
) -> Result<Json<Value>, ApiError> {
    let role = api.control.check_workspace_for(&who, &id, Action::Write)?;
    let def = agents::parse(&name, &b.definition).map_err(|e| invalid(e.to_string()))?;
    let path = format!("{}{name}.md", agents::AGENTS_DIR);
    agents::write(&api.hub, &id, &name, &b.definition)
        .await
        .map_err(|e| invalid(format!("writing the definition: {e}")))?;
    // An owner's write is its approval; an editor's waits for an owner.
    let hash = crate::approvals::content_hash(&b.definition);
    let approved = crate::approvals::writes_approved(role, who.admin)
        && api
            .approvals
            .approve(&id, "agent", &path, &hash, &who.user)
            .is_ok();
    api.control.audit(
        Some(&who),
        "agent.put",
        &format!("{id}/{name}"),
        if approved {
            "approved"
        } else {
            "waits for an owner"
        },
    );
    api.agents.poke();
    Ok(Json(json!({
        "name": name, "path": path, "hash": hash, "approved": approved,
        "definition": def, "next_run_ms": next_run(&def, &api.agents),
    })))
}

async fn delete_agent(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Write)?;
    let removed = agents::remove(&api.hub, &id, &name)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    if !removed {
        return Err(ControlError::NotFound(format!("no agent {name:?} in {id:?}")).into());
    }
    api.control
        .audit(Some(&who), "agent.delete", &format!("{id}/{name}"), "");
    api.agents.poke();
    Ok(Json(json!({"deleted": name})))
}

#[derive(Deserialize, Default)]
struct TriggerRun {
    #[serde(default)]
    payload: Value,
}

/// Starts a run now: the webhook trigger (any agent may be run by hand the same way).
async fn trigger_run(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<TriggerRun, { 512 * 1024 }>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Write)?;
    let w = api.control.workspace(&who, &id)?;
    let key = format!("{id}/{name}");
    let def = approved_def(&api, &id, &name).await?;
    let kind = if matches!(def.trigger, Trigger::Webhook) {
        "webhook"
    } else {
        "manual"
    };
    let detail = if b.payload.is_null() {
        String::new()
    } else {
        serde_json::to_string_pretty(&b.payload).unwrap_or_default()
    };
    if detail.len() > 256 * 1024 {
        return Err(invalid("the payload is larger than 256 KiB"));
    }
    let (run, at) = queue_run(
        &api,
        (&id, &name),
        &w.owner,
        kind,
        &detail,
        &format!("requested by {}", who.user_name),
    )?;
    api.control.audit(Some(&who), "agent.trigger", &key, kind);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "agent": name, "scheduled_ms": at, "trigger": kind})),
    ))
}

/// Queues a run now (the next free millisecond: runs are unique per scheduled time) and wakes
/// the scheduler; returns the run's id and scheduled time.
fn queue_run(
    api: &Api,
    (workspace, name): (&str, &str),
    owner: &str,
    kind: &str,
    detail: &str,
    note: &str,
) -> Result<(i64, u64), ControlError> {
    let key = format!("{workspace}/{name}");
    let mut at = api.agents.now_ms();
    let run = {
        let conn = api.agents.conn();
        loop {
            if Agents::insert_run(
                &conn, &key, workspace, name, at, kind, detail, "queued", owner, note, at,
            )? {
                break conn.last_insert_rowid();
            }
            at += 1;
        }
    };
    // Make sure the scheduler knows the definition (it may have been written a moment ago).
    api.agents.poke();
    Ok((run, at))
}

/// How far a signed agent webhook's timestamp may be from the server's time.
pub const SIGNATURE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Largest signed agent-webhook payload.
const MAX_TRIGGER_BODY: usize = 1024 * 1024;

/// `POST /api/workspaces/{id}/agents/{name}/webhook-secret`: makes (or replaces) the agent's
/// own webhook secret and returns it once. Owners only: the secret lets whoever holds it start
/// this agent, and no other.
async fn new_webhook_secret(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Manage)?;
    if !agents::valid_name(&name) {
        return Err(invalid(format!("invalid agent name {name:?}")));
    }
    let secret = format!("jw_{}", hex::encode(rand::random::<[u8; 24]>()));
    api.agents
        .conn()
        .execute(
            "INSERT INTO agent_webhook_secrets (agent, secret, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent) DO UPDATE SET secret = excluded.secret,
               created_ms = excluded.created_ms",
            params![
                format!("{id}/{name}"),
                secret,
                crate::control::now_ms() as i64
            ],
        )
        .map_err(ControlError::Db)?;
    api.control.audit(
        Some(&who),
        "agent.webhook_secret",
        &format!("{id}/{name}"),
        "",
    );
    Ok(Json(json!({
        "agent": name, "secret": secret,
        "url": format!("/webhooks/agents/{id}/{name}"),
        "sign": "X-Jarvis-Signature: sha256=<hex HMAC-SHA256(secret, \"<timestamp>.<delivery>.\" + body)>, \
                 X-Jarvis-Timestamp: <unix seconds>, X-Jarvis-Delivery: <unique id>",
    })))
}

/// The MAC a signed agent webhook carries: over the timestamp, the delivery id and the body,
/// so none of them can be swapped or replayed.
pub fn trigger_message(timestamp: &str, delivery: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}.{delivery}.").into_bytes();
    m.extend_from_slice(body);
    m
}

/// `POST /webhooks/agents/{workspace}/{name}`: a webhook trigger any sender can call (CI, a
/// script), authenticated by the agent's own secret instead of a token: `X-Jarvis-Signature`
/// over the timestamp, the delivery id and the body; the timestamp must be within
/// [`SIGNATURE_WINDOW_MS`] and each delivery id is acted on once, so a captured request cannot
/// be replayed. Everything that can be refused from the headers is refused before the body is
/// read.
async fn signed_trigger(
    State(api): State<Api>,
    ClientAddr(addr): ClientAddr,
    UrlPath((id, name)): UrlPath<(String, String)>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let refuse = |status, code, message: &str| ApiError {
        status,
        code,
        message: message.to_owned(),
        retry_after: None,
    };
    let _slot = api.anonymous.admit(&addr)?;
    let limits = crate::limits::of(req.extensions());
    let (parts, body) = req.into_parts();
    let header = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok());
    let (Some(delivery), Some(timestamp), Some(signature)) = (
        header("x-jarvis-delivery"),
        header("x-jarvis-timestamp"),
        header("x-jarvis-signature"),
    ) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Jarvis-Delivery, X-Jarvis-Timestamp and X-Jarvis-Signature are required",
        ));
    };
    if delivery.is_empty() || delivery.len() > 128 {
        return Err(invalid("X-Jarvis-Delivery is 1 to 128 characters"));
    }
    let now = crate::control::now_ms();
    let fresh = timestamp
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|t| t.checked_mul(1000))
        .is_some_and(|t| t.abs_diff(now) <= SIGNATURE_WINDOW_MS);
    if !fresh {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "stale_signature",
            "X-Jarvis-Timestamp (unix seconds) is not within 5 minutes of the server's time",
        ));
    }
    // The same answer for a missing workspace, agent or secret: nothing is disclosed to a
    // sender that does not hold this agent's secret.
    let missing = || {
        ApiError::from(ControlError::NotFound(format!(
            "no agent {name:?} in {id:?}"
        )))
    };
    let key = format!("{id}/{name}");
    let secret: Option<String> = api
        .agents
        .conn()
        .query_row(
            "SELECT secret FROM agent_webhook_secrets WHERE agent = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()
        .map_err(ControlError::Db)?;
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(missing());
    };
    let body =
        crate::limits::read_body(&parts.headers, body, MAX_TRIGGER_BODY, limits.body_idle).await?;
    let message = trigger_message(timestamp.trim(), delivery, &body);
    if !crate::webhooks::signature_valid(secret.as_bytes(), &message, Some(signature)) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Jarvis-Signature does not match",
        ));
    }
    let w = api
        .control
        .workspace(&system_identity(), &id)
        .map_err(|_| missing())?;
    let def = approved_def(&api, &id, &name).await?;
    if !matches!(def.trigger, Trigger::Webhook) {
        return Err(invalid(format!("agent {name:?} is not webhook-triggered")));
    }
    let first = api
        .webhooks
        .first_delivery(
            &format!("agent {key} {delivery}"),
            "agent webhook",
            "agent run",
        )
        .map_err(ControlError::Db)?;
    if !first {
        return Err(refuse(
            StatusCode::CONFLICT,
            "replayed",
            "this delivery id was already received",
        ));
    }
    let mut detail = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if detail.len() > 64 * 1024 {
        let mut cut = 64 * 1024;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push_str("\n[payload truncated]");
    }
    let (run, at) = queue_run(
        &api,
        (&id, &name),
        &w.owner,
        "webhook",
        &detail,
        &format!("signed webhook ({delivery})"),
    )?;
    api.control.audit(None, "agent.webhook", &key, delivery);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "agent": name, "scheduled_ms": at, "trigger": "webhook"})),
    ))
}

async fn agent_runs(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let runs = api
        .agents
        .runs(Some(&format!("{id}/{name}")), 200)
        .map_err(ControlError::Db)?;
    Ok(Json(json!({"runs": runs})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn occurrences_follow_the_time_zone_across_daylight_saving() {
        let cron = croner::Cron::from_str("0 9 * * *").unwrap();
        let tz = chrono_tz::Tz::from_str("Europe/Berlin").unwrap();
        // 09:00 in Berlin is 07:00Z in summer and 08:00Z in winter (DST ends 2026-10-25).
        let got = occurrences(
            &cron,
            tz,
            ms("2026-10-23T12:00:00Z"),
            ms("2026-10-27T12:00:00Z"),
            10,
        );
        assert_eq!(
            got,
            vec![
                ms("2026-10-24T07:00:00Z"),
                ms("2026-10-25T08:00:00Z"),
                ms("2026-10-26T08:00:00Z"),
                ms("2026-10-27T08:00:00Z"),
            ]
        );
        // The bound is inclusive; the start is not.
        assert_eq!(
            occurrences(
                &cron,
                tz,
                ms("2026-10-24T07:00:00Z"),
                ms("2026-10-24T07:00:00Z"),
                10
            ),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn missed_runs_follow_the_stated_policy() {
        let hour = 3_600_000;
        let t = ms("2026-11-25T09:00:00Z");
        assert_eq!(decide(&[], t, Missed::RunOnce, hour), Decision::Nothing);
        // On time.
        assert_eq!(
            decide(&[t], t + 500, Missed::Skip, hour),
            Decision::Run {
                scheduled_ms: t,
                missed: 0
            }
        );
        // Down for three occurrences, back 20 minutes after the last: run the last one once.
        assert_eq!(
            decide(
                &[t - 2 * hour, t - hour, t],
                t + 20 * 60_000,
                Missed::RunOnce,
                hour
            ),
            Decision::Run {
                scheduled_ms: t,
                missed: 2
            }
        );
        assert_eq!(
            decide(&[t], t + 20 * 60_000, Missed::Skip, hour),
            Decision::Skip {
                scheduled_ms: t,
                late_ms: 20 * 60_000
            }
        );
        assert_eq!(
            decide(&[t], t + 2 * hour, Missed::RunOnce, hour),
            Decision::Skip {
                scheduled_ms: t,
                late_ms: 2 * hour
            }
        );
    }

    #[test]
    fn tools_not_named_are_denied() {
        let deny = unlisted_tools(&["read".into(), "grep".into(), "bash(cargo test:*)".into()]);
        assert_eq!(deny, vec!["write", "edit", "glob"]);
        let deny = unlisted_tools(&["read".into()]);
        assert_eq!(
            deny,
            vec![
                "write",
                "edit",
                "glob",
                "grep",
                "bash",
                "bash_output",
                "kill_shell"
            ]
        );
        assert!(unlisted_tools(&[]).is_empty());
    }

    #[test]
    fn the_file_clock_reads_the_file_and_keeps_the_last_good_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clock");
        let c = FileClock::new(&p);
        assert_eq!(c.now_ms(), 0);
        std::fs::write(&p, "1764061200000\n").unwrap();
        assert_eq!(c.now_ms(), 1_764_061_200_000);
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(c.now_ms(), 1_764_061_200_000);
        let m = ManualClock::default();
        m.0.store(5, Ordering::SeqCst);
        assert_eq!(m.now_ms(), 5);
    }
}
