//! The HTTP API under `/api` (JSON; described by `/openapi.json`). Each handler is a few lines
//! over the control plane ([`crate::control`]), the cloud runner ([`crate::runner`]) or a
//! server-side document edit through the hub. Every error is `{code, message}` with a fitting
//! status; every request is authenticated by a bearer token and rate-limited per token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use jarvis_agent::permissions::{Mode, Rule};
use jarvis_agent::runner::Runner as AgentRunner;
use jarvis_sync::doc::{Decision, SessionDoc, Usage};
use jarvis_sync::handoff::ExpectedDoc;
use jarvis_sync::hub::Hub;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{Action, Target};
use crate::control::{
    CLOUD_DEVICE, Control, ControlError, HandoffState, Identity, RunSettings, now_ms,
};
use crate::limits::ClientAddr;
use crate::runner::Cloud;

pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct Api {
    pub control: Arc<Control>,
    pub cloud: Arc<Cloud>,
    pub hub: Hub,
    pub limiter: Arc<RateLimiter>,
    pub gateway: Arc<crate::gateway::Gateway>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    pub agents: Arc<crate::schedule::Agents>,
    pub secrets: Arc<crate::secrets::SecretStore>,
    pub approvals: Arc<crate::approvals::Approvals>,
    /// "Always allow" rules per user and workspace, and users' memory for cloud runs.
    pub user_rules: Arc<crate::user_rules::UserRules>,
    /// Budgets of the endpoints anyone may call (pairing, webhooks), per address.
    pub anonymous: Arc<Anonymous>,
}

/// Per-address budgets for anonymous callers: a request rate and bodies read at once.
pub struct Anonymous {
    pub rate: crate::limits::AddressLimiter,
    pub bodies: Arc<crate::limits::InFlight>,
}

impl Anonymous {
    pub fn new(burst: u32, per_second: f64, bodies_per_address: usize) -> Arc<Self> {
        Arc::new(Anonymous {
            rate: crate::limits::AddressLimiter::new(burst, per_second),
            bodies: crate::limits::InFlight::new(bodies_per_address),
        })
    }

    /// Admits one request from `addr`, holding a body slot until the returned guard drops.
    pub fn admit(&self, addr: &str) -> Result<crate::limits::Slot, ApiError> {
        self.rate.check(addr).map_err(crate::limits::too_many)?;
        self.bodies.enter(addr)
    }
}

/// `{code, message}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Pending(_) => StatusCode::PRECONDITION_REQUIRED,
            ControlError::Db(err) => {
                tracing::error!(error = %err, "control database error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<jarvis_sync::hub::HubError> for ApiError {
    fn from(e: jarvis_sync::hub::HubError) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// A token bucket per key (a token id here, a user in the gateway): `burst` requests at once,
/// refilled at `per_second`.
pub struct RateLimiter<K = i64> {
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
    pub burst: f64,
    pub per_second: f64,
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    pub fn new(burst: u32, per_second: f64) -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst),
            per_second,
        }
    }

    /// Ok, or the seconds to wait.
    pub fn check(&self, key: K) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = b.entry(key).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

/// The caller, from `Authorization: Bearer <token>`, after the rate limit.
pub struct Caller(pub Identity);

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing bearer token (Authorization: Bearer jt_…)",
            )
        })?;
        let who = api.control.identify(token)?;
        if let Err(wait) = api.limiter.check(who.token_id) {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests with this token; retry in {wait} s"),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        Ok(Caller(who))
    }
}

/// A JSON body of at most `MAX` bytes, read with the server's idle timeout (413 and 408),
/// whose parse errors are `{code, message}` too. Extracted last, so the caller is
/// authenticated (from headers) before a byte of it is read.
pub struct Body<T, const MAX: usize = 65_536>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync, const MAX: usize> axum::extract::FromRequest<S>
    for Body<T, MAX>
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        let limits = crate::limits::of(req.extensions());
        let (parts, body) = req.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "expected Content-Type: application/json",
            ));
        }
        let bytes = crate::limits::read_body(&parts.headers, body, MAX, limits.body_idle).await?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the request body is not valid: {e}"),
            )
        })
    }
}

