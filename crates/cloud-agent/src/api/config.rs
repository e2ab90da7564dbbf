//! Configuration that runs code (background agents, settings, commands) waits for an owner's
//! approval of its exact content: list what needs it, approve a hash. The store is
//! `crate::approvals::Approvals`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::approvals::{KINDS, claude_config, kind_of};
use crate::control::ControlError;
use crate::http::{ApiError, Body, Caller};
use crate::services::Services as Api;

/// `GET /api/workspaces/{id}/config`: every configuration file that needs approval, with its
/// current hash and whether that content is approved.
pub async fn list(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let untrusted = api.approvals.untrusted(&id)?;
    let mut out = Vec::new();
    for d in crate::agents::load_hashed(&api.hub, &id).await {
        let approval = match &d.hash {
            Some(h) => api.approvals.approval(&id, "agent", &d.path, h)?,
            None => None,
        };
        out.push(json!({
            "kind": "agent", "path": d.path, "name": d.name, "hash": d.hash,
            "approved": approval.is_some() && !untrusted, "approval": approval,
            "error": d.def.as_ref().err().map(ToString::to_string),
        }));
    }
    for (path, kind, hash) in claude_config(&api.hub, &id).await {
        let approval = api.approvals.approval(&id, kind, &path, &hash)?;
        out.push(json!({
            "kind": kind, "path": path, "hash": hash,
            "approved": approval.is_some() && !untrusted, "approval": approval,
        }));
    }
    Ok(Json(
        json!({"workspace": id, "untrusted": untrusted, "config": out}),
    ))
}

#[derive(Deserialize)]
pub struct Approve {
    pub kind: String,
    pub path: String,
    /// The content hash the owner looked at; it must be the file's current content.
    pub hash: String,
}

/// `POST /api/workspaces/{id}/config/approve`: an owner approves the current content of one
/// configuration file.
pub async fn approve(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<Approve>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Manage)?;
    if !KINDS.contains(&b.kind.as_str()) {
        return Err(ApiError::new(
            crate::http::ErrorCode::InvalidRequest,
            format!("kind {:?}: use one of {KINDS:?}", b.kind),
        ));
    }
    if kind_of(&b.path) != Some(b.kind.as_str()) {
        return Err(ApiError::new(
            crate::http::ErrorCode::InvalidRequest,
            format!(
                "{:?} is not a configuration file of kind {:?}",
                b.path, b.kind
            ),
        ));
    }
    let current_hash = if b.kind == "agent" {
        crate::agents::load_hashed(&api.hub, &id)
            .await
            .into_iter()
            .find(|d| d.path == b.path)
            .map(|d| d.hash)
    } else {
        claude_config(&api.hub, &id)
            .await
            .into_iter()
            .find(|(p, _, _)| *p == b.path)
            .map(|(_, _, h)| Some(h))
    }
    .ok_or_else(|| ControlError::NotFound(format!("no {} at {:?}", b.kind, b.path)))?;
    if current_hash.as_deref() != Some(b.hash.as_str()) {
        return Err(ApiError::new(
            crate::http::ErrorCode::Conflict,
            "the file changed since that hash; look at it again and approve the new content",
        ));
    }
    // Audited once: of two owners approving the same content at once, one records it.
    if api
        .approvals
        .approve(&id, &b.kind, &b.path, &b.hash, &who.user)?
    {
        api.control.audit(
            Some(&who),
            "config.approve",
            &format!("{id}/{}", b.path),
            &b.hash,
        );
        api.scheduler.poke();
    }
    Ok(Json(
        json!({"workspace": id, "kind": b.kind, "path": b.path, "hash": b.hash, "approved": true}),
    ))
}
