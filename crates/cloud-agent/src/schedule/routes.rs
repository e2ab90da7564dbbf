//! The background agents' HTTP routes: definitions, runs, webhook secrets and the signed
//! webhook trigger.

use std::str::FromStr;
use std::sync::atomic::Ordering;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::TimeZone;
use jarvis_wire::api::{AgentRuns, PutAgent, TriggerRun};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use crate::access::Action;
use crate::agents::{self, AgentDef, Trigger};
use crate::control::{ControlError, system_identity};
use crate::http::{ApiError, Body, Caller, ErrorCode};
use crate::limits::ClientAddr;
use crate::schedule::scheduler::{approved, approved_def};
use crate::schedule::state::AgentsApi;
use crate::schedule::store::{Agents, lock};

pub fn router(api: AgentsApi) -> Router {
    Router::new()
        .route("/api/workspaces/{id}/agents", get(list_agents))
        .route(
            "/api/workspaces/{id}/agents/{name}",
            get(get_agent).put(put_agent).delete(delete_agent),
        )
        .route(
            "/api/workspaces/{id}/agents/{name}/runs",
            post(trigger_run).get(agent_runs),
        )
        .route(
            "/api/workspaces/{id}/agents/{name}/webhook-secret",
            post(new_webhook_secret),
        )
        .route("/webhooks/agents/{id}/{name}", post(signed_trigger))
        .with_state(api)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
}

fn next_run(def: &AgentDef, agents: &Agents) -> Option<u64> {
    let Trigger::Cron { schedule, timezone } = &def.trigger else {
        return None;
    };
    let cron = croner::Cron::from_str(schedule).ok()?;
    let tz = chrono_tz::Tz::from_str(timezone).ok()?;
    let now = tz.timestamp_millis_opt(agents.now_ms() as i64).single()?;
    cron.find_next_occurrence(&now, false)
        .ok()
        .map(|t| t.timestamp_millis().max(0) as u64)
}

async fn list_agents(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let mut out = Vec::new();
    for d in agents::load_hashed(&api.hub, &id).await {
        let ok = approved(&api, &id, &d);
        let (name, def) = (d.name, d.def);
        let key = format!("{id}/{name}");
        let last = api
            .agents
            .runs(Some(&key), 1)
            .map_err(ControlError::Db)?
            .into_iter()
            .next();
        let checked = api.agents.checked(&key).map_err(ControlError::Db)?;
        let scheduled = lock(&api.agents.defs).contains_key(&key);
        out.push(match def {
            Ok(def) => json!({
                "name": name, "definition": def, "next_run_ms": next_run(&def, &api.agents),
                "scheduled": scheduled, "checked_ms": checked, "last_run": last,
                "approved": ok, "hash": d.hash,
            }),
            Err(e) => json!({"name": name, "error": e.to_string(), "last_run": last}),
        });
    }
    Ok(Json(json!({
        "agents": out,
        "now_ms": api.agents.now_ms(),
        "scheduler_ms": api.agents.last_tick.load(Ordering::SeqCst),
    })))
}

async fn get_agent(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let found = agents::load(&api.hub, &id)
        .await
        .into_iter()
        .find(|(n, _)| *n == name);
    let Some((_, def)) = found else {
        return Err(ControlError::NotFound(format!("no agent {name:?} in {id:?}")).into());
    };
    let key = format!("{id}/{name}");
    let runs = api.agents.runs(Some(&key), 50).map_err(ControlError::Db)?;
    // The file as written, for editing and a PUT back.
    let text = agents::read_text(&api.hub, &id, &name).await;
    Ok(Json(match def {
        Ok(def) => json!({"name": name, "definition": def, "text": text,
                          "next_run_ms": next_run(&def, &api.agents), "runs": runs}),
        Err(e) => json!({"name": name, "error": e.to_string(), "text": text, "runs": runs}),
    }))
}

async fn put_agent(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<PutAgent, { 256 * 1024 }>,
) -> Result<Json<Value>, ApiError> {
    let role = api.control.check_workspace_for(&who, &id, Action::Write)?;
    let def = agents::parse(&name, &b.definition).map_err(|e| invalid(e.to_string()))?;
    let path = format!("{}{name}.md", agents::AGENTS_DIR);
    agents::write(&api.hub, &id, &name, &b.definition)
        .await
        .map_err(|e| invalid(format!("writing the definition: {e}")))?;
    // An owner's write is its approval; an editor's waits for an owner.
    let hash = crate::approvals::content_hash(&b.definition);
    let approved = crate::approvals::writes_approved(role, who.admin)
        && api
            .approvals
            .approve(&id, "agent", &path, &hash, &who.user)
            .is_ok();
    api.control.audit(
        Some(&who),
        "agent.put",
        &format!("{id}/{name}"),
        if approved {
            "approved"
        } else {
            "waits for an owner"
        },
    );
    api.agents.poke();
    Ok(Json(json!({
        "name": name, "path": path, "hash": hash, "approved": approved,
        "definition": def, "next_run_ms": next_run(&def, &api.agents),
    })))
}

