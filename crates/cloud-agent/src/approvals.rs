//! Configuration that runs code needs an owner. A workspace file that makes the server run
//! something (a background agent today; hooks, settings with allow rules, MCP servers and setup
//! scripts are meant to use the same table) takes effect only once a workspace owner wrote it
//! through the API or approved its exact content: approvals are keyed by (workspace, kind,
//! path, content hash), so any change to the file waits for a new approval. Review workspaces
//! (pull-request checkouts) are untrusted: nothing in them can be approved, and nothing in
//! them is loaded.
//!
//! The stored approvals (and [`content_hash`]) are `jarvis_control::approvals`, re-exported
//! here; this module knows which workspace paths are configuration and serves the routes.
//!
//! Never: approve from a document's content or a request body's claim about who wrote it;
//! approve anything in an untrusted workspace.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::api::{Api, ApiError, Body, Caller};
use crate::control::ControlError;
pub use jarvis_control::approvals::*;

/// The kinds of configuration that need an owner's approval: background agents, Claude Code
/// settings files (allow rules, a wider mode, `env`, hooks) and slash commands (their
/// `allowed-tools`).
pub const KINDS: &[&str] = &["agent", "settings", "command"];

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

/// `GET /api/workspaces/{id}/config`: every configuration file that needs approval, with its
/// current hash and whether that content is approved.
pub async fn list(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let untrusted = api.approvals.untrusted(&id)?;
    let mut out = Vec::new();
    for d in crate::agents::load_hashed(&api.hub, &id).await {
        let approval = match &d.hash {
            Some(h) => api.approvals.approval(&id, "agent", &d.path, h)?,
            None => None,
        };
        out.push(json!({
            "kind": "agent", "path": d.path, "name": d.name, "hash": d.hash,
            "approved": approval.is_some() && !untrusted, "approval": approval,
            "error": d.def.as_ref().err().map(ToString::to_string),
        }));
    }
    for (path, kind, hash) in claude_config(&api.hub, &id).await {
        let approval = api.approvals.approval(&id, kind, &path, &hash)?;
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
    // Audited once: of two owners approving the same content at once, one records it.
    if api
        .approvals
        .approve(&id, &b.kind, &b.path, &b.hash, &who.user)?
    {
        api.control.audit(
            Some(&who),
            "config.approve",
            &format!("{id}/{}", b.path),
            &b.hash,
        );
    }
    api.agents.poke();
    Ok(Json(
        json!({"workspace": id, "kind": b.kind, "path": b.path, "hash": b.hash, "approved": true}),
    ))
}
