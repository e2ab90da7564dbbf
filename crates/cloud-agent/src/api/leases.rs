//! Where a session runs: Continue in cloud / Continue here (`handoff`) and the device lease
//! operations (acquire, renew, release with the state left behind).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_sync::handoff::ExpectedDoc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::control::{CLOUD_DEVICE, HandoffState};
use crate::http::{ApiError, ApiResult, Caller, LargeBody};
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/api/sessions/{id}/handoff", post(handoff))
        .route("/api/sessions/{id}/lease", get(get_lease).post(lease_op))
}

#[derive(Deserialize)]
struct Handoff {
    /// "cloud", "here" (the calling device) or a device id.
    to: String,
    /// The state the caller has (when it takes a free lease with changes of its own).
    #[serde(default)]
    expect: Vec<ExpectedDoc>,
    /// How long to wait for the holder to yield, in milliseconds (default 30 s, max 120 s).
    wait_ms: Option<u64>,
}

async fn handoff(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
    crate::http::Body(b): LargeBody<Handoff>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    api.control.check_session_for(&who, &id, Action::Write)?;
    let to = match b.to.as_str() {
        "here" => who.device_id(),
        "cloud" => CLOUD_DEVICE.to_owned(),
        other => {
            // Only to one of the caller's own devices (or any, for an admin).
            let devices = api
                .control
                .devices((!who.admin).then_some(who.user.as_str()))?;
            if !devices.iter().any(|d| d.id == other && !d.revoked) {
                return Err(ApiError::invalid(format!(
                    "unknown target {other:?}: use cloud, here, or one of your device ids"
                )));
            }
            other.to_owned()
        }
    };
    let wait = Duration::from_millis(b.wait_ms.unwrap_or(30_000).min(120_000));
    let state = api
        .cloud
        .request_handoff(&who, &id, &to, b.expect, wait)
        .await?;
    let status = match state {
        HandoffState::Granted { .. } => StatusCode::OK,
        HandoffState::Pending { .. } => StatusCode::ACCEPTED,
    };
    Ok((status, Json(json!(state))))
}

async fn get_lease(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    api.control.check_session(&who, &id)?;
    Ok(Json(json!(api.control.lease(&id)?)))
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum LeaseOp {
    Acquire,
    Renew {
        epoch: u64,
    },
    Release {
        epoch: u64,
        #[serde(default)]
        expect: Vec<ExpectedDoc>,
    },
}

async fn lease_op(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
    crate::http::Body(op): LargeBody<LeaseOp>,
) -> ApiResult {
    api.control.check_session_for(&who, &id, Action::Write)?;
    let lease = match op {
        LeaseOp::Acquire => api.cloud.device_acquire(&who, &id).await?,
        LeaseOp::Renew { epoch } => api.cloud.device_renew(&who, &id, epoch)?,
        LeaseOp::Release { epoch, expect } => {
            api.cloud.device_release(&who, &id, epoch, expect).await?
        }
    };
    Ok(Json(json!(lease)))
}
