//! The scheduler loop: reload definitions, turn due occurrences and file changes into runs,
//! follow running runs, start queued ones within the limits and budgets.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_sync::doc::{Role, SessionDoc, SessionStatus, WorkspaceIndex};
use jarvis_wire::api::NewSession;
use rusqlite::params;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::agents::{self, AgentDef, Trigger};
use crate::control::{CLOUD_DEVICE, ControlError, Identity, system_identity};
use crate::http::{ApiError, ErrorCode};
use crate::schedule::cron::{Decision, ON_TIME_MS, decide, occurrences};
use crate::schedule::state::AgentsApi;
use crate::schedule::store::{
    Agents, Loaded, RUN_COLUMNS, RunRow, Watch, day_start, lock, run_row,
};

/// Starts the scheduler loop; it ends with `shutdown`.
pub fn start(api: AgentsApi, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let agents = api.agents.clone();
        let tick = Duration::from_millis(agents.args.agents_tick_ms.max(10));
        let mut last_reload = tokio::time::Instant::now();
        loop {
            let reload_due =
                last_reload.elapsed() >= Duration::from_secs(agents.args.agents_reload_s.max(1));
            if reload_due || agents.wake.take() {
                last_reload = tokio::time::Instant::now();
                reload(&api).await;
            }
            if let Err(e) = tick_once(&api).await {
                tracing::error!(error = %e, "scheduler tick failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
                _ = agents.wake.notified() => {}
            }
        }
    });
}

/// Re-reads every workspace's definitions and sets up watches for file triggers.
pub(crate) async fn reload(api: &AgentsApi) {
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
pub(crate) fn approved(api: &AgentsApi, workspace: &str, d: &agents::Hashed) -> bool {
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
pub(crate) async fn approved_def(
    api: &AgentsApi,
    workspace: &str,
    name: &str,
) -> Result<AgentDef, ApiError> {
    let d = agents::load_hashed(&api.hub, workspace)
        .await
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ControlError::NotFound(format!("no agent {name:?} in {workspace:?}")))?;
    if !approved(api, workspace, &d) || api.approvals.untrusted(workspace).unwrap_or(true) {
        return Err(ApiError {
            code: ErrorCode::ApprovalRequired,
            message: format!(
                "agent {name:?} waits for a workspace owner to approve its current content"
            ),
            retry_after: None,
        });
    }
    d.def
        .map_err(|e| ApiError::invalid(format!("the definition is invalid: {e}")))
}

/// Observes a workspace's index (and the file documents of watched paths) on the cloud
/// runner's replica; changes are recorded with the scheduler's time.
pub(crate) async fn watch(api: &AgentsApi, workspace: &str) -> anyhow::Result<Arc<Watch>> {
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
pub(crate) async fn watch_contents(
    api: &AgentsApi,
    workspace: &str,
    w: &Watch,
    globs: &globset::GlobSet,
) {
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

pub(crate) fn globset(paths: &[String]) -> globset::GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for p in paths {
        if let Ok(g) = globset::Glob::new(p) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

pub(crate) async fn tick_once(api: &AgentsApi) -> Result<(), ControlError> {
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
pub(crate) fn requeue_for_siblings(
    agents: &Agents,
    workspace: &str,
    me: &str,
    seen: &[(String, u64)],
) {
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
pub(crate) async fn follow_active(api: &AgentsApi) -> Result<(), ControlError> {
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
pub(crate) async fn start_queued(
    api: &AgentsApi,
    defs: &[(String, String, AgentDef)],
    now: u64,
) -> Result<(), ControlError> {
    let agents = &api.agents;
    let queued: Vec<RunRow> = {
        let conn = agents.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM agent_runs WHERE status = 'queued' ORDER BY scheduled_ms, id"
        ))?;
        stmt.query_map([], run_row)?
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
        match api.sessions.start(&owner, new).await {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
