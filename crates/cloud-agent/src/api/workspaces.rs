//! Workspaces, their members, and what each member keeps per workspace on the hub ("always
//! allow" rules, approved configuration) and for themselves (memory).

use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use jarvis_sync::doc::EntryKind;
use jarvis_wire::api::{FileEntry, MemberRemoved, MemberRole, MemberSet, NewWorkspace};
use serde_json::json;

use crate::http::{ApiResult, Body, Caller};
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route(
            "/api/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route("/api/workspaces/{id}", get(get_workspace))
        .route(
            "/api/workspaces/{id}/members/{user}",
            put(set_member).delete(remove_member),
        )
        .route(
            "/api/workspaces/{id}/always-allow",
            get(crate::api::rules::list)
                .post(crate::api::rules::add)
                .delete(crate::api::rules::remove),
        )
        .route(
            "/api/me/memory",
            get(crate::api::rules::get_memory).put(crate::api::rules::put_memory),
        )
        .route("/api/workspaces/{id}/config", get(crate::api::config::list))
        .route(
            "/api/workspaces/{id}/config/approve",
            post(crate::api::config::approve),
        )
}

async fn list_workspaces(State(api): State<Services>, Caller(who): Caller) -> ApiResult {
    Ok(Json(json!({"workspaces": api.control.workspaces(&who)?})))
}

async fn create_workspace(
    State(api): State<Services>,
    Caller(who): Caller,
    Body(b): Body<NewWorkspace>,
) -> ApiResult {
    let w = api.control.ensure_workspace(&who, &b.id, &b.name)?;
    api.control
        .audit(Some(&who), "workspace.ensure", &w.id, &w.name);
    Ok(Json(json!(w)))
}

async fn get_workspace(
    State(api): State<Services>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let w = api.control.workspace(&who, &id)?;
    let files = api
        .hub
        .read(&format!("ws/{id}/index"), |doc| {
            jarvis_sync::doc::WorkspaceIndex::new(doc.clone())
                .list()
                .into_iter()
                .map(|(path, e)| FileEntry {
                    path,
                    kind: match e.kind {
                        EntryKind::Text => "text",
                        EntryKind::Blob => "blob",
                    }
                    .to_owned(),
                    size: e.size,
                    modified_ms: e.modified_ms,
                })
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!({"workspace": w, "files": files})))
}

async fn set_member(
    State(api): State<Services>,
    Caller(who): Caller,
    Path((id, user)): Path<(String, String)>,
    Body(b): Body<MemberRole>,
) -> ApiResult<Json<MemberSet>> {
    api.control.set_member(&who, &id, &user, Some(&b.role))?;
    // A lowered role (editor to viewer) takes write access from open sockets at once.
    let closed = api.hub.revalidate();
    api.control.audit(
        Some(&who),
        "workspace.member",
        &id,
        &format!("{user} as {}", b.role),
    );
    Ok(Json(MemberSet {
        workspace: id,
        user,
        role: b.role,
        sockets_closed: closed,
    }))
}

async fn remove_member(
    State(api): State<Services>,
    Caller(who): Caller,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<MemberRemoved>> {
    api.control.set_member(&who, &id, &user, None)?;
    let closed = api.hub.revalidate();
    api.control
        .audit(Some(&who), "workspace.member.remove", &id, &user);
    Ok(Json(MemberRemoved {
        workspace: id,
        removed: user,
        sockets_closed: closed,
    }))
}
