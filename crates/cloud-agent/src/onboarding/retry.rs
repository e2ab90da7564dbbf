//! Retry of a failed turn, on request only. The cloud runner never runs a failed or stopped
//! session again by itself (also not after a restart: `runner::host_loop` waits for the
//! transcript to grow); a Retry adds one system notice saying who asked, which is that growth,
//! and the turn the failure ended is asked again from the transcript as it is (system messages
//! are never sent to the model).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jarvis_sync::doc::{Block, Message, Role, SessionDoc, SessionStatus};
use serde_json::{Value, json};

use crate::access::Action;
use crate::control::{CLOUD_DEVICE, HandoffState, now_ms};
use crate::http::{ApiError, ErrorCode};
use crate::onboarding::{Onboarding, Who};

/// `POST /api/sessions/{id}/retry`: runs the failed turn again in the cloud.
pub async fn retry(
    State(o): State<Onboarding>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    o.control.check_session_for(&who, &id, Action::Write)?;
    let by = who.user_name.clone();
    let author = who.device_id();
    let retried = o
        .hub
        .edit(&format!("session/{id}"), |doc| {
            let s = SessionDoc::new(doc.clone());
            if s.meta().status != SessionStatus::Failed {
                return Ok(false);
            }
            s.append_message(&Message {
                id: format!("s-retry-{:016x}", rand::random::<u64>()),
                role: Role::System,
                author,
                created_ms: now_ms(),
                blocks: vec![Block::Notice {
                    kind: "retry".into(),
                    text: format!("Retry asked by {by}."),
                }],
            })
            .map(|()| true)
        })
        .await?
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    if !retried {
        return Err(ApiError::new(
            ErrorCode::NotFailed,
            "Only a failed session can be retried; this one did not fail.",
        ));
    }
    o.control.audit(Some(&who), "session.retry", &id, "");
    // Whoever holds the session sees the notice; nobody: the cloud takes it.
    let lease = o.control.lease(&id)?;
    let mut runs_on = lease.device.clone().filter(|_| lease.live(now_ms()));
    if runs_on.is_none() {
        if let HandoffState::Granted { lease } = o
            .cloud
            .request_handoff(&who, &id, CLOUD_DEVICE, vec![], Duration::ZERO)
            .await?
        {
            runs_on = lease.device;
        }
    } else if runs_on.as_deref() == Some(CLOUD_DEVICE) {
        o.cloud.kick(&id);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"retried": true, "runner": runs_on})),
    ))
}
