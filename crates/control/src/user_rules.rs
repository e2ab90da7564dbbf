//! What the hub keeps per user, not per workspace file, the stored half: "always allow"
//! answers (per user and workspace) and the user's memory text for cloud runs (their
//! `~/.claude/CLAUDE.md` on the hub). Neither is ever written into a synced file, where it
//! would become every member's. How an answer becomes an entry, and the HTTP routes, live in
//! the cloud agent.
//!
//! Never: record an "always allow" answer from a session document's `decided_by` (any
//! member's socket can write the document); only where the authenticated caller gives it.

use std::sync::Arc;

use serde_json::Value;

use crate::error::{ControlError, Result};
use crate::model::now_ms;
use crate::store::{ControlStore, RuleAdded};

/// The per-user memory text is cut at this size (it goes into every request of the user's
/// cloud sessions).
pub const MAX_MEMORY_BYTES: usize = 32 * 1024;
/// At most this many "always allow" rules per user and workspace.
pub const MAX_RULES: usize = 500;

pub struct UserRules {
    rows: Arc<dyn ControlStore>,
}

impl std::fmt::Debug for UserRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserRules")
    }
}

impl UserRules {
    pub fn new(rows: Arc<dyn ControlStore>) -> UserRules {
        UserRules { rows }
    }

    /// The user's "always allow" entries in a workspace (see `Permissions::always_allow_entry`).
    pub fn entries(&self, user: &str, workspace: &str) -> Result<Vec<Value>> {
        Ok(self
            .rows
            .rules(user, workspace)?
            .iter()
            // A row that does not parse matches nothing; skipping it only asks more.
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    /// Adds an entry; true when it is new.
    pub fn add(&self, user: &str, workspace: &str, entry: &Value) -> Result<bool> {
        match self.rows.add_rule(
            user,
            workspace,
            &entry.to_string(),
            MAX_RULES,
            now_ms() as i64,
        )? {
            RuleAdded::New => Ok(true),
            RuleAdded::Already => Ok(false),
            RuleAdded::Full => Err(ControlError::Forbidden(format!(
                "at most {MAX_RULES} \"always allow\" rules per workspace"
            ))),
        }
    }

    /// Whether a rule was there to remove.
    pub fn remove(&self, user: &str, workspace: &str, entry: &Value) -> Result<bool> {
        self.rows.remove_rule(user, workspace, &entry.to_string())
    }

    pub fn memory(&self, user: &str) -> Result<Option<String>> {
        self.rows.memory(user)
    }

    /// Replaces the user's memory text; empty removes it.
    pub fn set_memory(&self, user: &str, text: &str) -> Result<()> {
        self.rows.set_memory(user, text, now_ms() as i64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rules_are_per_user_and_workspace() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::sqlite::SqliteStore::open(&d.path().join("c.db")).unwrap();
        let r = UserRules::new(Arc::new(store));
        let e = json!({"tool": "bash", "prefix": "npm test"});
        assert!(r.add("alice", "w", &e).unwrap());
        assert!(!r.add("alice", "w", &e).unwrap());
        assert_eq!(r.entries("alice", "w").unwrap(), vec![e.clone()]);
        assert!(r.entries("bob", "w").unwrap().is_empty());
        assert!(r.entries("alice", "v").unwrap().is_empty());
        assert!(r.remove("alice", "w", &e).unwrap());
        assert!(!r.remove("alice", "w", &e).unwrap());
        assert!(r.entries("alice", "w").unwrap().is_empty());
        r.set_memory("alice", "Use tabs.").unwrap();
        assert_eq!(r.memory("alice").unwrap().as_deref(), Some("Use tabs."));
        assert_eq!(r.memory("bob").unwrap(), None);
        r.set_memory("alice", "").unwrap();
        assert_eq!(r.memory("alice").unwrap(), None);
    }

    #[test]
    fn rules_are_capped_per_user_and_workspace() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::sqlite::SqliteStore::open(&d.path().join("c.db")).unwrap();
        let r = UserRules::new(Arc::new(store));
        for i in 0..MAX_RULES {
            r.add(
                "alice",
                "w",
                &json!({"tool": "bash", "command": format!("echo {i}")}),
            )
            .unwrap();
        }
        let more = json!({"tool": "bash", "command": "echo more"});
        assert!(matches!(
            r.add("alice", "w", &more),
            Err(ControlError::Forbidden(_))
        ));
        assert!(r.add("alice", "v", &more).unwrap());
    }
}
