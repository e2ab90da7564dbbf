//! Device tokens for the sync socket: created by an admin command, stored hashed (SHA-256),
//! scoped to document-name patterns, optionally read-only, revocable. Users, pairing and
//! per-workspace membership replace the patterns in a later stage; the [`Authorizer`] seam stays.
//!
//! Never: store or log a token in clear; the clear token is shown once, at creation.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use jarvis_sync::hub::{Access, Authorizer};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub struct TokenStore {
    conn: Mutex<Connection>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub label: String,
    pub scopes: Vec<String>,
    pub read_only: bool,
    pub revoked: bool,
    pub created_ms: i64,
}

/// A token's scope: an exact document name, or a prefix ending in `*` (`session/*`, `*`).
pub fn scope_matches(scope: &str, document: &str) -> bool {
    match scope.strip_suffix('*') {
        Some(prefix) => document.starts_with(prefix),
        None => scope == document,
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TokenStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening token database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tokens (
                id INTEGER PRIMARY KEY,
                hash TEXT NOT NULL UNIQUE,
                label TEXT NOT NULL,
                scopes TEXT NOT NULL,
                read_only INTEGER NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0,
                created_ms INTEGER NOT NULL
            );",
        )
        .context("creating the tokens table")?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a token and returns it in clear; this is the only time it is visible.
    pub fn create(&self, label: &str, scopes: &[String], read_only: bool) -> Result<String> {
        anyhow::ensure!(!scopes.is_empty(), "a token needs at least one scope");
        for s in scopes {
            anyhow::ensure!(
                !s.is_empty() && !s.contains('\n') && !s[..s.len() - 1].contains('*'),
                "invalid scope {s:?}: use an exact document name or a prefix ending in '*'"
            );
        }
        let token = format!("jt_{}", hex::encode(rand::random::<[u8; 24]>()));
        self.conn().execute(
            "INSERT INTO tokens (hash, label, scopes, read_only, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![hash(&token), label, scopes.join("\n"), read_only, now_ms()],
        )?;
        Ok(token)
    }

    pub fn list(&self) -> Result<Vec<TokenInfo>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, label, scopes, read_only, revoked, created_ms FROM tokens ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TokenInfo {
                id: r.get(0)?,
                label: r.get(1)?,
                scopes: r.get::<_, String>(2)?.lines().map(str::to_owned).collect(),
                read_only: r.get(3)?,
                revoked: r.get(4)?,
                created_ms: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))?)
    }

    /// Revokes a token; the next authorization with it fails (there is no cache to expire).
    pub fn revoke(&self, id: i64) -> Result<bool> {
        Ok(self
            .conn()
            .execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?
            > 0)
    }

    fn lookup(&self, token: &str) -> rusqlite::Result<Option<(String, bool, bool)>> {
        self.conn()
            .prepare_cached("SELECT scopes, read_only, revoked FROM tokens WHERE hash = ?1")?
            .query_row(params![hash(token)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
    }
}

impl Authorizer for TokenStore {
    fn authorize(&self, token: &str, document: &str) -> Result<Access, String> {
        if token.is_empty() {
            return Err("missing token".into());
        }
        let (scopes, read_only, revoked) = match self.lookup(token) {
            Ok(Some(row)) => row,
            Ok(None) => return Err("unknown token".into()),
            Err(e) => {
                tracing::error!(error = %e, "token lookup failed");
                return Err("token check unavailable".into());
            }
        };
        if revoked {
            return Err("token revoked".into());
        }
        if !scopes.lines().any(|s| scope_matches(s, document)) {
            return Err(format!("token has no access to {document}"));
        }
        Ok(if read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(&dir.path().join("t.db")).unwrap();
        let rw = store.create("a", &["session/*".into()], false).unwrap();
        let ro = store.create("b", &["ws/w1/index".into()], true).unwrap();
        assert_eq!(store.authorize(&rw, "session/x"), Ok(Access::ReadWrite));
        assert!(store.authorize(&rw, "ws/w1/index").is_err());
        assert_eq!(store.authorize(&ro, "ws/w1/index"), Ok(Access::ReadOnly));
        assert!(store.authorize(&ro, "ws/w1/index2").is_err());
        assert_eq!(
            store.authorize("", "session/x"),
            Err("missing token".into())
        );
        assert_eq!(
            store.authorize("jt_nope", "session/x"),
            Err("unknown token".into())
        );
        let id = store.list().unwrap()[0].id;
        assert!(store.revoke(id).unwrap());
        assert_eq!(
            store.authorize(&rw, "session/x"),
            Err("token revoked".into())
        );
        // Only hashes are stored.
        let raw: String = store
            .conn()
            .query_row("SELECT group_concat(hash) FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert!(!raw.contains(&rw[3..]));
    }

    #[test]
    fn bad_scopes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(&dir.path().join("t.db")).unwrap();
        assert!(store.create("x", &[], false).is_err());
        assert!(store.create("x", &["a*b".into()], false).is_err());
        assert!(store.create("x", &["".into()], false).is_err());
    }
}