/// A large JSON body: a handoff's or a release's expected state for a large workspace (about
/// 40 bytes per file).
pub type LargeBody<T> = Body<T, { 8 * 1024 * 1024 }>;
/// What anonymous endpoints accept.
pub type SmallBody<T> = Body<T, 4096>;

pub fn router(api: Api) -> Router {
    let gateway = crate::gateway::router(api.gateway.clone());
    let webhooks = crate::webhooks::router(api.clone());
    let agents = crate::schedule::router(api.clone());
    let secrets = crate::secrets::router(api.clone());
    let devenv = crate::devenv::routes::router(api.clone());
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/api/pair/start", post(pair_start))
        .route("/api/pair/poll", post(pair_poll))
        .route("/api/pair/approve", post(pair_approve))
        .route("/api/me", get(me))
        .route("/api/server", get(server_info))
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/tokens", get(list_tokens))
        .route("/api/tokens/{id}", delete(revoke_token))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{id}", delete(revoke_device))
        .route(
            "/api/workspaces",
            get(list_workspaces).post(create_workspace),
        )
        .route("/api/workspaces/{id}", get(get_workspace))
        .route(
            "/api/workspaces/{id}/members/{user}",
            put(set_member).delete(remove_member),
        )
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route("/api/sessions/changes", get(session_changes))
        .route("/api/sessions/{id}", get(get_session).patch(update_session))
        .route("/api/sessions/{id}/settings", get(get_settings))
        .route("/api/sessions/{id}/messages", post(send_message))
        .route("/api/sessions/{id}/interrupt", post(interrupt))
        .route("/api/sessions/{id}/approvals/{approval}", post(answer))
        .route("/api/sessions/{id}/handoff", post(handoff))
        .route("/api/sessions/{id}/lease", get(get_lease).post(lease_op))
        .route("/api/usage", get(usage))
        .route("/api/audit", get(audit))
        .route(
            "/api/workspaces/{id}/always-allow",
            get(crate::user_rules::list)
                .post(crate::user_rules::add)
                .delete(crate::user_rules::remove),
        )
        .route(
            "/api/me/memory",
            get(crate::user_rules::get_memory).put(crate::user_rules::put_memory),
        )
        .route("/api/workspaces/{id}/config", get(crate::approvals::list))
        .route(
            "/api/workspaces/{id}/config/approve",
            post(crate::approvals::approve),
        )
        .with_state(api)
        .merge(gateway)
        .merge(webhooks)
        .merge(agents)
        .merge(secrets)
        .merge(devenv)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

fn require_admin(who: &Identity) -> Result<(), ApiError> {
    Ok(who.may(Target::Server, Action::Manage)?)
}

// ---- pairing ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct PairStart {
    name: String,
}

async fn pair_start(
    State(api): State<Api>,
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

#[derive(Deserialize)]
struct PairPoll {
    device_code: String,
}

async fn pair_poll(
    State(api): State<Api>,
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

#[derive(Deserialize)]
struct PairApprove {
    code: String,
}

async fn pair_approve(
    State(api): State<Api>,
    Caller(who): Caller,
    Body(b): Body<PairApprove>,
) -> ApiResult {
    let name = api.control.approve_pairing(&who, &b.code)?;
    api.control
        .audit(Some(&who), "pair.approve", &b.code, &name);
    Ok(Json(json!({"approved": true, "device_name": name})))
}

// ---- users, tokens, devices ---------------------------------------------------------------

async fn me(Caller(who): Caller) -> ApiResult {
    Ok(Json(json!({
        "user": who.user, "name": who.user_name, "admin": who.admin,
        "admin_user": who.admin_user, "scopes": who.scopes,
        "device": who.device_id(), "read_only": who.read_only,
        "can": crate::access::describe(&who.grant()),
    })))
}

/// What this server offers and how it contains commands (for the UI's warning).
async fn server_info(State(api): State<Api>, Caller(_who): Caller) -> ApiResult {
    let sandbox = api.cloud.sandbox();
    Ok(Json(json!({"sandbox": {
        "confined": sandbox.confines(),
        "refusing": sandbox.refusal().is_some(),
        "description": sandbox.describe(),
    }})))
}

async fn list_users(State(api): State<Api>, Caller(who): Caller) -> ApiResult {
    require_admin(&who)?;
    Ok(Json(json!({"users": api.control.users()?})))
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    admin: bool,
}

async fn create_user(
    State(api): State<Api>,
    Caller(who): Caller,
    Body(b): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require_admin(&who)?;
    let user = api.control.create_user(&b.name, b.admin)?;
    let token = api
        .control
        .create_token(&user.id, None, "first token", &["*".into()], false)?;
    api.control
        .audit(Some(&who), "user.create", &user.id, &user.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user, "token": token})),
    ))
}

