//! The control plane: users, devices, tokens, device pairing, workspaces and their members,
//! the session registry, leases (which device runs each session) and the audit log. One SQLite
//! database (the hub's file, its own connection); every decision that takes access away is
//! followed by [`jarvis_sync::hub::Hub::revalidate`] at the call site, so open sockets lose it
//! at once too.
//!
//! Never: store or log a token in clear; the clear token is returned once, at creation.

use std::path::Path;
use std::sync::Mutex;

use jarvis_sync::hub::{Access, Authorizer};

use crate::access::{self, Action, Role, Target};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The device id of the cloud runner inside this server.
pub const CLOUD_DEVICE: &str = "cloud";
/// The user every first-start and legacy token belongs to.
pub const ADMIN_USER: &str = "u-admin";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Pending(String),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
}

impl ControlError {
    /// The machine-readable code the API sends with the message.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Unauthorized(_) => "unauthorized",
            ControlError::Forbidden(_) => "forbidden",
            ControlError::NotFound(_) => "not_found",
            ControlError::Conflict(_) => "conflict",
            ControlError::Invalid(_) => "invalid_request",
            ControlError::Pending(_) => "authorization_pending",
            ControlError::Db(_) => "internal",
        }
    }
}

type Result<T, E = ControlError> = std::result::Result<T, E>;

