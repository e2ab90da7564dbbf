//! What the hub keeps per user, not per workspace file: "always allow" answers (per user and
//! workspace) and the user's memory text for cloud runs (their `~/.claude/CLAUDE.md` on the
//! hub). Neither is ever written into a synced file, where it would become every member's.
//!
//! An "always allow" answer is recorded where it is given — the API's answer route, for the
//! authenticated caller — never from a session document's `decided_by` (any member's socket can
//! write the document). Runners only read: the cloud this table, devices the HTTP API, each for
//! the session's own user, so another member's session in the same workspace never gets them.

use std::path::Path;
use std::sync::Mutex;

use jarvis_agent::permissions::Permissions;
use jarvis_sync::doc::{Block, SessionDoc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::control::{ControlError, now_ms};

/// The per-user memory text is cut at this size (it goes into every request of the user's
/// cloud sessions).
pub const MAX_MEMORY_BYTES: usize = 32 * 1024;
/// At most this many "always allow" rules per user and workspace.
pub const MAX_RULES: usize = 500;

#[derive(Debug)]
pub struct UserRules {
    conn: Mutex<Connection>,
}

impl UserRules {
    pub fn open(db: &Path) -> anyhow::Result<UserRules> {
        use anyhow::Context;
        let conn = Connection::open(db)
            .with_context(|| format!("opening {} for user rules", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS always_allow (
                user TEXT NOT NULL,
                workspace TEXT NOT NULL,
                rule TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                PRIMARY KEY (user, workspace, rule)
            );
            CREATE TABLE IF NOT EXISTS user_memory (
                user TEXT PRIMARY KEY,
                text TEXT NOT NULL,
                updated_ms INTEGER NOT NULL
            );",
        )
        .context("creating the user rule tables")?;
        Ok(UserRules {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The user's "always allow" entries in a workspace (see `Permissions::always_allow_entry`).
    pub fn entries(&self, user: &str, workspace: &str) -> rusqlite::Result<Vec<Value>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT rule FROM always_allow WHERE user = ?1 AND workspace = ?2 ORDER BY created_ms",
        )?;
        let rows = st.query_map(params![user, workspace], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            // A row that does not parse matches nothing; skipping it only asks more.
            if let Ok(v) = serde_json::from_str(&r?) {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn add(&self, user: &str, workspace: &str, entry: &Value) -> Result<(), ControlError> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM always_allow WHERE user = ?1 AND workspace = ?2",
            params![user, workspace],
            |r| r.get(0),
        )?;
        if n as usize >= MAX_RULES {
            return Err(ControlError::Forbidden(format!(
                "at most {MAX_RULES} \"always allow\" rules per workspace"
            )));
        }
        conn.execute(
            "INSERT OR IGNORE INTO always_allow (user, workspace, rule, created_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![user, workspace, entry.to_string(), now_ms() as i64],
        )?;
        Ok(())
    }

    /// Whether a rule was there to remove.
    pub fn remove(&self, user: &str, workspace: &str, entry: &Value) -> rusqlite::Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM always_allow WHERE user = ?1 AND workspace = ?2 AND rule = ?3",
            params![user, workspace, entry.to_string()],
        )? > 0)
    }

    pub fn memory(&self, user: &str) -> rusqlite::Result<Option<String>> {
        self.conn()
            .prepare_cached("SELECT text FROM user_memory WHERE user = ?1")?
            .query_row(params![user], |r| r.get(0))
            .optional()
    }

    pub fn set_memory(&self, user: &str, text: &str) -> rusqlite::Result<()> {
        if text.is_empty() {
            self.conn()
                .execute("DELETE FROM user_memory WHERE user = ?1", params![user])?;
        } else {
            self.conn().execute(
                "INSERT INTO user_memory (user, text, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(user) DO UPDATE SET text = excluded.text, updated_ms = excluded.updated_ms",
                params![user, text, now_ms() as i64],
            )?;
        }
        Ok(())
    }
}

/// The command prefix a "prefix" answer allows: the program and, when the next word looks like
/// a subcommand (`npm test`, `git push`, `cargo build`), that word too. None for a compound
/// command (`a && b`, pipes, redirections, substitutions): those are allowed exactly or not at
/// all, so a prefix can never cover a second program hidden behind the first.
pub fn command_prefix(command: &str) -> Option<String> {
    let c = command.trim();
    if c.is_empty()
        || c.contains(['&', '|', ';', '>', '<', '`', '\n', '$', '(', ')'])
        || c.contains("\\")
    {
        return None;
    }
    let mut words = c.split_whitespace();
    let program = words.next()?;
    if program.contains('=') {
        // `FOO=1 cmd`: an environment assignment is not a program.
        return None;
    }
    match words.next() {
        Some(w)
            if w.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                && !w.starts_with('-') =>
        {
            Some(format!("{program} {w}"))
        }
        _ => Some(program.to_owned()),
    }
}

/// The entry an "always allow" answer records for approval `approval` of a session: the exact
/// call (see `Permissions::always_allow_entry`), or with `prefix` a bash command's prefix.
pub fn answer_entry(doc: &SessionDoc, approval: &str, prefix: bool) -> Option<Value> {
    // The call is the one in the approval's own message (as the runner reads it), never a
    // block of the same id elsewhere in the document.
    let messages = doc.messages();
    let message = messages.iter().rev().find(|m| {
        m.blocks
            .iter()
            .any(|b| matches!(b, Block::Approval { id, .. } if id == approval))
    })?;
    let tool_use_id = message.blocks.iter().find_map(|b| match b {
        Block::Approval {
            id, tool_use_id, ..
        } if id == approval => Some(tool_use_id.clone()),
        _ => None,
    })?;
    let (name, input) = message.blocks.iter().find_map(|b| match b {
        Block::ToolUse {
            id, name, input, ..
        } if *id == tool_use_id => Some((name.clone(), input.clone())),
        _ => None,
    })?;
    let input: Value = serde_json::from_str(&input).ok()?;
    // No root here: file paths are recorded relative to the workspace as the tool was given
    // them (an absolute device path then matches nothing elsewhere, which only asks more).
    let entry =
        Permissions::new(jarvis_agent::permissions::Mode::Ask).always_allow_entry(&name, &input);
    if prefix
        && entry["tool"] == "bash"
        && let Some(p) = entry["command"].as_str().and_then(command_prefix)
    {
        return Some(json!({"tool": "bash", "prefix": p}));
    }
    Some(entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_only_simple_commands() {
        assert_eq!(command_prefix("npm test").as_deref(), Some("npm test"));
        assert_eq!(
            command_prefix("npm test -- --watch").as_deref(),
            Some("npm test")
        );
        assert_eq!(command_prefix("ls -la").as_deref(), Some("ls"));
        assert_eq!(
            command_prefix("git push origin main").as_deref(),
            Some("git push")
        );
        assert_eq!(command_prefix("cat ./x").as_deref(), Some("cat"));
        for c in [
            "npm test && rm -rf /",
            "npm test; curl x",
            "npm test | sh",
            "npm test > /etc/x",
            "echo $(rm x)",
            "FOO=1 npm test",
            "",
        ] {
            assert_eq!(command_prefix(c), None, "{c}");
        }
    }

    #[test]
    fn rules_are_per_user_and_workspace() {
        let d = tempfile::tempdir().unwrap();
        let r = UserRules::open(&d.path().join("c.db")).unwrap();
        let e = json!({"tool": "bash", "prefix": "npm test"});
        r.add("alice", "w", &e).unwrap();
        r.add("alice", "w", &e).unwrap();
        assert_eq!(r.entries("alice", "w").unwrap(), vec![e.clone()]);
        assert!(r.entries("bob", "w").unwrap().is_empty());
        assert!(r.entries("alice", "v").unwrap().is_empty());
        assert!(r.remove("alice", "w", &e).unwrap());
        assert!(r.entries("alice", "w").unwrap().is_empty());
        r.set_memory("alice", "Use tabs.").unwrap();
        assert_eq!(r.memory("alice").unwrap().as_deref(), Some("Use tabs."));
        assert_eq!(r.memory("bob").unwrap(), None);
        r.set_memory("alice", "").unwrap();
        assert_eq!(r.memory("alice").unwrap(), None);
    }
}
