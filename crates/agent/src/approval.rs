//! Who may make this machine run what a workspace's configuration files say: the one question
//! settings, hooks and slash commands ask before a file widens what runs without asking. A leaf
//! module (settings and commands both ask it, and neither imports the other for it).

use sha2::{Digest, Sha256};

/// Decides whether a workspace configuration file may widen what runs without asking.
pub trait ConfigApproval: Send + Sync {
    /// `path` is relative to the workspace (`.claude/settings.json`); `hash` is the SHA-256 of
    /// its content, hex (the key the hub's approvals use).
    fn approved(&self, path: &str, hash: &str) -> bool;
}

/// The user's own device: their files apply as Claude Code applies them.
pub struct OwnDevice;

impl ConfigApproval for OwnDevice {
    fn approved(&self, _: &str, _: &str) -> bool {
        true
    }
}

/// Nothing approved: the default wherever the person who wrote a file is not known to be
/// someone allowed to make this machine run code (the cloud runner, review checkouts).
pub struct Unapproved;

impl ConfigApproval for Unapproved {
    fn approved(&self, _: &str, _: &str) -> bool {
        false
    }
}

pub fn content_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}
