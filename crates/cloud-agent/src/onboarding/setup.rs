//! The owner account, created in the browser with the setup code the first start printed.
//!
//! The code lives in memory only (a restart prints a new one while the owner is still to be
//! created), is compared in constant time against its hash, expires, is single use, and is
//! burnt after [`MAX_FAILURES`] wrong guesses in total (on top of the per-address limit every
//! anonymous endpoint has), so guessing it online is hopeless: 31^8 codes, 10 tries.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequest, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::http::{ApiError, Body, ErrorCode, SmallBody};
use crate::limits::ClientAddr;
use crate::onboarding::{Onboarding, db_error, random_code, sha256};
use rusqlite::OptionalExtension;

/// Wrong codes accepted in total before the code is burnt.
pub const MAX_FAILURES: u32 = 10;

pub struct SetupCode {
    hash: [u8; 32],
    expires: Instant,
    failures: u32,
}

/// Upper case, without the separators a person may type or not.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Onboarding {
    /// Whether the owner account is still to be created.
    pub fn setup_pending(&self) -> Result<bool, ApiError> {
        let v: Option<String> = self
            .db()
            .query_row(
                "SELECT value FROM onboarding_state WHERE key = 'owner'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_error)?;
        Ok(v.as_deref() == Some("pending"))
    }

    /// Makes a new code (replacing any), returns it for printing (`XXXX-XXXX`).
    pub fn new_setup_code(&self) -> String {
        let raw = random_code(8);
        let shown = format!("{}-{}", &raw[..4], &raw[4..]);
        *self.inner.setup.lock().unwrap_or_else(|p| p.into_inner()) = Some(SetupCode {
            hash: sha256(&raw),
            expires: Instant::now()
                + Duration::from_secs(self.inner.args.setup_code_ttl_secs.max(1)),
            failures: 0,
        });
        shown
    }

    /// Checks `code` and, if it is right, runs `create` while holding the code; the code is
    /// spent only when `create` succeeds (a taken user name does not burn it).
    fn redeem<T>(
        &self,
        code: &str,
        create: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let gone = || {
            ApiError::new(
                ErrorCode::SetupCodeExpired,
                "This setup code is no longer valid. Restart the server (scripts/run.sh) to \
                 print a new one.",
            )
        };
        let mut slot = self.inner.setup.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = slot.as_mut() else {
            return Err(gone());
        };
        if Instant::now() > current.expires {
            *slot = None;
            return Err(gone());
        }
        let right: bool = sha256(&normalise(code)).ct_eq(&current.hash).into();
        if !right {
            current.failures += 1;
            if current.failures >= MAX_FAILURES {
                *slot = None;
                tracing::warn!("too many wrong setup codes: the code is burnt until a restart");
            }
            return Err(ApiError::new(
                ErrorCode::WrongSetupCode,
                "That setup code is not right. It is printed where the server was started \
                 (the line \"first start: open …\").",
            ));
        }
        let out = create()?;
        *slot = None;
        Ok(out)
    }
}

/// `GET /api/setup`: whether this server still needs its owner (the sign-in screen asks).
pub async fn status(State(o): State<Onboarding>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"needed": o.setup_pending()?})))
}

#[derive(Deserialize)]
struct NewOwner {
    code: String,
    name: String,
}

/// `POST /api/setup` `{code, name}`: creates the owner (an admin user) and its first token.
pub async fn create_owner(
    State(o): State<Onboarding>,
    ClientAddr(addr): ClientAddr,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let _slot = o.anonymous.admit(&addr)?;
    let Body(b) = SmallBody::<NewOwner>::from_request(req, &()).await?;
    if !o.setup_pending()? {
        return Err(ApiError::new(
            ErrorCode::AlreadySetUp,
            "This server already has its owner. Sign in with your token, or ask the owner for \
             an invitation link.",
        ));
    }
    let name = b.name.trim().to_owned();
    let (user, token) = o.redeem(&b.code, || {
        let user = o.control.create_user(&name, true)?;
        let token = o.control.create_token(
            &user.id,
            None,
            "browser (owner setup)",
            &["*".into()],
            false,
        )?;
        Ok((user, token))
    })?;
    o.db()
        .execute(
            "UPDATE onboarding_state SET value = 'done' WHERE key = 'owner'",
            [],
        )
        .map_err(db_error)?;
    let who = o.control.identify(&token)?;
    o.control
        .audit(Some(&who), "setup.owner", &user.id, &user.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user, "token": token})),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_compared_without_separators_or_case() {
        assert_eq!(normalise("abcd-efgh"), "ABCDEFGH");
        assert_eq!(normalise(" AB CD\tEF-GH "), "ABCDEFGH");
        let c = random_code(8);
        assert_eq!(c.len(), 8);
        assert!(c.chars().all(|ch| !"01OIL".contains(ch)), "{c}");
    }
}
