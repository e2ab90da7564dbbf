//! A member's own "always allow" rules per workspace and their memory for cloud runs, over
//! HTTP. The store is `crate::user_rules::UserRules`.

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use jarvis_agent::permissions::Permissions;
use serde_json::{Value, json};

use crate::access::Action;
use crate::http::{ApiError, Body, Caller};
use crate::services::Services as Api;
use crate::user_rules::{MAX_MEMORY_BYTES, command_prefix};

/// An entry as a caller may give it: `{"tool": "bash", "command": "…"}`, `{"tool": "bash",
/// "prefix": "npm test"}`, `{"tool": "write", "path": "src/a.rs"}` or `{"tool": "glob"}`.
fn valid_entry(v: &Value) -> Result<Value, ApiError> {
    let bad = |m: &str| ApiError::new(crate::http::ErrorCode::InvalidRequest, m.to_owned());
    let obj = v
        .get("entry")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("expected {\"entry\": {\"tool\": …}}"))?;
    let mut out = serde_json::Map::new();
    for (k, val) in obj {
        let s = val
            .as_str()
            .filter(|s| !s.trim().is_empty() && s.len() <= 4096)
            .ok_or_else(|| bad("entry fields are non-empty strings"))?;
        match k.as_str() {
            "tool" | "command" | "path" => {}
            "prefix" if command_prefix(s).is_some() => {}
            "prefix" => return Err(bad("a prefix is one simple command, without operators")),
            _ => return Err(bad(&format!("unknown entry field {k:?}"))),
        }
        out.insert(k.clone(), Value::String(s.trim().to_owned()));
    }
    let entry = Value::Object(out);
    if Permissions::entry_rule(&entry)
        .to_string()
        .ends_with("(<nothing>)")
    {
        return Err(bad("that entry can never match a call"));
    }
    Ok(entry)
}

fn rules_json(entries: Vec<Value>) -> Vec<Value> {
    entries
        .into_iter()
        .map(|e| json!({"rule": Permissions::entry_rule(&e).to_string(), "entry": e}))
        .collect()
}

/// `GET /api/workspaces/{id}/always-allow`: the caller's own rules in the workspace.
pub async fn list(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let entries = api.user_rules.entries(&who.user, &id)?;
    Ok(Json(json!({"workspace": id, "rules": rules_json(entries)})))
}

/// `POST /api/workspaces/{id}/always-allow`: adds a rule for the caller only.
pub async fn add(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Write)?;
    let entry = valid_entry(&b)?;
    api.user_rules.add(&who.user, &id, &entry)?;
    api.control
        .audit(Some(&who), "always_allow.add", &id, &entry.to_string());
    Ok(Json(
        json!({"workspace": id, "rule": Permissions::entry_rule(&entry).to_string(), "entry": entry}),
    ))
}

/// `DELETE /api/workspaces/{id}/always-allow`: removes one of the caller's rules.
pub async fn remove(
    State(api): State<Api>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
    Body(b): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    let entry = valid_entry(&b)?;
    let removed = crate::user_rules::forget(&api.control, &api.user_rules, &who, &id, &entry)?;
    Ok(Json(json!({"workspace": id, "removed": removed})))
}

/// `GET /api/me/memory`: the caller's memory text for cloud runs.
pub async fn get_memory(
    State(api): State<Api>,
    Caller(who): Caller,
) -> Result<Json<Value>, ApiError> {
    let text = api.user_rules.memory(&who.user)?.unwrap_or_default();
    Ok(Json(json!({"text": text, "max_bytes": MAX_MEMORY_BYTES})))
}

/// `PUT /api/me/memory` `{"text": "…"}`: replaces it (empty removes it). Writable tokens only.
pub async fn put_memory(
    State(api): State<Api>,
    Caller(who): Caller,
    Body(b): Body<Value>,
) -> Result<Json<Value>, ApiError> {
    who.may(crate::access::Target::Account, crate::access::Action::Write)?;
    let text = b.get("text").and_then(Value::as_str).ok_or_else(|| {
        ApiError::new(
            crate::http::ErrorCode::InvalidRequest,
            "expected {\"text\": \"…\"}",
        )
    })?;
    if text.len() > MAX_MEMORY_BYTES {
        return Err(ApiError::new(
            crate::http::ErrorCode::TooLarge,
            format!("memory is at most {MAX_MEMORY_BYTES} bytes"),
        ));
    }
    api.user_rules.set_memory(&who.user, text)?;
    api.control
        .audit(Some(&who), "me.memory", &who.user, &text.len().to_string());
    Ok(Json(json!({"bytes": text.len()})))
}
