//! What the control plane hands out: identities, users, devices, workspaces, sessions, leases,
//! audit entries, run settings, and the small helpers every part uses (ids, time, hashing).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::{self, Action, Grant, Target};
use crate::error::{ControlError, Result};

pub use jarvis_sync::handoff::ExpectedDoc;

/// The device id of the cloud runner inside this server.
pub const CLOUD_DEVICE: &str = "cloud";
/// The user every first-start and legacy token belongs to.
pub const ADMIN_USER: &str = "u-admin";

/// Who is calling: resolved from a bearer token on every request and every document auth.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub token_id: i64,
    pub user: String,
    pub user_name: String,
    /// Admin powers ([`access::admin_powers`]): the admin user's full-scope writable token.
    /// Not the user's flag: that is `admin_user`.
    pub admin: bool,
    /// The user is an admin (whatever this token may do).
    pub admin_user: bool,
    /// The device the token was issued to (pairing); admin-made tokens have none.
    pub device: Option<String>,
    pub read_only: bool,
    #[serde(skip)]
    pub scopes: Vec<String>,
}

impl Identity {
    /// The server acting for a user (review sessions, background agents): the user's full,
    /// writable grant, with admin powers only if the user is an admin.
    pub fn acting_for(user: &User, device: &str) -> Identity {
        Identity::new(0, user, Some(device.to_owned()), vec!["*".into()], false)
    }

    /// An identity whose `admin` follows the one rule.
    pub fn new(
        token_id: i64,
        user: &User,
        device: Option<String>,
        scopes: Vec<String>,
        read_only: bool,
    ) -> Identity {
        let admin = access::admin_powers(&Grant {
            admin_user: user.admin,
            scopes: &scopes,
            read_only,
        });
        Identity {
            token_id,
            user: user.id.clone(),
            user_name: user.name.clone(),
            admin,
            admin_user: user.admin,
            device,
            read_only,
            scopes,
        }
    }

    /// What the token carries, for [`access::decide`].
    pub fn grant(&self) -> Grant<'_> {
        Grant {
            admin_user: self.admin_user,
            scopes: &self.scopes,
            read_only: self.read_only,
        }
    }

    /// The rule, for targets that need no lookup (server, metrics, gateway, account).
    pub fn may(&self, target: Target, action: Action) -> Result<()> {
        access::decide(&self.grant(), target, action).map_err(denied)
    }

    /// The device id leases are held under: the paired device, or one per token.
    pub fn device_id(&self) -> String {
        self.device
            .clone()
            .unwrap_or_else(|| format!("t-{}", self.token_id))
    }

    /// Whether the token's scopes cover `document` (membership is checked separately).
    pub fn scope_allows(&self, document: &str) -> bool {
        self.scopes.iter().any(|s| scope_matches(s, document))
    }
}

pub use crate::access::scope_matches;

/// A refusal of the rule as an error: what the caller may not know exists is not found.
pub(crate) fn denied(d: access::Denied) -> ControlError {
    match d {
        access::Denied::NotFound => ControlError::NotFound("not found".into()),
        other => ControlError::Forbidden(other.to_string()),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub label: String,
    pub user: String,
    pub device: Option<String>,
    pub scopes: Vec<String>,
    pub read_only: bool,
    pub revoked: bool,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub role: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub workspace: String,
    pub owner: String,
    pub title: String,
    pub created_ms: i64,
}

/// How a session runs: authoritative here, in the control plane, like its lease. The session
/// document carries a copy for display only; no runner reads it from there, because any member
/// with a socket can write the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub budget_micros: Option<u64>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub session: String,
    pub device: Option<String>,
    pub epoch: u64,
    pub expires_ms: u64,
    /// A handoff waiting for the holder to yield.
    pub pending_to: Option<String>,
    pub pending_by: Option<String>,
    /// What the holder had when it handed the session over.
    pub expect: Vec<ExpectedDoc>,
}

impl Lease {
    /// Nobody holds it.
    pub fn free(session: &str) -> Lease {
        Lease {
            session: session.to_owned(),
            device: None,
            epoch: 0,
            expires_ms: 0,
            pending_to: None,
            pending_by: None,
            expect: Vec::new(),
        }
    }

    pub fn live(&self, now: u64) -> bool {
        self.device.is_some() && self.expires_ms > now
    }
}

/// What a handoff request led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HandoffState {
    /// The target holds the lease now.
    Granted { lease: Lease },
    /// The holder was asked to yield; the lease moves when it does (or when it expires).
    Pending { lease: Lease },
}

#[derive(Debug, Clone, Serialize)]
pub struct Pairing {
    /// Shown to the person (`ABCD-2345`), typed or confirmed where they are signed in.
    pub code: String,
    /// Kept by the device to collect its token; a secret.
    pub device_code: String,
    pub expires_in: u64,
    pub interval: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts_ms: i64,
    pub user: Option<String>,
    pub device: Option<String>,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// Per-user quotas (0: unlimited).
#[derive(Debug, Clone, Copy, Default)]
pub struct Quotas {
    /// Documents a user may create: workspaces (their index), sessions and workspace files
    /// first opened for writing by them.
    pub documents: u64,
    /// Bytes of blobs a user may upload (each distinct blob of a workspace counted once, for
    /// whoever uploaded it first).
    pub blob_bytes: u64,
}

/// The server itself (the cloud runner's own connection, the scheduler): admin powers.
pub fn system_identity() -> Identity {
    let user = User {
        id: ADMIN_USER.into(),
        name: "system".into(),
        admin: true,
        created_ms: 0,
    };
    Identity::acting_for(&user, CLOUD_DEVICE)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Ids users pick for workspaces and sessions: what document names accept.
pub fn valid_id(id: &str) -> bool {
    jarvis_sync::doc::DocName::session(id).is_ok()
}

/// How tokens and device codes are stored: never in clear.
pub(crate) fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}