async fn list_tokens(State(api): State<Api>, Caller(who): Caller) -> ApiResult {
    who.may(Target::Account, Action::Read)?;
    let scope = (!who.admin).then_some(who.user.as_str());
    Ok(Json(json!({"tokens": api.control.tokens(scope)?})))
}

async fn revoke_token(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<i64>,
) -> ApiResult {
    api.control.revoke_token_as(&who, id)?;
    let closed = api.hub.revalidate();
    api.control
        .audit(Some(&who), "token.revoke", &id.to_string(), "");
    Ok(Json(json!({"revoked": id, "sockets_closed": closed})))
}

async fn list_devices(State(api): State<Api>, Caller(who): Caller) -> ApiResult {
    let scope = (!who.admin).then_some(who.user.as_str());
    Ok(Json(json!({"devices": api.control.devices(scope)?})))
}

async fn revoke_device(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    api.control.revoke_device_as(&who, &id)?;
    let closed = api.hub.revalidate();
    api.control.audit(Some(&who), "device.revoke", &id, "");
    Ok(Json(json!({"revoked": id, "sockets_closed": closed})))
}

// ---- workspaces ---------------------------------------------------------------------------

async fn list_workspaces(State(api): State<Api>, Caller(who): Caller) -> ApiResult {
    Ok(Json(json!({"workspaces": api.control.workspaces(&who)?})))
}

#[derive(Deserialize)]
struct NewWorkspace {
    id: String,
    #[serde(default)]
    name: String,
}

async fn create_workspace(
    State(api): State<Api>,
    Caller(who): Caller,
    Body(b): Body<NewWorkspace>,
) -> ApiResult {
    let w = api.control.ensure_workspace(&who, &b.id, &b.name)?;
    api.control
        .audit(Some(&who), "workspace.ensure", &w.id, &w.name);
    Ok(Json(json!(w)))
}

async fn get_workspace(
    State(api): State<Api>,
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
                .map(|(path, e)| json!({"path": path, "kind": e.kind, "size": e.size, "modified_ms": e.modified_ms}))
                .collect::<Vec<_>>()
        })
        .await?;
    Ok(Json(json!({"workspace": w, "files": files})))
}

#[derive(Deserialize)]
struct Member {
    role: String,
}

async fn set_member(
    State(api): State<Api>,
    Caller(who): Caller,
    Path((id, user)): Path<(String, String)>,
    Body(b): Body<Member>,
) -> ApiResult {
    api.control.set_member(&who, &id, &user, Some(&b.role))?;
    // A lowered role (editor to viewer) takes write access from open sockets at once.
    let closed = api.hub.revalidate();
    api.control.audit(
        Some(&who),
        "workspace.member",
        &id,
        &format!("{user} as {}", b.role),
    );
    Ok(Json(
        json!({"workspace": id, "user": user, "role": b.role, "sockets_closed": closed}),
    ))
}

