//! Users, tokens, pairings and devices in SQLite.

use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::error::{ControlError, Result};
use crate::model::{Device, TokenInfo, User};
use crate::store::{Identities, NewPairing, NewToken, PairingRow, TokenRow};

fn scopes(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn user(r: &rusqlite::Row) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        admin: r.get(2)?,
        created_ms: r.get(3)?,
    })
}

impl Identities for SqliteStore {
    fn token_count(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("SELECT count(*) FROM tokens", [], |r| r.get(0))?)
    }

    fn insert_user(&self, u: &User) -> Result<()> {
        let r = self.conn().execute(
            "INSERT INTO users (id, name, admin, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![u.id, u.name, u.admin, u.created_ms],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(ControlError::Conflict(format!(
                    "a user named {:?} exists",
                    u.name
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, admin, created_ms FROM users WHERE name = ?1 OR id = ?1",
                params![name],
                user,
            )
            .optional()?)
    }

    fn users(&self) -> Result<Vec<User>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, name, admin, created_ms FROM users ORDER BY created_ms")?;
        let rows = stmt.query_map([], user)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert_token(&self, t: &NewToken) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO tokens (hash, label, scopes, read_only, created_ms, user_id, device_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.hash,
                t.label,
                t.scopes.join("\n"),
                t.read_only,
                t.created_ms,
                t.user,
                t.device
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
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
                scopes: scopes(&r.get::<_, String>(4)?),
                read_only: r.get(5)?,
                revoked: r.get(6)?,
                created_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_token(&self, id: i64, owner: Option<&str>) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE tokens SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
            params![id, owner],
        )? > 0)
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT t.id, t.user_id, u.name, u.admin, t.device_id, t.read_only, t.revoked,
                        t.scopes, d.revoked, u.created_ms
                 FROM tokens t JOIN users u ON u.id = t.user_id
                 LEFT JOIN devices d ON d.id = t.device_id
                 WHERE t.hash = ?1",
            )?
            .query_row(params![hash], |r| {
                Ok(TokenRow {
                    id: r.get(0)?,
                    user: User {
                        id: r.get(1)?,
                        name: r.get(2)?,
                        admin: r.get(3)?,
                        created_ms: r.get(9)?,
                    },
                    device: r.get(4)?,
                    read_only: r.get(5)?,
                    revoked: r.get(6)?,
                    scopes: scopes(&r.get::<_, String>(7)?),
                    device_revoked: r.get(8)?,
                })
            })
            .optional()?)
    }

    fn insert_pairing(&self, p: &NewPairing, now_ms: i64, max_pending: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM pairings WHERE expires_ms < ?1",
            params![now_ms],
        )?;
        let pending: i64 = tx.query_row(
            "SELECT count(*) FROM pairings WHERE origin = ?1 AND approved_user IS NULL",
            params![p.origin],
            |r| r.get(0),
        )?;
        if pending >= max_pending {
            return Err(ControlError::Conflict(
                "too many pairings in progress from this address; finish or let one expire".into(),
            ));
        }
        tx.execute(
            "INSERT INTO pairings (code, device_code_hash, name, expires_ms, origin)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.code, p.device_code_hash, p.name, p.expires_ms, p.origin],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn pairing_by_code(&self, code: &str) -> Result<Option<(String, i64, Option<String>)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, expires_ms, approved_user FROM pairings WHERE code = ?1",
                params![code],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    fn approve_pairing(
        &self,
        code: &str,
        user: &str,
        scopes: &[String],
        read_only: bool,
    ) -> Result<bool> {
        Ok(self.conn().execute(
            "UPDATE pairings SET approved_user = ?1, scopes = ?3, read_only = ?4
             WHERE code = ?2 AND approved_user IS NULL",
            params![user, code, scopes.join("\n"), read_only],
        )? > 0)
    }

    fn pairing_by_device_code(&self, device_code_hash: &str) -> Result<Option<PairingRow>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT code, name, expires_ms, approved_user, issued, scopes, read_only
                 FROM pairings WHERE device_code_hash = ?1",
                params![device_code_hash],
                |r| {
                    Ok(PairingRow {
                        code: r.get(0)?,
                        name: r.get(1)?,
                        expires_ms: r.get(2)?,
                        approved_user: r.get(3)?,
                        issued: r.get(4)?,
                        scopes: r.get::<_, Option<String>>(5)?.map(|s| scopes(&s)),
                        read_only: r.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    fn issue_pairing(&self, code: &str, d: &Device) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Marked issued first: a racing second poll finds it so and gets nothing.
        let n = tx.execute(
            "UPDATE pairings SET issued = 1 WHERE code = ?1 AND issued = 0",
            params![code],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO devices (id, user_id, name, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![d.id, d.user, d.name, d.created_ms],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn devices(&self, user: Option<&str>) -> Result<Vec<Device>> {
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

    fn revoke_device(&self, id: &str, owner: Option<&str>) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE devices SET revoked = 1 WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)",
            params![id, owner],
        )?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "UPDATE tokens SET revoked = 1 WHERE device_id = ?1",
            params![id],
        )?;
        tx.commit()?;
        Ok(true)
    }
}
