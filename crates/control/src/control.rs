//! [`Control`]: the control plane as the HTTP layer, the sync socket and the cloud runner call
//! it. It holds the checks (the one rule, [`crate::access::decide`], applied to what the store
//! answers), hashes tokens and writes the audit log; the rows live behind
//! [`crate::store::ControlStore`]. This file: opening, audit, users, tokens, pairing and
//! devices; `workspaces.rs` and `leases.rs` add the rest.
//!
//! Never: store or log a token in clear; the clear token is returned once, at creation.

use std::path::Path;
use std::sync::Arc;

use crate::access::{self, Action, Target};
use crate::error::{ControlError, Result};
use crate::model::{
    AuditEntry, Device, Identity, Pairing, Quotas, TokenInfo, User, hash, now_ms, random_hex,
    system_identity,
};
use crate::store::{ControlStore, NewPairing, NewToken};

const PAIRING_TTL_MS: u64 = 10 * 60 * 1000;
/// Unapproved pairings one address may have open at once.
pub const MAX_PAIRINGS_PER_ORIGIN: i64 = 8;
/// Unambiguous letters and digits for codes read off one screen and typed on another.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

pub struct Control {
    pub(crate) store: Arc<dyn ControlStore>,
    pub quotas: Quotas,
    /// Held in memory only: the cloud runner's own sync token, valid until the process ends.
    system_token_hash: String,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl Control {
    /// Opens (and migrates) the hub database's control tables; returns the control plane and
    /// the in-process system token for the cloud runner's own connection.
    pub fn open(path: &Path) -> anyhow::Result<(Self, String)> {
        let store = crate::sqlite::SqliteStore::open(path)?;
        Ok(Control::with_store(Arc::new(store)))
    }

    /// The control plane over any store (the seam for a second database).
    pub fn with_store(store: Arc<dyn ControlStore>) -> (Self, String) {
        let system = format!("jt_sys_{}", random_hex(24));
        (
            Control {
                store,
                quotas: Quotas::default(),
                system_token_hash: hash(&system),
            },
            system,
        )
    }

    /// The store, for the parts kept beside the control plane in the same database (secrets,
    /// approvals, user rules).
    pub fn store(&self) -> Arc<dyn ControlStore> {
        self.store.clone()
    }

    // ---- audit ------------------------------------------------------------------------------

    /// Appends to the audit log. A failed write is logged, not returned: the change it
    /// records has happened already.
    pub fn audit(&self, who: Option<&Identity>, action: &str, target: &str, detail: &str) {
        let entry = AuditEntry {
            id: 0,
            ts_ms: now_ms() as i64,
            user: who.map(|i| i.user.clone()),
            device: who.map(|i| i.device_id()),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: detail.to_owned(),
        };
        if let Err(e) = self.store.append(&entry) {
            tracing::error!(error = %e, action, target, "writing the audit log failed");
        }
    }

    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        self.store.recent(limit)
    }

    // ---- users and tokens -------------------------------------------------------------------

    pub fn token_count(&self) -> Result<i64> {
        self.store.token_count()
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
        self.store.insert_user(&user)?;
        Ok(user)
    }

    pub fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.store.user_by_name(name)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.store.users()
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
        self.store.insert_token(&NewToken {
            hash: &hash(&token),
            user,
            device,
            label,
            scopes,
            read_only,
            created_ms: now_ms() as i64,
        })?;
        Ok(token)
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>> {
        self.store.tokens(user)
    }

