//! Streaming a reply into the session document: small batched writes, retries of a stream that
//! fails part-way, a reply cut at `max_tokens`, usage per message.

use super::*;

impl<'a> Runner<'a> {
    /// Streams one reply into a new assistant message; a stream that fails part-way
    /// (overloaded, connection dropped) is retried with backoff into the same message, its
    /// partial blocks removed first, so the document holds one full reply.
    pub(super) async fn stream_reply(
        &mut self,
        request: &MessagesRequest,
        cancel: &CancellationToken,
    ) -> Result<Streamed, String> {
        let mut msg_id: Option<String> = None;
        let mut attempt = 0;
        loop {
            let err = match self.stream_attempt(request, cancel, &mut msg_id).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            if self.fenced() {
                return Ok(Streamed::Fenced);
            }
            if !retryable(&err) || attempt >= self.config.stream_retries {
                return Err(err.to_string());
            }
            attempt += 1;
            tracing::warn!(error = %err, attempt, "the reply stream failed part-way; retrying");
            if let Some(id) = &msg_id {
                self.session.clear_blocks(id).map_err(|e| e.to_string())?;
            }
            match self.backoff(attempt, cancel).await {
                Ok(()) => {}
                Err(Compacted::LeaseLost) => return Ok(Streamed::Fenced),
                Err(Compacted::Yielded) => {
                    if let Some(id) = &msg_id {
                        self.session.mark_cut(id).map_err(|e| e.to_string())?;
                    }
                    return Ok(Streamed::Cut);
                }
                Err(_) => return Ok(Streamed::Interrupted),
            }
        }
    }

