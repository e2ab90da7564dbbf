//! Following a session wherever it runs: what is there, then every change as it arrives, as
//! typed events for the caller to print or show (text as it streams, tool calls, results,
//! approvals, status).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use jarvis_sync::doc::{Block, Decision, Role, SessionDoc, UpdateSignal};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::DeviceResult;
use crate::session::Device;

/// One thing that happened in a followed session.
#[derive(Debug, Clone, PartialEq)]
pub enum AttachEvent {
    /// Text appended to a message (only what is new since the last event).
    Text {
        message: String,
        role: Role,
        author: String,
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: String,
    },
    ToolResult {
        id: String,
        content: String,
        is_error: bool,
    },
    ApprovalNeeded {
        id: String,
        tool: String,
        summary: String,
    },
    /// The session's status changed; `runner` is the device running it ("" for none).
    Status { status: String, runner: String },
    /// This follower answered an approval (with `approve`).
    Answered { id: String, decision: Decision },
}

/// How to follow.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttachOptions {
    /// Return once the session has run and come to rest (done, failed, interrupted).
    pub until_done: bool,
    /// Answer every approval that comes up.
    pub approve: Option<Decision>,
}

/// Follows `session`, calling `emit` for each event, until `cancel` or (with `until_done`)
/// until the session has run and rests.
pub async fn attach(
    device: &Device,
    session: &str,
    opts: AttachOptions,
    cancel: CancellationToken,
    mut emit: impl FnMut(AttachEvent),
) -> DeviceResult<()> {
    let doc = device.session(session).await?;
    let changed = UpdateSignal::subscribe(doc.doc()).await;
    let mut follow = Follow::default();
    loop {
        let status = follow.step(&doc, &mut emit);
        if opts.until_done
            && follow.seen_busy
            && matches!(status.as_str(), "done" | "failed" | "interrupted")
        {
            return Ok(());
        }
        if let Some(decision) = opts.approve {
            for (_, b) in doc.pending_approvals() {
                if let Block::Approval { id, .. } = b
                    && follow.answered.insert(id.clone())
                {
                    device
                        .api
                        .post(
                            &format!("/api/sessions/{session}/approvals/{id}"),
                            json!({"decision": decision.as_str()}),
                        )
                        .await?;
                    emit(AttachEvent::Answered { id, decision });
                }
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            // A slow safety net: the signal covers every update, the timer a missed wake-up.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}

/// What a follower has shown so far.
#[derive(Default)]
struct Follow {
    /// (message id, block index) → characters shown so far.
    shown: HashMap<(String, usize), usize>,
    last_status: String,
    answered: HashSet<String>,
    seen_busy: bool,
}

impl Follow {
    /// Emits what is new in `doc`; returns the session's status.
    fn step(&mut self, doc: &SessionDoc, emit: &mut impl FnMut(AttachEvent)) -> String {
        for m in doc.messages() {
            for (i, b) in m.blocks.iter().enumerate() {
                let key = (m.id.clone(), i);
                let done = self.shown.get(&key).copied();
                match b {
                    Block::Text { text } => {
                        let start = done.unwrap_or(0);
                        if text.len() > start && text.is_char_boundary(start) {
                            emit(AttachEvent::Text {
                                message: m.id.clone(),
                                role: m.role,
                                author: m.author.clone(),
                                text: text[start..].to_owned(),
                            });
                            self.shown.insert(key, text.len());
                        }
                    }
                    Block::ToolUse {
                        id, name, input, ..
                    } if done.is_none() => {
                        emit(AttachEvent::ToolUse {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        });
                        self.shown.insert(key, 0);
                    }
                    Block::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } if done.is_none() => {
                        emit(AttachEvent::ToolResult {
                            id: tool_use_id.clone(),
                            content: content.clone(),
                            is_error: *is_error,
                        });
                        self.shown.insert(key, 0);
                    }
                    Block::Approval {
                        id,
                        tool,
                        summary,
                        decision: None,
                        ..
                    } if done.is_none() => {
                        emit(AttachEvent::ApprovalNeeded {
                            id: id.clone(),
                            tool: tool.clone(),
                            summary: summary.clone(),
                        });
                        self.shown.insert(key, 0);
                    }
                    _ => {}
                }
            }
        }
        let meta = doc.meta();
        let status = meta.status.as_str().to_owned();
        if status != self.last_status {
            emit(AttachEvent::Status {
                status: status.clone(),
                runner: meta.runner.map(|r| r.device).unwrap_or_default(),
            });
            self.last_status = status.clone();
        }
        if matches!(status.as_str(), "running" | "waiting_approval") {
            self.seen_busy = true;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use jarvis_sync::doc::Message;

    #[test]
    fn a_follower_emits_only_what_is_new() {
        let doc = SessionDoc::new(yrs::Doc::new());
        doc.append_message(&Message {
            id: "m1".into(),
            role: Role::Assistant,
            author: "d".into(),
            created_ms: 0,
            blocks: vec![Block::Text { text: "Hel".into() }],
        })
        .unwrap();
        let mut f = Follow::default();
        let mut out = Vec::new();
        f.step(&doc, &mut |e| out.push(e));
        assert!(matches!(&out[0], AttachEvent::Text { text, .. } if text == "Hel"));
        out.clear();
        f.step(&doc, &mut |e| out.push(e));
        assert!(out.is_empty(), "{out:?}");
    }
}
