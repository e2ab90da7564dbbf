//! Sessions: list, create, read, change, send a message, interrupt, answer an approval, and the
//! authoritative run settings. Creating goes through the sessions service
//! (`crate::sessions::Sessions::start`), as webhooks and background agents do.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jarvis_agent::runner::Runner as AgentRunner;
use jarvis_sync::doc::{Decision, SessionDoc};
use jarvis_wire::api::{
    AnswerApproval, ApprovalAnswered, Interrupted, MessageSent, NewSession, SendMessage,
    SessionList, SessionUpdate, SessionUpdated,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::control::{CLOUD_DEVICE, HandoffState, now_ms};
use crate::http::{ApiError, ApiResult, Body, Caller, ErrorCode};
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route(
            "/api/sessions/changes",
            get(crate::api::changes::session_changes),
        )
        .route("/api/sessions/{id}", get(get_session).patch(update_session))
        .route("/api/sessions/{id}/settings", get(get_settings))
        .route("/api/sessions/{id}/messages", post(send_message))
        .route("/api/sessions/{id}/interrupt", post(interrupt))
        .route("/api/sessions/{id}/approvals/{approval}", post(answer))
}

#[derive(Deserialize)]
struct SessionFilter {
    workspace: Option<String>,
}

async fn list_sessions(
    State(api): State<Services>,
    Caller(who): Caller,
    Query(f): Query<SessionFilter>,
) -> ApiResult<Json<SessionList>> {
    let rows = api.control.sessions(&who, f.workspace.as_deref())?;
    let mut sessions = Vec::with_capacity(rows.len());
    for row in rows {
        sessions.push(api.sessions.summary(&row).await?);
    }
    Ok(Json(SessionList { sessions }))
}

async fn create_session(
    State(api): State<Services>,
    Caller(who): Caller,
    Body(b): Body<NewSession, { 1024 * 1024 }>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (row, state) = api.sessions.start(&who, b).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session": row, "handoff": state})),
    ))
}

/// `GET /api/sessions/{id}/settings`: the authoritative run settings, which a device that takes
/// the session runs with (never the document's display copy).
async fn get_settings(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    api.control.check_session(&who, &id)?;
    Ok(Json(json!(
        api.control.run_settings(&id)?.unwrap_or_default()
    )))
}

async fn get_session(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let row = api.control.check_session(&who, &id)?;
    let (meta, pending, messages, cut, sandbox) = api
        .hub
        .read(&format!("session/{id}"), |doc| {
            let s = SessionDoc::new(doc.clone());
            (
                s.meta(),
                s.pending_approvals().len(),
                s.messages(),
                s.cut_messages(),
                s.setting("sandbox"),
            )
        })
        .await?;
    let lease = api.control.lease(&id)?;
    let mut summary = json!(crate::sessions::summary(&row, &meta, pending, &lease));
    summary["messages"] = json!(messages);
    // How the cloud runs this session's commands (set by the runner), for the UI to show.
    summary["sandbox"] = json!(sandbox);
    summary["cut_messages"] = json!(cut);
    Ok(Json(summary))
}

async fn send_message(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): Body<SendMessage, { 1024 * 1024 }>,
) -> ApiResult<(StatusCode, Json<MessageSent>)> {
    api.control.check_session_for(&who, &id, Action::Write)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::invalid("the message is empty"));
    }
    let author = who.device_id();
    let message_id = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            AgentRunner::send_user_message(&SessionDoc::new(doc.clone()), &author, &b.text)
        })
        .await?;
    api.control.audit(Some(&who), "session.message", &id, "");
    // Nobody runs it: the cloud takes it (a device that holds the lease picks the message up
    // from the document itself).
    let lease = api.control.lease(&id)?;
    let mut runs_on = lease.device.clone().filter(|_| lease.live(now_ms()));
    if runs_on.is_none() {
        if let HandoffState::Granted { lease } = api
            .cloud
            .request_handoff(&who, &id, CLOUD_DEVICE, vec![], Duration::ZERO)
            .await?
        {
            runs_on = lease.device;
        }
    } else if runs_on.as_deref() == Some(CLOUD_DEVICE) {
        api.cloud.kick(&id);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(MessageSent {
            message: message_id,
            runner: runs_on,
        }),
    ))
}

