//! The LLM gateway: `POST /v1/messages` (streaming and not) and `POST /v1/messages/count_tokens`
//! for team members' own tools (Claude Code with `ANTHROPIC_BASE_URL` pointed here, the
//! Anthropic SDKs). A member authenticates with their own device token (`x-api-key` or
//! `Authorization: Bearer`); the gateway forwards to the provider the server is configured
//! with — the Anthropic API (or another gateway) byte for byte, Bedrock (SigV4, its
//! event-stream re-framed as SSE) or Vertex (service-account OAuth) — with `anthropic-version`
//! and `anthropic-beta` passed on, a token bucket per user, and usage (cache reads and writes
//! included) recorded per user as the stream passes.
//!
//! Never: buffer a streamed reply (each upstream chunk is written as it arrives), forward the
//! member's token upstream, or log a token.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::{Stream, StreamExt};
use jarvis_agent::providers::{
    BedrockProvider, EventStreamDecoder, ProviderConfig, VertexProvider, bedrock_event_json,
};
use jarvis_agent::runner::Pricing;
use jarvis_agent::sse::SseParser;
use jarvis_sync::doc::Usage;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::{Action, Target};
use crate::api::RateLimiter;
use crate::control::{Control, ControlError, Identity, now_ms};

/// Options of the gateway (part of `jarvis-cloud serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Model requests a user may make through the gateway in a burst…
    #[arg(long, env = "JARVIS_GATEWAY_RATE_BURST", default_value_t = 60)]
    pub gateway_rate_burst: u32,
    /// …and per second after it (a token bucket per user).
    #[arg(long, env = "JARVIS_GATEWAY_RATE_PER_SECOND", default_value_t = 1.0)]
    pub gateway_rate_per_second: f64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "JARVIS_GATEWAY_MAX_BODY", default_value_t = 32 * 1024 * 1024)]
    pub gateway_max_body: usize,
}

/// An error in the shape Anthropic's clients expect: `{type: "error", error: {type, message}}`.
#[derive(Debug)]
pub struct GatewayError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl GatewayError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = json!({"type": "error", "error": {"type": self.kind, "message": self.message}});
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<ControlError> for GatewayError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Unauthorized(m) => {
                GatewayError::new(StatusCode::UNAUTHORIZED, "authentication_error", m)
            }
            ControlError::Db(err) => {
                tracing::error!(error = %err, "gateway: control database error");
                GatewayError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    "access check unavailable",
                )
            }
            other => {
                GatewayError::new(StatusCode::FORBIDDEN, "permission_error", other.to_string())
            }
        }
    }
}

/// Where requests go, built from the server's provider configuration.
enum Upstream {
    /// The Anthropic API or another gateway: the same wire format, forwarded byte for byte.
    Anthropic {
        base_url: String,
        auth: (HeaderName, HeaderValue),
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    Bedrock(BedrockProvider),
    Vertex(VertexProvider),
}

impl Upstream {
    fn from_config(config: ProviderConfig) -> Result<Upstream, String> {
        let extra = |h: std::collections::BTreeMap<String, String>| {
            h.into_iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(&v).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        };
        let value = |v: String| {
            HeaderValue::from_str(&v).map_err(|_| "the provider key is not a valid header value")
        };
        Ok(match config {
            ProviderConfig::Anthropic {
                base_url,
                api_key,
                headers,
            } => Upstream::Anthropic {
                base_url: base_url.trim_end_matches('/').to_owned(),
                auth: (HeaderName::from_static("x-api-key"), value(api_key)?),
                headers: extra(headers),
            },
            ProviderConfig::Gateway {
                base_url,
                auth_token,
                headers,
            } => Upstream::Anthropic {
                base_url: base_url.trim_end_matches('/').to_owned(),
                auth: (
                    header::AUTHORIZATION,
                    value(format!("Bearer {auth_token}"))?,
                ),
                headers: extra(headers),
            },
            ProviderConfig::Bedrock {
                base_url,
                region,
                access_key_id,
                secret_access_key,
                session_token,
            } => Upstream::Bedrock(BedrockProvider::new(
                &base_url,
                &region,
                access_key_id,
                secret_access_key,
                session_token,
            )),
            ProviderConfig::BedrockChain { base_url, region } => {
                Upstream::Bedrock(BedrockProvider::from_chain(&base_url, &region))
            }
            ProviderConfig::Vertex {
                base_url,
                region,
                project,
                credentials_json,
            } => Upstream::Vertex(
                VertexProvider::new(&base_url, &region, &project, &credentials_json)
                    .map_err(|e| e.to_string())?,
            ),
            ProviderConfig::OpenAi { .. } => {
                return Err(
                    "the configured provider is OpenAI-compatible; the gateway speaks the \
                     Anthropic Messages API and forwards only to Anthropic, Bedrock or Vertex"
                        .into(),
                );
            }
        })
    }
}

/// One request's usage, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub user: String,
    pub token_id: i64,
    pub model: String,
    pub endpoint: &'static str,
    pub status: u16,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
}

