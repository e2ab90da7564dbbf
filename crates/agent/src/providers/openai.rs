//! OpenAI-compatible chat completions (Ollama, vLLM, llama.cpp): requests and replies mapped
//! to and from the Messages format, tool calls both ways.

use super::*;

pub struct OpenAiProvider {
    pub(super) client: reqwest::Client,
    pub(super) base_url: String,
    pub(super) api_key: Option<String>,
}

/// The chat-completions request for a Messages request: system first, tool results as `tool`
/// messages, tool calls as `tool_calls` with JSON-string arguments.
pub fn openai_request(request: &MessagesRequest) -> Value {
    let mut messages = Vec::new();
    let system: String = request
        .system
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(
            "

",
        );
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &request.messages {
        let mut text = String::new();
        let mut calls = Vec::new();
        for b in &m.content {
            match b {
                ContentBlock::Text { text: t, .. } => text.push_str(t),
                ContentBlock::ToolUse {
                    id, name, input, ..
                } => calls.push(json!({
                    "id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}
                })),
                ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    ..
                } => {
                    let content = if *is_error {
                        format!("Error: {content}")
                    } else {
                        content.clone()
                    };
                    messages.push(
                        json!({"role": "tool", "tool_call_id": tool_use_id, "content": content}),
                    );
                }
                ContentBlock::Thinking { .. } => {}
            }
        }
        if m.role == "assistant" {
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            messages.push(msg);
        } else if !text.is_empty() {
            messages.push(json!({"role": "user", "content": text}));
        }
    }
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}}))
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    body
}

/// Maps chat-completion chunks onto Messages stream events.
#[derive(Default)]
struct OpenAiMapper {
    started: bool,
    text_index: Option<u32>,
    /// tool call index → our content block index
    tools: BTreeMap<u64, u32>,
    next_index: u32,
    stop_reason: Option<String>,
    usage: ApiUsage,
    finished: bool,
}

impl OpenAiMapper {
    fn chunk(&mut self, v: &Value, out: &mut Vec<StreamEvent>) {
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                message: MessageStart {
                    id: v
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("chatcmpl")
                        .to_owned(),
                    model: v
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    usage: ApiUsage::default(),
                },
            });
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage.input_tokens = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
            self.usage.output_tokens = u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            self.usage.cache_read_input_tokens = u
                .pointer("/prompt_tokens_details/cached_tokens")
                .and_then(Value::as_u64);
        }
        let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
            return;
        };
        let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.text_index {
                Some(i) => i,
                None => {
                    let i = self.next_index;
                    self.next_index += 1;
                    self.text_index = Some(i);
                    out.push(StreamEvent::ContentBlockStart {
                        index: i,
                        content_block: BlockStart::Text {
                            text: String::new(),
                        },
                    });
                    i
                }
            };
            out.push(StreamEvent::ContentBlockDelta {
                index,
                delta: Delta::TextDelta { text: t.to_owned() },
            });
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let index = match self.tools.get(&i) {
                Some(ix) => *ix,
                None => {
                    let ix = self.next_index;
                    self.next_index += 1;
                    self.tools.insert(i, ix);
                    out.push(StreamEvent::ContentBlockStart {
                        index: ix,
                        content_block: BlockStart::ToolUse {
                            id: call
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or("call")
                                .to_owned(),
                            name: call
                                .pointer("/function/name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        },
                    });
                    ix
                }
            };
            if let Some(args) = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                out.push(StreamEvent::ContentBlockDelta {
                    index,
                    delta: Delta::InputJsonDelta {
                        partial_json: args.to_owned(),
                    },
                });
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(match reason {
                "tool_calls" | "function_call" => "tool_use".into(),
                "length" => "max_tokens".into(),
                _ => "end_turn".into(),
            });
        }
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        for index in 0..self.next_index {
            out.push(StreamEvent::ContentBlockStop { index });
        }
        out.push(StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: self.stop_reason.clone(),
            },
            usage: self.usage,
        });
        out.push(StreamEvent::MessageStop);
    }
}

impl Provider for OpenAiProvider {
    fn stream<'a>(
        &'a self,
        request: &'a MessagesRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<EventStream, ProviderError>> {
        Box::pin(async move {
            let mut req = self
                .client
                .post(format!("{}/v1/chat/completions", self.base_url))
                .json(&openai_request(request));
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let resp = tokio::select! {
                r = req.send() => r.map_err(|e| ProviderError::Http(e.to_string()))?,
                _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
            };
            let resp = check_status(resp).await?;
            Ok(openai_events(resp.bytes_stream(), cancel))
        })
    }
}

fn openai_events<S, B, E>(body: S, cancel: CancellationToken) -> EventStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send,
    E: std::fmt::Display + Send,
{
    let mut parser = SseParser::new();
    let mut mapper = OpenAiMapper::default();
    decode_stream(body, cancel, move |chunk| {
        let mut out = Vec::new();
        let Some(chunk) = chunk else {
            // Some servers end the body without `[DONE]` once they sent a finish reason.
            if mapper.stop_reason.is_some() {
                mapper.finish(&mut out);
            }
            return out.into_iter().map(Ok).collect();
        };
        let events = match parser.feed(chunk) {
            Ok(e) => e,
            Err(e) => return vec![Err(ProviderError::Malformed(e.to_string()))],
        };
        let mut results = Vec::new();
        for e in events {
            if e.data.trim() == "[DONE]" {
                mapper.finish(&mut out);
            } else {
                match serde_json::from_str::<Value>(&e.data) {
                    Ok(v) => mapper.chunk(&v, &mut out),
                    Err(err) => {
                        results.extend(out.drain(..).map(Ok));
                        results.push(Err(ProviderError::Malformed(format!("chunk: {err}"))));
                        return results;
                    }
                }
            }
            results.extend(out.drain(..).map(Ok));
        }
        results
    })
}
