//! A fake Anthropic Messages server for tests of every crate: real HTTP/1.1 on 127.0.0.1:0, real
//! SSE bodies sent in chunks split wherever the test says (inside events, inside UTF-8
//! characters), optional pauses between chunks, and every request recorded. Built on a bare
//! Tokio listener (no web framework). It lived in the production `jarvis-agent` library until
//! the test kit took it out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Vec<u8>>,
    pub chunk_delay: Duration,
}

impl FakeResponse {
    /// An SSE reply split into chunks of the given sizes (cycled).
    pub fn sse(events: &[Value], chunk_sizes: &[usize]) -> Self {
        FakeResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: split(sse_body(events).as_bytes(), chunk_sizes),
            chunk_delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &str) -> Self {
        FakeResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.as_bytes().to_vec()],
            chunk_delay: Duration::ZERO,
        }
    }

    pub fn with_delay(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// Sends the chunks, then closes the connection without ending the body (a connection
    /// dropped mid-stream).
    pub fn with_dropped_connection(self) -> Self {
        self.with_header(DROP_HEADER, "1")
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// Internal marker of [`FakeResponse::with_dropped_connection`]; never sent.
const DROP_HEADER: &str = "x-fake-drop-connection";

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub raw_body: Vec<u8>,
}

/// Serialises events as the API does: `event: <type>` then `data: <json>`, blank line.
pub fn sse_body(events: &[Value]) -> String {
    let mut out = String::new();
    for e in events {
        let kind = e.get("type").and_then(Value::as_str).unwrap_or("message");
        out.push_str(&format!("event: {kind}\ndata: {e}\n\n"));
    }
    out
}

pub fn split(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < bytes.len() {
        let n = sizes
            .get(k % sizes.len().max(1))
            .copied()
            .unwrap_or(bytes.len())
            .max(1);
        out.push(bytes[i..(i + n).min(bytes.len())].to_vec());
        i += n;
        k += 1;
    }
    out
}

/// The events of one reply: optional text, then optional tool calls, with usage.
pub fn reply(text: &str, tools: &[(&str, &str, Value)], usage: (u64, u64, u64, u64)) -> Vec<Value> {
    let (input, output, cache_write, cache_read) = usage;
    let mut ev = vec![json!({
        "type": "message_start",
        "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": "fake-model",
            "content": [], "stop_reason": null,
            "usage": {"input_tokens": input, "output_tokens": 1,
                      "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read}}
    })];
    let mut index = 0;
    if !text.is_empty() {
        ev.push(json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}));
        ev.push(json!({"type": "ping"}));
        // Stream the text in a few deltas, as the API does.
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(5) {
            let s: String = piece.iter().collect();
            ev.push(json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": s}}));
        }
        ev.push(json!({"type": "content_block_stop", "index": index}));
        index += 1;
    }
    for (id, name, input) in tools {
        ev.push(json!({"type": "content_block_start", "index": index,
            "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
        let s = input.to_string();
        let (a, b) = s.split_at(s.len() / 2);
        for part in [a, b] {
            ev.push(json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "input_json_delta", "partial_json": part}}));
        }
        ev.push(json!({"type": "content_block_stop", "index": index}));
        index += 1;
    }
    let stop = if tools.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    ev.push(
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
        "usage": {"output_tokens": output}}),
    );
    ev.push(json!({"type": "message_stop"}));
    ev
}