async fn delete_agent(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Write)?;
    let removed = agents::remove(&api.hub, &id, &name)
        .await
        .map_err(|e| invalid(e.to_string()))?;
    if !removed {
        return Err(ControlError::NotFound(format!("no agent {name:?} in {id:?}")).into());
    }
    api.control
        .audit(Some(&who), "agent.delete", &format!("{id}/{name}"), "");
    api.agents.poke();
    Ok(Json(json!({"deleted": name})))
}

/// Starts a run now: the webhook trigger (any agent may be run by hand the same way).
async fn trigger_run(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
    Body(b): Body<TriggerRun, { 512 * 1024 }>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Write)?;
    let w = api.control.workspace(&who, &id)?;
    let key = format!("{id}/{name}");
    let def = approved_def(&api, &id, &name).await?;
    let kind = if matches!(def.trigger, Trigger::Webhook) {
        "webhook"
    } else {
        "manual"
    };
    let detail = if b.payload.is_null() {
        String::new()
    } else {
        serde_json::to_string_pretty(&b.payload).unwrap_or_default()
    };
    if detail.len() > 256 * 1024 {
        return Err(invalid("the payload is larger than 256 KiB"));
    }
    let (run, at) = queue_run(
        &api,
        (&id, &name),
        &w.owner,
        kind,
        &detail,
        &format!("requested by {}", who.user_name),
    )?;
    api.control.audit(Some(&who), "agent.trigger", &key, kind);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "agent": name, "scheduled_ms": at, "trigger": kind})),
    ))
}

/// Queues a run now (the next free millisecond: runs are unique per scheduled time) and wakes
/// the scheduler; returns the run's id and scheduled time.
fn queue_run(
    api: &AgentsApi,
    (workspace, name): (&str, &str),
    owner: &str,
    kind: &str,
    detail: &str,
    note: &str,
) -> Result<(i64, u64), ControlError> {
    let key = format!("{workspace}/{name}");
    let mut at = api.agents.now_ms();
    let run = {
        let conn = api.agents.conn();
        loop {
            if Agents::insert_run(
                &conn, &key, workspace, name, at, kind, detail, "queued", owner, note, at,
            )? {
                break conn.last_insert_rowid();
            }
            at += 1;
        }
    };
    // Make sure the scheduler knows the definition (it may have been written a moment ago).
    api.agents.poke();
    Ok((run, at))
}

/// How far a signed agent webhook's timestamp may be from the server's time.
pub const SIGNATURE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Largest signed agent-webhook payload.
const MAX_TRIGGER_BODY: usize = 1024 * 1024;

/// `POST /api/workspaces/{id}/agents/{name}/webhook-secret`: makes (or replaces) the agent's
/// own webhook secret and returns it once. Owners only: the secret lets whoever holds it start
/// this agent, and no other.
async fn new_webhook_secret(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Manage)?;
    if !agents::valid_name(&name) {
        return Err(invalid(format!("invalid agent name {name:?}")));
    }
    let secret = format!("jw_{}", hex::encode(rand::random::<[u8; 24]>()));
    api.agents
        .conn()
        .execute(
            "INSERT INTO agent_webhook_secrets (agent, secret, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (agent) DO UPDATE SET secret = excluded.secret,
               created_ms = excluded.created_ms",
            params![
                format!("{id}/{name}"),
                secret,
                crate::control::now_ms() as i64
            ],
        )
        .map_err(ControlError::Db)?;
    api.control.audit(
        Some(&who),
        "agent.webhook_secret",
        &format!("{id}/{name}"),
        "",
    );
    Ok(Json(json!({
        "agent": name, "secret": secret,
        "url": format!("/webhooks/agents/{id}/{name}"),
        "sign": "X-Jarvis-Signature: sha256=<hex HMAC-SHA256(secret, \"<timestamp>.<delivery>.\" + body)>, \
                 X-Jarvis-Timestamp: <unix seconds>, X-Jarvis-Delivery: <unique id>",
    })))
}