async fn remove_member(
    State(api): State<Api>,
    Caller(who): Caller,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult {
    api.control.set_member(&who, &id, &user, None)?;
    let closed = api.hub.revalidate();
    api.control
        .audit(Some(&who), "workspace.member.remove", &id, &user);
    Ok(Json(
        json!({"workspace": id, "removed": user, "sockets_closed": closed}),
    ))
}

// ---- sessions -----------------------------------------------------------------------------

#[derive(Deserialize)]
struct SessionFilter {
    workspace: Option<String>,
}

fn session_summary(
    row: &crate::control::SessionRow,
    meta: &jarvis_sync::doc::SessionMeta,
    pending: usize,
    lease: &crate::control::Lease,
) -> Value {
    let now = now_ms();
    let runner = lease.device.clone().filter(|_| lease.live(now));
    json!({
        "id": row.id,
        "workspace": row.workspace,
        "owner": row.owner,
        "title": if meta.title.is_empty() { &row.title } else { &meta.title },
        "model": meta.model,
        "status": meta.status.as_str(),
        "pending_approvals": pending,
        "runner": runner,
        "where": match runner.as_deref() { Some(CLOUD_DEVICE) => "cloud", Some(_) => "device", None => "nowhere" },
        "lease_epoch": lease.epoch,
        "handoff_to": lease.pending_to,
        "usage": meta.usage,
        "created_ms": row.created_ms,
    })
}

async fn list_sessions(
    State(api): State<Api>,
    Caller(who): Caller,
    Query(f): Query<SessionFilter>,
) -> ApiResult {
    let rows = api.control.sessions(&who, f.workspace.as_deref())?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let (meta, pending) = api
            .hub
            .read(&format!("session/{}", row.id), |doc| {
                let s = SessionDoc::new(doc.clone());
                (s.meta(), s.pending_approvals().len())
            })
            .await?;
        let lease = api.control.lease(&row.id)?;
        out.push(session_summary(&row, &meta, pending, &lease));
    }
    Ok(Json(json!({"sessions": out})))
}

/// `GET /api/sessions/changes`: server-sent events that make a session list live. One
/// `changed` event (data `{"sessions": [ids]}`) per burst of changes to sessions the caller may
/// open, coalesced over 200 ms; `lagged` when the stream fell behind (refetch everything); a
/// comment every 15 s. The list itself stays `GET /api/sessions`. The caller's token is checked
/// again before every event, so a revoked token's stream ends at once.
async fn session_changes(
    State(api): State<Api>,
    Caller(who): Caller,
    headers: axum::http::HeaderMap,
) -> Response {
    // Kept to check again before every event (Caller already proved it is there).
    let token = bearer(&headers).unwrap_or_default().to_owned();
    let mut changes = api.hub.changes();
    // Ends with the server: a graceful shutdown waits for every open response.
    let shutdown = api.cloud.shutdown().clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(16);
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        if tx
            .send(Ok(": following session changes\n\n".into()))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        loop {
            let first = tokio::select! {
                r = changes.recv() => r,
                _ = keepalive.tick() => {
                    if api.control.identify(&token).is_err()
                        || tx.send(Ok(": keep-alive\n\n".into())).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
                _ = shutdown.cancelled() => return,
            };
            let mut names = Vec::new();
            let mut lagged = false;
            match first {
                Ok(n) => names.push(n),
                Err(RecvError::Lagged(_)) => lagged = true,
                Err(RecvError::Closed) => return,
            }
            let until = tokio::time::Instant::now() + Duration::from_millis(200);
            loop {
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Ok(Ok(n)) => names.push(n),
                    Ok(Err(RecvError::Lagged(_))) => lagged = true,
                    Ok(Err(RecvError::Closed)) => return,
                    Err(_) => break,
                }
            }
            if api.control.identify(&token).is_err() {
                return;
            }
            let mut ids = std::collections::BTreeSet::new();
            for n in &names {
                // The one rule (`access::decide`, through `check_session`): registered
                // sessions the token's scopes and the user's role let it read.
                if let Some(id) = n.strip_prefix("session/")
                    && api.control.check_session(&who, id).is_ok()
                {
                    ids.insert(id.to_owned());
                }
            }
            let event = if lagged {
                "event: lagged\ndata: {}\n\n".to_owned()
            } else if ids.is_empty() {
                continue;
            } else {
                format!("event: changed\ndata: {}\n\n", json!({ "sessions": ids }))
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::new(axum::body::Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// A new session: the body of `POST /api/sessions`, and what webhooks and background agents
/// start through [`start_session`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewSession {
    pub id: Option<String>,
    pub workspace: String,
    #[serde(default)]
    pub title: String,
    pub model: Option<String>,
    /// A first user message.
    pub message: Option<String>,
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub budget_usd: Option<f64>,
    /// Where it runs: "cloud" hands it to the cloud runner at once.
    pub run: Option<String>,
}

async fn create_session(
    State(api): State<Api>,
    Caller(who): Caller,
    Body(b): Body<NewSession, { 1024 * 1024 }>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (row, state) = start_session(&api, &who, b).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"session": row, "handoff": state})),
    ))
}