impl UsageRecord {
    fn usage(&self, pricing: &Pricing) -> Usage {
        let mut u = Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_read_tokens: self.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens,
            cost_micros: 0,
        };
        u.cost_micros = pricing.cost_micros(&u);
        u
    }
}

/// The per-user usage table (`gateway_usage` in the hub's database, its own connection).
/// Records are written by one thread in batches, off the request path.
pub struct UsageLog {
    conn: Mutex<Connection>,
    tx: Mutex<Option<std::sync::mpsc::Sender<UsageRecord>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pricing: Pricing,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserUsage {
    pub requests: u64,
    #[serde(flatten)]
    pub usage: Usage,
}

impl UsageLog {
    pub fn open(path: &Path) -> anyhow::Result<Arc<UsageLog>> {
        use anyhow::Context;
        let open = || -> anyhow::Result<Connection> {
            let conn = Connection::open(path)
                .with_context(|| format!("opening {} for gateway usage", path.display()))?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // Usage is accounting, not an acknowledged edit: a commit is not fsynced (WAL with
            // NORMAL survives a crash of this process; a power cut may lose the last records).
            // Fsyncing every request's record cost more CPU than forwarding the request.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(conn)
        };
        let conn = open()?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS gateway_usage (
                id INTEGER PRIMARY KEY,
                ts_ms INTEGER NOT NULL,
                user_id TEXT NOT NULL,
                token_id INTEGER NOT NULL,
                model TEXT NOT NULL,
                endpoint TEXT NOT NULL,
                status INTEGER NOT NULL,
                input_tokens INTEGER NOT NULL,
                output_tokens INTEGER NOT NULL,
                cache_write_tokens INTEGER NOT NULL,
                cache_read_tokens INTEGER NOT NULL,
                cost_micros INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS gateway_usage_by_user ON gateway_usage (user_id, ts_ms);",
        )
        .context("creating the gateway usage table")?;
        let writer_conn = open()?;
        let (tx, rx) = std::sync::mpsc::channel::<UsageRecord>();
        let pricing = Pricing::default();
        let writer = std::thread::Builder::new()
            .name("gateway-usage".into())
            .spawn(move || write_usage(writer_conn, rx, pricing))
            .context("starting the usage writer")?;
        Ok(Arc::new(UsageLog {
            conn: Mutex::new(conn),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            pricing,
        }))
    }

    pub fn record(&self, r: UsageRecord) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                if tx.send(r).is_err() {
                    tracing::error!("gateway usage writer has stopped; a record is lost");
                }
            }
            None => tracing::warn!(user = %r.user, "gateway usage after shutdown not recorded"),
        }
    }

    /// Stops taking records and waits until every one taken is written.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take()
            && w.join().is_err()
        {
            tracing::error!("gateway usage writer panicked");
        }
    }

    /// Usage per user since `since_ms` (`user` limits it to one).
    pub fn by_user(
        &self,
        user: Option<&str>,
        since_ms: u64,
    ) -> rusqlite::Result<HashMap<String, UserUsage>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT user_id, count(*), sum(input_tokens), sum(output_tokens),
                    sum(cache_write_tokens), sum(cache_read_tokens), sum(cost_micros)
             FROM gateway_usage WHERE (?1 IS NULL OR user_id = ?1) AND ts_ms >= ?2
             GROUP BY user_id",
        )?;
        let rows = stmt.query_map(params![user, since_ms as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                UserUsage {
                    requests: r.get::<_, i64>(1)? as u64,
                    usage: Usage {
                        input_tokens: r.get::<_, i64>(2)? as u64,
                        output_tokens: r.get::<_, i64>(3)? as u64,
                        cache_write_tokens: r.get::<_, i64>(4)? as u64,
                        cache_read_tokens: r.get::<_, i64>(5)? as u64,
                        cost_micros: r.get::<_, i64>(6)? as u64,
                    },
                },
            ))
        })?;
        rows.collect()
    }

    pub fn pricing(&self) -> Pricing {
        self.pricing
    }
}

