//! Secrets (sealed), configuration approvals and per-user rules in SQLite.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::error::Result;
use crate::store::{
    Approval, ApprovalRows, Approved, RuleAdded, SealedSecret, SecretListing, SecretRows,
    UserRuleRows,
};

impl SecretRows for SqliteStore {
    fn put_secret(
        &self,
        kind: &str,
        owner: &str,
        name: &str,
        sealed: &SealedSecret,
        updated_ms: i64,
        by: &str,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO secrets (scope, owner, name, nonce, ciphertext, updated_ms, updated_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (scope, owner, name) DO UPDATE SET nonce = ?4, ciphertext = ?5,
               updated_ms = ?6, updated_by = ?7",
            params![
                kind,
                owner,
                name,
                sealed.nonce,
                sealed.ciphertext,
                updated_ms,
                by
            ],
        )?;
        Ok(())
    }

    fn delete_secret(&self, kind: &str, owner: &str, name: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM secrets WHERE scope = ?1 AND owner = ?2 AND name = ?3",
            params![kind, owner, name],
        )? > 0)
    }

    fn list_secrets(&self, kind: &str, owner: &str) -> Result<Vec<SecretListing>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, updated_ms, updated_by FROM secrets WHERE scope = ?1 AND owner = ?2
             ORDER BY name",
        )?;
        let rows = stmt.query_map(params![kind, owner], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn secret(&self, kind: &str, owner: &str, name: &str) -> Result<Option<SealedSecret>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE scope = ?1 AND owner = ?2 AND name = ?3",
                params![kind, owner, name],
                |r| {
                    Ok(SealedSecret {
                        nonce: r.get(0)?,
                        ciphertext: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }
}

impl ApprovalRows for SqliteStore {
    fn mark_untrusted(&self, workspace: &str, reason: &str) -> Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO untrusted_workspaces (workspace, reason) VALUES (?1, ?2)",
            params![workspace, reason],
        )?;
        Ok(())
    }

    fn untrusted(&self, workspace: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM untrusted_workspaces WHERE workspace = ?1")?
            .query_row(params![workspace], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn approve(&self, a: &Approval) -> Result<Approved> {
        let conn = self.conn();
        // One statement decides: a workspace marked untrusted between a check and an insert
        // cannot slip an approval in, and of two approvals at once exactly one records.
        let n = conn.execute(
            "INSERT OR IGNORE INTO config_approvals
               (workspace, kind, path, hash, approved_by, approved_ms)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6
             WHERE NOT EXISTS (SELECT 1 FROM untrusted_workspaces WHERE workspace = ?1)",
            params![
                a.workspace,
                a.kind,
                a.path,
                a.hash,
                a.approved_by,
                a.approved_ms
            ],
        )?;
        if n > 0 {
            return Ok(Approved::New);
        }
        let untrusted = conn
            .prepare_cached("SELECT 1 FROM untrusted_workspaces WHERE workspace = ?1")?
            .query_row(params![a.workspace], |_| Ok(()))
            .optional()?
            .is_some();
        Ok(if untrusted {
            Approved::Untrusted
        } else {
            Approved::Already
        })
    }

    fn approval(
        &self,
        workspace: &str,
        kind: &str,
        path: &str,
        hash: &str,
    ) -> Result<Option<Approval>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT approved_by, approved_ms FROM config_approvals
                 WHERE workspace = ?1 AND kind = ?2 AND path = ?3 AND hash = ?4",
            )?
            .query_row(params![workspace, kind, path, hash], |r| {
                Ok(Approval {
                    workspace: workspace.to_owned(),
                    kind: kind.to_owned(),
                    path: path.to_owned(),
                    hash: hash.to_owned(),
                    approved_by: r.get(0)?,
                    approved_ms: r.get(1)?,
                })
            })
            .optional()?)
    }
}

impl UserRuleRows for SqliteStore {
    fn rules(&self, user: &str, workspace: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT rule FROM always_allow WHERE user = ?1 AND workspace = ?2 ORDER BY created_ms",
        )?;
        let rows = st.query_map(params![user, workspace], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn add_rule(
        &self,
        user: &str,
        workspace: &str,
        rule: &str,
        max: usize,
        now_ms: i64,
    ) -> Result<RuleAdded> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM always_allow WHERE user = ?1 AND workspace = ?2 AND rule = ?3",
                params![user, workspace, rule],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
            return Ok(RuleAdded::Already);
        }
        let n: i64 = tx.query_row(
            "SELECT COUNT(*) FROM always_allow WHERE user = ?1 AND workspace = ?2",
            params![user, workspace],
            |r| r.get(0),
        )?;
        if n.max(0) as usize >= max {
            return Ok(RuleAdded::Full);
        }
        tx.execute(
            "INSERT INTO always_allow (user, workspace, rule, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![user, workspace, rule, now_ms],
        )?;
        tx.commit()?;
        Ok(RuleAdded::New)
    }

    fn remove_rule(&self, user: &str, workspace: &str, rule: &str) -> Result<bool> {
        Ok(self.conn().execute(
            "DELETE FROM always_allow WHERE user = ?1 AND workspace = ?2 AND rule = ?3",
            params![user, workspace, rule],
        )? > 0)
    }

    fn memory(&self, user: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .prepare_cached("SELECT text FROM user_memory WHERE user = ?1")?
            .query_row(params![user], |r| r.get(0))
            .optional()?)
    }

    fn set_memory(&self, user: &str, text: &str, now_ms: i64) -> Result<()> {
        if text.is_empty() {
            self.conn()
                .execute("DELETE FROM user_memory WHERE user = ?1", params![user])?;
        } else {
            self.conn().execute(
                "INSERT INTO user_memory (user, text, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(user) DO UPDATE SET text = excluded.text, updated_ms = excluded.updated_ms",
                params![user, text, now_ms],
            )?;
        }
        Ok(())
    }
}
