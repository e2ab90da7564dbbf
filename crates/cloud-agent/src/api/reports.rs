//! What happened: token usage and cost (sessions and the LLM gateway), and the audit log.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use jarvis_sync::doc::{SessionDoc, Usage};
use serde::Deserialize;
use serde_json::json;

use crate::api::accounts::require_admin;
use crate::control::ControlError;
use crate::http::{ApiResult, Caller};
use crate::services::Services;

pub fn router() -> Router<Services> {
    Router::new()
        .route("/api/usage", get(usage))
        .route("/api/audit", get(audit))
}

async fn usage(State(api): State<Services>, Caller(who): Caller) -> ApiResult {
    let rows = api.control.sessions(&who, None)?;
    let mut total = Usage::default();
    let mut by_user: HashMap<String, Usage> = HashMap::new();
    let mut sessions = Vec::new();
    for row in rows {
        let u = api
            .hub
            .read(&format!("session/{}", row.id), |doc| {
                SessionDoc::new(doc.clone()).meta().usage
            })
            .await?;
        for acc in [&mut total, by_user.entry(row.owner.clone()).or_default()] {
            acc.input_tokens += u.input_tokens;
            acc.output_tokens += u.output_tokens;
            acc.cache_read_tokens += u.cache_read_tokens;
            acc.cache_write_tokens += u.cache_write_tokens;
            acc.cost_micros += u.cost_micros;
        }
        sessions.push(json!({"session": row.id, "owner": row.owner, "usage": u}));
    }
    // Model requests members made through the LLM gateway (/v1/messages): everyone's for an
    // admin, one's own otherwise.
    let gateway = api
        .gateway_usage
        .by_user((!who.admin).then_some(who.user.as_str()), 0)
        .map_err(ControlError::Db)?;
    Ok(Json(json!({
        "total": total,
        "cost_usd": total.cost_micros as f64 / 1e6,
        "by_user": by_user,
        "sessions": sessions,
        "gateway": {"by_user": gateway},
    })))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(api): State<Services>,
    Caller(who): Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    require_admin(&who)?;
    Ok(Json(
        json!({"entries": api.control.audit_log(q.limit.unwrap_or(200).min(10_000))?}),
    ))
}
