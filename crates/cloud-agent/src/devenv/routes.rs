//! The git state's routes: a device records the bundle it uploaded before Continue in cloud,
//! asks what the cloud copy already has, and takes the agent's branch back on Continue here.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jarvis_sync::gitstate::GitState;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::devenv::git::{self, GitRecord};
use crate::http::{ApiError, Body, Caller, ErrorCode};
use crate::services::Services as Api;

pub fn router() -> Router<Api> {
    Router::new()
        .route("/api/sessions/{id}/git", get(get_git).put(put_git))
        .route("/api/sessions/{id}/git/back", get(back))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

fn storage(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Storage, message)
}

#[derive(Deserialize)]
struct PutGit {
    state: GitState,
    /// The bundle's blob hash (uploaded to `PUT /blobs/<hash>` for the session's workspace).
    bundle: String,
}

/// `PUT /api/sessions/{id}/git`: the git state the cloud rebuilds when it next takes the session.
async fn put_git(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    // Who may write the session first; only then is the body read as a git state, so a
    // stranger learns nothing from how their body is refused.
    let row = api.control.check_session_for(&who, &id, Action::Write)?;
    if who.read_only {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this token is read-only",
        ));
    }
    let b: PutGit = serde_json::from_value(b)
        .map_err(|e| invalid(format!("the request body is not a git state: {e}")))?;
    git::validate(&b.state, &b.bundle).map_err(invalid)?;
    let data = api.cloud.data_dir();
    let blobs = jarvis_sync::blob::BlobStore::new(data.join("blobs").join(&row.workspace));
    if !blobs.contains(&b.bundle) {
        return Err(invalid("upload the bundle first (PUT /blobs/<hash>)"));
    }
    let record = GitRecord {
        workspace: row.workspace,
        state: b.state,
        bundle: b.bundle,
        agent_branch: git::agent_branch(&id),
        applied: false,
        error: None,
    };
    git::store(data, &id, &record).map_err(storage)?;
    api.control
        .audit(Some(&who), "session.git", &id, &record.state.head);
    Ok(Json(json!({"agent_branch": record.agent_branch})))
}

/// `GET /api/sessions/{id}/git`: what the cloud copy has (`known` commits) and where it began.
async fn get_git(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let row = api.control.check_session_for(&who, &id, Action::Read)?;
    let data = api.cloud.data_dir();
    let record = git::load(data, &id).map_err(storage)?;
    let known = git::known(data, &row.workspace);
    Ok(Json(match record {
        Some(r) => json!({
            "agent_branch": r.agent_branch, "known": known, "applied": r.applied,
            "error": r.error, "base_branch": r.state.branch, "base_head": r.state.head,
        }),
        None => json!({"agent_branch": git::agent_branch(&id), "known": known, "applied": false}),
    }))
}

#[derive(Deserialize)]
struct BackQuery {
    /// Commits the device has, comma-separated.
    #[serde(default)]
    have: String,
}

/// `GET /api/sessions/{id}/git/back?have=…`: the agent's branch as a bundle without what the
/// device has (`application/octet-stream`; 204 when there is nothing new), with the branch the
/// cloud started from in `X-Jarvis-Base-Branch` / `X-Jarvis-Base-Head`.
async fn back(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Query(q): Query<BackQuery>,
) -> Result<Response, ApiError> {
    // Write: it runs a command in the cloud copy, and only who may take the session back asks.
    let row = api.control.check_session_for(&who, &id, Action::Write)?;
    let record = git::load(api.cloud.data_dir(), &id).map_err(storage)?;
    let have: Vec<String> = q.have.split(',').map(str::to_owned).collect();
    let branch = git::agent_branch(&id);
    let bundle = git::bundle_back(
        api.cloud.sandbox(),
        &api.cloud.workspace_dir(&row.workspace),
        &branch,
        &have,
    )
    .await
    .map_err(|e| ApiError::new(ErrorCode::GitFailed, e))?;
    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: Option<&str>| {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
        }
    };
    put("x-jarvis-agent-branch", Some(&branch));
    put(
        "x-jarvis-base-branch",
        record.as_ref().and_then(|r| r.state.branch.as_deref()),
    );
    put(
        "x-jarvis-base-head",
        record.as_ref().map(|r| r.state.head.as_str()),
    );
    Ok(match bundle {
        Some(b) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            (StatusCode::OK, headers, b).into_response()
        }
        None => (StatusCode::NO_CONTENT, headers).into_response(),
    })
}