    /// One attempt of [`Runner::stream_reply`]; `msg_id` is the assistant message, created on
    /// the first attempt that gets a stream and reused by retries.
    pub(super) async fn stream_attempt(
        &mut self,
        request: &MessagesRequest,
        cancel: &CancellationToken,
        msg_id: &mut Option<String>,
    ) -> Result<Streamed, ProviderError> {
        let doc_err = |e: jarvis_sync::doc::DocError| ProviderError::Malformed(e.to_string());
        let mut stream = tokio::select! {
            biased;
            _ = self.fence.cancelled() => return Ok(Streamed::Fenced),
            _ = self.stop.cancelled() => return Ok(Streamed::Cut),
            s = self.provider.stream(request, cancel.clone()) => match s {
                Ok(s) => s,
                Err(ProviderError::Cancelled) => return Ok(Streamed::Interrupted),
                Err(e) if compaction::is_prompt_too_long(&e) => return Ok(Streamed::TooLong),
                Err(e) => return Err(e),
            },
        };
        let msg_id = match msg_id {
            Some(id) => id.clone(),
            None => {
                let id = new_id("a-");
                self.session
                    .append_message(&Message {
                        id: id.clone(),
                        role: Role::Assistant,
                        author: self.config.device.clone(),
                        created_ms: now_ms(),
                        blocks: vec![],
                    })
                    .map_err(doc_err)?;
                *msg_id = Some(id.clone());
                id
            }
        };
        let mut state = StreamState::default();
        // One cancellation future for the whole stream: making a new one per event costs a
        // waiter registration and removal each time.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let fenced = self.fence.clone();
        let fenced = fenced.cancelled();
        tokio::pin!(fenced);
        let stopped = self.stop.clone();
        let stopped = stopped.cancelled();
        tokio::pin!(stopped);
        let result = loop {
            let next = tokio::select! {
                biased;
                _ = &mut fenced => return Ok(Streamed::Fenced),
                _ = &mut cancelled => break Ok(Streamed::Interrupted),
                _ = &mut stopped => break Ok(Streamed::Cut),
                n = stream.next() => n,
            };
            let event = match next {
                Some(Ok(e)) => e,
                Some(Err(ProviderError::Cancelled)) => break Ok(Streamed::Interrupted),
                Some(Err(e)) => break Err(e),
                None => break Err(ProviderError::Truncated),
            };
            match event {
                StreamEvent::MessageStart { message } => state.usage = message.usage,
                StreamEvent::ContentBlockStart {
                    index,
                    content_block,
                } => {
                    let open = match content_block {
                        BlockStart::Text { text } => {
                            let b = self
                                .session
                                .append_block(
                                    &msg_id,
                                    &Block::Text {
                                        text: String::new(),
                                    },
                                )
                                .map_err(doc_err)?;
                            Open::Text(b, text)
                        }
                        BlockStart::Thinking { thinking } => {
                            let b = self
                                .session
                                .append_block(
                                    &msg_id,
                                    &Block::Thinking {
                                        text: String::new(),
                                        signature: None,
                                    },
                                )
                                .map_err(doc_err)?;
                            Open::Thinking(b, thinking)
                        }
                        BlockStart::ToolUse { id, name } => Open::Tool {
                            id,
                            name,
                            json: String::new(),
                        },
                        BlockStart::RedactedThinking { .. } | BlockStart::Unknown => Open::Ignored,
                    };
                    state.open.insert(index, open);
                    // The first delta of a block is written at once (first token latency);
                    // later ones are batched.
                    state.last_flush = None;
                }
                StreamEvent::ContentBlockDelta { index, delta } => {
                    match (state.open.get_mut(&index), delta) {
                        (Some(Open::Text(_, buf)), Delta::TextDelta { text }) => {
                            buf.push_str(&text);
                            if self.events.is_some() {
                                self.emit(RunEvent::Text(text));
                            }
                        }
                        (Some(Open::Thinking(_, buf)), Delta::ThinkingDelta { thinking }) => {
                            buf.push_str(&thinking)
                        }
                        (Some(Open::Thinking(b, _)), Delta::SignatureDelta { signature }) => {
                            self.session
                                .set_thinking_signature(b, &signature)
                                .map_err(doc_err)?;
                        }
                        (Some(Open::Tool { json, .. }), Delta::InputJsonDelta { partial_json }) => {
                            json.push_str(&partial_json)
                        }
                        _ => {}
                    }
                    if state.since_flush() >= self.config.flush_interval {
                        self.flush(&mut state).map_err(ProviderError::Malformed)?;
                    }
                }
                StreamEvent::ContentBlockStop { index } => {
                    self.flush(&mut state).map_err(ProviderError::Malformed)?;
                    if let Some(Open::Tool { id, name, json }) = state.open.remove(&index) {
                        // Held until the reply ends: a call whose input was cut by max_tokens
                        // is recorded as cut, not run with half its input.
                        state.tools.push((id, name, json));
                    }
                }
                StreamEvent::MessageDelta { delta, usage } => {
                    merge_usage(&mut state.usage, &usage);
                    state.stop_reason = delta.stop_reason;
                }
                StreamEvent::MessageStop => break Ok(Streamed::Complete),
                StreamEvent::Error { error } => {
                    break Err(ProviderError::Api {
                        kind: error.kind,
                        message: error.message,
                    });
                }
                StreamEvent::Ping | StreamEvent::Unknown => {}
            }
        };
        if self.fenced() {
            return Ok(Streamed::Fenced);
        }
        // Whatever happened, the text streamed so far stays in the transcript (a retry clears
        // it before streaming again).
        self.flush(&mut state).map_err(ProviderError::Malformed)?;
        let result = match result {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        let cut_by_limit = state.stop_reason.as_deref() == Some("max_tokens");
        // Tool calls still open when the stream ended were cut mid-input too.
        let mut tools = std::mem::take(&mut state.tools);
        let mut still_open: Vec<_> = state.open.drain().collect();
        still_open.sort_by_key(|(i, _)| *i);
        for (_, open) in still_open {
            if let Open::Tool { id, name, json } = open {
                tools.push((id, name, json));
            }
        }
        let mut cut_calls = Vec::new();
        for (id, name, json) in tools {
            let complete = json.trim().is_empty()
                || serde_json::from_str::<Value>(&json).is_ok_and(|v| v.is_object());
            let input = if json.trim().is_empty() {
                "{}".to_owned()
            } else {
                json
            };
            let cut = cut_by_limit && !complete;
            if !cut {
                self.emit(RunEvent::ToolUse {
                    id: id.clone(),
                    name: name.clone(),
                    input: input.clone(),
                });
            }
            self.session
                .append_block(
                    &msg_id,
                    &Block::ToolUse {
                        id: id.clone(),
                        name,
                        input,
                        status: if cut { "cut" } else { "pending" }.into(),
                    },
                )
                .map_err(doc_err)?;
            if cut {
                cut_calls.push(id);
            }
        }
        self.record_usage(&msg_id, &state.usage);
        self.meter.observe(
            request,
            state.usage.input_tokens
                + state.usage.cache_read_input_tokens.unwrap_or(0)
                + state.usage.cache_creation_input_tokens.unwrap_or(0),
        );
        if let Streamed::Cut = result {
            self.session.mark_cut(&msg_id).map_err(doc_err)?;
        }
        if let Streamed::Complete = result {
            tracing::debug!(stop_reason = ?state.stop_reason, "reply complete");
            if cut_by_limit {
                self.after_max_tokens(&msg_id, &cut_calls, request.max_tokens);
            }
        }
        Ok(result)
    }

    /// A reply cut at `max_tokens`: cut tool calls get a result that says so (the model can
    /// split the work); cut text gets a request to continue where it stopped.
    pub(super) fn after_max_tokens(&self, msg_id: &str, cut_calls: &[String], max_tokens: u32) {
        for id in cut_calls {
            self.result(
                msg_id,
                id,
                &format!(
                    "Not run: your reply reached the output limit ({max_tokens} tokens) while \
                     writing this call's input, so the input was cut off. Split the work into \
                     smaller calls, e.g. write a large file in parts: `write` the first part, \
                     then `write` with \"append\": true for each further part."
                ),
                true,
            );
            if let Err(e) = self.session.set_tool_status(id, "cut") {
                tracing::error!(error = %e, "marking a cut tool call failed");
            }
        }
        let has_calls = self
            .session
            .message(msg_id)
            .is_some_and(|m| m.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })));
        if !has_calls
            && let Err(e) = self.session.append_message(&Message {
                id: new_id("c-"),
                role: Role::User,
                author: self.config.device.clone(),
                created_ms: now_ms(),
                blocks: vec![Block::Text {
                    text: CONTINUE_PROMPT.to_owned(),
                }],
            })
        {
            tracing::error!(error = %e, "asking the model to continue failed");
        }
    }

    pub(super) fn flush(&self, state: &mut StreamState) -> Result<(), String> {
        for open in state.open.values_mut() {
            match open {
                Open::Text(b, buf) | Open::Thinking(b, buf) if !buf.is_empty() => {
                    self.session.push_text(b, buf).map_err(|e| e.to_string())?;
                    buf.clear();
                }
                _ => {}
            }
        }
        state.last_flush = Some(Instant::now());
        Ok(())
    }

    pub(super) fn record_usage(&self, msg_id: &str, u: &ApiUsage) {
        let mut usage = Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cache_read_tokens: u.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
            cost_micros: 0,
        };
        usage.cost_micros = self.config.pricing.cost_micros(&usage);
        let _ = self.session.set_message_usage(msg_id, &usage);
        self.session.add_usage(&usage);
    }
}