/// Changes a session's model or permission mode from any device; the runner applies them
/// before its next model request (`Runner::apply_session_changes`).
async fn update_session(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): Body<SessionUpdate>,
) -> ApiResult<Json<SessionUpdated>> {
    api.control.check_session_for(&who, &id, Action::Write)?;
    crate::sessions::check_mode(b.permission_mode.as_deref())?;
    if let Some(m) = &b.model
        && (m.is_empty()
            || m.len() > 200
            || !m
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._:@/-".contains(&c)))
    {
        return Err(ApiError::invalid(format!("invalid model id {m:?}")));
    }
    if b.permission_mode.as_deref() == Some("allow-all")
        && let Some(why) = api.cloud.sandbox().refusal()
    {
        // The server's containment conflicts with the mode asked for.
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("allow-all sessions cannot run in the cloud on this server: {why}"),
        ));
    }
    // The control plane is the authority runners read; the document gets a display copy.
    api.control
        .update_run_settings(&id, b.permission_mode.as_deref(), b.model.as_deref())?;
    let (model, mode) = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            let s = SessionDoc::new(doc.clone());
            if let Some(m) = &b.model {
                s.set_model(m);
            }
            if let Some(m) = &b.permission_mode {
                s.set_setting("permission_mode", m);
            }
            (s.meta().model, s.setting("permission_mode"))
        })
        .await?;
    api.control.audit(Some(&who), "session.update", &id, &model);
    Ok(Json(SessionUpdated {
        model,
        permission_mode: mode,
    }))
}

async fn interrupt(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Interrupted>> {
    api.control.check_session_for(&who, &id, Action::Write)?;
    let by = who.device_id();
    let n = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            SessionDoc::new(doc.clone()).request_interrupt(&by)
        })
        .await?;
    api.control.audit(Some(&who), "session.interrupt", &id, "");
    Ok(Json(Interrupted { interrupt: n }))
}

async fn answer(
    State(api): State<Services>,
    Caller(who): Caller,
    Path((id, approval)): Path<(String, String)>,
    Body(b): Body<AnswerApproval>,
) -> ApiResult<Json<ApprovalAnswered>> {
    let row = api.control.check_session_for(&who, &id, Action::Write)?;
    let decision = Decision::parse(&b.decision)
        .ok_or_else(|| ApiError::invalid("decision must be allow, deny or always_allow"))?;
    let by = who.device_id();
    let result = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            SessionDoc::new(doc.clone()).answer_approval(&approval, decision, &by, now_ms())
        })
        .await?;
    match result {
        Ok(()) => {}
        // The first answer won; the state moved on.
        Err(e @ jarvis_sync::doc::DocError::AlreadyAnswered { .. }) => {
            return Err(ApiError::new(ErrorCode::Conflict, e.to_string()));
        }
        Err(e) => return Err(ApiError::new(ErrorCode::NotFound, e.to_string())),
    }
    if decision == Decision::AlwaysAllow {
        // Kept on the hub for whoever answered (this authenticated caller), never in a synced
        // file; every later run of theirs in this workspace, here or on a device, loads it.
        let entry = api
            .hub
            .read(&format!("session/{id}"), |doc| {
                crate::user_rules::answer_entry(&SessionDoc::new(doc.clone()), &approval, b.prefix)
            })
            .await?;
        if let Some(entry) = entry {
            api.user_rules.add(&who.user, &row.workspace, &entry)?;
        }
    }
    api.control.audit(
        Some(&who),
        "session.approval",
        &id,
        &format!("{approval} {}", decision.as_str()),
    );
    Ok(Json(ApprovalAnswered {
        approval,
        decision: decision.as_str().to_owned(),
    }))
}
