//! The seam a second database needs: what the control plane asks of its storage, grouped by
//! job. [`crate::Control`] (the rule, the checks, the audit) is written against these traits
//! only; [`crate::sqlite::SqliteStore`] is the one implementation today. A PostgreSQL store
//! implements the same traits with the same atomicity, each method's doc says what must happen
//! in one transaction.
//!
//! Never: decide access here. A store answers what is stored; [`crate::access::decide`] and
//! the checks in [`crate::Control`] decide what a caller may do with it.

use crate::access::Role;
use crate::error::Result;
use crate::model::{
    AuditEntry, Device, Lease, RunSettings, SessionRow, TokenInfo, User, Workspace,
};

/// A token as looked up by its hash, with what decides whether it still works.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: i64,
    pub user: User,
    pub device: Option<String>,
    pub scopes: Vec<String>,
    pub read_only: bool,
    pub revoked: bool,
    /// The token's device was revoked (None: no device).
    pub device_revoked: Option<bool>,
}

/// A token about to be stored (its hash; the clear token never reaches a store).
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub hash: &'a str,
    pub user: &'a str,
    pub device: Option<&'a str>,
    pub label: &'a str,
    pub scopes: &'a [String],
    pub read_only: bool,
    pub created_ms: i64,
}

/// A pairing a device started.
#[derive(Debug, Clone)]
pub struct NewPairing<'a> {
    pub code: &'a str,
    pub device_code_hash: &'a str,
    pub name: &'a str,
    pub expires_ms: i64,
    pub origin: &'a str,
}

/// A pairing as the device's poll finds it.
#[derive(Debug, Clone)]
pub struct PairingRow {
    pub code: String,
    pub name: String,
    pub expires_ms: i64,
    pub approved_user: Option<String>,
    pub issued: bool,
    /// The approver's grant, passed on (None: approved by a server that did not record it).
    pub scopes: Option<Vec<String>>,
    pub read_only: bool,
}

/// Users, tokens, pairings and devices.
pub trait Identities: Send + Sync {
    fn token_count(&self) -> Result<i64>;
    /// Conflict when the name is taken.
    fn insert_user(&self, user: &User) -> Result<()>;
    /// By name or id.
    fn user_by_name(&self, name: &str) -> Result<Option<User>>;
    fn users(&self) -> Result<Vec<User>>;
    fn insert_token(&self, token: &NewToken) -> Result<i64>;
    /// A user's tokens (None: everyone's), oldest first.
    fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>>;
    /// Whether a token (of `owner`, when given) was there to revoke.
    fn revoke_token(&self, id: i64, owner: Option<&str>) -> Result<bool>;
    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;
    /// In one transaction: drops expired pairings, refuses (Conflict) when `origin` already
    /// has `max_pending` unapproved ones, stores this one.
    fn insert_pairing(&self, p: &NewPairing, now_ms: i64, max_pending: i64) -> Result<()>;
    /// (name, expires_ms, approved_user) of a pairing code.
    fn pairing_by_code(&self, code: &str) -> Result<Option<(String, i64, Option<String>)>>;
    /// Approves a pairing not approved yet (one conditional update: two approvers cannot both
    /// win); false when it was approved meanwhile.
    fn approve_pairing(
        &self,
        code: &str,
        user: &str,
        scopes: &[String],
        read_only: bool,
    ) -> Result<bool>;
    fn pairing_by_device_code(&self, device_code_hash: &str) -> Result<Option<PairingRow>>;
    /// In one transaction: marks the pairing issued (only if it was not) and stores the
    /// device; false when a racing poll issued it first.
    fn issue_pairing(&self, code: &str, device: &Device) -> Result<bool>;
    fn devices(&self, user: Option<&str>) -> Result<Vec<Device>>;
    /// In one transaction: revokes a device (of `owner`, when given) and every token issued
    /// to it; false when there was no such device.
    fn revoke_device(&self, id: &str, owner: Option<&str>) -> Result<bool>;
}

/// Workspaces, members, the session registry, quotas and run settings.
pub trait Workspaces: Send + Sync {
    fn role(&self, workspace: &str, user: &str) -> Result<Option<Role>>;
    fn workspace_exists(&self, id: &str) -> Result<bool>;
    fn workspace_owner(&self, id: &str) -> Result<Option<String>>;
    /// In one transaction: creates the workspace with `owner` as its owner member; false when
    /// the id exists (nothing changes then).
    fn create_workspace(&self, id: &str, name: &str, owner: &str, now_ms: i64) -> Result<bool>;
    /// Removes a workspace and its members (a creation taken back).
    fn delete_workspace(&self, id: &str) -> Result<()>;
    /// Workspaces `user` is a member of, or all with `all`; `role` is the member's stored
    /// role (`admin` where not a member), oldest first.
    fn workspaces_of(&self, user: &str, all: bool) -> Result<Vec<Workspace>>;
    /// Sets (Some) or removes (None) a member's role.
    fn set_role(&self, workspace: &str, user: &str, role: Option<Role>) -> Result<()>;
    fn session(&self, id: &str) -> Result<Option<SessionRow>>;
    /// Stores a session row unless the id exists; false then.
    fn insert_session(&self, row: &SessionRow) -> Result<bool>;
    /// Sessions (of one workspace, or all) with `user`'s role there; only where `user` is a
    /// member unless `all`. Newest first.
    fn sessions_of(
        &self,
        user: &str,
        all: bool,
        workspace: Option<&str>,
    ) -> Result<Vec<(SessionRow, Option<Role>)>>;
    /// In one transaction: a document seen before costs nothing (true); else it is charged
    /// to `user` if they own fewer than `limit` documents (true), or refused (false).
    fn charge_document(&self, name: &str, user: &str, limit: u64, now_ms: i64) -> Result<bool>;
    /// Whether a blob of a workspace is charged to someone already.
    fn blob_charged(&self, workspace: &str, hash: &str) -> Result<bool>;
    fn blob_bytes_of(&self, user: &str) -> Result<u64>;
    /// Charges a blob to its first uploader (later ones change nothing).
    fn record_blob(&self, workspace: &str, hash: &str, user: &str, size: u64) -> Result<()>;
    /// Stores run settings unless the session has some; false then.
    fn init_run_settings(&self, session: &str, settings: &RunSettings) -> Result<bool>;
    /// In one transaction: reads, changes with `change`, writes back.
    fn update_run_settings(
        &self,
        session: &str,
        change: &mut dyn FnMut(&mut RunSettings),
    ) -> Result<RunSettings>;
    fn run_settings(&self, session: &str) -> Result<Option<RunSettings>>;
}

