//! The secret store: named values in three scopes — the server (the team: e.g. a provider key
//! an admin sets), a user, a workspace — kept in the hub database's `secrets` table, each
//! value encrypted (ChaCha20-Poly1305, the scope and name bound as associated data so a row
//! cannot be moved to another scope) with a key that never enters the database: the
//! `JARVIS_SECRET_KEY` environment variable (64 hex digits), else `<data>/secret.key`, created
//! with mode 0600 at first start.
//!
//! Through the API a secret is write-only: set, list names, delete — a value never leaves
//! except into a sandboxed process, and only when the workspace's `.jarvis/environment.toml`
//! names it (`secrets = ["NAME"]`): a workspace secret of that workspace, or a user secret of
//! the session's owner when that user owns the workspace (so a workspace someone else controls
//! cannot pull a member's secrets into files it can read). Server secrets are for the server's
//! own use and never reach a sandbox. Every set and delete is audited, without the value.
//!
//! Never: return, log or audit a value; decrypt outside [`SecretStore::for_run`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{Api, ApiError, Body, Caller};
use crate::control::{Identity, now_ms};

/// Where the workspace's configuration names the secrets its processes get.
pub const ENVIRONMENT_FILE: &str = ".jarvis/environment.toml";

const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("no secret {0}")]
    NotFound(String),
    #[error("the secret store: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("a stored secret cannot be decrypted with this server's key")]
    Decrypt,
}

/// Which owner a secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Server,
    User(String),
    Workspace(String),
}

impl Scope {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Scope::Server => ("server", ""),
            Scope::User(u) => ("user", u),
            Scope::Workspace(w) => ("workspace", w),
        }
    }

    /// For the audit log: `workspace/<id>/NAME`.
    fn target(&self, name: &str) -> String {
        match self.parts() {
            (kind, "") => format!("{kind}/{name}"),
            (kind, owner) => format!("{kind}/{owner}/{name}"),
        }
    }
}

/// A secret as listed: everything but its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub scope: &'static str,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// (name, value) pairs for a process environment.
pub type Env = Vec<(String, String)>;

pub struct SecretStore {
    conn: Mutex<Connection>,
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretStore")
    }
}

/// Names a process environment can take, without the ones that change how programs run.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        return Err(SecretError::Invalid(format!(
            "secret name {name:?}: use A-Z, 0-9 and _, starting with a letter or _"
        )));
    }
    const RESERVED: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "TERM",
        "TMPDIR",
        "PWD",
        "SHELL",
        "IFS",
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "JARVIS_CGROUPS",
    ];
    if RESERVED.contains(&name) || name.starts_with("LD_") || name.starts_with("BASH_FUNC") {
        return Err(SecretError::Invalid(format!(
            "secret name {name:?} is reserved: it changes how programs run"
        )));
    }
    Ok(())
}