/// Creates (or reopens) a session as `who`, with its settings and first message, and hands it
/// to the cloud runner when `run` is "cloud". Returns the registry row and the handoff state.
pub async fn start_session(
    api: &Api,
    who: &Identity,
    b: NewSession,
) -> Result<(crate::control::SessionRow, Value), ApiError> {
    if let Some(m) = &b.permission_mode
        && Mode::parse(m).is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("unknown permission mode {m:?}: ask, accept-edits, plan or allow-all"),
        ));
    }
    for r in b.allow.iter().chain(&b.deny) {
        Rule::parse(r).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
        })?;
    }
    if let Some(run) = &b.run
        && run != "cloud"
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "run must be \"cloud\" (devices start their own runs)",
        ));
    }
    let id =
        b.id.clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let title = if b.title.is_empty() {
        b.message
            .as_deref()
            .unwrap_or("New session")
            .chars()
            .take(80)
            .collect()
    } else {
        b.title.clone()
    };
    let row = api
        .control
        .register_session(who, &id, &b.workspace, &title)?;
    let settings = RunSettings {
        permission_mode: b.permission_mode.clone(),
        allow: b.allow.clone(),
        deny: b.deny.clone(),
        budget_micros: b.budget_usd.map(|usd| (usd.max(0.0) * 1e6) as u64),
        model: b.model.clone(),
    };
    // The hub's copy is the one runners use; it is written once, when the session is new.
    let fresh = api.control.init_run_settings(&id, &settings)?;
    if !fresh {
        // Starting an existing session again (a device reopening it) keeps its settings; what
        // this request asked for is ignored, and the log says so.
        let stored = api.control.run_settings(&id)?.unwrap_or_default();
        let asked = b.permission_mode.is_some()
            || !b.allow.is_empty()
            || !b.deny.is_empty()
            || b.budget_usd.is_some()
            || b.model.is_some();
        if asked && stored != settings {
            tracing::info!(session = %id, "an existing session's run settings are kept; the request's are ignored");
        }
    }
    let author = who.device_id();
    api.hub
        .edit(&format!("session/{id}"), |doc| {
            let s = SessionDoc::new(doc.clone());
            if s.meta().workspace.is_empty() {
                s.set_workspace(&b.workspace);
                s.set_title(&title);
            }
            if fresh {
                // For display only: no runner reads these from the document.
                if let Some(m) = &settings.model {
                    s.set_model(m);
                }
                if let Some(m) = &settings.permission_mode {
                    s.set_setting("permission_mode", m);
                }
                if !settings.allow.is_empty() {
                    s.set_setting("allow", &settings.allow.join("\n"));
                }
                if !settings.deny.is_empty() {
                    s.set_setting("deny", &settings.deny.join("\n"));
                }
                if let Some(b) = settings.budget_micros {
                    s.set_setting("budget_micros", &b.to_string());
                }
            }
            if let Some(text) = &b.message {
                AgentRunner::send_user_message(&s, &author, text);
            }
        })
        .await?;
    api.control
        .audit(Some(who), "session.create", &id, &row.workspace);
    let mut state = Value::Null;
    if b.run.is_some() {
        let s = api
            .cloud
            .request_handoff(who, &id, CLOUD_DEVICE, vec![], Duration::ZERO)
            .await?;
        state = json!(s);
    }
    Ok((row, state))
}

/// `GET /api/sessions/{id}/settings`: the authoritative run settings, which a device that takes
/// the session runs with (never the document's display copy).
async fn get_settings(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    api.control.check_session(&who, &id)?;
    Ok(Json(json!(
        api.control.run_settings(&id)?.unwrap_or_default()
    )))
}

