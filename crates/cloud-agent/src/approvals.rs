//! Configuration that runs code needs an owner. A workspace file that makes the server run
//! something (a background agent today; hooks, settings with allow rules, MCP servers and setup
//! scripts are meant to use the same table) takes effect only once a workspace owner wrote it
//! through the API or approved its exact content: approvals are keyed by (workspace, kind,
//! path, content hash), so any change to the file waits for a new approval. Review workspaces
//! (pull-request checkouts) are untrusted: nothing in them can be approved, and nothing in
//! them is loaded.
//!
//! The stored approvals (and [`content_hash`]) are `jarvis_control::approvals`, re-exported
//! here; this module knows which workspace paths are configuration (the routes are `api/config.rs`).
//!
//! Never: approve from a document's content or a request body's claim about who wrote it;
//! approve anything in an untrusted workspace.

pub use jarvis_control::approvals::*;

/// The kinds of configuration that need an owner's approval: background agents, Claude Code
/// settings files (allow rules, a wider mode, `env`, hooks) and slash commands (their
/// `allowed-tools`).
pub const KINDS: &[&str] = &["agent", "settings", "command", "environment"];

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
