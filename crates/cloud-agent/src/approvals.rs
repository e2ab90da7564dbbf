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

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::access::{Action, Role};
use crate::api::{Api, ApiError, Body, Caller};
use crate::control::{ControlError, now_ms};

/// The kinds of configuration that need an owner's approval: background agents, Claude Code
/// settings files (allow rules, a wider mode, `env`, hooks) and slash commands (their
/// `allowed-tools`).
pub const KINDS: &[&str] = &["agent", "settings", "command", "environment"];

/// Which kind of configuration a workspace path is, if any.
pub fn kind_of(path: &str) -> Option<&'static str> {
    if path.starts_with(crate::agents::AGENTS_DIR)
        && path.ends_with(".md")
        && !path[crate::agents::AGENTS_DIR.len()..].contains('/')
    {
        Some("agent")
    } else if path == ".claude/settings.json" || path == ".claude/settings.local.json" {
        Some("settings")
    } else if path.starts_with(".claude/commands/") && path.ends_with(".md") {
        Some("command")
    } else if path == crate::secrets::ENVIRONMENT_FILE
        || path == crate::devenv::environment::DEVCONTAINER_FILE
    {
        // Network policy and setup script (the devcontainer's lifecycle commands).
        Some("environment")
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
                .filter(|(p, _)| matches!(kind_of(p), Some("settings" | "command" | "environment")))
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

/// `GET /api/workspaces/{id}/config`: every configuration file that needs approval, with its
/// current hash and whether that content is approved.
pub async fn list(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let untrusted = api.approvals.untrusted(&id).map_err(ControlError::Db)?;
    let mut out = Vec::new();
    for d in crate::agents::load_hashed(&api.hub, &id).await {
        let approval = match &d.hash {
            Some(h) => api
                .approvals
                .approval(&id, "agent", &d.path, h)
                .map_err(ControlError::Db)?,
            None => None,
        };
        out.push(json!({
            "kind": "agent", "path": d.path, "name": d.name, "hash": d.hash,
            "approved": approval.is_some() && !untrusted, "approval": approval,
            "error": d.def.as_ref().err().map(ToString::to_string),
        }));
    }
    for (path, kind, hash) in claude_config(&api.hub, &id).await {
        let approval = api
            .approvals
            .approval(&id, kind, &path, &hash)
            .map_err(ControlError::Db)?;
        out.push(json!({
            "kind": kind, "path": path, "hash": hash,
            "approved": approval.is_some() && !untrusted, "approval": approval,
        }));
    }
    Ok(Json(
        json!({"workspace": id, "untrusted": untrusted, "config": out}),
    ))
}

#[derive(Deserialize)]
pub struct Approve {
    pub kind: String,
    pub path: String,
    /// The content hash the owner looked at; it must be the file's current content.
    pub hash: String,
}

/// `POST /api/workspaces/{id}/config/approve`: an owner approves the current content of one
/// configuration file.
pub async fn approve(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<Approve>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Manage)?;
    if !KINDS.contains(&b.kind.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("kind {:?}: use one of {KINDS:?}", b.kind),
        ));
    }
    if kind_of(&b.path) != Some(b.kind.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "{:?} is not a configuration file of kind {:?}",
                b.path, b.kind
            ),
        ));
    }
    let current_hash = if b.kind == "agent" {
        crate::agents::load_hashed(&api.hub, &id)
            .await
            .into_iter()
            .find(|d| d.path == b.path)
            .map(|d| d.hash)
    } else {
        claude_config(&api.hub, &id)
            .await
            .into_iter()
            .find(|(p, _, _)| *p == b.path)
            .map(|(_, _, h)| Some(h))
    }
    .ok_or_else(|| ControlError::NotFound(format!("no {} at {:?}", b.kind, b.path)))?;
    if current_hash.as_deref() != Some(b.hash.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "the file changed since that hash; look at it again and approve the new content",
        ));
    }
    api.approvals
        .approve(&id, &b.kind, &b.path, &b.hash, &who.user)?;
    api.control.audit(
        Some(&who),
        "config.approve",
        &format!("{id}/{}", b.path),
        &b.hash,
    );
    api.agents.poke();
    Ok(Json(
        json!({"workspace": id, "kind": b.kind, "path": b.path, "hash": b.hash, "approved": true}),
    ))
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