async fn get_session(
    State(api): State<Api>,
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
    let mut summary = session_summary(&row, &meta, pending, &lease);
    summary["messages"] = json!(messages);
    // How the cloud runs this session's commands (set by the runner), for the UI to show.
    summary["sandbox"] = json!(sandbox);
    summary["cut_messages"] = json!(cut);
    Ok(Json(summary))
}

#[derive(Deserialize)]
struct SendMessage {
    text: String,
}

async fn send_message(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): Body<SendMessage, { 1024 * 1024 }>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    api.control.check_session_for(&who, &id, Action::Write)?;
    if b.text.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the message is empty",
        ));
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
        Json(json!({"message": message_id, "runner": runs_on})),
    ))
}

#[derive(Deserialize)]
struct SessionUpdate {
    model: Option<String>,
    permission_mode: Option<String>,
}

/// Changes a session's model or permission mode from any device; the runner applies them
/// before its next model request (`Runner::apply_session_changes`).
async fn update_session(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): Body<SessionUpdate>,
) -> ApiResult {
    api.control
        .check_session_for(&who, &id, crate::access::Action::Write)?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    if let Some(m) = &b.permission_mode
        && Mode::parse(m).is_none()
    {
        return Err(bad(format!(
            "unknown permission mode {m:?}: ask, accept-edits, plan or allow-all"
        )));
    }
    if let Some(m) = &b.model
        && (m.is_empty()
            || m.len() > 200
            || !m
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._:@/-".contains(&c)))
    {
        return Err(bad(format!("invalid model id {m:?}")));
    }
    if b.permission_mode.as_deref() == Some("allow-all")
        && let Some(why) = api.cloud.sandbox().refusal()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "sandbox_unavailable",
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
    Ok(Json(json!({"model": model, "permission_mode": mode})))
}

async fn interrupt(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    api.control.check_session_for(&who, &id, Action::Write)?;
    let by = who.device_id();
    let n = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            SessionDoc::new(doc.clone()).request_interrupt(&by)
        })
        .await?;
    api.control.audit(Some(&who), "session.interrupt", &id, "");
    Ok(Json(json!({"interrupt": n})))
}

#[derive(Deserialize)]
struct Answer {
    decision: String,
    /// With `always_allow` on a bash command: allow the command's prefix (`npm test:*`), not
    /// only this exact line.
    #[serde(default)]
    prefix: bool,
}

async fn answer(
    State(api): State<Api>,
    Caller(who): Caller,
    Path((id, approval)): Path<(String, String)>,
    Body(b): Body<Answer>,
) -> ApiResult {
    let row = api.control.check_session_for(&who, &id, Action::Write)?;
    let decision = Decision::parse(&b.decision).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "decision must be allow, deny or always_allow",
        )
    })?;
    let by = who.device_id();
    let result = api
        .hub
        .edit(&format!("session/{id}"), |doc| {
            SessionDoc::new(doc.clone()).answer_approval(&approval, decision, &by, now_ms())
        })
        .await?;
    match result {
        Ok(()) => {}
        Err(e @ jarvis_sync::doc::DocError::AlreadyAnswered { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_answered",
                e.to_string(),
            ));
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                e.to_string(),
            ));
        }
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
    Ok(Json(
        json!({"approval": approval, "decision": decision.as_str()}),
    ))
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
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(b): LargeBody<Handoff>,
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
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("unknown target {other:?}: use cloud, here, or one of your device ids"),
                ));
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
    State(api): State<Api>,
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
    State(api): State<Api>,
    Caller(who): Caller,
    Path(id): Path<String>,
    Body(op): LargeBody<LeaseOp>,
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

async fn usage(State(api): State<Api>, Caller(who): Caller) -> ApiResult {
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
        .gateway
        .usage
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
    State(api): State<Api>,
    Caller(who): Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    require_admin(&who)?;
    Ok(Json(
        json!({"entries": api.control.audit_log(q.limit.unwrap_or(200).min(10_000))?}),
    ))
}