impl FakeResponse {
    /// Bedrock's invoke-with-response-stream body: each Messages event base64'd inside a
    /// `chunk` event of the AWS event-stream framing, split into the given chunk sizes.
    pub fn bedrock(events: &[Value], chunk_sizes: &[usize]) -> Self {
        use base64::Engine;
        let mut body = Vec::new();
        for e in events {
            let payload =
                json!({"bytes": base64::engine::general_purpose::STANDARD.encode(e.to_string())});
            body.extend(encode_event_message(
                &[
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                payload.to_string().as_bytes(),
            ));
        }
        FakeResponse {
            status: 200,
            headers: vec![(
                "content-type".into(),
                "application/vnd.amazon.eventstream".into(),
            )],
            chunks: split(&body, chunk_sizes),
            chunk_delay: Duration::ZERO,
        }
    }

    /// An OpenAI chat-completions stream with the same text and tool calls as [`reply`].
    pub fn openai(text: &str, tools: &[(&str, &str, Value)], chunk_sizes: &[usize]) -> Self {
        let mut chunks = vec![
            json!({"id": "chatcmpl-1", "model": "local", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
        ];
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(4) {
            let s: String = piece.iter().collect();
            chunks.push(
                json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": s}}]}),
            );
        }
        for (i, (id, name, input)) in tools.iter().enumerate() {
            let args = input.to_string();
            let (a, b) = args.split_at(args.len() / 2);
            chunks.push(json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": a}}]}}]}));
            chunks.push(
                json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": i, "function": {"arguments": b}}]}}]}),
            );
        }
        let finish = if tools.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        chunks.push(json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}));
        chunks.push(json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}));
        let mut body = String::new();
        for c in chunks {
            body.push_str(&format!("data: {c}\n\n"));
        }
        body.push_str("data: [DONE]\n\n");
        FakeResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: split(body.as_bytes(), chunk_sizes),
            chunk_delay: Duration::ZERO,
        }
    }
}

/// One message of the AWS event-stream framing (prelude with total and header lengths and its
/// CRC, string headers, payload, message CRC), written here from the format's description rather
/// than taken from the agent's decoder, so the fake checks the decoder instead of mirroring it.
pub fn encode_event_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    const STRING: u8 = 7;
    let mut h = Vec::new();
    for (k, v) in headers {
        h.push(k.len() as u8);
        h.extend_from_slice(k.as_bytes());
        h.push(STRING);
        h.extend_from_slice(&(v.len() as u16).to_be_bytes());
        h.extend_from_slice(v.as_bytes());
    }
    // Prelude (8) + prelude CRC (4) + headers + payload + message CRC (4).
    let total = 8 + 4 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

/// A scripted answer of text only, usage (10, 5, 0, 0), in one chunk.
pub fn text(t: &str) -> FakeResponse {
    FakeResponse::sse(&reply(t, &[], (10, 5, 0, 0)), &[4096])
}

/// A scripted answer that calls one tool, usage (10, 5, 0, 0), in one chunk.
pub fn tool(id: &str, name: &str, input: Value) -> FakeResponse {
    FakeResponse::sse(&reply("", &[(id, name, input)], (10, 5, 0, 0)), &[4096])
}

/// [`tool`] for the `bash` tool running `command`.
pub fn bash(id: &str, command: &str) -> FakeResponse {
    tool(id, "bash", json!({"command": command}))
}

/// Answers a request the script has no entry for (clients that send requests of their own
/// choosing, such as the Claude Code CLI).
pub type Responder = Arc<dyn Fn(&RecordedRequest) -> FakeResponse + Send + Sync>;

/// How a [`FakeServer`] behaves beyond its script.
#[derive(Clone, Default)]
pub struct FakeOptions {
    /// Keep connections open for further requests (HTTP/1.1 keep-alive) instead of closing
    /// after each answer; benchmarks use it so connection set-up is not measured.
    pub keep_alive: bool,
    /// Used once the script is empty; without it an exhausted script answers 500.
    pub responder: Option<Responder>,
}

/// The fake's token rule: one token per 4 bytes of the request body as sent (rounded up).
/// The runner's estimate uses the same rule (`compaction::BYTES_PER_TOKEN`), anchored on the
/// counts this server reports, so the meter can be checked against it.
pub fn count_tokens(raw_body: &[u8]) -> u64 {
    (raw_body.len() as u64).div_ceil(jarvis_agent::compaction::BYTES_PER_TOKEN)
}

/// The real API's answer to a prompt over the window.
pub fn prompt_too_long(tokens: u64, window: u64) -> FakeResponse {
    FakeResponse::raw(
        400,
        &json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": format!("prompt is too long: {tokens} tokens > {window} maximum")}})
        .to_string(),
    )
}

