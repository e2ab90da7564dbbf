//! Workspaces, members, the session registry, quotas and run settings in SQLite.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::access::Role;
use crate::error::{ControlError, Result};
use crate::model::{RunSettings, SessionRow, Workspace};
use crate::store::Workspaces;

fn session_row(r: &rusqlite::Row) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0)?,
        workspace: r.get(1)?,
        owner: r.get(2)?,
        title: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

fn settings_json(s: &RunSettings) -> Result<String> {
    serde_json::to_string(s).map_err(|e| ControlError::Invalid(format!("run settings: {e}")))
}

fn read_settings(conn: &rusqlite::Connection, session: &str) -> Result<Option<RunSettings>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT settings FROM session_settings WHERE session = ?1")?
        .query_row(params![session], |r| r.get(0))
        .optional()?;
    json.map(|j| {
        serde_json::from_str(&j)
            .map_err(|e| ControlError::Invalid(format!("stored run settings: {e}")))
    })
    .transpose()
}

impl Workspaces for SqliteStore {
    fn role(&self, workspace: &str, user: &str) -> Result<Option<Role>> {
        let r: Option<String> = self
            .conn()
            .prepare_cached("SELECT role FROM members WHERE workspace = ?1 AND user_id = ?2")?
            .query_row(params![workspace, user], |r| r.get(0))
            .optional()?;
        Ok(r.as_deref().and_then(Role::parse))
    }

    fn workspace_exists(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM workspaces WHERE id = ?1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn workspace_owner(&self, id: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT owner FROM workspaces WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn create_workspace(&self, id: &str, name: &str, owner: &str, now_ms: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let created = tx.execute(
            "INSERT OR IGNORE INTO workspaces (id, name, owner, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, owner, now_ms],
        )?;
        if created == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO members (workspace, user_id, role) VALUES (?1, ?2, 'owner')",
            params![id, owner],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn delete_workspace(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM members WHERE workspace = ?1", params![id])?;
        tx.execute("DELETE FROM workspaces WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(())
    }

    fn workspaces_of(&self, user: &str, all: bool) -> Result<Vec<Workspace>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT w.id, w.name, w.owner, coalesce(m.role, 'admin'), w.created_ms
             FROM workspaces w LEFT JOIN members m ON m.workspace = w.id AND m.user_id = ?1
             WHERE m.user_id IS NOT NULL OR ?2 ORDER BY w.created_ms",
        )?;
        let rows = stmt.query_map(params![user, all], |r| {
            Ok(Workspace {
                id: r.get(0)?,
                name: r.get(1)?,
                owner: r.get(2)?,
                role: r.get(3)?,
                created_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn set_role(&self, workspace: &str, user: &str, role: Option<Role>) -> Result<()> {
        let conn = self.conn();
        match role {
            Some(role) => conn.execute(
                "INSERT INTO members (workspace, user_id, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (workspace, user_id) DO UPDATE SET role = excluded.role",
                params![workspace, user, role.as_str()],
            )?,
            None => conn.execute(
                "DELETE FROM members WHERE workspace = ?1 AND user_id = ?2",
                params![workspace, user],
            )?,
        };
        Ok(())
    }

    fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, workspace, owner, title, created_ms FROM sessions WHERE id = ?1",
            )?
            .query_row(params![id], session_row)
            .optional()?)
    }

    fn insert_session(&self, s: &SessionRow) -> Result<bool> {
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO sessions (id, workspace, owner, title, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![s.id, s.workspace, s.owner, s.title, s.created_ms],
        )? > 0)
    }

    fn sessions_of(
        &self,
        user: &str,
        all: bool,
        workspace: Option<&str>,
    ) -> Result<Vec<(SessionRow, Option<Role>)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.workspace, s.owner, s.title, s.created_ms, m.role FROM sessions s
             LEFT JOIN members m ON m.workspace = s.workspace AND m.user_id = ?2
             WHERE (?1 IS NULL OR s.workspace = ?1)
               AND (?3 OR m.user_id IS NOT NULL)
             ORDER BY s.created_ms DESC",
        )?;
        let rows = stmt.query_map(params![workspace, user, all], |r| {
            Ok((
                session_row(r)?,
                r.get::<_, Option<String>>(5)?
                    .as_deref()
                    .and_then(Role::parse),
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn charge_document(&self, name: &str, user: &str, limit: u64, now_ms: i64) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let known = tx
            .prepare_cached("SELECT 1 FROM document_owners WHERE name = ?1")?
            .query_row(params![name], |_| Ok(()))
            .optional()?
            .is_some();
        if known {
            return Ok(true);
        }
        let used: i64 = tx
            .prepare_cached("SELECT count(*) FROM document_owners WHERE user_id = ?1")?
            .query_row(params![user], |r| r.get(0))?;
        if used.max(0) as u64 >= limit {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR IGNORE INTO document_owners (name, user_id, created_ms) VALUES (?1, ?2, ?3)",
            params![name, user, now_ms],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn blob_charged(&self, workspace: &str, hash: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM blob_owners WHERE workspace = ?1 AND hash = ?2")?
            .query_row(params![workspace, hash], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn blob_bytes_of(&self, user: &str) -> Result<u64> {
        let used: i64 = self
            .conn()
            .prepare_cached("SELECT coalesce(sum(size), 0) FROM blob_owners WHERE user_id = ?1")?
            .query_row(params![user], |r| r.get(0))?;
        Ok(used.max(0) as u64)
    }

    fn record_blob(&self, workspace: &str, hash: &str, user: &str, size: u64) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO blob_owners (workspace, hash, user_id, size) VALUES (?1, ?2, ?3, ?4)",
            params![workspace, hash, user, size as i64],
        )?;
        Ok(())
    }

    fn init_run_settings(&self, session: &str, settings: &RunSettings) -> Result<bool> {
        let json = settings_json(settings)?;
        Ok(self.conn().execute(
            "INSERT OR IGNORE INTO session_settings (session, settings) VALUES (?1, ?2)",
            params![session, json],
        )? == 1)
    }

    fn update_run_settings(
        &self,
        session: &str,
        change: &mut dyn FnMut(&mut RunSettings),
    ) -> Result<RunSettings> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut settings = read_settings(&tx, session)?.unwrap_or_default();
        change(&mut settings);
        tx.execute(
            "INSERT INTO session_settings (session, settings) VALUES (?1, ?2)
             ON CONFLICT(session) DO UPDATE SET settings = excluded.settings",
            params![session, settings_json(&settings)?],
        )?;
        tx.commit()?;
        Ok(settings)
    }

    fn run_settings(&self, session: &str) -> Result<Option<RunSettings>> {
        read_settings(&self.conn(), session)
    }
}
