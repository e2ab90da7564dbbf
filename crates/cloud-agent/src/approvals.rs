//! Configuration that runs code needs an owner. A workspace file that makes the server run
//! something (a background agent today; hooks, settings with allow rules, MCP servers and setup
//! scripts are meant to use the same table) takes effect only once a workspace owner wrote it
//! through the API or approved its exact content: approvals are keyed by (workspace, kind,
//! path, content hash), so any change to the file waits for a new approval. Review workspaces
//! (pull-request checkouts) are untrusted: nothing in them can be approved, and nothing in
//! them is loaded.
//!
//! Never: approve from a document's content or a request body's claim about who wrote it;
//! approve anything in an untrusted workspace.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::access::Role;
use crate::control::{ControlError, now_ms};

/// The kinds of configuration that need an owner's approval: background agents, Claude Code
/// settings files (allow rules, a wider mode, `env`, hooks) and slash commands (their
/// `allowed-tools`).
pub const KINDS: &[&str] = &["agent", "settings", "command"];

/// Where background agents are defined (`crate::agents` reads them from here). Defined with
/// the kinds of configuration, which the agents' definitions depend on, not the other way.
pub const AGENTS_DIR: &str = ".jarvis/agents/";

/// Which kind of configuration a workspace path is, if any.
pub fn kind_of(path: &str) -> Option<&'static str> {
    if path.starts_with(AGENTS_DIR)
        && path.ends_with(".md")
        && !path[AGENTS_DIR.len()..].contains('/')
    {
        Some("agent")
    } else if path == ".claude/settings.json" || path == ".claude/settings.local.json" {
        Some("settings")
    } else if path.starts_with(".claude/commands/") && path.ends_with(".md") {
        Some("command")
    } else {
        None
    }
}

/// The hub's approvals as the agent runtime asks for them, for one workspace: a file takes
/// effect only when its exact content was approved (and never in an untrusted workspace).
pub struct WorkspaceApproval {
    pub approvals: std::sync::Arc<Approvals>,
    pub workspace: String,
}

impl jarvis_agent::settings::ConfigApproval for WorkspaceApproval {
    fn approved(&self, path: &str, hash: &str) -> bool {
        let Some(kind) = kind_of(path) else {
            return false;
        };
        match self
            .approvals
            .is_approved(&self.workspace, kind, path, hash)
        {
            Ok(yes) => yes,
            Err(e) => {
                // Fails closed: an unreadable approval is no approval.
                tracing::warn!(workspace = %self.workspace, path, error = %e, "reading an approval failed");
                false
            }
        }
    }
}

/// The Claude Code configuration files of a workspace (settings and commands) with the hash of
/// their current text, from the hub's documents.
pub async fn claude_config(
    hub: &jarvis_sync::hub::Hub,
    workspace: &str,
) -> Vec<(String, &'static str, String)> {
    use jarvis_sync::doc::{EntryKind, FileText, WorkspaceIndex};
    let entries = match hub
        .read(&format!("ws/{workspace}/index"), |doc| {
            WorkspaceIndex::new(doc.clone())
                .list()
                .into_iter()
                .filter(|(p, _)| matches!(kind_of(p), Some("settings" | "command")))
                .collect::<Vec<_>>()
        })
        .await
    {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%workspace, error = %e, "reading a workspace index for its configuration failed");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (path, entry) in entries {
        let (EntryKind::Text, Some(doc)) = (&entry.kind, &entry.doc) else {
            continue;
        };
        let Ok(text) = hub
            .read(&format!("ws/{workspace}/file/{doc}"), |d| {
                FileText::new(d.clone()).text()
            })
            .await
        else {
            continue;
        };
        let kind = kind_of(&path).unwrap_or("settings");
        out.push((path, kind, content_hash(&text)));
    }
    out
}

/// The hash approvals are keyed by: SHA-256 of the file's text, hex.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Debug, Clone, Serialize)]
pub struct Approval {
    pub workspace: String,
    pub kind: String,
    pub path: String,
    pub hash: String,
    pub approved_by: String,
    pub approved_ms: i64,
}

