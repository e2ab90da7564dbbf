//! The caller, the server, users, tokens and devices.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use jarvis_wire::api::{DeviceRevoked, Me, NewUser, TokenRevoked};
use serde_json::{Value, json};

use crate::access::{Action, Target};
use crate::control::Identity;
use crate::http::{ApiError, ApiResult, Body, Caller};
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/server", get(server_info))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/tokens", get(list_tokens))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{id}", delete(revoke_device))
}

pub fn require_admin(who: &Identity) -> Result<(), ApiError> {
    Ok(who.may(Target::Server, Action::Manage)?)
}

async fn me(Caller(who): Caller) -> ApiResult<Json<Me>> {
    Ok(Json(Me {
        device: who.device_id(),
        can: crate::access::describe(&who.grant()),
        user: who.user,
        name: who.user_name,
        admin: who.admin,
        admin_user: who.admin_user,
        scopes: who.scopes,
        read_only: who.read_only,
    }))
}

/// What this server offers and how it contains commands (for the UI's warning).
async fn server_info(State(api): State<Services>, Caller(_who): Caller) -> ApiResult {
    let sandbox = api.cloud.sandbox();
    Ok(Json(json!({"sandbox": {
        "confined": sandbox.confines(),
        "refusing": sandbox.refusal().is_some(),
        "description": sandbox.describe(),
    }})))
}

async fn list_users(State(api): State<Services>, Caller(who): Caller) -> ApiResult {
    require_admin(&who)?;
    Ok(Json(json!({"users": api.control.users()?})))
}

async fn create_user(
    State(api): State<Services>,
    Caller(who): Caller,
    Body(b): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&who)?;
    let user = api.control.create_user(&b.name, b.admin)?;
    let token = api
        .control
        .create_token(&user.id, None, "first token", &["*".into()], false)?;
    api.control
        .audit(Some(&who), "user.create", &user.id, &user.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user, "token": token})),
    ))
}

async fn list_tokens(State(api): State<Services>, Caller(who): Caller) -> ApiResult {
    who.may(Target::Account, Action::Read)?;
    let scope = (!who.admin).then_some(who.user.as_str());
    Ok(Json(json!({"tokens": api.control.tokens(scope)?})))
}

async fn revoke_token(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<i64>,
) -> ApiResult<Json<TokenRevoked>> {
    api.control.revoke_token_as(&who, id)?;
    let closed = api.hub.revalidate();
    api.control
        .audit(Some(&who), "token.revoke", &id.to_string(), "");
    Ok(Json(TokenRevoked {
        revoked: id,
        sockets_closed: closed,
    }))
}

async fn list_devices(State(api): State<Services>, Caller(who): Caller) -> ApiResult {
    let scope = (!who.admin).then_some(who.user.as_str());
    Ok(Json(json!({"devices": api.control.devices(scope)?})))
}

async fn revoke_device(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeviceRevoked>> {
    api.control.revoke_device_as(&who, &id)?;
    let closed = api.hub.revalidate();
    api.control.audit(Some(&who), "device.revoke", &id, "");
    Ok(Json(DeviceRevoked {
        revoked: id,
        sockets_closed: closed,
    }))
}
