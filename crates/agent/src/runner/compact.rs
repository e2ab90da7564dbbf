//! Compaction: `/compact [focus]` from any device, and the summary request behind it (a reply
//! collected as text, retried with backoff, written nowhere but the compaction block).

use super::*;

impl<'a> Runner<'a> {
    /// A `/compact [focus]` message as the user's latest word (sent from any device): compacts
    /// the transcript before it and ends the turn. Handled once: a compaction (or a notice)
    /// written after it marks it done.
    pub(super) async fn compact_command(&mut self, cancel: &CancellationToken) -> Option<Outcome> {
        let all = self.session.messages();
        let at = all.iter().rposition(|m| {
            m.role == Role::User && !m.id.ends_with("-results") && !m.id.starts_with("c-")
        })?;
        let focus = compaction::command_of(&all[at])?;
        let handled = all[at + 1..].iter().any(|m| {
            m.blocks.iter().any(|b| {
                matches!(b, Block::Compaction { .. })
                    || matches!(b, Block::Notice { kind, .. } if kind == "compact")
            })
        });
        if handled {
            return Some(Outcome::EndTurn);
        }
        let messages = self.request_messages();
        Some(
            match self
                .compact_inner("manual", focus.as_deref(), &messages, cancel)
                .await
            {
                Compacted::Done { .. } => Outcome::EndTurn,
                Compacted::Nothing => {
                    self.notice("compact", "Nothing to compact yet.");
                    Outcome::EndTurn
                }
                Compacted::Interrupted => Outcome::Interrupted,
                Compacted::Yielded => Outcome::Yielded,
                Compacted::LeaseLost => Outcome::LeaseLost,
                Compacted::Failed(reason) => {
                    self.notice("compact", &format!("Compacting failed: {reason}"));
                    Outcome::Failed(reason)
                }
            },
        )
    }

    /// `/compact [focus]`: replaces the transcript so far by a summary now.
    pub async fn compact(&mut self, focus: Option<&str>, cancel: &CancellationToken) -> Compacted {
        if self.fenced() {
            return Compacted::LeaseLost;
        }
        let messages = self.request_messages();
        self.compact_inner("manual", focus, &messages, cancel).await
    }

