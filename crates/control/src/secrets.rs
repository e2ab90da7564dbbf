//! The secret store: named values in three scopes — the server (the team: e.g. a provider key
//! an admin sets), a user, a workspace — kept in the hub database's `secrets` table (through
//! [`crate::store::SecretRows`]), each value encrypted (ChaCha20-Poly1305, the scope and name bound as
//! associated data so a row cannot be moved to another scope) with a key that never enters the
//! database: the `JARVIS_SECRET_KEY` environment variable (64 hex digits), else
//! `<data>/secret.key`, created with mode 0600 at first start.
//!
//! Who may list or change which scope is the one rule ([`crate::access::decide`], with
//! [`crate::access::Target::OwnSecrets`] for a user's own); the HTTP routes live in the cloud
//! agent. A value leaves only into a sandboxed process, through [`SecretStore::for_run`].
//!
//! Never: return, log or audit a value; decrypt outside [`SecretStore::for_run`].

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::Serialize;

use crate::model::now_ms;
use crate::store::{ControlStore, SealedSecret};

const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Invalid(String),
    #[error("no secret {0}")]
    NotFound(String),
    #[error("the secret store: {0}")]
    Store(#[from] crate::ControlError),
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
    /// (kind, owner) as stored.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Scope::Server => ("server", ""),
            Scope::User(u) => ("user", u),
            Scope::Workspace(w) => ("workspace", w),
        }
    }

    /// For the audit log: `workspace/<id>/NAME`.
    pub fn target(&self, name: &str) -> String {
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
    rows: Arc<dyn ControlStore>,
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
    /// The store over `rows` (the control plane's store), with the key from `key_env` or the
    /// data dir.
    pub fn open(
        rows: Arc<dyn ControlStore>,
        data_dir: &Path,
        key_env: Option<&str>,
    ) -> anyhow::Result<Arc<Self>> {
        let key = load_key(data_dir, key_env)?;
        Ok(Arc::new(SecretStore {
            rows,
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }))
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
        let ciphertext = self
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
        let sealed = SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
        };
        self.rows
            .put_secret(kind, owner, name, &sealed, now_ms() as i64, by)?;
        Ok(())
    }

    pub fn delete(&self, scope: &Scope, name: &str) -> Result<(), SecretError> {
        let (kind, owner) = scope.parts();
        if !self.rows.delete_secret(kind, owner, name)? {
            return Err(SecretError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    pub fn list(&self, scope: &Scope) -> Result<Vec<SecretInfo>, SecretError> {
        let (kind, owner) = scope.parts();
        Ok(self
            .rows
            .list_secrets(kind, owner)?
            .into_iter()
            .map(|(name, updated_ms, updated_by)| SecretInfo {
                name,
                scope: kind,
                updated_ms,
                updated_by,
            })
            .collect())
    }

    pub fn get(&self, scope: &Scope, name: &str) -> Result<Option<String>, SecretError> {
        let (kind, owner) = scope.parts();
        let Some(sealed) = self.rows.secret(kind, owner, name)? else {
            return Ok(None);
        };
        if sealed.nonce.len() != 12 {
            return Err(SecretError::Decrypt);
        }
        let aad = Self::aad(scope, name);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
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
    /// owner also owns the workspace (so a workspace someone else controls cannot pull a
    /// member's secrets into files it can read). A named secret that is not available is
    /// reported (by name) in the second list, never guessed from another scope. Server
    /// secrets never reach a run.
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

    /// The owner of a workspace (whose user secrets its runs may get).
    pub fn workspace_owner(&self, workspace: &str) -> Result<Option<String>, SecretError> {
        Ok(self.rows.workspace_owner(workspace)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sqlite::SqliteStore;

    fn store(dir: &Path) -> Arc<SecretStore> {
        let rows = Arc::new(SqliteStore::open(&dir.join("hub.db")).unwrap());
        SecretStore::open(rows, dir, None).unwrap()
    }

    fn raw(dir: &Path) -> rusqlite::Connection {
        rusqlite::Connection::open(dir.join("hub.db")).unwrap()
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
        // Nowhere in the database file (or its write-ahead log) in clear.
        for f in ["hub.db", "hub.db-wal"] {
            let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
            let hay = String::from_utf8_lossy(&bytes);
            assert!(!hay.contains(value) && !hay.contains("gh-value-1"), "{f}");
        }
        // A row moved to another scope does not decrypt.
        raw(dir.path())
            .execute(
                "UPDATE secrets SET owner = 'bobs' WHERE name = 'API_TOKEN'",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.get(&Scope::Workspace("bobs".into()), "API_TOKEN"),
            Err(SecretError::Decrypt)
        ));
        raw(dir.path())
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
        let rows = Arc::new(SqliteStore::open(&dir.path().join("hub.db")).unwrap());
        let other = SecretStore::open(rows, dir.path(), Some(&"ab".repeat(32))).unwrap();
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
        let (env, missing) = s.for_run("alice", "alices", Some("alice"), &names).unwrap();
        assert_eq!(
            env,
            vec![
                ("WS".into(), "ws-v".into()),
                ("MINE".into(), "alice-v".into())
            ]
        );
        assert_eq!(missing, vec!["SERVER".to_owned(), "NOPE".to_owned()]);
        // Bob running in Alice's workspace: the workspace's secret, none of his or hers.
        let (env, _) = s.for_run("bob", "alices", Some("alice"), &names).unwrap();
        assert_eq!(env, vec![("WS".into(), "ws-v".into())]);
        // Only the workspace's own secrets, never another workspace's.
        let (env, _) = s
            .for_run("bob", "bobs", Some("bob"), &["WS".into()])
            .unwrap();
        assert!(env.is_empty());
    }

    #[test]
    fn names_that_change_how_programs_run_are_refused() {
        for bad in ["", "lower", "1X", "PATH", "LD_PRELOAD", "A-B", "BASH_ENV"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("GITHUB_TOKEN").unwrap();
    }
}