/// Which device runs each session.
pub trait Leases: Send + Sync {
    /// The lease (a free one when none was ever taken).
    fn lease(&self, session: &str) -> Result<Lease>;
    /// Serialised read-modify-write: `change` sees the current lease and returns whether it
    /// changed it (then it is written); no other lease change of the session interleaves.
    /// Returns the lease as `change` left it; an error from `change` changes nothing.
    fn update_lease(
        &self,
        session: &str,
        change: &mut dyn FnMut(&mut Lease) -> Result<bool>,
    ) -> Result<Lease>;
    /// Sessions with a pending handoff whose lease expired by `now_ms`.
    fn stuck_handoffs(&self, now_ms: u64) -> Result<Vec<String>>;
    fn leases_of(&self, device: &str) -> Result<Vec<Lease>>;
}

/// The audit log: appended, never changed.
pub trait AuditLog: Send + Sync {
    fn append(&self, entry: &AuditEntry) -> Result<()>;
    /// The newest `limit` entries, newest first.
    fn recent(&self, limit: u32) -> Result<Vec<AuditEntry>>;
}

/// An encrypted secret as stored: the store never sees a value.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A secret as listed: (name, updated_ms, updated_by).
pub type SecretListing = (String, i64, String);

/// Encrypted secrets by (scope kind, owner, name); see [`crate::secrets::SecretStore`].
pub trait SecretRows: Send + Sync {
    fn put_secret(
        &self,
        kind: &str,
        owner: &str,
        name: &str,
        sealed: &SealedSecret,
        updated_ms: i64,
        by: &str,
    ) -> Result<()>;
    /// Whether there was one to delete.
    fn delete_secret(&self, kind: &str, owner: &str, name: &str) -> Result<bool>;
    fn list_secrets(&self, kind: &str, owner: &str) -> Result<Vec<SecretListing>>;
    fn secret(&self, kind: &str, owner: &str, name: &str) -> Result<Option<SealedSecret>>;
}

/// An owner's approval of exact configuration content.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Approval {
    pub workspace: String,
    pub kind: String,
    pub path: String,
    pub hash: String,
    pub approved_by: String,
    pub approved_ms: i64,
}

/// What an approval request led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approved {
    /// Recorded now.
    New,
    /// This exact content was approved before (by this or another owner).
    Already,
    /// The workspace is untrusted: nothing was recorded.
    Untrusted,
}

/// Configuration approvals and untrusted (review) workspaces; see [`crate::approvals`].
pub trait ApprovalRows: Send + Sync {
    fn mark_untrusted(&self, workspace: &str, reason: &str) -> Result<()>;
    fn untrusted(&self, workspace: &str) -> Result<bool>;
    /// One conditional statement: recorded only if the workspace is not untrusted and this
    /// content has no approval yet, so two approvals at once record (and audit) one.
    fn approve(&self, a: &Approval) -> Result<Approved>;
    fn approval(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
    ) -> Result<Option<Approval>>;
}

/// What an "always allow" add led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAdded {
    New,
    Already,
    /// The user has `max` rules in the workspace already.
    Full,
}

/// Per-user "always allow" rules and memory text; see [`crate::user_rules`].
pub trait UserRuleRows: Send + Sync {
    /// The rules' stored text, oldest first.
    fn rules(&self, user: &str, workspace: &str) -> Result<Vec<String>>;
    /// In one transaction: counts the user's rules there and adds this one under `max`.
    fn add_rule(
        &self,
        user: &str,
        workspace: &str,
        rule: &str,
        max: usize,
        now_ms: i64,
    ) -> Result<RuleAdded>;
    /// Whether there was one to remove.
    fn remove_rule(&self, user: &str, workspace: &str, rule: &str) -> Result<bool>;
    fn memory(&self, user: &str) -> Result<Option<String>>;
    /// Replaces the text; empty removes it.
    fn set_memory(&self, user: &str, text: &str, now_ms: i64) -> Result<()>;
}

/// Everything the hub database holds for the control plane.
pub trait ControlStore:
    Identities + Workspaces + Leases + AuditLog + SecretRows + ApprovalRows + UserRuleRows
{
}

impl<T> ControlStore for T where
    T: Identities + Workspaces + Leases + AuditLog + SecretRows + ApprovalRows + UserRuleRows
{
}