fn write_usage(mut conn: Connection, rx: std::sync::mpsc::Receiver<UsageRecord>, pricing: Pricing) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO gateway_usage (ts_ms, user_id, token_id, model, endpoint, status,
                       input_tokens, output_tokens, cache_write_tokens, cache_read_tokens,
                       cost_micros) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for r in &batch {
                    // Each request at its model's list prices (the model table), else the default.
                    let p = jarvis_agent::models::ModelInfo::lookup(&r.model)
                        .map_or(pricing, |m| m.pricing);
                    let u = r.usage(&p);
                    stmt.execute(params![
                        now_ms() as i64,
                        r.user,
                        r.token_id,
                        r.model,
                        r.endpoint,
                        r.status,
                        u.input_tokens as i64,
                        u.output_tokens as i64,
                        u.cache_write_tokens as i64,
                        u.cache_read_tokens as i64,
                        u.cost_micros as i64
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, records = batch.len(), "writing gateway usage failed");
        }
    }
}

pub struct Gateway {
    control: Arc<Control>,
    upstream: Result<Upstream, String>,
    limiter: RateLimiter<String>,
    pub usage: Arc<UsageLog>,
    client: reqwest::Client,
    max_body: usize,
}

impl Gateway {
    pub fn new(
        control: Arc<Control>,
        provider: Result<ProviderConfig, String>,
        usage: Arc<UsageLog>,
        args: &GatewayArgs,
    ) -> Arc<Gateway> {
        let upstream = provider.and_then(Upstream::from_config);
        if let Err(e) = &upstream {
            tracing::warn!(error = %e, "the LLM gateway has no upstream; /v1/messages will answer 503");
        }
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Arc::new(Gateway {
            control,
            upstream,
            limiter: RateLimiter::new(args.gateway_rate_burst, args.gateway_rate_per_second),
            usage,
            client,
            max_body: args.gateway_max_body,
        })
    }

    /// The member behind `x-api-key` or `Authorization: Bearer`, after their rate limit.
    fn admit(&self, headers: &HeaderMap) -> Result<Identity, GatewayError> {
        let token = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                GatewayError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "missing token: send your My Jarvis token as x-api-key or \
                     Authorization: Bearer (ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN)",
                )
            })?;
        let who = self.control.identify(token)?;
        // The one rule: writable, and a scope that covers the gateway (`gateway` or `*`); a
        // token scoped to one session cannot spend the team's model budget.
        who.may(Target::Gateway, Action::Write).map_err(|e| {
            GatewayError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("this token may not use the gateway: {e}"),
            )
        })?;
        if let Err(wait) = self.limiter.check(who.user.clone()) {
            let mut e = GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!("this user's gateway rate limit is reached; retry in {wait} s"),
            );
            e.retry_after = Some(wait);
            return Err(e);
        }
        Ok(who)
    }

    fn upstream(&self) -> Result<&Upstream, GatewayError> {
        self.upstream.as_ref().map_err(|e| {
            GatewayError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                format!("the gateway has no model provider: {e}"),
            )
        })
    }
}

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .with_state(gw)
}

/// The caller is admitted from the headers first; only then is the body read (within the
/// size limit and the idle timeout), so an anonymous client cannot make the server buffer.
async fn admit_then_read(
    gw: &Gateway,
    req: axum::extract::Request,
) -> Result<(Identity, Uri, HeaderMap, Bytes), GatewayError> {
    let limits = crate::limits::of(req.extensions());
    let (parts, body) = req.into_parts();
    let who = gw.admit(&parts.headers)?;
    let body = crate::limits::read_body(&parts.headers, body, gw.max_body, limits.body_idle)
        .await
        .map_err(|e| {
            let kind = if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "invalid_request_error"
            };
            GatewayError::new(e.status, kind, e.message)
        })?;
    Ok((who, parts.uri, parts.headers, body))
}

async fn messages(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
) -> Result<Response, GatewayError> {
    let (who, uri, headers, body) = admit_then_read(&gw, req).await?;
    forward(&gw, &who, Endpoint::Messages, &uri, &headers, body).await
}

async fn count_tokens(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
) -> Result<Response, GatewayError> {
    let (who, uri, headers, body) = admit_then_read(&gw, req).await?;
    forward(&gw, &who, Endpoint::CountTokens, &uri, &headers, body).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Messages,
    CountTokens,
}