    /// Revokes a token; `owner` limits it to that user's tokens (None: admin).
    pub fn revoke_token(&self, id: i64, owner: Option<&str>) -> Result<()> {
        if !self.store.revoke_token(id, owner)? {
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
        within_caller(who, &t)?;
        self.revoke_token(id, Some(&who.user))
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
        match self.store.token_by_hash(&h)? {
            None => Err(ControlError::Unauthorized("unknown token".into())),
            Some(t) if t.revoked => Err(ControlError::Unauthorized("token revoked".into())),
            Some(t) if t.device_revoked == Some(true) => {
                Err(ControlError::Unauthorized("device revoked".into()))
            }
            Some(t) => Ok(Identity::new(
                t.id,
                &t.user,
                t.device,
                t.scopes,
                t.read_only,
            )),
        }
    }

    // ---- pairing and devices ----------------------------------------------------------------

    /// A device asks to be paired: it shows `code` to its person and polls with `device_code`.
    /// `origin` is the caller's address; pending pairings are capped per address, never with
    /// one count for everyone (one client filling a global table would lock every other
    /// device out of pairing).
    pub fn start_pairing(&self, name: &str, origin: &str) -> Result<Pairing> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(ControlError::Invalid(
                "a device name is 1 to 64 printable characters".into(),
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
        let now = now_ms();
        self.store.insert_pairing(
            &NewPairing {
                code: &code,
                device_code_hash: &hash(&device_code),
                name,
                expires_ms: (now + PAIRING_TTL_MS) as i64,
                origin,
            },
            now as i64,
            MAX_PAIRINGS_PER_ORIGIN,
        )?;
        Ok(Pairing {
            code,
            device_code,
            expires_in: PAIRING_TTL_MS / 1000,
            interval: 1,
        })
    }

    /// A signed-in person approves a code: the device becomes theirs, with the approver's
    /// scopes and read-only flag (approving never hands out more than the approving token has).
    pub fn approve_pairing(&self, who: &Identity, code: &str) -> Result<String> {
        who.may(Target::Account, Action::Write)?;
        let code = code.trim().to_ascii_uppercase();
        let code = if code.len() == 8 && !code.contains('-') {
            format!("{}-{}", &code[..4], &code[4..])
        } else {
            code
        };
        let already = || ControlError::Conflict("this code was already approved".into());
        match self.store.pairing_by_code(&code)? {
            None => Err(ControlError::NotFound("no such pairing code".into())),
            Some((_, exp, _)) if exp < now_ms() as i64 => Err(ControlError::NotFound(
                "the pairing code has expired".into(),
            )),
            Some((_, _, Some(_))) => Err(already()),
            Some((name, _, None)) => {
                if !self
                    .store
                    .approve_pairing(&code, &who.user, &who.scopes, who.read_only)?
                {
                    return Err(already());
                }
                Ok(name)
            }
        }
    }

    /// The device polls; once approved it gets its device id and token, exactly once.
    pub fn poll_pairing(&self, device_code: &str) -> Result<(Device, String)> {
        let completed = || ControlError::Conflict("this pairing was already completed".into());
        let p = self
            .store
            .pairing_by_device_code(&hash(device_code))?
            .ok_or_else(|| ControlError::NotFound("unknown device code".into()))?;
        if p.issued {
            return Err(completed());
        }
        let Some(user) = p.approved_user else {
            if p.expires_ms < now_ms() as i64 {
                return Err(ControlError::NotFound("the pairing has expired".into()));
            }
            return Err(ControlError::Pending(
                "waiting for the code to be approved".into(),
            ));
        };
        // Approved before grants were recorded: nothing to pass on.
        let Some(scopes) = p.scopes.filter(|s| !s.is_empty()) else {
            return Err(ControlError::NotFound(
                "this pairing was approved by an older server; start it again".into(),
            ));
        };
        let device = Device {
            id: format!("d-{}", random_hex(8)),
            user: user.clone(),
            name: p.name.clone(),
            created_ms: now_ms() as i64,
            revoked: false,
        };
        if !self.store.issue_pairing(&p.code, &device)? {
            return Err(completed());
        }
        let token = self.create_token(
            &user,
            Some(&device.id),
            &format!("device {}", p.name),
            &scopes,
            p.read_only,
        )?;
        Ok((device, token))
    }

    pub fn devices(&self, user: Option<&str>) -> Result<Vec<Device>> {
        self.store.devices(user)
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
            within_caller(who, t)?;
        }
        self.revoke_device(id, Some(&who.user))
    }

    /// Revokes a device and every token issued to it.
    pub fn revoke_device(&self, id: &str, owner: Option<&str>) -> Result<()> {
        if !self.store.revoke_device(id, owner)? {
            return Err(ControlError::NotFound(format!("no device {id}")));
        }
        Ok(())
    }
}

fn within_caller(who: &Identity, t: &TokenInfo) -> Result<()> {
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
