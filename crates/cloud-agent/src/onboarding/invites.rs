//! Invitations by link: a signed-in user makes a link (`/invite/<code>`) that signs one new
//! user up, with a role never above the inviter's: an admin account only from an admin, a
//! workspace role only from someone who manages that workspace (its owner, or an admin) and at
//! most their own role there. Single use (the row is claimed in one statement before the user
//! is made), expiring, stored as a hash. The inviter's rights are checked again when the link
//! is used: a link outlives nothing its maker lost.

use axum::Json;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Action, Role, Target};
use crate::control::{Identity, now_ms};
use crate::http::{ApiError, Body, ErrorCode, SmallBody};
use crate::limits::ClientAddr;
use crate::onboarding::{Onboarding, Who, db_error, sha256};

pub const DEFAULT_HOURS: u64 = 72;
pub const MAX_HOURS: u64 = 24 * 30;

#[derive(Deserialize)]
pub struct NewInvite {
    /// The new user is an admin (only an admin may invite one).
    #[serde(default)]
    pub admin: bool,
    /// A workspace the new user joins, with `role` (viewer, editor or owner).
    pub workspace: Option<String>,
    pub role: Option<String>,
    pub hours: Option<u64>,
}

struct Invite {
    created_by: String,
    admin: bool,
    workspace: Option<String>,
    role: Option<String>,
    expires_ms: u64,
}

fn not_valid() -> ApiError {
    ApiError::new(
        ErrorCode::InviteNotValid,
        "This invitation link is not valid: it was used already, it expired, or it is \
         incomplete. Ask for a new one.",
    )
}

fn code_hash(code: &str) -> String {
    hex::encode(sha256(code.trim()))
}

/// What `who` may hand out in `workspace`: their role there (admin powers count as owner).
fn inviter_role(o: &Onboarding, who: &Identity, workspace: &str) -> Result<Role, ApiError> {
    let role = o
        .control
        .check_workspace_for(who, workspace, Action::Manage)
        .map_err(|e| match e {
            crate::control::ControlError::Forbidden(m) => ApiError::new(
                ErrorCode::Forbidden,
                format!("only the workspace's owner can invite to it: {m}"),
            ),
            other => other.into(),
        })?;
    Ok(role.unwrap_or(Role::Owner))
}

fn parse_role(r: &str) -> Result<Role, ApiError> {
    Role::parse(r).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("role {r:?}: viewer, editor or owner"),
        )
    })
}

fn rank(r: Role) -> u8 {
    match r {
        Role::Viewer => 0,
        Role::Editor => 1,
        Role::Owner => 2,
    }
}

/// Checks that `who` may give what the invitation gives.
fn authorize(o: &Onboarding, who: &Identity, inv: &Invite) -> Result<(), ApiError> {
    who.may(Target::Account, Action::Write)?;
    if inv.admin || inv.workspace.is_none() {
        // An account of the server without a workspace, or an admin: the server's admins.
        who.may(Target::Server, Action::Manage).map_err(|_| {
            ApiError::new(
                ErrorCode::Forbidden,
                if inv.admin {
                    "only an admin can invite an admin"
                } else {
                    "only an admin can invite without a workspace: pick one of yours"
                },
            )
        })?;
    }
    if let Some(ws) = &inv.workspace {
        let mine = inviter_role(o, who, ws)?;
        let given = parse_role(inv.role.as_deref().unwrap_or("viewer"))?;
        if rank(given) > rank(mine) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "you are {} of {ws:?} and cannot give the {} role",
                    mine.as_str(),
                    given.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// `POST /api/invites`: `{admin?, workspace?, role?, hours?}` → `{code, path, expires_ms}`; the
/// code is shown once.
pub async fn create(
    State(o): State<Onboarding>,
    Who(who): Who,
    Body(b): Body<NewInvite>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let hours = b.hours.unwrap_or(DEFAULT_HOURS).clamp(1, MAX_HOURS);
    let inv = Invite {
        created_by: who.user.clone(),
        admin: b.admin,
        workspace: b.workspace.clone().filter(|w| !w.is_empty()),
        role: b
            .workspace
            .as_ref()
            .map(|_| b.role.clone().unwrap_or_else(|| "viewer".into())),
        expires_ms: now_ms() + hours * 3_600_000,
    };
    authorize(&o, &who, &inv)?;
    let role = inv.role.as_deref().map(parse_role).transpose()?;
    let code = format!("ji_{}", hex::encode(rand::random::<[u8; 16]>()));
    o.db()
        .execute(
            "INSERT INTO invites (code_hash, created_by, admin, workspace, role, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                code_hash(&code),
                inv.created_by,
                inv.admin,
                inv.workspace,
                role.map(Role::as_str),
                now_ms() as i64,
                inv.expires_ms as i64
            ],
        )
        .map_err(db_error)?;
    o.control.audit(
        Some(&who),
        "invite.create",
        inv.workspace.as_deref().unwrap_or("-"),
        &format!(
            "admin={} role={}",
            inv.admin,
            role.map(Role::as_str).unwrap_or("-")
        ),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "code": code,
            "path": format!("/invite/{code}"),
            "expires_ms": inv.expires_ms,
            "admin": inv.admin,
            "workspace": inv.workspace,
            "role": role.map(Role::as_str),
        })),
    ))
}