/// Request headers passed upstream: the API's own (`anthropic-version`, `anthropic-beta`,
/// …) and content negotiation. Never the member's credentials.
fn forwarded_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("anthropic-")
        || n.starts_with("x-stainless-")
        || matches!(n, "content-type" | "accept" | "user-agent" | "x-app")
}

/// Response headers passed back: content type, request id, the API's rate-limit and retry
/// hints.
fn forwarded_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    n.starts_with("anthropic-")
        || matches!(
            n,
            "content-type" | "request-id" | "x-request-id" | "retry-after" | "x-should-retry"
        )
}

fn bad_gateway(e: impl std::fmt::Display) -> GatewayError {
    GatewayError::new(
        StatusCode::BAD_GATEWAY,
        "api_error",
        format!("the model provider could not be reached: {e}"),
    )
}

/// The two fields of a Messages request the platform providers need (the model is in their
/// URL, streaming is a different endpoint).
#[derive(Deserialize)]
struct RequestHead {
    #[serde(default)]
    model: String,
    #[serde(default)]
    stream: bool,
}

/// The body Bedrock and Vertex take: without `model`, with their `anthropic_version`, and
/// `anthropic-beta` (a header for the API) as the `anthropic_beta` list.
fn platform_body(
    body: &[u8],
    version: &str,
    keep_stream: bool,
    beta: Option<&str>,
) -> Result<(RequestHead, Vec<u8>), GatewayError> {
    let invalid = |e: serde_json::Error| {
        GatewayError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the request body is not a JSON object: {e}"),
        )
    };
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(invalid)?;
    let head = RequestHead {
        model: v
            .remove("model")
            .and_then(|m| m.as_str().map(str::to_owned))
            .unwrap_or_default(),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
    };
    if !keep_stream {
        v.remove("stream");
    }
    v.insert("anthropic_version".into(), Value::String(version.into()));
    if let Some(beta) = beta {
        let list: Vec<Value> = beta
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(|b| Value::String(b.into()))
            .collect();
        if !list.is_empty() {
            v.insert("anthropic_beta".into(), Value::Array(list));
        }
    }
    let out = serde_json::to_vec(&v).map_err(invalid)?;
    Ok((head, out))
}

