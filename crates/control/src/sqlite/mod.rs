//! The control plane's store in SQLite: the hub database file, one connection behind a mutex
//! (SQLite serialises writers anyway; the lock makes each method's statements one unit).
//! Opening it applies the migrations of [`crate::schema`].

mod identities;
mod rows;
mod workspaces;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Result;
use crate::model::{AuditEntry, Lease};
use crate::store::{AuditLog, Leases};

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens the hub database and brings its schema to the current version.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        use anyhow::Context;
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening control database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        crate::schema::migrate(&mut conn)
            .with_context(|| format!("migrating {}", path.display()))?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock left no half-done transaction (rusqlite rolls back
        // on drop): the connection is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AuditLog for SqliteStore {
    fn append(&self, e: &AuditEntry) -> Result<()> {
        self.conn().execute(
            "INSERT INTO audit (ts_ms, user_id, device_id, action, target, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![e.ts_ms, e.user, e.device, e.action, e.target, e.detail],
        )?;
        Ok(())
    }

    fn recent(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, ts_ms, user_id, device_id, action, target, detail FROM audit
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                user: r.get(2)?,
                device: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

fn read_lease(conn: &Connection, session: &str) -> Result<Lease> {
    let row = conn
        .prepare_cached(
            "SELECT device, epoch, expires_ms, pending_to, pending_by, expect FROM leases
             WHERE session = ?1",
        )?
        .query_row(params![session], |r| {
            Ok(Lease {
                session: session.to_owned(),
                device: r.get(0)?,
                epoch: r.get::<_, i64>(1)? as u64,
                expires_ms: r.get::<_, i64>(2)? as u64,
                pending_to: r.get(3)?,
                pending_by: r.get(4)?,
                // What a handoff expects is advisory (the target waits for it): an unreadable
                // value waits for nothing rather than making the lease unusable.
                expect: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            })
        })
        .optional()?;
    Ok(row.unwrap_or_else(|| Lease::free(session)))
}

fn write_lease(conn: &Connection, l: &Lease) -> Result<()> {
    let expect = serde_json::to_string(&l.expect)
        .map_err(|e| crate::ControlError::Invalid(format!("lease expectation: {e}")))?;
    conn.execute(
        "INSERT INTO leases (session, device, epoch, expires_ms, pending_to, pending_by, expect)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (session) DO UPDATE SET device = excluded.device, epoch = excluded.epoch,
           expires_ms = excluded.expires_ms, pending_to = excluded.pending_to,
           pending_by = excluded.pending_by, expect = excluded.expect",
        params![
            l.session,
            l.device,
            l.epoch as i64,
            l.expires_ms as i64,
            l.pending_to,
            l.pending_by,
            expect
        ],
    )?;
    Ok(())
}

impl Leases for SqliteStore {
    fn lease(&self, session: &str) -> Result<Lease> {
        read_lease(&self.conn(), session)
    }

    fn update_lease(
        &self,
        session: &str,
        change: &mut dyn FnMut(&mut Lease) -> Result<bool>,
    ) -> Result<Lease> {
        let mut conn = self.conn();
        // Immediate: the write lock is taken before the read, so two processes racing for a
        // session see one winner.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut lease = read_lease(&tx, session)?;
        if change(&mut lease)? {
            write_lease(&tx, &lease)?;
        }
        tx.commit()?;
        Ok(lease)
    }

    fn stuck_handoffs(&self, now_ms: u64) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session FROM leases WHERE pending_to IS NOT NULL AND expires_ms <= ?1",
        )?;
        let rows = stmt.query_map(params![now_ms as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn leases_of(&self, device: &str) -> Result<Vec<Lease>> {
        let conn = self.conn();
        let sessions: Vec<String> = {
            let mut stmt = conn.prepare("SELECT session FROM leases WHERE device = ?1")?;
            stmt.query_map(params![device], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        sessions.iter().map(|s| read_lease(&conn, s)).collect()
    }
}
