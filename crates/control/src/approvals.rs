//! Configuration that runs code needs an owner: the stored half. A workspace file that makes
//! the server run something (a background agent, Claude Code settings, slash commands) takes
//! effect only once a workspace owner wrote it through the API or approved its exact content:
//! approvals are keyed by (workspace, kind, path, content hash), so any change to the file
//! waits for a new approval. Review workspaces (pull-request checkouts) are untrusted: nothing
//! in them can be approved, and nothing in them is loaded. Which paths are configuration and
//! the HTTP routes live in the cloud agent.
//!
//! Never: approve from a document's content or a request body's claim about who wrote it;
//! approve anything in an untrusted workspace.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::access::Role;
use crate::error::{ControlError, Result};
use crate::model::now_ms;
use crate::store::ControlStore;
pub use crate::store::{Approval, Approved};

/// The hash approvals are keyed by: SHA-256 of the file's text, hex.
pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Whether `who` approves what it writes: owners (and admin powers) do; editors propose.
pub fn writes_approved(role: Option<Role>, admin: bool) -> bool {
    admin || role == Some(Role::Owner)
}

pub struct Approvals {
    rows: Arc<dyn ControlStore>,
}

impl std::fmt::Debug for Approvals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Approvals")
    }
}

impl Approvals {
    pub fn new(rows: Arc<dyn ControlStore>) -> Approvals {
        Approvals { rows }
    }

    /// Marks a workspace untrusted (a pull-request checkout): its configuration never loads.
    pub fn mark_untrusted(&self, workspace: &str, reason: &str) -> Result<()> {
        self.rows.mark_untrusted(workspace, reason)
    }

    pub fn untrusted(&self, workspace: &str) -> Result<bool> {
        self.rows.untrusted(workspace)
    }

    /// Records an owner's approval of exact content; true when this call recorded it (false:
    /// it was approved already, nothing to audit). Refused for untrusted workspaces.
    pub fn approve(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
        by: &str,
    ) -> Result<bool> {
        let a = Approval {
            workspace: workspace.to_owned(),
            kind: kind.to_owned(),
            path: path.to_owned(),
            hash: hash.to_owned(),
            approved_by: by.to_owned(),
            approved_ms: now_ms() as i64,
        };
        match self.rows.approve(&a)? {
            Approved::New => Ok(true),
            Approved::Already => Ok(false),
            Approved::Untrusted => Err(ControlError::Forbidden(format!(
                "workspace {workspace:?} is a review checkout: its configuration never runs"
            ))),
        }
    }

    /// Whether this exact content may take effect.
    pub fn is_approved(&self, workspace: &str, kind: &str, path: &str, hash: &str) -> Result<bool> {
        if self.rows.untrusted(workspace)? {
            return Ok(false);
        }
        Ok(self.rows.approval(workspace, kind, path, hash)?.is_some())
    }

    pub fn approval(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
    ) -> Result<Option<Approval>> {
        self.rows.approval(workspace, kind, path, hash)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Approvals {
        let store = crate::sqlite::SqliteStore::open(&dir.join("h.db")).unwrap();
        Approvals::new(Arc::new(store))
    }

    #[test]
    fn approval_is_of_exact_content_and_never_in_untrusted_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path());
        let h1 = content_hash("one");
        let h2 = content_hash("two");
        let p = ".jarvis/agents/x.md";
        assert!(!a.is_approved("w", "agent", p, &h1).unwrap());
        assert!(a.approve("w", "agent", p, &h1, "u-1").unwrap());
        assert!(a.is_approved("w", "agent", p, &h1).unwrap());
        assert!(!a.is_approved("w", "agent", p, &h2).unwrap());
        assert!(
            !a.is_approved("w", "agent", ".jarvis/agents/y.md", &h1)
                .unwrap()
        );
        assert!(!a.is_approved("v", "agent", p, &h1).unwrap());
        a.mark_untrusted("w", "review").unwrap();
        assert!(!a.is_approved("w", "agent", p, &h1).unwrap());
        assert!(matches!(
            a.approve("w", "agent", p, &h2, "u-1"),
            Err(ControlError::Forbidden(_))
        ));
        assert!(a.approval("w", "agent", p, &h2).unwrap().is_none());
    }

    #[test]
    fn two_approvals_at_once_record_one() {
        let dir = tempfile::tempdir().unwrap();
        // Two stores on one file: two connections, as two server processes would have.
        let a = Arc::new(open(dir.path()));
        let b = Arc::new(open(dir.path()));
        let h = content_hash("agent text");
        let p = ".jarvis/agents/x.md";
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [(a, "u-1"), (b, "u-2")]
            .into_iter()
            .map(|(s, by)| {
                let (barrier, h) = (barrier.clone(), h.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.approve("w", "agent", p, &h, by).unwrap()
                })
            })
            .collect();
        let recorded: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(recorded.iter().filter(|r| **r).count(), 1, "{recorded:?}");
        // And again later: already approved, nothing new.
        assert!(
            !open(dir.path())
                .approve("w", "agent", p, &h, "u-3")
                .unwrap()
        );
    }
}