/// The key: `JARVIS_SECRET_KEY` when given, else the key file (made at first start).
fn load_key(data_dir: &Path, from_env: Option<&str>) -> anyhow::Result<[u8; 32]> {
    use anyhow::Context;
    let parse = |hex_text: &str, source: &str| -> anyhow::Result<[u8; 32]> {
        let bytes = hex::decode(hex_text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("{source} must be 64 hex digits (32 bytes)"))?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes);
        Ok(key)
    };
    if let Some(k) = from_env.filter(|k| !k.is_empty()) {
        return parse(k, "JARVIS_SECRET_KEY");
    }
    let path = data_dir.join("secret.key");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut f) => {
            let key: [u8; 32] = rand::random();
            f.write_all(hex::encode(key).as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "created the secret store's key");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(&path)?;
            if meta.permissions().mode() & 0o077 != 0 {
                anyhow::bail!(
                    "{} is readable by other users (mode {:o}); chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            parse(&text, &path.display().to_string())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

impl SecretStore {
    /// Opens the store in the hub database `db`, with the key from `key_env` or the data dir.
    pub fn open(db: &Path, data_dir: &Path, key_env: Option<&str>) -> anyhow::Result<Arc<Self>> {
        use anyhow::Context;
        let key = load_key(data_dir, key_env)?;
        let conn = Connection::open(db)
            .with_context(|| format!("opening {} for secrets", db.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS secrets (
                scope TEXT NOT NULL,
                owner TEXT NOT NULL,
                name TEXT NOT NULL,
                nonce BLOB NOT NULL,
                ciphertext BLOB NOT NULL,
                updated_ms INTEGER NOT NULL,
                updated_by TEXT NOT NULL,
                PRIMARY KEY (scope, owner, name)
            );",
        )?;
        Ok(Arc::new(SecretStore {
            conn: Mutex::new(conn),
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn aad(scope: &Scope, name: &str) -> Vec<u8> {
        let (kind, owner) = scope.parts();
        format!("jarvis-secret\0{kind}\0{owner}\0{name}").into_bytes()
    }

    pub fn set(&self, scope: &Scope, name: &str, value: &str, by: &str) -> Result<(), SecretError> {
        check_name(name)?;
        if value.len() > MAX_VALUE_BYTES || value.contains('\0') {
            return Err(SecretError::Invalid(format!(
                "a secret value is at most {MAX_VALUE_BYTES} bytes, without NUL"
            )));
        }
        let nonce: [u8; 12] = rand::random();
        let aad = Self::aad(scope, name);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Invalid("encryption failed".into()))?;
        let (kind, owner) = scope.parts();
        self.conn().execute(
            "INSERT INTO secrets (scope, owner, name, nonce, ciphertext, updated_ms, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (scope, owner, name) DO UPDATE SET nonce = ?4, ciphertext = ?5,
               updated_ms = ?6, updated_by = ?7",
            params![kind, owner, name, &nonce[..], sealed, now_ms() as i64, by],
        )?;
        Ok(())
    }

    pub fn delete(&self, scope: &Scope, name: &str) -> Result<(), SecretError> {
        let (kind, owner) = scope.parts();
        let n = self.conn().execute(
            "DELETE FROM secrets WHERE scope = ?1 AND owner = ?2 AND name = ?3",
            params![kind, owner, name],
        )?;
        if n == 0 {
            return Err(SecretError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    pub fn list(&self, scope: &Scope) -> Result<Vec<SecretInfo>, SecretError> {
        let (kind, owner) = scope.parts();
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, updated_ms, updated_by FROM secrets WHERE scope = ?1 AND owner = ?2
             ORDER BY name",
        )?;
        let rows = stmt.query_map(params![kind, owner], |r| {
            Ok(SecretInfo {
                name: r.get(0)?,
                scope: kind,
                updated_ms: r.get(1)?,
                updated_by: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn get(&self, scope: &Scope, name: &str) -> Result<Option<String>, SecretError> {
        let (kind, owner) = scope.parts();
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE scope = ?1 AND owner = ?2 AND name = ?3",
                params![kind, owner, name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((nonce, sealed)) = row else {
            return Ok(None);
        };
        if nonce.len() != 12 {
            return Err(SecretError::Decrypt);
        }
        let aad = Self::aad(scope, name);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Decrypt)?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| SecretError::Decrypt)
    }

    /// The environment one run of `workspace` (a session owned by `session_owner`) gets: each
    /// name in `names` from the workspace's scope, else from the owner's user scope when the
    /// owner also owns the workspace. A named secret that is not available is reported
    /// (by name) in the second list, never guessed from another scope.
    pub fn for_run(
        &self,
        session_owner: &str,
        workspace: &str,
        workspace_owner: Option<&str>,
        names: &[String],
    ) -> Result<(Env, Vec<String>), SecretError> {
        let mut env = Vec::new();
        let mut missing = Vec::new();
        let user_allowed = workspace_owner == Some(session_owner);
        for name in names {
            if check_name(name).is_err() {
                missing.push(name.clone());
                continue;
            }
            let mut value = self.get(&Scope::Workspace(workspace.to_owned()), name)?;
            if value.is_none() && user_allowed {
                value = self.get(&Scope::User(session_owner.to_owned()), name)?;
            }
            match value {
                Some(v) => env.push((name.clone(), v)),
                None => missing.push(name.clone()),
            }
        }
        Ok((env, missing))
    }

    /// The owner of a workspace, from the control plane's table in the same database.
    pub fn workspace_owner(&self, workspace: &str) -> Result<Option<String>, SecretError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT owner FROM workspaces WHERE id = ?1",
                params![workspace],
                |r| r.get(0),
            )
            .optional()?)
    }
}

/// The secret names `.jarvis/environment.toml` of a workspace folder asks for (none when the
/// file is missing; an error when it is malformed).
///
/// The file is written by sandboxed commands, which can make it a symlink to a file of the
/// data dir (the workspace has the same path inside the sandbox as on the host): it is opened
/// without following a final symlink, its real path must lie inside the workspace, and an
/// error never quotes its content.
pub fn requested_names(workspace_root: &Path) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Environment {
        #[serde(default)]
        secrets: Vec<String>,
    }
    let Some(text) = read_environment_file(workspace_root)? else {
        return Ok(Vec::new());
    };
    toml::from_str::<Environment>(&text)
        .map(|e| e.secrets)
        .map_err(|e| format!("{ENVIRONMENT_FILE}: {}", e.message()))
}

/// The text of `.jarvis/environment.toml` (None when missing), opened as
/// [`requested_names`] explains: never through a symlink, never outside the workspace.
pub fn read_environment_file(workspace_root: &Path) -> Result<Option<String>, String> {
    read_workspace_file(workspace_root, ENVIRONMENT_FILE)
}

/// A configuration file of a workspace folder (`rel`, e.g. `.devcontainer/devcontainer.json`),
/// opened as [`requested_names`] explains.
pub fn read_workspace_file(workspace_root: &Path, rel: &str) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let refuse = |why: &str| Err(format!("{rel}: {why}"));
    let root = workspace_root
        .canonicalize()
        .map_err(|e| format!("the workspace folder: {e}"))?;
    let path = root.join(rel);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return refuse("is a symlink"),
        Err(e) => return refuse(&e.to_string()),
    };
    // Where the opened file really is (a folder on the way may have been a symlink).
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("{rel}: {e}"))?;
    if !real.starts_with(&root) || !file.metadata().is_ok_and(|m| m.is_file()) {
        return refuse("is not a file inside the workspace");
    }
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|_| format!("{rel}: not UTF-8 text"))?;
    Ok(Some(text))
}

// ---- HTTP routes (thin: authorize, call the store, audit) -----------------------------------

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/secrets/server", get(list_server))
        .route(
            "/api/secrets/server/{name}",
            put(set_server).delete(delete_server),
        )
        .route("/api/secrets/user", get(list_user))
        .route(
            "/api/secrets/user/{name}",
            put(set_user).delete(delete_user),
        )
        .route("/api/workspaces/{id}/secrets", get(list_workspace))
        .route(
            "/api/workspaces/{id}/secrets/{name}",
            put(set_workspace).delete(delete_workspace),
        )
        .with_state(api)
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        match &e {
            SecretError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            SecretError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            SecretError::Db(_) | SecretError::Decrypt => {
                tracing::error!(error = %e, "secret store");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the secret store failed",
                )
            }
        }
    }
}

/// Who may change a scope: admins the server's, a user their own, a workspace's owner its.
/// (Kept in one function so the unified authorization rule can replace it.)
/// Who may list or change the secrets of a scope, by the one authorization rule
/// (`access::decide`): server secrets need admin powers; a user's own secrets any of their
/// tokens may list, but only a full-scope writable one may change (a token narrowed to one
/// session must not swap the credentials every run of the user uses); workspace secrets are
/// listed by members who may read the workspace and changed by its owners.
fn authorize(api: &Api, who: &Identity, scope: &Scope, write: bool) -> Result<(), ApiError> {
    use crate::access::{Action, Target};
    let action = if write { Action::Manage } else { Action::Read };
    match scope {
        Scope::Server => who.may(Target::Server, action)?,
        Scope::User(u) => {
            if *u != who.user {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "not your secrets",
                ));
            }
            who.may(Target::Account, action)?;
            if write && !who.scopes.iter().any(|s| s == "*") {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "changing your secrets needs a full-scope token",
                ));
            }
        }
        Scope::Workspace(id) => {
            api.control.check_workspace_for(who, id, action)?;
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct SetSecret {
    value: String,
}

type Reply = Result<Json<Value>, ApiError>;

fn list(api: &Api, who: &Identity, scope: Scope) -> Reply {
    authorize(api, who, &scope, false)?;
    Ok(Json(json!({"secrets": api.secrets.list(&scope)?})))
}

fn set(api: &Api, who: &Identity, scope: Scope, name: &str, value: &str) -> Reply {
    authorize(api, who, &scope, true)?;
    api.secrets.set(&scope, name, value, &who.user)?;
    api.control
        .audit(Some(who), "secret.set", &scope.target(name), "");
    Ok(Json(
        json!({"name": name, "scope": scope.parts().0, "set": true}),
    ))
}

fn delete(api: &Api, who: &Identity, scope: Scope, name: &str) -> Reply {
    authorize(api, who, &scope, true)?;
    // Deleting is idempotent: a secret that is already gone is the outcome asked for.
    let deleted = match api.secrets.delete(&scope, name) {
        Ok(()) => true,
        Err(SecretError::NotFound(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if deleted {
        api.control
            .audit(Some(who), "secret.delete", &scope.target(name), "");
    }
    Ok(Json(
        json!({"name": name, "scope": scope.parts().0, "deleted": deleted}),
    ))
}

async fn list_server(State(api): State<Api>, Caller(who): Caller) -> Reply {
    list(&api, &who, Scope::Server)
}

async fn set_server(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
    Body(b): Body<SetSecret>,
) -> Reply {
    set(&api, &who, Scope::Server, &name, &b.value)
}

async fn delete_server(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
) -> Reply {
    delete(&api, &who, Scope::Server, &name)
}

async fn list_user(State(api): State<Api>, Caller(who): Caller) -> Reply {
    let scope = Scope::User(who.user.clone());
    list(&api, &who, scope)
}

async fn set_user(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
    Body(b): Body<SetSecret>,
) -> Reply {
    let scope = Scope::User(who.user.clone());
    set(&api, &who, scope, &name, &b.value)
}

async fn delete_user(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(name): UrlPath<String>,
) -> Reply {
    let scope = Scope::User(who.user.clone());
    delete(&api, &who, scope, &name)
}

async fn list_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Reply {
    list(&api, &who, Scope::Workspace(id))
}

async fn set_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<SetSecret>,
) -> Reply {
    set(&api, &who, Scope::Workspace(id), &name, &b.value)
}

async fn delete_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Reply {
    delete(&api, &who, Scope::Workspace(id), &name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Arc<SecretStore> {
        let db = dir.join("hub.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS workspaces (id TEXT PRIMARY KEY, name TEXT, owner TEXT, created_ms INTEGER);
             INSERT OR IGNORE INTO workspaces VALUES ('alices', 'a', 'alice', 0), ('bobs', 'b', 'bob', 0);",
        )
        .unwrap();
        SecretStore::open(&db, dir, None).unwrap()
    }

    #[test]
    fn values_are_encrypted_bound_to_their_scope_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let key = dir.path().join("secret.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let value = "sk-test-7f3a9c1e5b2d";
        s.set(
            &Scope::Workspace("alices".into()),
            "API_TOKEN",
            value,
            "alice",
        )
        .unwrap();
        s.set(
            &Scope::User("alice".into()),
            "GH_TOKEN",
            "gh-value-1",
            "alice",
        )
        .unwrap();
        let listed =
            serde_json::to_string(&s.list(&Scope::Workspace("alices".into())).unwrap()).unwrap();
        assert!(
            listed.contains("API_TOKEN") && !listed.contains(value),
            "{listed}"
        );
        // Nowhere in the database file in clear.
        let raw = std::fs::read(dir.path().join("hub.db")).unwrap();
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains(value) && !hay.contains("gh-value-1"));
        // A row moved to another scope does not decrypt.
        s.conn()
            .execute(
                "UPDATE secrets SET owner = 'bobs' WHERE name = 'API_TOKEN'",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.get(&Scope::Workspace("bobs".into()), "API_TOKEN"),
            Err(SecretError::Decrypt)
        ));
        s.conn()
            .execute(
                "UPDATE secrets SET owner = 'alices' WHERE name = 'API_TOKEN'",
                [],
            )
            .unwrap();
        // Reopened with the same key file: readable; with another key: not.
        drop(s);
        let s = store(dir.path());
        assert_eq!(
            s.get(&Scope::Workspace("alices".into()), "API_TOKEN")
                .unwrap()
                .as_deref(),
            Some(value)
        );
        let other = SecretStore::open(
            &dir.path().join("hub.db"),
            dir.path(),
            Some(&"ab".repeat(32)),
        )
        .unwrap();
        assert!(matches!(
            other.get(&Scope::Workspace("alices".into()), "API_TOKEN"),
            Err(SecretError::Decrypt)
        ));
    }

    #[test]
    fn a_run_gets_only_what_its_workspace_names_and_may_have() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.set(&Scope::Workspace("alices".into()), "WS", "ws-v", "alice")
            .unwrap();
        s.set(&Scope::User("alice".into()), "MINE", "alice-v", "alice")
            .unwrap();
        s.set(&Scope::User("bob".into()), "MINE", "bob-v", "bob")
            .unwrap();
        s.set(&Scope::Server, "SERVER", "server-v", "admin")
            .unwrap();
        let names: Vec<String> = ["WS", "MINE", "SERVER", "NOPE"].map(String::from).to_vec();
        let owner = s.workspace_owner("alices").unwrap();
        let (env, missing) = s
            .for_run("alice", "alices", owner.as_deref(), &names)
            .unwrap();
        assert_eq!(
            env,
            vec![
                ("WS".into(), "ws-v".into()),
                ("MINE".into(), "alice-v".into())
            ]
        );
        assert_eq!(missing, vec!["SERVER".to_owned(), "NOPE".to_owned()]);
        // Bob running in Alice's workspace: the workspace's secret, none of his or hers.
        let (env, _) = s
            .for_run("bob", "alices", owner.as_deref(), &names)
            .unwrap();
        assert_eq!(env, vec![("WS".into(), "ws-v".into())]);
        // Only the workspace's own secrets, never another workspace's.
        let (env, _) = s
            .for_run(
                "bob",
                "bobs",
                s.workspace_owner("bobs").unwrap().as_deref(),
                &["WS".into()],
            )
            .unwrap();
        assert!(env.is_empty());
    }

    #[test]
    fn names_and_config() {
        for bad in ["", "lower", "1X", "PATH", "LD_PRELOAD", "A-B", "BASH_ENV"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("GITHUB_TOKEN").unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(requested_names(dir.path()).unwrap().is_empty());
        std::fs::create_dir_all(dir.path().join(".jarvis")).unwrap();
        std::fs::write(
            dir.path().join(ENVIRONMENT_FILE),
            "secrets = [\"A\", \"B\"]\n",
        )
        .unwrap();
        assert_eq!(requested_names(dir.path()).unwrap(), ["A", "B"]);
        std::fs::write(dir.path().join(ENVIRONMENT_FILE), "secrets = 3").unwrap();
        assert!(requested_names(dir.path()).is_err());
        // A symlink to a file outside (the key, the hub database) is refused without quoting it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("secret.key"),
            "secrets = [\"K\"]\nkey-material-42",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join(ENVIRONMENT_FILE)).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.key"),
            dir.path().join(ENVIRONMENT_FILE),
        )
        .unwrap();
        let e = requested_names(dir.path()).unwrap_err();
        assert!(e.contains("symlink") && !e.contains("key-material"), "{e}");
        // So is a symlinked folder on the way.
        std::fs::remove_file(dir.path().join(ENVIRONMENT_FILE)).unwrap();
        std::fs::remove_dir(dir.path().join(".jarvis")).unwrap();
        std::fs::write(outside.path().join("environment.toml"), "secrets = [\"K\"]").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(".jarvis")).unwrap();
        let e = requested_names(dir.path()).unwrap_err();
        assert!(e.contains("not a file inside the workspace"), "{e}");
    }
}
