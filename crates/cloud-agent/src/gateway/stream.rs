//! Bedrock's AWS event-stream re-framed as the Anthropic API's server-sent events.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use jarvis_agent::providers::{EventStreamDecoder, bedrock_event_json};
use serde::Deserialize;
use serde_json::json;

use crate::gateway::usage::ByteStream;

/// Bedrock's AWS event-stream re-framed as the API's SSE: each `chunk` message's JSON event
/// becomes `event: <type>` / `data: <json>`; an exception becomes an SSE `error` event.
pub(crate) struct BedrockToSse {
    pub(crate) inner: ByteStream,
    pub(crate) decoder: EventStreamDecoder,
    pub(crate) failed: bool,
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
pub(crate) struct TypeOnly {
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

pub(crate) fn sse_error(message: &str) -> String {
    let e = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    format!("event: error\ndata: {e}\n\n")
}
