//! Context management: what part of the transcript a request carries, how big the next request
//! will be (the context meter), and the request that asks the model for a summary.
//!
//! A compaction is a [`Block::Compaction`] in a system message. Every later request starts with
//! its summary (as a user turn) followed by the messages after the one it covers (`upto`); the
//! messages it replaced stay in the document for readers and are never sent again.
//!
//! Token counts: the only exact numbers are the ones the provider reports. The meter anchors on
//! the last reported input count and adds the new bytes since that request at 4 bytes per token
//! ([`BYTES_PER_TOKEN`]); without an anchor (a fresh runner, after a compaction) it estimates the
//! whole request that way. Estimates never decide alone: a provider's "prompt is too long" also
//! triggers a compaction.

use jarvis_sync::doc::{Block, Message, Role};

use crate::anthropic::{CacheControl, ContentBlock, MessagesRequest};

/// The estimate's rule (also the fake provider's counting rule in tests).
pub const BYTES_PER_TOKEN: u64 = 4;

/// The instruction appended to the transcript to get a summary. It goes last, so the request
/// shares the previous request's whole prefix and reads it from the prompt cache.
pub const SUMMARY_PROMPT: &str = "The conversation is about to be compacted: everything above \
will be replaced by your summary. Do not call tools. Reply with a summary that lets you \
continue the task without the transcript: the user's requests (quote the latest one in full), \
what has been done and what it produced (files, commands, results that matter), decisions and \
constraints, errors met and how they were solved, and the exact next step.";

/// How a summary is presented to the model in later requests.
pub fn summary_turn(summary: &str) -> String {
    format!(
        "This session continues from an earlier part that was compacted to save context. \
         Summary of it:\n\n{summary}\n\nContinue from here."
    )
}

/// `/compact [focus]` typed as a message (from any device): Some(focus).
pub fn compact_command(text: &str) -> Option<Option<String>> {
    let rest = text.trim().strip_prefix("/compact")?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let focus = rest.trim();
    Some((!focus.is_empty()).then(|| focus.to_owned()))
}

/// The command a message carries, if it is a user's `/compact` message.
pub fn command_of(m: &Message) -> Option<Option<String>> {
    match (m.role, m.blocks.as_slice()) {
        (Role::User, [Block::Text { text }]) => compact_command(text),
        _ => None,
    }
}

/// The transcript as requests see it: messages cut by a handoff are dropped unless they got as
/// far as complete tool calls, and everything up to the latest compaction is replaced by its
/// summary (as a user message).
pub fn effective_messages(
    messages: Vec<Message>,
    cut: &std::collections::HashSet<String>,
) -> Vec<Message> {
    let latest = messages.iter().enumerate().rev().find_map(|(i, m)| {
        m.blocks.iter().find_map(|b| match b {
            Block::Compaction { summary, upto, .. } => Some((i, summary.clone(), upto.clone())),
            _ => None,
        })
    });
    let (start, head) = match latest {
        Some((at, summary, upto)) => {
            // The covered prefix ends at `upto` (normally just before the compaction message).
            let end = messages[..at]
                .iter()
                .rposition(|m| m.id == upto)
                .map_or(at, |i| i + 1);
            let head = Message {
                id: format!("{upto}-summary"),
                role: Role::User,
                author: String::new(),
                created_ms: 0,
                blocks: vec![Block::Text {
                    text: summary_turn(&summary),
                }],
            };
            (end, Some(head))
        }
        None => (0, None),
    };
    let kept: Vec<Message> = head
        .into_iter()
        .chain(messages.into_iter().skip(start).filter(|m| {
            // Commands are for the runner, never sent to the model.
            command_of(m).is_none()
                && (!cut.contains(&m.id)
                    || m.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. })))
        }))
        .collect();
    results_after_their_calls(kept)
}

/// Moves each results message (`{assistant}-results`) to just after its assistant message: a
/// user message sent while the calls ran was written before their results, and is delivered
/// after them.
fn results_after_their_calls(messages: Vec<Message>) -> Vec<Message> {
    let mut results: std::collections::HashMap<String, Message> = std::collections::HashMap::new();
    let mut rest = Vec::with_capacity(messages.len());
    for m in messages {
        if m.role == Role::User
            && let Some(a) = m.id.strip_suffix("-results")
        {
            results.insert(a.to_owned(), m);
        } else {
            rest.push(m);
        }
    }
    let mut out = Vec::with_capacity(rest.len() + results.len());
    for m in rest {
        let r = results.remove(&m.id);
        out.push(m);
        out.extend(r);
    }
    // Results whose assistant message is not in view (replaced by a summary) are dropped:
    // the summary covers them.
    out
}

/// Bytes of the request as sent (JSON), the basis of every estimate.
pub fn request_bytes(request: &MessagesRequest) -> u64 {
    serde_json::to_vec(request).map_or(0, |v| v.len() as u64)
}

/// Estimated input tokens of a request with no reported count to anchor on.
pub fn estimate_tokens(request: &MessagesRequest) -> u64 {
    request_bytes(request).div_ceil(BYTES_PER_TOKEN)
}

/// The context meter: the last reported input count and the size of the request it was for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Meter {
    anchor: Option<(u64, u64)>,
}