/// A failure worth asking again: overload and server errors, a dropped connection.
pub(super) fn retryable(e: &ProviderError) -> bool {
    match e {
        ProviderError::Api { kind, .. } => {
            matches!(
                kind.as_str(),
                "overloaded_error" | "api_error" | "rate_limit_error"
            )
        }
        ProviderError::Http(_) | ProviderError::Truncated => true,
        ProviderError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504 | 529),
        _ => false,
    }
}

/// message_delta usage is cumulative; some providers (OpenAI-compatible ones, newer API
/// versions) only report input and cache counts there.
pub(super) fn merge_usage(u: &mut ApiUsage, usage: &ApiUsage) {
    u.output_tokens = usage.output_tokens.max(u.output_tokens);
    u.input_tokens = usage.input_tokens.max(u.input_tokens);
    u.cache_read_input_tokens = usage.cache_read_input_tokens.max(u.cache_read_input_tokens);
    u.cache_creation_input_tokens = usage
        .cache_creation_input_tokens
        .max(u.cache_creation_input_tokens);
}

#[derive(Default)]
pub(super) struct StreamState {
    /// Tool calls whose block ended, in order.
    tools: Vec<(String, String, String)>,
    open: HashMap<u32, Open>,
    usage: ApiUsage,
    stop_reason: Option<String>,
    last_flush: Option<Instant>,
}

impl StreamState {
    fn since_flush(&self) -> Duration {
        self.last_flush.map_or(Duration::MAX, |t| t.elapsed())
    }
}

pub(super) enum Open {
    Text(BlockRef, String),
    Thinking(BlockRef, String),
    Tool {
        id: String,
        name: String,
        json: String,
    },
    Ignored,
}