/// The MAC a signed agent webhook carries: over the timestamp, the delivery id and the body,
/// so none of them can be swapped or replayed.
pub fn trigger_message(timestamp: &str, delivery: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{timestamp}.{delivery}.").into_bytes();
    m.extend_from_slice(body);
    m
}

/// `POST /webhooks/agents/{workspace}/{name}`: a webhook trigger any sender can call (CI, a
/// script), authenticated by the agent's own secret instead of a token: `X-Jarvis-Signature`
/// over the timestamp, the delivery id and the body; the timestamp must be within
/// [`SIGNATURE_WINDOW_MS`] and each delivery id is acted on once, so a captured request cannot
/// be replayed. Everything that can be refused from the headers is refused before the body is
/// read.
async fn signed_trigger(
    State(api): State<AgentsApi>,
    ClientAddr(addr): ClientAddr,
    UrlPath((id, name)): UrlPath<(String, String)>,
    req: axum::extract::Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let refuse = |code, message: &str| ApiError::new(code, message);
    let _slot = api.anonymous.admit(&addr)?;
    let (parts, body) = req.into_parts();
    let header = |k: &str| parts.headers.get(k).and_then(|v| v.to_str().ok());
    let (Some(delivery), Some(timestamp), Some(signature)) = (
        header("x-jarvis-delivery"),
        header("x-jarvis-timestamp"),
        header("x-jarvis-signature"),
    ) else {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "X-Jarvis-Delivery, X-Jarvis-Timestamp and X-Jarvis-Signature are required",
        ));
    };
    if delivery.is_empty() || delivery.len() > 128 {
        return Err(invalid("X-Jarvis-Delivery is 1 to 128 characters"));
    }
    let now = crate::control::now_ms();
    let fresh = timestamp
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|t| t.checked_mul(1000))
        .is_some_and(|t| t.abs_diff(now) <= SIGNATURE_WINDOW_MS);
    if !fresh {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "X-Jarvis-Timestamp (unix seconds) is not within 5 minutes of the server's time",
        ));
    }
    // The same answer for a missing workspace, agent or secret: nothing is disclosed to a
    // sender that does not hold this agent's secret.
    let missing = || {
        ApiError::from(ControlError::NotFound(format!(
            "no agent {name:?} in {id:?}"
        )))
    };
    let key = format!("{id}/{name}");
    let secret: Option<String> = api
        .agents
        .conn()
        .query_row(
            "SELECT secret FROM agent_webhook_secrets WHERE agent = ?1",
            params![key],
            |r| r.get(0),
        )
        .optional()
        .map_err(ControlError::Db)?;
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return Err(missing());
    };
    let body = crate::limits::read_body(&parts.headers, body, MAX_TRIGGER_BODY).await?;
    let message = trigger_message(timestamp.trim(), delivery, &body);
    if !crate::webhooks::events::signature_valid(secret.as_bytes(), &message, Some(signature)) {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "X-Jarvis-Signature does not match",
        ));
    }
    let w = api
        .control
        .workspace(&system_identity(), &id)
        .map_err(|_| missing())?;
    let def = approved_def(&api, &id, &name).await?;
    if !matches!(def.trigger, Trigger::Webhook) {
        return Err(invalid(format!("agent {name:?} is not webhook-triggered")));
    }
    let first = api
        .webhooks
        .first_delivery(
            &format!("agent {key} {delivery}"),
            "agent webhook",
            "agent run",
        )
        .map_err(ControlError::Db)?;
    if !first {
        return Err(refuse(
            ErrorCode::Conflict,
            "this delivery id was already received",
        ));
    }
    let mut detail = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    if detail.len() > 64 * 1024 {
        let mut cut = 64 * 1024;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
        detail.push_str("\n[payload truncated]");
    }
    let (run, at) = queue_run(
        &api,
        (&id, &name),
        &w.owner,
        "webhook",
        &detail,
        &format!("signed webhook ({delivery})"),
    )?;
    api.control.audit(None, "agent.webhook", &key, delivery);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": run, "agent": name, "scheduled_ms": at, "trigger": "webhook"})),
    ))
}

async fn agent_runs(
    State(api): State<AgentsApi>,
    Caller(who): Caller,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Json<AgentRuns>, ApiError> {
    api.control.check_workspace_for(&who, &id, Action::Read)?;
    let runs = api
        .agents
        .runs(Some(&format!("{id}/{name}")), 200)
        .map_err(ControlError::Db)?;
    Ok(Json(AgentRuns { runs }))
}
