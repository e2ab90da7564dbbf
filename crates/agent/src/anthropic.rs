//! The Anthropic Messages API wire format (streaming), and the provider that speaks it directly
//! or through an LLM gateway: request types with prompt-cache breakpoints, stream events, HTTP
//! with retries on overload, cancellation.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::sse::SseParser;

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheControl {
    #[serde(rename = "type")]
    pub kind: CacheKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    Ephemeral,
}

impl CacheControl {
    pub fn ephemeral() -> Option<Self> {
        Some(CacheControl {
            kind: CacheKind::Ephemeral,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemBlock {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<CacheControl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Thinking {
        thinking: String,
        signature: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
        #[serde(default)]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
}

impl ContentBlock {
    fn set_cache_control(&mut self, c: Option<CacheControl>) -> bool {
        match self {
            ContentBlock::Text { cache_control, .. }
            | ContentBlock::ToolUse { cache_control, .. }
            | ContentBlock::ToolResult { cache_control, .. } => {
                *cache_control = c;
                true
            }
            // Thinking blocks cannot carry a breakpoint.
            ContentBlock::Thinking { .. } => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiMessage {
    pub role: String,
    pub content: Vec<ContentBlock>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system: Vec<SystemBlock>,
    pub messages: Vec<ApiMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    pub stream: bool,
}

impl MessagesRequest {
    /// Places prompt-cache breakpoints: after the tools, after the system prompt, and on the
    /// last block of the conversation (the moving tail), so each turn reads the previous turn's
    /// prefix from cache and writes only the new part. Four is the API's limit; we use three.
    pub fn with_cache_breakpoints(mut self) -> Self {
        for t in &mut self.tools {
            t.cache_control = None;
        }
        if let Some(t) = self.tools.last_mut() {
            t.cache_control = CacheControl::ephemeral();
        }
        if let Some(s) = self.system.last_mut() {
            s.cache_control = CacheControl::ephemeral();
        }
        if let Some(m) = self.messages.last_mut() {
            for b in m.content.iter_mut().rev() {
                if b.set_cache_control(CacheControl::ephemeral()) {
                    break;
                }
            }
        }
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageStart {
    pub id: String,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub usage: ApiUsage,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockStart {
    Text {
        #[serde(default)]
        text: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        #[serde(default)]
        data: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Delta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ApiErrorBody {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// One streamed event, provider-neutral (every provider maps its stream onto these).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: MessageStart,
    },
    ContentBlockStart {
        index: u32,
        content_block: BlockStart,
    },
    ContentBlockDelta {
        index: u32,
        delta: Delta,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: ApiUsage,
    },
    MessageStop,
    Ping,
    Error {
        error: ApiErrorBody,
    },
    #[serde(other)]
    Unknown,
}

/// The hot event, as a plain struct: serde decodes internally tagged enums through an
/// intermediate buffer, which for the one event type that arrives thousands of times a reply
/// costs more than everything else the loop does.
#[derive(Deserialize)]
struct TextDeltaEvent<'a> {
    index: u32,
    #[serde(borrow)]
    delta: TextDeltaBody<'a>,
}

#[derive(Deserialize)]
struct TextDeltaBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    text: std::borrow::Cow<'a, str>,
}

impl StreamEvent {
    /// Parses one event's JSON, taking a fast path for text deltas.
    pub fn parse(data: &str) -> Result<StreamEvent, serde_json::Error> {
        if data.contains("\"text_delta\"")
            && let Ok(ev) = serde_json::from_str::<TextDeltaEvent<'_>>(data)
            && ev.delta.kind == "text_delta"
        {
            return Ok(StreamEvent::ContentBlockDelta {
                index: ev.index,
                delta: Delta::TextDelta {
                    text: ev.delta.text.into_owned(),
                },
            });
        }
        serde_json::from_str(data)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("provider answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("malformed stream: {0}")]
    Malformed(String),
    #[error("the stream ended before message_stop")]
    Truncated,
    #[error("provider error {kind}: {message}")]
    Api { kind: String, message: String },
    #[error("cancelled")]
    Cancelled,
    #[error("configuration: {0}")]
    Config(String),
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;
pub type BoxFuture<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A model provider: takes a Messages request, returns the event stream.
pub trait Provider: Send + Sync {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>>;
}

/// Retry policy for overload answers (429, 529, 503) before a stream starts.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// Direct Anthropic API or a gateway speaking the same wire format.
pub struct AnthropicProvider {
    client: reqwest::Client,
    base_url: String,
    /// `x-api-key` for the API, or `Authorization: Bearer` for a gateway token.
    auth: Auth,
    extra_headers: BTreeMap<String, String>,
    retry: Retry,
}

#[derive(Debug, Clone)]
pub enum Auth {
    ApiKey(String),
    Bearer(String),
}

impl AnthropicProvider {
    pub fn new(base_url: &str, auth: Auth, extra_headers: BTreeMap<String, String>) -> Self {
        AnthropicProvider {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth,
            extra_headers,
            retry: Retry::default(),
        }
    }

    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    async fn open(
        &self,
        request: &MessagesRequest,
        cancel: &CancellationToken,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut attempt = 0;
        loop {
            let mut req = self
                .client
                .post(format!("{}/v1/messages", self.base_url))
                .header("anthropic-version", ANTHROPIC_VERSION)
                .header("content-type", "application/json")
                .json(request);
            req = match &self.auth {
                Auth::ApiKey(k) => req.header("x-api-key", k),
                Auth::Bearer(t) => req.bearer_auth(t),
            };
            for (k, v) in &self.extra_headers {
                req = req.header(k, v);
            }
            let resp = tokio::select! {
                r = req.send() => r.map_err(|e| ProviderError::Http(e.to_string()))?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let status = resp.status().as_u16();
            if resp.status().is_success() {
                return Ok(resp);
            }
            let overloaded = matches!(status, 429 | 503 | 529);
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .map(Duration::from_secs_f64);
            let body = resp.text().await.unwrap_or_default();
            attempt += 1;
            if !overloaded || attempt >= self.retry.attempts {
                return Err(ProviderError::Status { status, body });
            }
            let backoff = self
                .retry
                .base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.retry.max);
            let wait = retry_after.unwrap_or(backoff).min(self.retry.max);
            tracing::warn!(status, attempt, ?wait, "provider overloaded; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            }
        }
    }
}

impl Provider for AnthropicProvider {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(async move {
            let resp = self.open(request, &cancel).await?;
            Ok(sse_events(resp.bytes_stream(), cancel))
        })
    }
}

/// Turns a response body into stream events through `decode`, which gets each chunk (and
/// `None` once the body ends) and returns the events it completes. The stream ends after
/// `message_stop` or the first error; a body that ends before `message_stop` (and that the
/// decoder cannot finish) ends with `Truncated`; cancellation ends it with `Cancelled`.
pub fn decode_stream<S, B, E, D>(body: S, cancel: CancellationToken, decode: D) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
    D: FnMut(Option<&[u8]>) -> Vec<Result<StreamEvent, ProviderError>> + Send + 'static,
{
    struct State<S, D> {
        body: Pin<Box<S>>,
        decode: D,
        queue: std::collections::VecDeque<Result<StreamEvent, ProviderError>>,
        done: bool,
        cancel: CancellationToken,
    }
    let state = State {
        body: Box::pin(body),
        decode,
        queue: Default::default(),
        done: false,
        cancel,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.queue.pop_front() {
                if matches!(item, Ok(StreamEvent::MessageStop) | Err(_)) {
                    st.done = true;
                    st.queue.clear();
                }
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            let chunk = tokio::select! {
                c = st.body.next() => c,
                _ = st.cancel.cancelled() => {
                    st.done = true;
                    return Some((Err(ProviderError::Cancelled), st));
                }
            };
            match chunk {
                Some(Ok(bytes)) => {
                    let events = (st.decode)(Some(bytes.as_ref()));
                    st.queue.extend(events);
                }
                Some(Err(e)) => st.queue.push_back(Err(ProviderError::Http(e.to_string()))),
                None => {
                    let tail = (st.decode)(None);
                    if tail.is_empty() {
                        st.queue.push_back(Err(ProviderError::Truncated));
                    }
                    st.queue.extend(tail);
                }
            }
        }
    }))
}

/// An SSE body of Messages events (the Anthropic API, gateways, Vertex).
pub fn sse_events<S, B, E>(body: S, cancel: CancellationToken) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
{
    let mut parser = SseParser::new();
    decode_stream(body, cancel, move |chunk| {
        let Some(chunk) = chunk else {
            return Vec::new();
        };
        match parser.feed(chunk) {
            Ok(events) => events
                .iter()
                .map(|e| {
                    StreamEvent::parse(&e.data).map_err(|err| {
                        ProviderError::Malformed(format!("event {}: {err}", e.event))
                    })
                })
                .collect(),
            Err(e) => vec![Err(ProviderError::Malformed(e.to_string()))],
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_and_unknowns_are_tolerated() {
        let cases = [
            (
                r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":5,"cache_read_input_tokens":100}}}"#,
                "MessageStart",
            ),
            (
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                "ContentBlockStart",
            ),
            (
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"x"}}"#,
                "ContentBlockStart",
            ),
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"citations_delta"}}"#,
                "ContentBlockDelta",
            ),
            (
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":42}}"#,
                "MessageDelta",
            ),
            (r#"{"type":"brand_new_event","x":1}"#, "Unknown"),
            (
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                "Error",
            ),
        ];
        for (json, want) in cases {
            let ev: StreamEvent = serde_json::from_str(json).unwrap();
            assert!(format!("{ev:?}").starts_with(want), "{json} -> {ev:?}");
        }
    }

    #[test]
    fn fast_path_agrees_with_the_general_parser() {
        for json in [
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"hé\"llo\n"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"text_delta\""}}"#,
            r#"{"delta":{"text":"x","type":"text_delta"},"index":1,"type":"content_block_delta"}"#,
        ] {
            assert_eq!(
                StreamEvent::parse(json).unwrap(),
                serde_json::from_str::<StreamEvent>(json).unwrap(),
                "{json}"
            );
        }
    }

    #[test]
    fn cache_breakpoints_on_tools_system_and_tail() {
        let req = MessagesRequest {
            model: "m".into(),
            max_tokens: 10,
            system: vec![SystemBlock {
                kind: "text".into(),
                text: "sys".into(),
                cache_control: None,
            }],
            messages: vec![ApiMessage {
                role: "user".into(),
                content: vec![ContentBlock::Text {
                    text: "hi".into(),
                    cache_control: None,
                }],
            }],
            tools: vec![
                ToolDef {
                    name: "a".into(),
                    description: String::new(),
                    input_schema: serde_json::json!({}),
                    cache_control: None,
                },
                ToolDef {
                    name: "b".into(),
                    description: String::new(),
                    input_schema: serde_json::json!({}),
                    cache_control: None,
                },
            ],
            stream: true,
        }
        .with_cache_breakpoints();
        let json = serde_json::to_value(&req).unwrap();
        assert!(json["tools"][0].get("cache_control").is_none());
        assert_eq!(json["tools"][1]["cache_control"]["type"], "ephemeral");
        assert_eq!(json["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(
            json["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
    }
}