async fn forward(
    gw: &Arc<Gateway>,
    who: &Identity,
    endpoint: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let upstream = gw.upstream()?;
    let mut record = UsageRecord {
        user: who.user.clone(),
        token_id: who.token_id,
        endpoint: match endpoint {
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
        },
        ..Default::default()
    };
    let beta = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
    let mut reframe_bedrock = false;
    let request = match upstream {
        Upstream::Anthropic {
            base_url,
            auth,
            headers: extra,
        } => {
            let path = uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(uri.path());
            let mut req = gw.client.post(format!("{base_url}{path}"));
            for (k, v) in headers {
                if forwarded_request_header(k) {
                    req = req.header(k, v);
                }
            }
            for (k, v) in extra {
                req = req.header(k, v);
            }
            req.header(&auth.0, &auth.1).body(body)
        }
        Upstream::Bedrock(bedrock) => {
            if endpoint == Endpoint::CountTokens {
                return Err(GatewayError::new(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    "count_tokens is not forwarded to Bedrock",
                ));
            }
            let (head, body) = platform_body(&body, "bedrock-2023-05-31", false, beta)?;
            record.model = head.model.clone();
            reframe_bedrock = head.stream;
            let url = bedrock.invoke_url(&head.model, head.stream);
            let accept = if head.stream {
                "application/vnd.amazon.eventstream"
            } else {
                "application/json"
            };
            let base = [("content-type", "application/json"), ("accept", accept)];
            bedrock.refresh_credentials().await.map_err(bad_gateway)?;
            let signed = bedrock.sign(&url, &base, &body).map_err(bad_gateway)?;
            let mut req = gw.client.post(url).body(body);
            for (k, v) in base.iter().copied() {
                req = req.header(k, v);
            }
            for (k, v) in &signed {
                req = req.header(k, v);
            }
            req
        }
        Upstream::Vertex(vertex) => {
            let token = vertex.access_token().await.map_err(bad_gateway)?;
            let (url, body) = match endpoint {
                Endpoint::Messages => {
                    let (head, body) = platform_body(&body, "vertex-2023-10-16", true, beta)?;
                    record.model = head.model.clone();
                    let action = if head.stream {
                        "streamRawPredict"
                    } else {
                        "rawPredict"
                    };
                    (
                        format!(
                            "{}/publishers/anthropic/models/{}:{action}",
                            vertex.location_url(),
                            head.model
                        ),
                        body,
                    )
                }
                Endpoint::CountTokens => {
                    // Vertex's count-tokens takes the model in the body, like the API.
                    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(&body)
                        .map_err(|e| {
                            GatewayError::new(
                                StatusCode::BAD_REQUEST,
                                "invalid_request_error",
                                format!("the request body is not a JSON object: {e}"),
                            )
                        })?;
                    v.insert(
                        "anthropic_version".into(),
                        Value::String("vertex-2023-10-16".into()),
                    );
                    (
                        format!(
                            "{}/publishers/anthropic/models/count-tokens:rawPredict",
                            vertex.location_url()
                        ),
                        serde_json::to_vec(&v).unwrap_or_default(),
                    )
                }
            };
            gw.client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
        }
    };
    let resp = request.send().await.map_err(bad_gateway)?;
    let status = resp.status();
    record.status = status.as_u16();
    let mut out = Response::builder().status(status.as_u16());
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let streamed = content_type.starts_with("text/event-stream")
        || content_type.starts_with("application/vnd.amazon.eventstream");
    if let Some(h) = out.headers_mut() {
        for (k, v) in resp.headers() {
            if forwarded_response_header(k) {
                h.insert(k, v.clone());
            }
        }
        if reframe_bedrock && status.is_success() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
        }
    }
    if endpoint == Endpoint::CountTokens || !status.is_success() || !streamed {
        // A JSON answer: small, read whole, usage taken from its `usage` object.
        let bytes = resp.bytes().await.map_err(bad_gateway)?;
        if endpoint == Endpoint::Messages
            && status.is_success()
            && let Ok(v) = serde_json::from_slice::<Value>(&bytes)
        {
            if let Some(m) = v.get("model").and_then(Value::as_str) {
                record.model = m.to_owned();
            }
            if let Some(u) = v.get("usage") {
                apply_usage(&mut record, u);
            }
        }
        if endpoint == Endpoint::Messages {
            gw.usage.record(record);
        }
        return out.body(Body::from(bytes)).map_err(bad_gateway);
    }
    let tap = UsageTap {
        parser: SseParser::new(),
        record: Some(record),
        usage: gw.usage.clone(),
    };
    let body = if reframe_bedrock {
        let stream = BedrockToSse {
            inner: Box::pin(resp.bytes_stream()),
            decoder: EventStreamDecoder::default(),
            failed: false,
        };
        Body::from_stream(Tapped {
            inner: Box::pin(stream),
            tap,
        })
    } else {
        Body::from_stream(Tapped {
            inner: Box::pin(resp.bytes_stream()),
            tap,
        })
    };
    out.body(body).map_err(bad_gateway)
}

/// Takes the counts a `usage` object carries (message_start's are the input side and a first
/// output count; message_delta's are cumulative).
fn apply_usage(record: &mut UsageRecord, u: &Value) {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(n) = get("input_tokens") {
        record.input_tokens = n;
    }
    if let Some(n) = get("output_tokens") {
        record.output_tokens = n;
    }
    if let Some(n) = get("cache_creation_input_tokens") {
        record.cache_write_tokens = n;
    }
    if let Some(n) = get("cache_read_input_tokens") {
        record.cache_read_tokens = n;
    }
}

/// Watches a passing SSE stream for usage; records it when the stream ends or is dropped
/// (a client that hangs up mid-reply still pays for what was generated).
struct UsageTap {
    parser: SseParser,
    record: Option<UsageRecord>,
    usage: Arc<UsageLog>,
}

impl UsageTap {
    fn observe(&mut self, chunk: &[u8]) {
        let Some(record) = self.record.as_mut() else {
            return;
        };
        let events = match self.parser.feed(chunk) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "gateway: unreadable SSE from upstream; usage may be incomplete");
                return;
            }
        };
        for e in events {
            match e.event.as_str() {
                "message_start" => {
                    if let Ok(v) = serde_json::from_str::<Value>(&e.data) {
                        let m = &v["message"];
                        if let Some(model) = m.get("model").and_then(Value::as_str) {
                            record.model = model.to_owned();
                        }
                        if let Some(u) = m.get("usage") {
                            apply_usage(record, u);
                        }
                    }
                }
                "message_delta" => {
                    if let Ok(v) = serde_json::from_str::<Value>(&e.data)
                        && let Some(u) = v.get("usage")
                    {
                        apply_usage(record, u);
                    }
                }
                _ => {}
            }
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            self.usage.record(r);
        }
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        self.finish();
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The upstream body, chunk by chunk, unchanged, with the usage tap looking on.
struct Tapped {
    inner: ByteStream,
    tap: UsageTap,
}