    /// Asks the model for a summary of `messages` and stores it as a compaction block. Nothing
    /// is written unless the summary is complete, so a handoff or a crash in the middle leaves
    /// the document as it was and the next runner simply compacts again.
    pub(super) async fn compact_inner(
        &mut self,
        trigger: &str,
        focus: Option<&str>,
        messages: &[Message],
        cancel: &CancellationToken,
    ) -> Compacted {
        let Some(upto) = messages
            .iter()
            .rev()
            .find(|m| !m.id.ends_with("-summary") && m.role != Role::System)
            .map(|m| m.id.clone())
        else {
            return Compacted::Nothing;
        };
        let replaced = messages
            .iter()
            .filter(|m| m.role != Role::System && !m.id.ends_with("-summary"))
            .count() as u32;
        let base = build_request(&self.config, messages);
        if base.messages.is_empty() {
            return Compacted::Nothing;
        }
        let tokens_before = self.meter.estimate(&base);
        let room = self
            .config
            .context_window
            .saturating_sub(tokens_before + 1024);
        let max_summary = (self.config.max_tokens as u64)
            .min(16_384)
            .min(room.max(1024)) as u32;
        let mut request = compaction::summary_request(base, focus, max_summary);
        let mut retries = 0;
        // If even the summary request is too long (the provider's window is smaller than we
        // knew), the oldest half of what it covers is left out, at a user turn boundary.
        let mut skip = 0;
        let (summary, usage) = loop {
            match self.collect_text(&request, cancel).await {
                Ok(r) => break r,
                Err(CollectError::Stopped(c)) => return c,
                Err(CollectError::Provider(e)) if compaction::is_prompt_too_long(&e) => {
                    match compaction::later_start(messages, skip + (messages.len() - skip) / 2) {
                        Some(next) if next > skip => skip = next,
                        _ => return Compacted::Failed(e.to_string()),
                    }
                    let base = build_request(&self.config, &messages[skip..]);
                    request = compaction::summary_request(base, focus, max_summary);
                }
                Err(CollectError::Provider(e))
                    if retryable(&e) && retries < self.config.stream_retries =>
                {
                    retries += 1;
                    if let Err(c) = self.backoff(retries, cancel).await {
                        return c;
                    }
                }
                Err(CollectError::Provider(e)) => return Compacted::Failed(e.to_string()),
            }
        };
        if self.fenced() {
            return Compacted::LeaseLost;
        }
        let mut u = Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_input_tokens.unwrap_or(0),
            cache_write_tokens: usage.cache_creation_input_tokens.unwrap_or(0),
            cost_micros: 0,
        };
        u.cost_micros = self.config.pricing.cost_micros(&u);
        self.session.add_usage(&u);
        if summary.trim().is_empty() {
            return Compacted::Failed("the model returned an empty summary".into());
        }
        let appended = self.session.append_message(&Message {
            id: new_id("k-"),
            role: Role::System,
            author: self.config.device.clone(),
            created_ms: now_ms(),
            blocks: vec![Block::Compaction {
                summary,
                upto,
                replaced,
                tokens_before,
                trigger: trigger.to_owned(),
                focus: focus.map(str::to_owned),
            }],
        });
        if let Err(e) = appended {
            return Compacted::Failed(e.to_string());
        }
        self.meter.reset();
        Compacted::Done { tokens_before }
    }

    /// Streams a reply and returns its text (tool calls ignored) and usage, writing nothing.
    pub(super) async fn collect_text(
        &self,
        request: &MessagesRequest,
        cancel: &CancellationToken,
    ) -> Result<(String, ApiUsage), CollectError> {
        let stopped = |s: &Self| {
            if s.fenced() {
                CollectError::Stopped(Compacted::LeaseLost)
            } else if s.stop.is_cancelled() {
                CollectError::Stopped(Compacted::Yielded)
            } else {
                CollectError::Stopped(Compacted::Interrupted)
            }
        };
        let mut stream = tokio::select! {
            biased;
            _ = self.fence.cancelled() => return Err(stopped(self)),
            _ = self.stop.cancelled() => return Err(stopped(self)),
            s = self.provider.stream(request, cancel.clone()) => match s {
                Ok(s) => s,
                Err(ProviderError::Cancelled) => return Err(stopped(self)),
                Err(e) => return Err(CollectError::Provider(e)),
            },
        };
        let mut text = String::new();
        let mut usage = ApiUsage::default();
        loop {
            let next = tokio::select! {
                biased;
                _ = self.fence.cancelled() => return Err(stopped(self)),
                _ = self.stop.cancelled() => return Err(stopped(self)),
                _ = cancel.cancelled() => return Err(stopped(self)),
                n = stream.next() => n,
            };
            match next {
                Some(Ok(StreamEvent::MessageStart { message })) => usage = message.usage,
                Some(Ok(StreamEvent::ContentBlockDelta {
                    delta: Delta::TextDelta { text: t },
                    ..
                })) => text.push_str(&t),
                Some(Ok(StreamEvent::MessageDelta { usage: u, .. })) => merge_usage(&mut usage, &u),
                Some(Ok(StreamEvent::MessageStop)) => return Ok((text, usage)),
                Some(Ok(StreamEvent::Error { error })) => {
                    return Err(CollectError::Provider(ProviderError::Api {
                        kind: error.kind,
                        message: error.message,
                    }));
                }
                Some(Ok(_)) => {}
                Some(Err(ProviderError::Cancelled)) => return Err(stopped(self)),
                Some(Err(e)) => return Err(CollectError::Provider(e)),
                None => return Err(CollectError::Provider(ProviderError::Truncated)),
            }
        }
    }

    /// Waits before retry `attempt` (exponential, capped), unless stopped meanwhile.
    pub(super) async fn backoff(
        &self,
        attempt: u32,
        cancel: &CancellationToken,
    ) -> Result<(), Compacted> {
        let wait = self
            .config
            .stream_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(6))
            .min(Duration::from_secs(30));
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.fence.cancelled() => Err(Compacted::LeaseLost),
            _ = self.stop.cancelled() => Err(Compacted::Yielded),
            _ = cancel.cancelled() => Err(Compacted::Interrupted),
        }
    }
}

pub(super) enum CollectError {
    Stopped(Compacted),
    Provider(ProviderError),
}
