//! The scheduler's state: loaded definitions, file watches, pending changes, and the runs
//! table (`agent_runs`, unique on agent and scheduled time) with budgets spent.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_sync::doc::WorkspaceIndex;
use rusqlite::{Connection, OptionalExtension, params};

use crate::agents::AgentDef;
use crate::schedule::clock::{Clock, FileClock, SystemClock};
use crate::schedule::config::AgentArgs;
use crate::services::Wake;

/// A run as the runs table keeps it and `GET …/runs` answers.
pub use jarvis_wire::api::AgentRun as RunRow;

/// The columns of `agent_runs` that [`run_row`] reads, in its order.
pub const RUN_COLUMNS: &str = "id, agent, workspace, name, scheduled_ms, trigger, detail, status, session, owner, cost_micros, note";

/// One `agent_runs` row selected with [`RUN_COLUMNS`].
pub fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
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
}

/// Changes seen by a files trigger's watch, waiting for the debounce.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) paths: Vec<String>,
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
}

pub(crate) struct Watch {
    pub(crate) index: WorkspaceIndex,
    /// Changed paths and when (scheduler clock), filled by document observers.
    pub(crate) changes: Arc<Mutex<Vec<(String, u64)>>>,
    /// File documents already observed (by doc id).
    pub(crate) files: Mutex<HashSet<String>>,
    /// Set by the index observer: the index must be listed again for new files to observe.
    pub(crate) relist: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) struct Loaded {
    pub(crate) workspace: String,
    pub(crate) def: AgentDef,
}

pub struct Agents {
    pub args: AgentArgs,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) conn: Mutex<Connection>,
    /// Poked by the API (and approvals) to re-read definitions and look again at once.
    pub(crate) wake: Arc<Wake>,
    pub(crate) defs: Mutex<HashMap<String, Loaded>>,
    pub(crate) watches: tokio::sync::Mutex<HashMap<String, Arc<Watch>>>,
    pub(crate) pending: Mutex<HashMap<String, Pending>>,
    pub(crate) recovered: std::sync::atomic::AtomicBool,
    /// The clock's time at the end of the last complete tick.
    pub(crate) last_tick: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn day_start(ms: u64) -> u64 {
    ms - ms % 86_400_000
}

impl Agents {
    pub fn open(db: &Path, args: AgentArgs, wake: Arc<Wake>) -> anyhow::Result<Arc<Agents>> {
        // The first tick reads the definitions.
        wake.poke();
        use anyhow::Context;
        let mut conn =
            Connection::open(db).with_context(|| format!("opening {} for agents", db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The tables are the hub database's migrations (`jarvis_control::schema`, the one place
        // its schema is written); applied here too so this store opens on its own (tests).
        jarvis_control::schema::migrate(&mut conn).context("migrating the hub database")?;
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
            wake,
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

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Re-read definitions and look again at once (after an API change).
    pub fn poke(&self) {
        self.wake.poke();
    }

    pub(crate) fn checked(&self, agent: &str) -> rusqlite::Result<Option<u64>> {
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
    pub(crate) fn insert_run(
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
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM agent_runs WHERE ?1 IS NULL OR agent = ?1
                 ORDER BY scheduled_ms DESC, id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![agent, limit], run_row)?;
        rows.collect()
    }

    pub(crate) fn active(&self, agent: &str) -> rusqlite::Result<bool> {
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

    pub(crate) fn spent_since(&self, column: &str, key: &str, since: u64) -> rusqlite::Result<u64> {
        let sql = format!(
            "SELECT coalesce(sum(cost_micros), 0) FROM agent_runs WHERE {column} = ?1
               AND scheduled_ms >= ?2"
        );
        self.conn()
            .query_row(&sql, params![key, since as i64], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
    }

    pub(crate) fn set_status(&self, id: i64, status: &str, note: &str) {
        if let Err(e) = self.conn().execute(
            "UPDATE agent_runs SET status = ?2, note = ?3 WHERE id = ?1",
            params![id, status, note],
        ) {
            tracing::error!(run = id, error = %e, "updating a run failed");
        }
    }
}