impl Stream for Tapped {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.tap.observe(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                this.tap.finish();
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// Bedrock's AWS event-stream re-framed as the API's SSE: each `chunk` message's JSON event
/// becomes `event: <type>` / `data: <json>`; an exception becomes an SSE `error` event.
struct BedrockToSse {
    inner: ByteStream,
    decoder: EventStreamDecoder,
    failed: bool,
}

impl Stream for BedrockToSse {
    type Item = reqwest::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                return Poll::Ready(None);
            }
            let chunk = match this.inner.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(c))) => c,
                other => return other,
            };
            let mut out = Vec::new();
            match this.decoder.feed(&chunk) {
                Ok(messages) => {
                    for m in &messages {
                        match bedrock_event_json(m) {
                            Ok(json) => {
                                let kind = serde_json::from_slice::<TypeOnly>(&json)
                                    .map(|t| t.kind)
                                    .unwrap_or_else(|_| "message".into());
                                out.extend_from_slice(b"event: ");
                                out.extend_from_slice(kind.as_bytes());
                                out.extend_from_slice(b"\ndata: ");
                                out.extend_from_slice(&json);
                                out.extend_from_slice(b"\n\n");
                            }
                            Err(e) => {
                                out.extend_from_slice(sse_error(&e.to_string()).as_bytes());
                                this.failed = true;
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    out.extend_from_slice(sse_error(&e).as_bytes());
                    this.failed = true;
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
        }
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

fn sse_error(message: &str) -> String {
    let e = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    format!("event: error\ndata: {e}\n\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_taken_from_start_and_delta_events_split_anywhere() {
        let events = jarvis_testkit::fake::reply("hello there", &[], (120, 42, 30, 900));
        let body = jarvis_testkit::fake::sse_body(&events);
        for split in [1, 7, 64, body.len()] {
            let dir = tempfile::tempdir().unwrap();
            let log = UsageLog::open(&dir.path().join("u.db")).unwrap();
            let mut tap = UsageTap {
                parser: SseParser::new(),
                record: Some(UsageRecord {
                    user: "u1".into(),
                    ..Default::default()
                }),
                usage: log.clone(),
            };
            for c in body.as_bytes().chunks(split) {
                tap.observe(c);
            }
            let r = tap.record.clone().unwrap();
            assert_eq!(
                (
                    r.model.as_str(),
                    r.input_tokens,
                    r.output_tokens,
                    r.cache_write_tokens,
                    r.cache_read_tokens
                ),
                ("fake-model", 120, 42, 30, 900),
                "split {split}"
            );
            drop(tap);
            log.close();
            let by = log.by_user(None, 0).unwrap();
            let u = &by["u1"];
            assert_eq!(u.requests, 1);
            // Cache writes are priced (3.75 $/Mtok here), not free.
            let p = Pricing::default();
            let want =
                (120.0 * p.input + 42.0 * p.output + 30.0 * p.cache_write + 900.0 * p.cache_read)
                    .round() as u64;
            assert_eq!(u.usage.cost_micros, want);
        }
    }

    #[test]
    fn platform_bodies_drop_the_model_and_carry_version_and_betas() {
        let (head, body) = platform_body(
            br#"{"model":"claude-x","max_tokens":5,"stream":true,"messages":[]}"#,
            "bedrock-2023-05-31",
            false,
            Some("a-1, b-2"),
        )
        .unwrap();
        assert_eq!(head.model, "claude-x");
        assert!(head.stream);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v.get("model").is_none() && v.get("stream").is_none());
        assert_eq!(v["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(v["anthropic_beta"], json!(["a-1", "b-2"]));
        assert!(platform_body(b"[1]", "v", true, None).is_err());
    }

    #[test]
    fn member_credentials_are_never_forwarded() {
        for (name, fwd) in [
            ("anthropic-version", true),
            ("anthropic-beta", true),
            ("content-type", true),
            ("x-api-key", false),
            ("authorization", false),
            ("cookie", false),
            ("host", false),
        ] {
            assert_eq!(
                forwarded_request_header(&HeaderName::from_static(name)),
                fwd,
                "{name}"
            );
        }
    }
}