impl Meter {
    /// Records what the provider reported (input + cache read + cache write) for a request.
    pub fn observe(&mut self, request: &MessagesRequest, reported_input: u64) {
        if reported_input > 0 {
            self.anchor = Some((reported_input, request_bytes(request)));
        }
    }

    /// Forgets the anchor (the transcript was replaced by a summary).
    pub fn reset(&mut self) {
        self.anchor = None;
    }

    /// Expected input tokens of `request`.
    pub fn estimate(&self, request: &MessagesRequest) -> u64 {
        let bytes = request_bytes(request);
        match self.anchor {
            // A request only grows between compactions; a smaller one means the anchor is
            // about a different transcript.
            Some((tokens, base)) if bytes >= base => {
                tokens + (bytes - base).div_ceil(BYTES_PER_TOKEN)
            }
            _ => bytes.div_ceil(BYTES_PER_TOKEN),
        }
    }
}

/// The summary request: the same tools, system prompt and messages as the request it replaces
/// (so the cached prefix is read, not written), plus the instruction as a last user block.
pub fn summary_request(
    mut request: MessagesRequest,
    focus: Option<&str>,
    max_tokens: u32,
) -> MessagesRequest {
    let mut text = SUMMARY_PROMPT.to_owned();
    if let Some(f) = focus.filter(|f| !f.trim().is_empty()) {
        text.push_str("\n\nFocus the summary on: ");
        text.push_str(f.trim());
    }
    let block = ContentBlock::Text {
        text,
        cache_control: CacheControl::ephemeral(),
    };
    match request.messages.last_mut() {
        Some(m) if m.role == "user" => m.content.push(block),
        _ => request.messages.push(crate::anthropic::ApiMessage {
            role: "user".into(),
            content: vec![block],
        }),
    }
    request.max_tokens = max_tokens;
    request
}

/// The first index at or after `from` where a request may start: a user turn that carries no
/// tool results (those need the call before them).
pub fn later_start(messages: &[Message], from: usize) -> Option<usize> {
    (from..messages.len()).find(|&i| {
        let m = &messages[i];
        m.role == Role::User
            && !m
                .blocks
                .iter()
                .any(|b| matches!(b, Block::ToolResult { .. }))
    })
}

/// Is this provider answer the API's "prompt is too long" (400 invalid_request_error)?
pub fn is_prompt_too_long(e: &crate::anthropic::ProviderError) -> bool {
    match e {
        crate::anthropic::ProviderError::Status { status: 400, body } => {
            body.contains("prompt is too long")
        }
        crate::anthropic::ProviderError::Api { kind, message } => {
            kind == "invalid_request_error" && message.contains("prompt is too long")
        }
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(id: &str, role: Role, blocks: Vec<Block>) -> Message {
        Message {
            id: id.into(),
            role,
            author: "t".into(),
            created_ms: 0,
            blocks,
        }
    }

    fn text(t: &str) -> Block {
        Block::Text { text: t.into() }
    }

    #[test]
    fn requests_start_from_the_latest_compaction() {
        let compaction = |upto: &str, summary: &str| Block::Compaction {
            summary: summary.into(),
            upto: upto.into(),
            replaced: 2,
            tokens_before: 100,
            trigger: "auto".into(),
            focus: None,
        };
        let all = vec![
            msg("u1", Role::User, vec![text("first")]),
            msg("a1", Role::Assistant, vec![text("one")]),
            msg("s1", Role::System, vec![compaction("a1", "S1")]),
            msg("u2", Role::User, vec![text("second")]),
            msg("a2", Role::Assistant, vec![text("two")]),
            msg("s2", Role::System, vec![compaction("a2", "S2")]),
            msg("u3", Role::User, vec![text("third")]),
        ];
        let eff = effective_messages(all, &Default::default());
        let ids: Vec<&str> = eff.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a2-summary", "s2", "u3"]);
        assert!(matches!(&eff[0].blocks[0], Block::Text { text } if text.contains("S2")));
    }

    #[test]
    fn a_message_sent_during_tool_calls_follows_their_results() {
        let all = vec![
            msg("u1", Role::User, vec![text("go")]),
            msg("a1", Role::Assistant, vec![text("calling")]),
            msg("u2", Role::User, vec![text("also do this")]),
            msg("a1-results", Role::User, vec![text("result")]),
        ];
        let ids: Vec<String> = effective_messages(all, &Default::default())
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["u1", "a1", "a1-results", "u2"]);
    }

    #[test]
    fn the_meter_anchors_on_reported_counts() {
        let mut r = MessagesRequest {
            model: "m".into(),
            max_tokens: 10,
            system: vec![],
            messages: vec![],
            tools: vec![],
            stream: true,
        };
        let mut meter = Meter::default();
        assert_eq!(meter.estimate(&r), estimate_tokens(&r));
        meter.observe(&r, 1000);
        assert_eq!(meter.estimate(&r), 1000);
        r.model = "m".repeat(401);
        assert_eq!(meter.estimate(&r), 1100);
        meter.reset();
        assert_eq!(meter.estimate(&r), estimate_tokens(&r));
    }
}