fn load(o: &Onboarding, code: &str) -> Result<Invite, ApiError> {
    let row = o
        .db()
        .query_row(
            "SELECT created_by, admin, workspace, role, expires_ms FROM invites
             WHERE code_hash = ?1 AND used_by IS NULL",
            params![code_hash(code)],
            |r| {
                Ok(Invite {
                    created_by: r.get(0)?,
                    admin: r.get(1)?,
                    workspace: r.get(2)?,
                    role: r.get(3)?,
                    expires_ms: r.get::<_, i64>(4)? as u64,
                })
            },
        )
        .optional()
        .map_err(db_error)?;
    row.filter(|i| i.expires_ms > now_ms())
        .ok_or_else(not_valid)
}

/// `GET /api/invites/{code}` (anyone with the link): what it gives and who made it.
pub async fn show(
    State(o): State<Onboarding>,
    ClientAddr(addr): ClientAddr,
    Path(code): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let _slot = o.anonymous.admit(&addr)?;
    let inv = load(&o, &code)?;
    let by = o
        .control
        .user_by_name(&inv.created_by)?
        .map(|u| u.name)
        .unwrap_or_default();
    Ok(Json(json!({
        "invited_by": by,
        "admin": inv.admin,
        "workspace": inv.workspace,
        "role": inv.role,
        "expires_ms": inv.expires_ms,
    })))
}

#[derive(Deserialize)]
struct Accept {
    name: String,
}

/// `POST /api/invites/{code}/accept` `{name}`: signs the new user up → `{user, token}`.
pub async fn accept(
    State(o): State<Onboarding>,
    ClientAddr(addr): ClientAddr,
    Path(code): Path<String>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let _slot = o.anonymous.admit(&addr)?;
    let Body(b) = SmallBody::<Accept>::from_request(req, &()).await?;
    let inv = load(&o, &code)?;
    // The inviter's rights as they are now.
    let inviter = o
        .control
        .user_by_name(&inv.created_by)?
        .ok_or_else(not_valid)?;
    let acting = Identity::acting_for(&inviter, "invite");
    authorize(&o, &acting, &inv).map_err(|_| {
        ApiError::new(
            ErrorCode::InviteNotValid,
            "The person who invited you can no longer give this access. Ask them for a new link.",
        )
    })?;
    let name = b.name.trim().to_owned();
    if o.control.user_by_name(&name)?.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("the name {name:?} is taken: pick another"),
        ));
    }
    // Claimed before anything is made: two uses of one link race here and one loses.
    let claimed = o
        .db()
        .execute(
            "UPDATE invites SET used_by = ?2, used_ms = ?3
             WHERE code_hash = ?1 AND used_by IS NULL AND expires_ms > ?3",
            params![code_hash(&code), format!("pending:{name}"), now_ms() as i64],
        )
        .map_err(db_error)?;
    if claimed != 1 {
        return Err(not_valid());
    }
    let made = (|| -> Result<_, ApiError> {
        let user = o.control.create_user(&name, inv.admin)?;
        if let (Some(ws), Some(role)) = (&inv.workspace, &inv.role) {
            o.control.set_member(&acting, ws, &user.id, Some(role))?;
        }
        let token =
            o.control
                .create_token(&user.id, None, "browser (invitation)", &["*".into()], false)?;
        Ok((user, token))
    })();
    let (user, token) = match made {
        Ok(v) => v,
        Err(e) => {
            // Nothing was given: the link works again.
            if let Err(db) = o.db().execute(
                "UPDATE invites SET used_by = NULL, used_ms = NULL WHERE code_hash = ?1",
                params![code_hash(&code)],
            ) {
                tracing::error!(error = %db, "releasing an invitation after a failed sign-up");
            }
            return Err(e);
        }
    };
    o.db()
        .execute(
            "UPDATE invites SET used_by = ?2 WHERE code_hash = ?1",
            params![code_hash(&code), user.id],
        )
        .map_err(db_error)?;
    let who = o.control.identify(&token)?;
    o.control.audit(
        Some(&who),
        "invite.accept",
        &user.id,
        &format!("invited by {}", inv.created_by),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user, "token": token})),
    ))
}
