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

mod error;
mod stream;
mod upstream;
pub mod usage;

pub use error::GatewayError;
pub use usage::{UsageLog, UsageRecord, UserUsage};

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use jarvis_agent::providers::{EventStreamDecoder, ProviderConfig};
use jarvis_agent::sse::SseParser;
use serde::Deserialize;
use serde_json::Value;

use axum::Router;
use axum::extract::State;
use axum::routing::post;

use crate::access::{Action, Target};
use crate::control::{Control, Identity};
use crate::gateway::stream::BedrockToSse;
use crate::gateway::upstream::Upstream;
use crate::gateway::usage::{Tapped, UsageTap, apply_usage};
use crate::http::limiter::RateLimiter;

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
    let (parts, body) = req.into_parts();
    let who = gw.admit(&parts.headers)?;
    let body = crate::limits::read_body(&parts.headers, body, gw.max_body)
        .await
        .map_err(|e| {
            let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "request_too_large"
            } else {
                "invalid_request_error"
            };
            GatewayError::new(e.status(), kind, e.message)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

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
