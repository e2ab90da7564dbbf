//! Pairing a device: it starts (anonymous, within its address's budget), a signed-in person
//! approves the code it shows, it polls for its token.

use axum::extract::{FromRequest, State};
use axum::routing::post;
use axum::{Json, Router};
use jarvis_wire::api::{PairApprove, PairApproved, PairPoll, PairStart};
use serde_json::json;

use crate::http::{ApiResult, Body, Caller, SmallBody};
use crate::limits::ClientAddr;
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/api/pair/start", post(pair_start))
        .route("/api/pair/poll", post(pair_poll))
        .route("/api/pair/approve", post(pair_approve))
}

async fn pair_start(
    State(api): State<Services>,
    ClientAddr(addr): ClientAddr,
    req: axum::extract::Request,
) -> ApiResult {
    // Anonymous: this address's budget, never a shared one (one client must not lock
    // everyone out of pairing).
    let _slot = api.anonymous.admit(&addr)?;
    let Body(b) = SmallBody::<PairStart>::from_request(req, &()).await?;
    let p = api.control.start_pairing(&b.name, &addr)?;
    api.control.audit(
        None,
        "pair.start",
        &p.code,
        &format!("device name {:?}", b.name),
    );
    Ok(Json(json!(p)))
}

async fn pair_poll(
    State(api): State<Services>,
    ClientAddr(addr): ClientAddr,
    req: axum::extract::Request,
) -> ApiResult {
    let _slot = api.anonymous.admit(&addr)?;
    let Body(b) = SmallBody::<PairPoll>::from_request(req, &()).await?;
    let (device, token) = api.control.poll_pairing(&b.device_code)?;
    api.control
        .audit(None, "pair.complete", &device.id, &device.name);
    Ok(Json(json!({"device": device, "token": token})))
}

async fn pair_approve(
    State(api): State<Services>,
    Caller(who): Caller,
    Body(b): Body<PairApprove>,
) -> ApiResult<Json<PairApproved>> {
    let name = api.control.approve_pairing(&who, &b.code)?;
    api.control
        .audit(Some(&who), "pair.approve", &b.code, &name);
    Ok(Json(PairApproved {
        approved: true,
        device_name: name,
    }))
}