#[derive(Debug)]
pub struct Approvals {
    conn: Mutex<Connection>,
}

impl Approvals {
    pub fn open(db: &Path) -> anyhow::Result<Approvals> {
        use anyhow::Context;
        let conn = Connection::open(db)
            .with_context(|| format!("opening {} for approvals", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS config_approvals (
                workspace TEXT NOT NULL,
                kind TEXT NOT NULL,
                path TEXT NOT NULL,
                hash TEXT NOT NULL,
                approved_by TEXT NOT NULL,
                approved_ms INTEGER NOT NULL,
                PRIMARY KEY (workspace, kind, path, hash)
            );
            CREATE TABLE IF NOT EXISTS untrusted_workspaces (
                workspace TEXT PRIMARY KEY,
                reason TEXT NOT NULL
            );",
        )
        .context("creating the approval tables")?;
        Ok(Approvals {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a workspace untrusted (a pull-request checkout): its configuration never loads.
    pub fn mark_untrusted(&self, workspace: &str, reason: &str) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO untrusted_workspaces (workspace, reason) VALUES (?1, ?2)",
            params![workspace, reason],
        )?;
        Ok(())
    }

    pub fn untrusted(&self, workspace: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM untrusted_workspaces WHERE workspace = ?1")?
            .query_row(params![workspace], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Records an owner's approval of exact content. Refused for untrusted workspaces.
    pub fn approve(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
        by: &str,
    ) -> Result<(), ControlError> {
        if self.untrusted(workspace)? {
            return Err(ControlError::Forbidden(format!(
                "workspace {workspace:?} is a review checkout: its configuration never runs"
            )));
        }
        self.conn().execute(
            "INSERT OR IGNORE INTO config_approvals
               (workspace, kind, path, hash, approved_by, approved_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![workspace, kind, path, hash, by, now_ms() as i64],
        )?;
        Ok(())
    }

    /// Whether this exact content may take effect.
    pub fn is_approved(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
    ) -> rusqlite::Result<bool> {
        if self.untrusted(workspace)? {
            return Ok(false);
        }
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT 1 FROM config_approvals
                 WHERE workspace = ?1 AND kind = ?2 AND path = ?3 AND hash = ?4",
            )?
            .query_row(params![workspace, kind, path, hash], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn approval(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
    ) -> rusqlite::Result<Option<Approval>> {
        self.conn()
            .prepare_cached(
                "SELECT approved_by, approved_ms FROM config_approvals
                 WHERE workspace = ?1 AND kind = ?2 AND path = ?3 AND hash = ?4",
            )?
            .query_row(params![workspace, kind, path, hash], |r| {
                Ok(Approval {
                    workspace: workspace.to_owned(),
                    kind: kind.to_owned(),
                    path: path.to_owned(),
                    hash: hash.to_owned(),
                    approved_by: r.get(0)?,
                    approved_ms: r.get(1)?,
                })
            })
            .optional()
    }
}

/// Whether `who` approves what it writes: owners (and admin powers) do; editors propose.
pub fn writes_approved(role: Option<Role>, admin: bool) -> bool {
    admin || role == Some(Role::Owner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn approval_is_of_exact_content_and_never_in_untrusted_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        let a = Approvals::open(&dir.path().join("a.db")).unwrap();
        let h1 = content_hash("one");
        let h2 = content_hash("two");
        let p = ".jarvis/agents/x.md";
        assert!(!a.is_approved("w", "agent", p, &h1).unwrap());
        a.approve("w", "agent", p, &h1, "u-1").unwrap();
        assert!(a.is_approved("w", "agent", p, &h1).unwrap());
        assert!(!a.is_approved("w", "agent", p, &h2).unwrap());
        assert!(
            !a.is_approved("w", "agent", ".jarvis/agents/y.md", &h1)
                .unwrap()
        );
        assert!(!a.is_approved("v", "agent", p, &h1).unwrap());
        a.mark_untrusted("w", "review").unwrap();
        assert!(!a.is_approved("w", "agent", p, &h1).unwrap());
        assert!(a.approve("w", "agent", p, &h2, "u-1").is_err());
    }
}