pub struct FakeServer {
    pub addr: SocketAddr,
    /// See [`FakeServer::set_context_window`]; 0: no window.
    context_window: Arc<std::sync::atomic::AtomicU64>,
    script: Arc<Mutex<VecDeque<FakeResponse>>>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(script: Vec<FakeResponse>) -> std::io::Result<Self> {
        Self::start_with(script, FakeOptions::default()).await
    }

    /// A server with no script that answers every request with `f` (a fake API of the test's
    /// own making: GitHub, a provider that decides per request).
    pub async fn answering<F>(f: F) -> std::io::Result<Self>
    where
        F: Fn(&RecordedRequest) -> FakeResponse + Send + Sync + 'static,
    {
        Self::start_with(
            Vec::new(),
            FakeOptions {
                keep_alive: false,
                responder: Some(Arc::new(f)),
            },
        )
        .await
    }

    pub async fn start_with(
        script: Vec<FakeResponse>,
        options: FakeOptions,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let context_window = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, r, w) = (script.clone(), requests.clone(), context_window.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let (s, r, o, w) = (s.clone(), r.clone(), options.clone(), w.clone());
                tokio::spawn(async move {
                    let _ = serve(sock, s, r, o, w).await;
                });
            }
        });
        Ok(FakeServer {
            addr,
            context_window,
            script,
            requests,
            task,
        })
    }

    /// The model's context window in tokens, counted by [`count_tokens`]. With it, the server
    /// answers `POST /v1/messages/count_tokens`, and a Messages request over the window gets
    /// the real API's `400 invalid_request_error` "prompt is too long" (never a script entry).
    pub fn set_context_window(&self, tokens: u64) {
        self.context_window
            .store(tokens, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, r: FakeResponse) {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(r);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn serve(
    mut sock: tokio::net::TcpStream,
    script: Arc<Mutex<VecDeque<FakeResponse>>>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    options: FakeOptions,
    context_window: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let header_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < header_end + len {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let end = (header_end + len).min(buf.len());
        let raw_body = buf[header_end..end].to_vec();
        buf.drain(..end);
        let body = serde_json::from_slice(&raw_body).unwrap_or(Value::Null);
        let request = RecordedRequest {
            method,
            path,
            headers,
            body,
            raw_body,
        };
        let window = context_window.load(std::sync::atomic::Ordering::Relaxed);
        let counted = (window > 0).then_some(window).and_then(|window| {
            let tokens = count_tokens(&request.raw_body);
            if request.path.starts_with("/v1/messages/count_tokens") {
                Some(FakeResponse::raw(
                    200,
                    &json!({"input_tokens": tokens}).to_string(),
                ))
            } else if tokens > window {
                Some(prompt_too_long(tokens, window))
            } else {
                None
            }
        });
        let scripted = match counted {
            Some(r) => Some(r),
            None => script.lock().unwrap_or_else(|p| p.into_inner()).pop_front(),
        };
        let resp = scripted
            .or_else(|| options.responder.as_ref().map(|f| f(&request)))
            .unwrap_or_else(|| FakeResponse::raw(500, r#"{"type":"error","error":{"type":"api_error","message":"fake script exhausted"}}"#));
        requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
        let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in resp.headers.iter().filter(|(k, _)| k != DROP_HEADER) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let close = if options.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        head.push_str(&format!(
            "transfer-encoding: chunked\r\nconnection: {close}\r\n\r\n"
        ));
        sock.write_all(head.as_bytes()).await?;
        for c in &resp.chunks {
            if !resp.chunk_delay.is_zero() {
                tokio::time::sleep(resp.chunk_delay).await;
            }
            sock.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                .await?;
            sock.write_all(c).await?;
            sock.write_all(b"\r\n").await?;
            sock.flush().await?;
        }
        if resp.headers.iter().any(|(k, _)| k == DROP_HEADER) {
            // The connection dies mid-body: no terminating chunk.
            return Ok(());
        }
        sock.write_all(b"0\r\n\r\n").await?;
        sock.flush().await?;
        if !options.keep_alive {
            return Ok(());
        }
    }
}