/// Who is calling: resolved from a bearer token on every request and every document auth.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub token_id: i64,
    pub user: String,
    pub user_name: String,
    /// Admin powers ([`crate::access::admin_powers`]): the admin user's full-scope writable
    /// token. Not the user's flag: that is `admin_user`.
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
        let admin = crate::access::admin_powers(&crate::access::Grant {
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

    /// What the token carries, for [`crate::access::decide`].
    pub fn grant(&self) -> crate::access::Grant<'_> {
        crate::access::Grant {
            admin_user: self.admin_user,
            scopes: &self.scopes,
            read_only: self.read_only,
        }
    }

    /// The rule, for targets that need no lookup (server, metrics, gateway, account).
    pub fn may(&self, target: crate::access::Target, action: crate::access::Action) -> Result<()> {
        crate::access::decide(&self.grant(), target, action).map_err(denied)
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

pub use jarvis_sync::handoff::ExpectedDoc;

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

pub use crate::access::scope_matches;

/// A refusal of the rule as an API error: what the caller may not know exists is not found.
fn denied(d: crate::access::Denied) -> ControlError {
    match d {
        crate::access::Denied::NotFound => ControlError::NotFound("not found".into()),
        other => ControlError::Forbidden(other.to_string()),
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
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

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// Ids users pick for workspaces and sessions: what document names accept.
pub fn valid_id(id: &str) -> bool {
    jarvis_sync::doc::DocName::session(id).is_ok()
}

const PAIRING_TTL_MS: u64 = 10 * 60 * 1000;
/// Unapproved pairings one address may have open at once.
pub const MAX_PAIRINGS_PER_ORIGIN: i64 = 8;
/// Unambiguous letters and digits for codes read off one screen and typed on another.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

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

pub struct Control {
    conn: Mutex<Connection>,
    pub quotas: Quotas,
    /// Held in memory only: the cloud runner's own sync token, valid until the process ends.
    system_token_hash: String,
}

impl Control {
    /// Opens (and migrates) the control tables; returns the store and the in-process system
    /// token for the cloud runner's own connection.
    pub fn open(path: &Path) -> anyhow::Result<(Self, String)> {
        use anyhow::Context;
        let conn = Connection::open(path)
            .with_context(|| format!("opening control database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tokens (
                id INTEGER PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                label TEXT NOT NULL,
                scopes TEXT NOT NULL,
                read_only INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0,
                created_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                admin INTEGER NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS devices (
                id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                name TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS pairings (
                code TEXT PRIMARY KEY,
                device_code_hash TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                expires_ms INTEGER NOT NULL,
                approved_user TEXT,
                issued INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS workspaces (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                owner TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS members (
                workspace TEXT NOT NULL,
                user_id TEXT NOT NULL,
                role TEXT NOT NULL,
                PRIMARY KEY (workspace, user_id)
            );
            CREATE TABLE IF NOT EXISTS sessions (
                id TEXT PRIMARY KEY,
                workspace TEXT NOT NULL,
                owner TEXT NOT NULL,
                title TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS sessions_by_workspace ON sessions (workspace);
            CREATE TABLE IF NOT EXISTS leases (
                session TEXT PRIMARY KEY,
                device TEXT,
                epoch INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL,
                pending_to TEXT,
                pending_by TEXT,
                expect TEXT NOT NULL DEFAULT '[]'
            );
            CREATE TABLE IF NOT EXISTS document_owners (
                name TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS document_owners_by_user ON document_owners (user_id);
            CREATE TABLE IF NOT EXISTS blob_owners (
                workspace TEXT NOT NULL,
                hash TEXT NOT NULL,
                user_id TEXT NOT NULL,
                size INTEGER NOT NULL,
                PRIMARY KEY (workspace, hash)
            );
            CREATE INDEX IF NOT EXISTS blob_owners_by_user ON blob_owners (user_id);
            CREATE TABLE IF NOT EXISTS session_settings (
                session TEXT PRIMARY KEY,
                settings TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS audit (
                id INTEGER PRIMARY KEY,
                ts_ms INTEGER NOT NULL,
                user_id TEXT,
                device_id TEXT,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                detail TEXT NOT NULL
            );",
        )
        .context("creating the control tables")?;
        // Tokens made before users existed belong to the admin.
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('tokens')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !cols.iter().any(|c| c == "user_id") {
            conn.execute_batch(
                "ALTER TABLE tokens ADD COLUMN user_id TEXT;
                 ALTER TABLE tokens ADD COLUMN device_id TEXT;",
            )?;
        }
        // A pairing passes on the approver's grant, never more.
        let pcols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('pairings')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !pcols.iter().any(|c| c == "scopes") {
            conn.execute_batch(
                "ALTER TABLE pairings ADD COLUMN scopes TEXT;
                 ALTER TABLE pairings ADD COLUMN read_only INTEGER NOT NULL DEFAULT 1;
                 ALTER TABLE pairings ADD COLUMN origin TEXT NOT NULL DEFAULT '';",
            )?;
        }
        conn.execute(
            "INSERT OR IGNORE INTO users (id, name, admin, created_ms) VALUES (?1, 'admin', 1, ?2)",
            params![ADMIN_USER, now_ms() as i64],
        )?;
        conn.execute(
            "UPDATE tokens SET user_id = ?1 WHERE user_id IS NULL",
            params![ADMIN_USER],
        )?;
        let system = format!("jt_sys_{}", random_hex(24));
        Ok((
            Control {
                conn: Mutex::new(conn),
                quotas: Quotas::default(),
                system_token_hash: hash(&system),
            },
            system,
        ))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- audit ------------------------------------------------------------------------------

    pub fn audit(&self, who: Option<&Identity>, action: &str, target: &str, detail: &str) {
        let r = self.conn().execute(
            "INSERT INTO audit (ts_ms, user_id, device_id, action, target, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                now_ms() as i64,
                who.map(|i| i.user.clone()),
                who.map(|i| i.device_id()),
                action,
                target,
                detail
            ],
        );
        if let Err(e) = r {
            tracing::error!(error = %e, action, target, "writing the audit log failed");
        }
    }

    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, ts_ms, user_id, device_id, action, target, detail FROM audit
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                ts_ms: r.get(1)?,
                user: r.get(2)?,
                device: r.get(3)?,
                action: r.get(4)?,
                target: r.get(5)?,
                detail: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- users and tokens -------------------------------------------------------------------

    pub fn token_count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))?)
    }

    pub fn create_user(&self, name: &str, admin: bool) -> Result<User> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(ControlError::Invalid(
                "a user name is 1 to 64 printable characters".into(),
            ));
        }
        let user = User {
            id: format!("u-{}", random_hex(8)),
            name: name.to_owned(),
            admin,
            created_ms: now_ms() as i64,
        };
        let r = self.conn().execute(
            "INSERT INTO users (id, name, admin, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user.id, user.name, user.admin, user.created_ms],
        );
        match r {
            Ok(_) => Ok(user),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(ControlError::Conflict(format!(
                    "a user named {name:?} exists"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, admin, created_ms FROM users WHERE name = ?1 OR id = ?1",
                params![name],
                |r| {
                    Ok(User {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        admin: r.get(2)?,
                        created_ms: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, admin, created_ms FROM users ORDER BY created_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok(User {
                id: r.get(0)?,
                name: r.get(1)?,
                admin: r.get(2)?,
                created_ms: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Creates a token for a user (and optionally a device); returns it in clear, once.
    pub fn create_token(
        &self,
        user: &str,
        device: Option<&str>,
        label: &str,
        scopes: &[String],
        read_only: bool,
    ) -> Result<String> {
        if scopes.is_empty() {
            return Err(ControlError::Invalid(
                "a token needs at least one scope".into(),
            ));
        }
        for s in scopes {
            if s.is_empty() || s.contains('\n') || s[..s.len() - 1].contains('*') {
                return Err(ControlError::Invalid(format!(
                    "invalid scope {s:?}: use an exact document name or a prefix ending in '*'"
                )));
            }
        }
        let token = format!("jt_{}", random_hex(24));
        self.conn().execute(
            "INSERT INTO tokens (hash, label, scopes, read_only, created_ms, user_id, device_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                hash(&token),
                label,
                scopes.join("\n"),
                read_only,
                now_ms() as i64,
                user,
                device
            ],
        )?;
        Ok(token)
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, label, user_id, device_id, scopes, read_only, revoked, created_ms
             FROM tokens WHERE ?1 IS NULL OR user_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![user], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                label: r.get(1)?,
                user: r.get(2)?,
                device: r.get(3)?,
                scopes: r.get::<_, String>(4)?.lines().map(str::to_owned).collect(),
                read_only: r.get(5)?,
                revoked: r.get(6)?,
                created_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a token; `owner` limits it to that user's tokens (None: admin).
    pub fn revoke_token(&self, id: i64, owner: Option<&str>) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
            params![id, owner],
        )?;
        if n == 0 {
            return Err(ControlError::NotFound(format!("no token with id {id}")));
        }
        Ok(())
    }

    /// Revokes a token as `who`: admin powers revoke any; anyone else only their own tokens
    /// whose grant lies within the caller's (a narrow token cannot revoke a wider one).
    pub fn revoke_token_as(&self, who: &Identity, id: i64) -> Result<()> {
        who.may(Target::Account, Action::Write)?;
        if who.admin {
            return self.revoke_token(id, None);
        }
        let t = self
            .tokens(Some(&who.user))?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no token with id {id}")))?;
        self.within_caller(who, &t)?;
        self.revoke_token(id, Some(&who.user))
    }

    fn within_caller(&self, who: &Identity, t: &TokenInfo) -> Result<()> {
        let inner = access::Grant {
            admin_user: who.admin_user,
            scopes: &t.scopes,
            read_only: t.read_only,
        };
        if access::within(&inner, &who.grant()) {
            Ok(())
        } else {
            Err(ControlError::Forbidden(format!(
                "token {} reaches further than this one; revoke it with a token that covers it",
                t.id
            )))
        }
    }

    /// Resolves a bearer token. The in-memory system token is the cloud runner itself.
    pub fn identify(&self, token: &str) -> Result<Identity> {
        if token.is_empty() {
            return Err(ControlError::Unauthorized("missing token".into()));
        }
        let h = hash(token);
        if h == self.system_token_hash {
            return Ok(system_identity());
        }
        let row = self
            .conn()
            .prepare_cached(
                "SELECT t.id, t.user_id, u.name, u.admin, t.device_id, t.read_only, t.revoked,
                        t.scopes, d.revoked
                 FROM tokens t JOIN users u ON u.id = t.user_id
                 LEFT JOIN devices d ON d.id = t.device_id
                 WHERE t.hash = ?1",
            )?
            .query_row(params![h], |r| {
                let user = User {
                    id: r.get(1)?,
                    name: r.get(2)?,
                    admin: r.get(3)?,
                    created_ms: 0,
                };
                Ok((
                    Identity::new(
                        r.get(0)?,
                        &user,
                        r.get(4)?,
                        r.get::<_, String>(7)?.lines().map(str::to_owned).collect(),
                        r.get(5)?,
                    ),
                    r.get::<_, bool>(6)?,
                    r.get::<_, Option<bool>>(8)?,
                ))
            })
            .optional()?;
        match row {
            None => Err(ControlError::Unauthorized("unknown token".into())),
            Some((_, true, _)) => Err(ControlError::Unauthorized("token revoked".into())),
            Some((_, _, Some(true))) => Err(ControlError::Unauthorized("device revoked".into())),
            Some((id, _, _)) => Ok(id),
        }
    }

    // ---- pairing and devices ----------------------------------------------------------------

    /// A device asks to be paired: it shows `code` to its person and polls with `device_code`.
    /// `origin` is the caller's address (see [`crate::limits::address_key`]).
    pub fn start_pairing(&self, name: &str, origin: &str) -> Result<Pairing> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(ControlError::Invalid(
                "a device name is 1 to 64 printable characters".into(),
            ));
        }
        let conn = self.conn();
        conn.execute(
            "DELETE FROM pairings WHERE expires_ms < ?1",
            params![now_ms() as i64],
        )?;
        // Per address, never one count for everyone: one client filling a global table would
        // lock every other device out of pairing.
        let pending: i64 = conn.query_row(
            "SELECT count(*) FROM pairings WHERE origin = ?1 AND approved_user IS NULL",
            params![origin],
            |r| r.get(0),
        )?;
        if pending >= MAX_PAIRINGS_PER_ORIGIN {
            return Err(ControlError::Conflict(
                "too many pairings in progress from this address; finish or let one expire".into(),
            ));
        }
        let code: String = (0..8)
            .map(|i| {
                let c = CODE_ALPHABET[rand::random::<u32>() as usize % CODE_ALPHABET.len()] as char;
                if i == 4 {
                    format!("-{c}")
                } else {
                    c.to_string()
                }
            })
            .collect();
        let device_code = format!("jd_{}", random_hex(24));
        conn.execute(
            "INSERT INTO pairings (code, device_code_hash, name, expires_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                code,
                hash(&device_code),
                name,
                (now_ms() + PAIRING_TTL_MS) as i64,
                origin
            ],
        )?;
        Ok(Pairing {
            code,
            device_code,
            expires_in: PAIRING_TTL_MS / 1000,
            interval: 1,
        })
    }

    /// A signed-in person approves a code: the device becomes theirs.
    pub fn approve_pairing(&self, who: &Identity, code: &str) -> Result<String> {
        who.may(Target::Account, Action::Write)?;
        let code = code.trim().to_ascii_uppercase();
        let code = if code.len() == 8 && !code.contains('-') {
            format!("{}-{}", &code[..4], &code[4..])
        } else {
            code
        };
        let conn = self.conn();
        let row: Option<(String, i64, Option<String>)> = conn
            .query_row(
                "SELECT name, expires_ms, approved_user FROM pairings WHERE code = ?1",
                params![code],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            None => Err(ControlError::NotFound("no such pairing code".into())),
            Some((_, exp, _)) if exp < now_ms() as i64 => Err(ControlError::NotFound(
                "the pairing code has expired".into(),
            )),
            Some((_, _, Some(_))) => Err(ControlError::Conflict(
                "this code was already approved".into(),
            )),
            Some((name, _, None)) => {
                // The new device gets the approver's scopes and read-only flag: approving
                // never hands out more than the approving token has.
                conn.execute(
                    "UPDATE pairings SET approved_user = ?1, scopes = ?3, read_only = ?4
                     WHERE code = ?2",
                    params![who.user, code, who.scopes.join("\n"), who.read_only],
                )?;
                Ok(name)
            }
        }
    }

    /// The device polls; once approved it gets its device id and token, exactly once.
    pub fn poll_pairing(&self, device_code: &str) -> Result<(Device, String)> {
        let h = hash(device_code);
        type Row = (
            String,
            String,
            i64,
            Option<String>,
            bool,
            Option<String>,
            bool,
        );
        let row: Option<Row> = self
            .conn()
            .query_row(
                "SELECT code, name, expires_ms, approved_user, issued, scopes, read_only
                 FROM pairings WHERE device_code_hash = ?1",
                params![h],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                },
            )
            .optional()?;
        let (scopes, read_only) = match &row {
            Some((.., Some(scopes), read_only)) => (
                scopes.lines().map(str::to_owned).collect::<Vec<_>>(),
                *read_only,
            ),
            // Approved before grants were recorded: nothing to pass on but the least.
            _ => (Vec::new(), true),
        };
        let row = row.map(|(a, b, c, d, e, _, _)| (a, b, c, d, e));
        let (code, name, user) = match row {
            Some((_, _, _, Some(_), false)) if scopes.is_empty() => {
                return Err(ControlError::NotFound(
                    "this pairing was approved by an older server; start it again".into(),
                ));
            }
            None => return Err(ControlError::NotFound("unknown device code".into())),
            Some((_, _, _, _, true)) => {
                return Err(ControlError::Conflict(
                    "this pairing was already completed".into(),
                ));
            }
            Some((_, _, exp, None, _)) if exp < now_ms() as i64 => {
                return Err(ControlError::NotFound("the pairing has expired".into()));
            }
            Some((_, _, _, None, _)) => {
                return Err(ControlError::Pending(
                    "waiting for the code to be approved".into(),
                ));
            }
            Some((code, name, _, Some(user), false)) => (code, name, user),
        };
        let device = Device {
            id: format!("d-{}", random_hex(8)),
            user: user.clone(),
            name: name.clone(),
            created_ms: now_ms() as i64,
            revoked: false,
        };
        {
            let conn = self.conn();
            // Marked issued first: a racing second poll finds it so and gets nothing.
            let n = conn.execute(
                "UPDATE pairings SET issued = 1 WHERE code = ?1 AND issued = 0",
                params![code],
            )?;
            if n == 0 {
                return Err(ControlError::Conflict(
                    "this pairing was already completed".into(),
                ));
            }
            conn.execute(
                "INSERT INTO devices (id, user_id, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![device.id, device.user, device.name, device.created_ms],
            )?;
        }
        let token = self.create_token(
            &user,
            Some(&device.id),
            &format!("device {name}"),
            &scopes,
            read_only,
        )?;
        Ok((device, token))
    }

    pub fn devices(&self, user: Option<&str>) -> Result<Vec<Device>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, user_id, name, created_ms, revoked FROM devices
             WHERE ?1 IS NULL OR user_id = ?1 ORDER BY created_ms",
        )?;
        let rows = stmt.query_map(params![user], |r| {
            Ok(Device {
                id: r.get(0)?,
                user: r.get(1)?,
                name: r.get(2)?,
                created_ms: r.get(3)?,
                revoked: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes a device as `who`: admin powers revoke any; anyone else only their own devices
    /// whose every token lies within the caller's grant.
    pub fn revoke_device_as(&self, who: &Identity, id: &str) -> Result<()> {
        who.may(Target::Account, Action::Write)?;
        if who.admin {
            return self.revoke_device(id, None);
        }
        for t in self
            .tokens(Some(&who.user))?
            .iter()
            .filter(|t| t.device.as_deref() == Some(id) && !t.revoked)
        {
            self.within_caller(who, t)?;
        }
        self.revoke_device(id, Some(&who.user))
    }

    /// Revokes a device and every token issued to it.
    pub fn revoke_device(&self, id: &str, owner: Option<&str>) -> Result<()> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE devices SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
            params![id, owner],
        )?;
        if n == 0 {
            return Err(ControlError::NotFound(format!("no device {id}")));
        }
        conn.execute(
            "UPDATE tokens SET revoked = 1 WHERE device_id = ?1",
            params![id],
        )?;
        Ok(())
    }

    // ---- workspaces and membership ----------------------------------------------------------

    /// `user`'s role in a workspace; None when not a member.
    pub fn role(&self, workspace: &str, user: &str) -> Result<Option<Role>> {
        let r: Option<String> = self
            .conn()
            .prepare_cached("SELECT role FROM members WHERE workspace = ?1 AND user_id = ?2")?
            .query_row(params![workspace, user], |r| r.get(0))
            .optional()?;
        Ok(r.as_deref().and_then(Role::parse))
    }

    fn workspace_exists(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM workspaces WHERE id = ?1")?
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The one rule for a target inside a workspace. A workspace the caller is not a member of
    /// (and has no admin powers over) is `NotFound`, whatever else is wrong, so ids are not
    /// disclosed.
    fn decide_in<'a>(
        &self,
        who: &Identity,
        workspace: &str,
        target: impl FnOnce(Option<Role>) -> Target<'a>,
        action: Action,
        missing: impl Fn() -> ControlError,
    ) -> Result<Option<Role>> {
        if !self.workspace_exists(workspace)? {
            return Err(missing());
        }
        let role = self.role(workspace, &who.user)?;
        if role.is_none() && !who.admin {
            return Err(missing());
        }
        access::decide(&who.grant(), target(role), action).map_err(|d| match d {
            access::Denied::NotFound => missing(),
            other => ControlError::Forbidden(other.to_string()),
        })?;
        Ok(role)
    }

    /// Checks that `who` may `action` a workspace as a whole (its listing, members, agents,
    /// configuration); returns the caller's role.
    pub fn check_workspace_for(
        &self,
        who: &Identity,
        workspace: &str,
        action: Action,
    ) -> Result<Option<Role>> {
        self.decide_in(
            who,
            workspace,
            |role| Target::Workspace {
                id: workspace,
                role,
            },
            action,
            || ControlError::NotFound(format!("no workspace {workspace:?}")),
        )
    }

    /// Checks that `who` may read a workspace as a whole.
    pub fn check_workspace(&self, who: &Identity, workspace: &str) -> Result<()> {
        self.check_workspace_for(who, workspace, Action::Read)
            .map(|_| ())
    }

    /// Creates a workspace owned by `who`, or returns it if it exists and `who` may use it.
    pub fn ensure_workspace(&self, who: &Identity, id: &str, name: &str) -> Result<Workspace> {
        if !valid_id(id) {
            return Err(ControlError::Invalid(format!(
                "invalid workspace id {id:?}: letters, digits, '-', '_', '.', up to 128"
            )));
        }
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        if !access::covers(&who.scopes, &format!("ws/{id}/*")) {
            return Err(ControlError::Forbidden(format!(
                "the token's scopes do not cover ws/{id}/*"
            )));
        }
        {
            let conn = self.conn();
            let created = conn.execute(
                "INSERT OR IGNORE INTO workspaces (id, name, owner, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![id, if name.is_empty() { id } else { name }, who.user, now_ms() as i64],
            )?;
            if created > 0 {
                conn.execute(
                    "INSERT INTO members (workspace, user_id, role) VALUES (?1, ?2, 'owner')",
                    params![id, who.user],
                )?;
            }
            if created > 0 {
                drop(conn);
                if let Err(e) = self.charge_document(who, &format!("ws/{id}/index")) {
                    // Over quota: the workspace is not kept.
                    let conn = self.conn();
                    conn.execute("DELETE FROM members WHERE workspace = ?1", params![id])?;
                    conn.execute("DELETE FROM workspaces WHERE id = ?1", params![id])?;
                    return Err(e);
                }
            }
        }
        self.check_workspace(who, id)
            .map_err(|_| ControlError::Conflict(format!("workspace id {id:?} is taken")))?;
        self.workspace(who, id)
    }

    pub fn workspace(&self, who: &Identity, id: &str) -> Result<Workspace> {
        self.check_workspace(who, id)?;
        self.workspaces(who)?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| ControlError::NotFound(format!("no workspace {id:?}")))
    }

    /// Workspaces whose index the caller may read.
    pub fn workspaces(&self, who: &Identity) -> Result<Vec<Workspace>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT w.id, w.name, w.owner, coalesce(m.role, 'admin'), w.created_ms
             FROM workspaces w LEFT JOIN members m ON m.workspace = w.id AND m.user_id = ?1
             WHERE m.user_id IS NOT NULL OR ?2 ORDER BY w.created_ms",
        )?;
        let rows = stmt.query_map(params![who.user, who.admin], |r| {
            Ok(Workspace {
                id: r.get(0)?,
                name: r.get(1)?,
                owner: r.get(2)?,
                role: r.get(3)?,
                created_ms: r.get(4)?,
            })
        })?;
        let all: Vec<Workspace> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all
            .into_iter()
            .map(|mut w| {
                // Stored before viewers existed as `member`: shown as what it means.
                if let Some(r) = Role::parse(&w.role) {
                    w.role = r.as_str().to_owned();
                }
                w
            })
            .filter(|w| {
                let index = format!("ws/{}/index", w.id);
                access::decide(
                    &who.grant(),
                    Target::Document {
                        name: &index,
                        role: Role::parse(&w.role),
                    },
                    Action::Read,
                )
                .is_ok()
            })
            .collect())
    }

    /// Adds, changes (`role` owner, editor or viewer) or removes (`role` None) a member; only
    /// an owner (or admin powers) may, with a token that covers the whole workspace.
    pub fn set_member(
        &self,
        who: &Identity,
        workspace: &str,
        user: &str,
        role: Option<&str>,
    ) -> Result<()> {
        self.check_workspace_for(who, workspace, Action::Manage)
            .map_err(|e| match e {
                ControlError::Forbidden(m) => ControlError::Forbidden(format!(
                    "only the workspace's owner can change its members: {m}"
                )),
                other => other,
            })?;
        let target = self
            .user_by_name(user)?
            .ok_or_else(|| ControlError::NotFound(format!("no user {user:?}")))?;
        let conn = self.conn();
        match role {
            Some(r) => {
                let role = Role::parse(r).ok_or_else(|| {
                    ControlError::Invalid(format!("role {r:?}: use owner, editor or viewer"))
                })?;
                conn.execute(
                    "INSERT INTO members (workspace, user_id, role) VALUES (?1, ?2, ?3)
                     ON CONFLICT (workspace, user_id) DO UPDATE SET role = excluded.role",
                    params![workspace, target.id, role.as_str()],
                )?;
            }
            None => {
                conn.execute(
                    "DELETE FROM members WHERE workspace = ?1 AND user_id = ?2",
                    params![workspace, target.id],
                )?;
            }
        }
        Ok(())
    }

    // ---- sessions ---------------------------------------------------------------------------

    pub fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, workspace, owner, title, created_ms FROM sessions WHERE id = ?1",
            )?
            .query_row(params![id], |r| {
                Ok(SessionRow {
                    id: r.get(0)?,
                    workspace: r.get(1)?,
                    owner: r.get(2)?,
                    title: r.get(3)?,
                    created_ms: r.get(4)?,
                })
            })
            .optional()?)
    }

    /// The session, if `who` may see it; otherwise `NotFound` (ids are not disclosed).
    pub fn check_session(&self, who: &Identity, id: &str) -> Result<SessionRow> {
        self.check_session_for(who, id, Action::Read)
    }

    /// The session, if `who` may `action` it (read it, or write to it: messages, answers,
    /// handoffs, leases).
    pub fn check_session_for(
        &self,
        who: &Identity,
        id: &str,
        action: Action,
    ) -> Result<SessionRow> {
        let missing = || ControlError::NotFound(format!("no session {id:?}"));
        let row = self.session(id)?.ok_or_else(missing)?;
        let name = format!("session/{id}");
        self.decide_in(
            who,
            &row.workspace,
            |role| Target::Document { name: &name, role },
            action,
            missing,
        )?;
        Ok(row)
    }

    /// Registers a session in a workspace (idempotent for the same workspace): the caller must
    /// be able to write the session's document there.
    pub fn register_session(
        &self,
        who: &Identity,
        id: &str,
        workspace: &str,
        title: &str,
    ) -> Result<SessionRow> {
        if !valid_id(id) {
            return Err(ControlError::Invalid(format!("invalid session id {id:?}")));
        }
        if who.read_only {
            return Err(ControlError::Forbidden("read-only token".into()));
        }
        if self.session(id)?.is_some() {
            // Someone else's session is taken without saying whose.
            let row = self
                .check_session_for(who, id, Action::Write)
                .map_err(|e| match e {
                    ControlError::NotFound(_) => {
                        ControlError::NotFound(format!("no session {id:?}"))
                    }
                    other => other,
                })?;
            if row.workspace != workspace {
                return Err(ControlError::Conflict(format!(
                    "session {id:?} belongs to another workspace"
                )));
            }
            return Ok(row);
        }
        let name = format!("session/{id}");
        self.decide_in(
            who,
            workspace,
            |role| Target::Document { name: &name, role },
            Action::Write,
            || ControlError::NotFound(format!("no workspace {workspace:?}")),
        )?;
        self.charge_document(who, &name)?;
        self.conn().execute(
            "INSERT OR IGNORE INTO sessions (id, workspace, owner, title, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, workspace, who.user, title, now_ms() as i64],
        )?;
        let row = self
            .check_session(who, id)
            .map_err(|_| ControlError::Conflict(format!("session id {id:?} is taken")))?;
        if row.workspace != workspace {
            return Err(ControlError::Conflict(format!(
                "session {id:?} belongs to another workspace"
            )));
        }
        Ok(row)
    }

    pub fn sessions(&self, who: &Identity, workspace: Option<&str>) -> Result<Vec<SessionRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.workspace, s.owner, s.title, s.created_ms, m.role FROM sessions s
             LEFT JOIN members m ON m.workspace = s.workspace AND m.user_id = ?2
             WHERE (?1 IS NULL OR s.workspace = ?1)
               AND (?3 OR m.user_id IS NOT NULL)
             ORDER BY s.created_ms DESC",
        )?;
        let rows = stmt.query_map(params![workspace, who.user, who.admin], |r| {
            Ok((
                SessionRow {
                    id: r.get(0)?,
                    workspace: r.get(1)?,
                    owner: r.get(2)?,
                    title: r.get(3)?,
                    created_ms: r.get(4)?,
                },
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let all: Vec<(SessionRow, Option<String>)> = rows.collect::<rusqlite::Result<_>>()?;
        // The same rule as for one session: a token scoped to some sessions lists those.
        Ok(all
            .into_iter()
            .filter(|(row, role)| {
                let name = format!("session/{}", row.id);
                access::decide(
                    &who.grant(),
                    Target::Document {
                        name: &name,
                        role: role.as_deref().and_then(Role::parse),
                    },
                    Action::Read,
                )
                .is_ok()
            })
            .map(|(row, _)| row)
            .collect())
    }

    // ---- quotas -------------------------------------------------------------------------------

    /// Charges a document to `who` the first time it is seen (later openers are not charged);
    /// refused once the user's quota is reached. The server itself is never charged.
    pub fn charge_document(&self, who: &Identity, name: &str) -> Result<()> {
        if who.token_id == 0 || self.quotas.documents == 0 {
            return Ok(());
        }
        let conn = self.conn();
        let known = conn
            .prepare_cached("SELECT 1 FROM document_owners WHERE name = ?1")?
            .query_row(params![name], |_| Ok(()))
            .optional()?
            .is_some();
        if known {
            return Ok(());
        }
        let used: i64 = conn
            .prepare_cached("SELECT count(*) FROM document_owners WHERE user_id = ?1")?
            .query_row(params![who.user], |r| r.get(0))?;
        if used as u64 >= self.quotas.documents {
            return Err(ControlError::Forbidden(format!(
                "document quota reached: {} documents per user",
                self.quotas.documents
            )));
        }
        conn.execute(
            "INSERT OR IGNORE INTO document_owners (name, user_id, created_ms) VALUES (?1, ?2, ?3)",
            params![name, who.user, now_ms() as i64],
        )?;
        Ok(())
    }

    /// Bytes `who` may still upload as new blobs (None: no quota), and whether this blob is
    /// already charged (then it costs nothing).
    pub fn blob_allowance(
        &self,
        who: &Identity,
        workspace: &str,
        hash: &str,
    ) -> Result<Option<u64>> {
        if who.token_id == 0 || self.quotas.blob_bytes == 0 {
            return Ok(None);
        }
        let conn = self.conn();
        let known = conn
            .prepare_cached("SELECT 1 FROM blob_owners WHERE workspace = ?1 AND hash = ?2")?
            .query_row(params![workspace, hash], |_| Ok(()))
            .optional()?
            .is_some();
        if known {
            return Ok(None);
        }
        let used: i64 = conn
            .prepare_cached("SELECT coalesce(sum(size), 0) FROM blob_owners WHERE user_id = ?1")?
            .query_row(params![who.user], |r| r.get(0))?;
        Ok(Some(
            self.quotas.blob_bytes.saturating_sub(used.max(0) as u64),
        ))
    }

    /// Records a stored blob against whoever uploaded it first.
    pub fn record_blob(
        &self,
        who: &Identity,
        workspace: &str,
        hash: &str,
        size: u64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO blob_owners (workspace, hash, user_id, size) VALUES (?1, ?2, ?3, ?4)",
            params![workspace, hash, who.user, size as i64],
        )?;
        Ok(())
    }

    // ---- run settings -----------------------------------------------------------------------

    /// Records a session's run settings once, when it is created; false if it had some (they
    /// are never rewritten: a later `start_session` with the same id cannot change them).
    pub fn init_run_settings(&self, session: &str, settings: &RunSettings) -> Result<bool> {
        let json = serde_json::to_string(settings)
            .map_err(|e| ControlError::Invalid(format!("run settings: {e}")))?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO session_settings (session, settings) VALUES (?1, ?2)",
            params![session, json],
        )?;
        Ok(n == 1)
    }

    /// Changes a session's permission mode and/or model in its authoritative run settings
    /// (`PATCH /api/sessions/{id}`); the caller has checked the right to.
    pub fn update_run_settings(
        &self,
        session: &str,
        permission_mode: Option<&str>,
        model: Option<&str>,
    ) -> Result<RunSettings> {
        let mut settings = self.run_settings(session)?.unwrap_or_default();
        if let Some(m) = permission_mode {
            settings.permission_mode = Some(m.to_owned());
        }
        if let Some(m) = model {
            settings.model = Some(m.to_owned());
        }
        let json = serde_json::to_string(&settings)
            .map_err(|e| ControlError::Invalid(format!("run settings: {e}")))?;
        self.conn().execute(
            "INSERT INTO session_settings (session, settings) VALUES (?1, ?2)
             ON CONFLICT(session) DO UPDATE SET settings = excluded.settings",
            params![session, json],
        )?;
        Ok(settings)
    }

    /// The authoritative run settings of a session (None: none were recorded; the runner
    /// then uses the safest defaults, never the session document's copy).
    pub fn run_settings(&self, session: &str) -> Result<Option<RunSettings>> {
        let json: Option<String> = self
            .conn()
            .prepare_cached("SELECT settings FROM session_settings WHERE session = ?1")?
            .query_row(params![session], |r| r.get(0))
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j)
                .map_err(|e| ControlError::Invalid(format!("stored run settings: {e}")))
        })
        .transpose()
    }

    // ---- leases -----------------------------------------------------------------------------

    fn read_lease(conn: &Connection, session: &str) -> Result<Lease> {
        let row = conn
            .prepare_cached(
                "SELECT device, epoch, expires_ms, pending_to, pending_by, expect FROM leases
                 WHERE session = ?1",
            )?
            .query_row(params![session], |r| {
                Ok(Lease {
                    session: session.to_owned(),
                    device: r.get(0)?,
                    epoch: r.get::<_, i64>(1)? as u64,
                    expires_ms: r.get::<_, i64>(2)? as u64,
                    pending_to: r.get(3)?,
                    pending_by: r.get(4)?,
                    expect: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                })
            })
            .optional()?;
        Ok(row.unwrap_or(Lease {
            session: session.to_owned(),
            device: None,
            epoch: 0,
            expires_ms: 0,
            pending_to: None,
            pending_by: None,
            expect: Vec::new(),
        }))
    }

    fn write_lease(conn: &Connection, l: &Lease) -> Result<()> {
        conn.execute(
            "INSERT INTO leases (session, device, epoch, expires_ms, pending_to, pending_by, expect)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (session) DO UPDATE SET device = excluded.device, epoch = excluded.epoch,
               expires_ms = excluded.expires_ms, pending_to = excluded.pending_to,
               pending_by = excluded.pending_by, expect = excluded.expect",
            params![
                l.session,
                l.device,
                l.epoch as i64,
                l.expires_ms as i64,
                l.pending_to,
                l.pending_by,
                serde_json::to_string(&l.expect).unwrap_or_else(|_| "[]".into())
            ],
        )?;
        Ok(())
    }

    /// Runs `f` on the lease in one immediate transaction: lease changes are serialised, so
    /// two devices racing for a session see one winner.
    fn with_lease<T>(
        &self,
        session: &str,
        f: impl FnOnce(&mut Lease) -> Result<(T, bool)>,
    ) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut lease = Self::read_lease(&tx, session)?;
        let (out, changed) = f(&mut lease)?;
        if changed {
            Self::write_lease(&tx, &lease)?;
        }
        tx.commit()?;
        Ok(out)
    }

    pub fn lease(&self, session: &str) -> Result<Lease> {
        Self::read_lease(&self.conn(), session)
    }

    /// Takes a free (or expired) lease, or renews one this device holds.
    pub fn acquire(&self, session: &str, device: &str, ttl_ms: u64) -> Result<Lease> {
        let now = now_ms();
        self.with_lease(session, |l| {
            let mine = l.device.as_deref() == Some(device);
            if l.live(now) && !mine {
                return Err(ControlError::Conflict(format!(
                    "session {session} is running on {} (epoch {}); hand it off first",
                    l.device.as_deref().unwrap_or("?"),
                    l.epoch
                )));
            }
            if let Some(to) = &l.pending_to
                && to != device
            {
                return Err(ControlError::Conflict(format!(
                    "session {session} is being handed to {to}"
                )));
            }
            if !mine || !l.live(now) {
                l.epoch += 1;
                l.expect.clear();
            }
            l.device = Some(device.to_owned());
            l.expires_ms = now + ttl_ms;
            if l.pending_to.as_deref() == Some(device) {
                l.pending_to = None;
                l.pending_by = None;
            }
            Ok((l.clone(), true))
        })
    }

    /// Extends a lease the device holds at `epoch`; anything else means it is lost.
    pub fn renew(&self, session: &str, device: &str, epoch: u64, ttl_ms: u64) -> Result<Lease> {
        let now = now_ms();
        self.with_lease(session, |l| {
            if l.device.as_deref() != Some(device) || l.epoch != epoch {
                return Err(ControlError::Conflict(format!(
                    "lease lost: session {session} is now held by {} at epoch {}",
                    l.device.as_deref().unwrap_or("nobody"),
                    l.epoch
                )));
            }
            l.expires_ms = now + ttl_ms;
            Ok((l.clone(), true))
        })
    }

    /// Asks for the session to move to `to`. A free or expired lease moves at once (with
    /// `expect` as the state to reach); a live holder is asked to yield.
    pub fn request_handoff(
        &self,
        session: &str,
        to: &str,
        by: &str,
        expect: Vec<ExpectedDoc>,
        ttl_ms: u64,
    ) -> Result<HandoffState> {
        let now = now_ms();
        self.with_lease(session, |l| {
            if l.live(now) && l.device.as_deref() == Some(to) {
                return Ok((HandoffState::Granted { lease: l.clone() }, false));
            }
            if let Some(p) = &l.pending_to {
                if p == to {
                    return Ok((HandoffState::Pending { lease: l.clone() }, false));
                }
                if l.live(now) {
                    return Err(ControlError::Conflict(format!(
                        "session {session} is already being handed to {p}"
                    )));
                }
            }
            if l.live(now) {
                l.pending_to = Some(to.to_owned());
                l.pending_by = Some(by.to_owned());
                return Ok((HandoffState::Pending { lease: l.clone() }, true));
            }
            l.device = Some(to.to_owned());
            l.epoch += 1;
            l.expires_ms = now + ttl_ms;
            l.pending_to = None;
            l.pending_by = None;
            l.expect = expect;
            Ok((HandoffState::Granted { lease: l.clone() }, true))
        })
    }

    /// The holder gives the session up at a safe point, with the state it leaves behind.
    /// The lease moves to the pending target, if any; otherwise it becomes free.
    pub fn release(
        &self,
        session: &str,
        device: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
        ttl_ms: u64,
    ) -> Result<Lease> {
        let now = now_ms();
        self.with_lease(session, |l| {
            if l.device.as_deref() != Some(device) || l.epoch != epoch {
                return Err(ControlError::Conflict(format!(
                    "lease lost: session {session} is held by {} at epoch {}",
                    l.device.as_deref().unwrap_or("nobody"),
                    l.epoch
                )));
            }
            l.epoch += 1;
            l.expect = expect;
            match l.pending_to.take() {
                Some(to) => {
                    l.device = Some(to);
                    l.expires_ms = now + ttl_ms;
                }
                None => {
                    l.device = None;
                    l.expires_ms = 0;
                }
            }
            l.pending_by = None;
            Ok((l.clone(), true))
        })
    }

    /// Pending handoffs whose holder let its lease expire: they complete now (the holder is
    /// gone; what it did not flush is not in the hub and cannot be waited for).
    pub fn complete_expired_handoffs(&self, ttl_ms: u64) -> Result<Vec<Lease>> {
        let now = now_ms();
        let stuck: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare(
                "SELECT session FROM leases WHERE pending_to IS NOT NULL AND expires_ms <= ?1",
            )?;
            stmt.query_map(params![now as i64], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut moved = Vec::new();
        for s in stuck {
            let l = self.with_lease(&s, |l| {
                if l.live(now) {
                    return Ok((None, false));
                }
                let Some(to) = l.pending_to.take() else {
                    return Ok((None, false));
                };
                l.device = Some(to);
                l.epoch += 1;
                l.expires_ms = now + ttl_ms;
                l.pending_by = None;
                l.expect.clear();
                Ok((Some(l.clone()), true))
            })?;
            moved.extend(l);
        }
        Ok(moved)
    }

    /// Sessions whose lease this device holds (the cloud resumes these after a restart).
    pub fn leases_of(&self, device: &str) -> Result<Vec<Lease>> {
        let sessions: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare("SELECT session FROM leases WHERE device = ?1")?;
            stmt.query_map(params![device], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let conn = self.conn();
        sessions
            .iter()
            .map(|s| Self::read_lease(&conn, s))
            .collect()
    }

    /// Document-level access for the sync socket and the blob routes, by the one rule:
    /// read-write where the caller may write the document, read-only where it may only read.
    pub fn document_access(&self, who: &Identity, document: &str) -> Result<Access> {
        let name = jarvis_sync::doc::DocName::parse(document)
            .map_err(|e| ControlError::Invalid(e.to_string()))?;
        let grant = who.grant();
        // The workspace the document belongs to, if the server knows one.
        let workspace = if let Some(s) = name.session_id() {
            self.session(s)?.map(|row| row.workspace)
        } else if let Some(w) = name.workspace() {
            self.workspace_exists(w)?.then(|| w.to_owned())
        } else {
            return Err(ControlError::Forbidden(format!("no access to {document}")));
        };
        let target = match &workspace {
            Some(w) => Target::Document {
                name: document,
                role: self.role(w, &who.user)?,
            },
            None => Target::Unowned { name: document },
        };
        let refused = |d: access::Denied| match d {
            access::Denied::NotFound => match name.session_id() {
                Some(s) if workspace.is_none() => {
                    ControlError::Forbidden(format!("no session {s:?}"))
                }
                _ => ControlError::Forbidden(format!("no access to {document}")),
            },
            access::Denied::Scope(_) => {
                ControlError::Forbidden(format!("token has no access to {document}"))
            }
            other => ControlError::Forbidden(other.to_string()),
        };
        if access::decide(&grant, target, Action::Write).is_ok() {
            return Ok(Access::ReadWrite);
        }
        access::decide(&grant, target, Action::Read).map_err(refused)?;
        Ok(Access::ReadOnly)
    }
}

impl Authorizer for Control {
    fn authorize(&self, token: &str, document: &str) -> Result<Access, String> {
        let unavailable = |e: ControlError| match e {
            ControlError::Db(e) => {
                tracing::error!(error = %e, "access check failed");
                "access check unavailable".to_owned()
            }
            other => other.to_string(),
        };
        let who = self.identify(token).map_err(|e| e.to_string())?;
        let access = self.document_access(&who, document).map_err(unavailable)?;
        // A workspace file opened for writing may be a new document: charged to its first
        // writer, within their quota.
        if access == Access::ReadWrite && document.contains("/file/") {
            self.charge_document(&who, document).map_err(unavailable)?;
        }
        Ok(access)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Control) {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = Control::open(&dir.path().join("c.db")).unwrap();
        (dir, c)
    }

    #[test]
    fn tokens_are_hashed_scoped_and_revocable() {
        let (_d, c) = open();
        let rw = c
            .create_token(ADMIN_USER, None, "a", &["session/*".into()], false)
            .unwrap();
        let ro = c
            .create_token(ADMIN_USER, None, "b", &["ws/w1/*".into()], true)
            .unwrap();
        let full = c
            .create_token(ADMIN_USER, None, "full", &["*".into()], false)
            .unwrap();
        let full = c.identify(&full).unwrap();
        let admin = c.identify(&rw).unwrap();
        // A scoped token creates no workspace outside its scopes.
        assert!(c.ensure_workspace(&admin, "w1", "").is_err());
        c.ensure_workspace(&full, "w1", "").unwrap();
        let who = c.identify(&ro).unwrap();
        assert!(who.read_only);
        c.register_session(&admin, "s1", "w1", "t").unwrap();
        assert_eq!(c.authorize(&rw, "session/s1"), Ok(Access::ReadWrite));
        assert!(c.authorize(&rw, "ws/w1/index").is_err());
        assert_eq!(c.authorize(&ro, "ws/w1/index"), Ok(Access::ReadOnly));
        assert!(c.authorize("", "session/s1").is_err());
        assert!(c.authorize("jt_nope", "session/s1").is_err());
        c.revoke_token(admin.token_id, None).unwrap();
        assert_eq!(
            c.authorize(&rw, "session/s1"),
            Err("token revoked".to_owned())
        );
        let raw: String = c
            .conn()
            .query_row("SELECT group_concat(hash) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert!(!raw.contains(&rw[3..]));
    }

    #[test]
    fn membership_isolates_users() {
        let (_d, c) = open();
        let a = c.create_user("alice", false).unwrap();
        let b = c.create_user("bob", false).unwrap();
        let ta = c
            .create_token(&a.id, None, "a", &["*".into()], false)
            .unwrap();
        let tb = c
            .create_token(&b.id, None, "b", &["*".into()], false)
            .unwrap();
        let (ia, ib) = (c.identify(&ta).unwrap(), c.identify(&tb).unwrap());
        c.ensure_workspace(&ia, "wa", "A").unwrap();
        c.register_session(&ia, "sa", "wa", "t").unwrap();
        assert!(c.authorize(&ta, "ws/wa/index").is_ok());
        assert!(c.authorize(&ta, "session/sa").is_ok());
        assert!(c.authorize(&tb, "ws/wa/index").is_err());
        assert!(c.authorize(&tb, "ws/wa/file/f1").is_err());
        assert!(c.authorize(&tb, "session/sa").is_err());
        assert!(c.sessions(&ib, None).unwrap().is_empty());
        assert!(c.workspaces(&ib).unwrap().is_empty());
        // Taking an existing id is refused without saying whose it is.
        assert!(matches!(
            c.ensure_workspace(&ib, "wa", ""),
            Err(ControlError::Conflict(_))
        ));
        assert!(matches!(
            c.register_session(&ib, "sa", "wa", ""),
            Err(ControlError::NotFound(_))
        ));
        c.set_member(&ia, "wa", "bob", Some("member")).unwrap();
        assert!(c.authorize(&tb, "session/sa").is_ok());
        assert!(c.set_member(&ib, "wa", "bob", None).is_err());
        c.set_member(&ia, "wa", "bob", None).unwrap();
        assert!(c.authorize(&tb, "session/sa").is_err());
    }

    #[test]
    fn viewers_read_editors_write_owners_manage() {
        let (_d, c) = open();
        let o = c.create_user("olga", false).unwrap();
        let e = c.create_user("ed", false).unwrap();
        let v = c.create_user("vic", false).unwrap();
        let tok = |u: &User| {
            c.identify(
                &c.create_token(&u.id, None, "t", &["*".into()], false)
                    .unwrap(),
            )
            .unwrap()
        };
        let (io, ie, iv) = (tok(&o), tok(&e), tok(&v));
        c.ensure_workspace(&io, "w", "").unwrap();
        c.set_member(&io, "w", "ed", Some("editor")).unwrap();
        c.set_member(&io, "w", "vic", Some("viewer")).unwrap();
        c.register_session(&io, "s", "w", "t").unwrap();
        assert_eq!(
            c.document_access(&iv, "session/s").unwrap(),
            Access::ReadOnly
        );
        assert_eq!(
            c.document_access(&iv, "ws/w/index").unwrap(),
            Access::ReadOnly
        );
        assert_eq!(
            c.document_access(&ie, "ws/w/index").unwrap(),
            Access::ReadWrite
        );
        assert!(c.check_session_for(&iv, "s", Action::Write).is_err());
        assert!(c.check_session_for(&ie, "s", Action::Write).is_ok());
        assert!(c.register_session(&iv, "s2", "w", "t").is_err());
        // Neither an editor nor a viewer changes members (or promotes themselves).
        assert!(c.set_member(&ie, "w", "ed", Some("owner")).is_err());
        assert!(c.set_member(&iv, "w", "vic", Some("editor")).is_err());
        assert!(c.set_member(&io, "w", "vic", Some("admin")).is_err());
        // A read-only token of the owner manages nothing.
        let ro = c
            .identify(
                &c.create_token(&o.id, None, "ro", &["*".into()], true)
                    .unwrap(),
            )
            .unwrap();
        assert!(c.set_member(&ro, "w", "vic", None).is_err());
        assert_eq!(
            c.document_access(&ro, "ws/w/index").unwrap(),
            Access::ReadOnly
        );
    }

    #[test]
    fn admin_powers_need_the_full_writable_token() {
        let (_d, c) = open();
        let narrow = c
            .identify(
                &c.create_token(ADMIN_USER, None, "n", &["ws/team/*".into()], true)
                    .unwrap(),
            )
            .unwrap();
        assert!(narrow.admin_user && !narrow.admin);
        let other = c.create_user("bob", false).unwrap();
        let tb = c
            .identify(
                &c.create_token(&other.id, None, "b", &["*".into()], false)
                    .unwrap(),
            )
            .unwrap();
        c.ensure_workspace(&tb, "bobs", "").unwrap();
        assert!(c.document_access(&narrow, "ws/bobs/index").is_err());
        assert!(c.workspaces(&narrow).unwrap().is_empty());
        // Its revocation power is its own account's, within its own grant.
        let full = c.tokens(Some(ADMIN_USER)).unwrap();
        assert!(full.is_empty() || c.revoke_token_as(&narrow, full[0].id).is_err());
        assert!(c.revoke_token_as(&narrow, tb.token_id).is_err());
    }

    #[test]
    fn a_paired_device_gets_at_most_the_approvers_grant() {
        let (_d, c) = open();
        let a = c.create_user("alice", false).unwrap();
        let narrow = c
            .identify(
                &c.create_token(&a.id, None, "n", &["session/s1".into()], false)
                    .unwrap(),
            )
            .unwrap();
        let p = c.start_pairing("phone", "10.0.0.1").unwrap();
        c.approve_pairing(&narrow, &p.code).unwrap();
        let (_, token) = c.poll_pairing(&p.device_code).unwrap();
        let dev = c.identify(&token).unwrap();
        assert_eq!(dev.scopes, vec!["session/s1".to_owned()]);
        let ro = c
            .identify(
                &c.create_token(&a.id, None, "r", &["*".into()], true)
                    .unwrap(),
            )
            .unwrap();
        let p = c.start_pairing("tablet", "10.0.0.1").unwrap();
        assert!(c.approve_pairing(&ro, &p.code).is_err());
    }

    #[test]
    fn pending_pairings_are_capped_per_address() {
        let (_d, c) = open();
        for _ in 0..MAX_PAIRINGS_PER_ORIGIN {
            c.start_pairing("x", "10.0.0.1").unwrap();
        }
        assert!(c.start_pairing("x", "10.0.0.1").is_err());
        assert!(c.start_pairing("x", "10.0.0.2").is_ok());
    }

    #[test]
    fn documents_and_blobs_are_charged_to_their_first_writer_within_a_quota() {
        let dir = tempfile::tempdir().unwrap();
        let (mut c, _) = Control::open(&dir.path().join("c.db")).unwrap();
        c.quotas = Quotas {
            documents: 3,
            blob_bytes: 100,
        };
        let a = c.create_user("alice", false).unwrap();
        let b = c.create_user("bob", false).unwrap();
        let ta = c
            .create_token(&a.id, None, "a", &["*".into()], false)
            .unwrap();
        let tb = c
            .create_token(&b.id, None, "b", &["*".into()], false)
            .unwrap();
        let (ia, ib) = (c.identify(&ta).unwrap(), c.identify(&tb).unwrap());
        c.ensure_workspace(&ia, "w", "").unwrap();
        c.set_member(&ia, "w", "bob", Some("editor")).unwrap();
        c.register_session(&ia, "s", "w", "").unwrap();
        assert!(c.authorize(&ta, "ws/w/file/f1").is_ok());
        // The fourth document is over alice's quota; bob opening alice's costs bob nothing.
        assert!(c.authorize(&ta, "ws/w/file/f2").is_err());
        assert!(c.authorize(&ta, "ws/w/file/f1").is_ok());
        assert!(c.authorize(&tb, "ws/w/file/f1").is_ok());
        assert!(c.authorize(&tb, "ws/w/file/f2").is_ok());
        assert!(c.ensure_workspace(&ia, "w2", "").is_err());
        assert!(c.workspaces(&ia).unwrap().iter().all(|w| w.id != "w2"));
        assert_eq!(c.blob_allowance(&ia, "w", "h1").unwrap(), Some(100));
        c.record_blob(&ia, "w", "h1", 60).unwrap();
        assert_eq!(c.blob_allowance(&ia, "w", "h2").unwrap(), Some(40));
        assert_eq!(c.blob_allowance(&ib, "w", "h1").unwrap(), None);
    }

    #[test]
    fn run_settings_are_written_once() {
        let (_d, c) = open();
        let first = RunSettings {
            permission_mode: Some("plan".into()),
            ..Default::default()
        };
        assert!(c.init_run_settings("s", &first).unwrap());
        let second = RunSettings {
            permission_mode: Some("allow-all".into()),
            ..Default::default()
        };
        assert!(!c.init_run_settings("s", &second).unwrap());
        assert_eq!(c.run_settings("s").unwrap(), Some(first));
        assert_eq!(c.run_settings("t").unwrap(), None);
    }

    #[test]
    fn pairing_issues_one_device_token() {
        let (_d, c) = open();
        let a = c.create_user("alice", false).unwrap();
        let ta = c
            .create_token(&a.id, None, "a", &["*".into()], false)
            .unwrap();
        let ia = c.identify(&ta).unwrap();
        let p = c.start_pairing("laptop", "10.0.0.1").unwrap();
        assert!(matches!(
            c.poll_pairing(&p.device_code),
            Err(ControlError::Pending(_))
        ));
        assert!(c.approve_pairing(&ia, "NOPE-NOPE").is_err());
        c.approve_pairing(&ia, &p.code.to_lowercase().replace('-', ""))
            .unwrap();
        let (device, token) = c.poll_pairing(&p.device_code).unwrap();
        assert!(c.poll_pairing(&p.device_code).is_err());
        let who = c.identify(&token).unwrap();
        assert_eq!(who.user, a.id);
        assert_eq!(who.device.as_deref(), Some(device.id.as_str()));
        c.revoke_device(&device.id, Some(&a.id)).unwrap();
        assert!(c.identify(&token).is_err());
    }

    #[test]
    fn leases_have_one_holder_and_move_by_handoff() {
        let (_d, c) = open();
        let l = c.acquire("s", "d1", 60_000).unwrap();
        assert_eq!((l.device.as_deref(), l.epoch), (Some("d1"), 1));
        assert!(c.acquire("s", "d2", 60_000).is_err());
        // Renewal keeps the epoch; a stale epoch is a lost lease.
        assert_eq!(c.acquire("s", "d1", 60_000).unwrap().epoch, 1);
        assert!(c.renew("s", "d1", 0, 60_000).is_err());
        // Handoff to the cloud: pending until the holder yields.
        let st = c
            .request_handoff("s", CLOUD_DEVICE, "d1", vec![], 60_000)
            .unwrap();
        assert!(matches!(st, HandoffState::Pending { .. }));
        assert!(c.request_handoff("s", "d2", "d2", vec![], 60_000).is_err());
        let expect = vec![ExpectedDoc {
            doc: "session/s".into(),
            sv: "AA==".into(),
        }];
        let l = c.release("s", "d1", 1, expect.clone(), 60_000).unwrap();
        assert_eq!(l.device.as_deref(), Some(CLOUD_DEVICE));
        assert_eq!(l.epoch, 2);
        assert_eq!(l.expect, expect);
        assert!(c.renew("s", "d1", 1, 60_000).is_err());
        assert_eq!(c.leases_of(CLOUD_DEVICE).unwrap().len(), 1);
        // Release without a pending target frees the session.
        let l = c.release("s", CLOUD_DEVICE, 2, vec![], 60_000).unwrap();
        assert_eq!(l.device, None);
        let st = c.request_handoff("s", "d2", "d2", vec![], 60_000).unwrap();
        assert!(matches!(st, HandoffState::Granted { .. }));
    }

    #[test]
    fn expired_holder_loses_a_pending_handoff() {
        let (_d, c) = open();
        c.acquire("s", "d1", 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Expired: the handoff is granted directly.
        let st = c
            .request_handoff("s", CLOUD_DEVICE, "x", vec![], 60_000)
            .unwrap();
        assert!(matches!(st, HandoffState::Granted { .. }));
        c.acquire("t", "d1", 30).unwrap();
        let st = c
            .request_handoff("t", CLOUD_DEVICE, "x", vec![], 60_000)
            .unwrap();
        assert!(matches!(st, HandoffState::Pending { .. }));
        assert!(c.complete_expired_handoffs(60_000).unwrap().is_empty());
        std::thread::sleep(std::time::Duration::from_millis(40));
        let moved = c.complete_expired_handoffs(60_000).unwrap();
        assert_eq!(moved[0].device.as_deref(), Some(CLOUD_DEVICE));
    }
}
