//! Settling tool calls: each call of the last assistant message gets exactly one result
//! (permission, approval, hooks, execution), and a call that may have run is never run twice.

use super::*;

impl<'a> Runner<'a> {
    /// Settles the tool calls of the last assistant message: each gets exactly one result.
    pub(super) async fn settle_tools(&mut self, cancel: &CancellationToken) -> Settled {
        let messages = self.session.messages();
        let Some(ai) = messages.iter().rposition(|m| m.role == Role::Assistant) else {
            return Settled::Done;
        };
        let assistant = &messages[ai];
        // A user message written after the assistant's is queued, not a cancellation: the
        // calls still run and the message is delivered after their results. Only a call that
        // waits for an approval is dropped (the user wrote instead of answering).
        let rid = results_id(&assistant.id);
        let moved_on = messages[ai + 1..]
            .iter()
            .any(|m| m.role == Role::User && m.id != rid && !m.id.starts_with("c-"));
        let done: Vec<String> = messages[ai + 1..]
            .iter()
            .filter(|m| m.id == rid)
            .flat_map(|m| m.blocks.iter())
            .filter_map(|b| match b {
                Block::ToolResult { tool_use_id, .. } => Some(tool_use_id.clone()),
                _ => None,
            })
            .collect();
        let approvals: HashMap<String, (String, Option<Decision>)> = assistant
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Approval {
                    id,
                    tool_use_id,
                    decision,
                    ..
                } => Some((tool_use_id.clone(), (id.clone(), *decision))),
                _ => None,
            })
            .collect();
        for block in &assistant.blocks {
            let Block::ToolUse {
                id,
                name,
                input,
                status,
            } = block
            else {
                continue;
            };
            if done.contains(id) {
                continue;
            }
            if cancel.is_cancelled() || self.fenced() {
                return Settled::Interrupted;
            }
            if self.stop.is_cancelled() {
                return Settled::Yielded;
            }
            let input: Value = match serde_json::from_str(input) {
                Ok(v) => v,
                Err(e) => {
                    self.result(
                        &assistant.id,
                        id,
                        &format!("Invalid tool input JSON: {e}"),
                        true,
                    );
                    continue;
                }
            };
            if status == "running" && !is_read_only(name) {
                self.result(
                    &assistant.id,
                    id,
                    "This tool call was running when the previous runner stopped; it may or may \
                     not have taken effect. Check the current state before trying again.",
                    true,
                );
                continue;
            }
            let verdict = match approvals.get(id) {
                Some((_, Some(Decision::Allow))) => Verdict::Allow,
                Some((_, Some(Decision::AlwaysAllow))) => {
                    let entry = self.permissions.always_allow_entry(name, &input);
                    if let Some(store) = &self.allow_store
                        && let Err(e) = store.add(&entry)
                    {
                        self.note(&format!(
                            "\"Always allow\" could not be kept for later runs: {e}"
                        ));
                    }
                    self.permissions.allow.push(Permissions::entry_rule(&entry));
                    Verdict::Allow
                }
                Some((_, Some(Decision::Deny))) => {
                    Verdict::Deny("The user denied this tool call.".to_owned())
                }
                Some((approval_id, None)) if moved_on => {
                    if let Err(e) = self.session.answer_approval(
                        approval_id,
                        Decision::Deny,
                        &self.config.device,
                        now_ms(),
                    ) {
                        tracing::warn!(error = %e, "closing a superseded approval failed");
                    }
                    Verdict::Deny(NOT_RUN_NEW_MESSAGE.to_owned())
                }
                Some((approval_id, None)) => return Settled::Pending(approval_id.clone()),
                None => match self.permissions.check(name, &input) {
                    deny @ Verdict::Deny(_) => deny,
                    Verdict::Ask if moved_on => Verdict::Deny(NOT_RUN_NEW_MESSAGE.to_owned()),
                    verdict => self.pre_tool_hooks(name, &input, verdict).await,
                },
            };
            match verdict {
                Verdict::Allow => {
                    // "running" is what tells a runner resuming after a crash that this call
                    // may have had effects: without it recorded, the call is not started.
                    if let Err(e) = self.session.set_tool_status(id, "running") {
                        tracing::error!(error = %e, tool = %name, "cannot record a tool call as running");
                        self.notice(
                            "tool_status",
                            &format!(
                                "Stopped before running {name}: its start could not be recorded \
                                 ({e}), so a restart could not tell whether it ran. Send a \
                                 message to try again."
                            ),
                        );
                        return Settled::Interrupted;
                    }
                    let mut out = self.tools.run(name, &input, cancel).await;
                    if self.fenced() {
                        return Settled::Interrupted;
                    }
                    if matches!(name.as_str(), "bash" | "kill_shell") {
                        self.session.set_background(&self.tools.shells.list());
                    }
                    if !cancel.is_cancelled() {
                        self.post_tool_hooks(id, name, &input, &mut out).await;
                    }
                    if cancel.is_cancelled() && out.is_error {
                        // Interrupted mid-tool: record it, so a restart does not re-run it.
                        self.result(&assistant.id, id, &out.content, true);
                        let _ = self.session.set_tool_status(id, "interrupted");
                        return Settled::Interrupted;
                    }
                    self.result(&assistant.id, id, &out.content, out.is_error);
                    let _ = self
                        .session
                        .set_tool_status(id, if out.is_error { "error" } else { "done" });
                }
                Verdict::Deny(reason) => {
                    self.result(&assistant.id, id, &reason, true);
                    let _ = self.session.set_tool_status(id, "denied");
                }
                Verdict::Ask => {
                    let approval_id = format!("ap-{id}");
                    let summary = summarize(name, &input);
                    let _ = self.session.append_block(
                        &assistant.id,
                        &Block::Approval {
                            id: approval_id.clone(),
                            tool_use_id: id.clone(),
                            tool: name.clone(),
                            summary: summary.clone(),
                            decision: None,
                            decided_by: None,
                            decided_at: None,
                        },
                    );
                    self.emit(RunEvent::ApprovalNeeded {
                        id: approval_id.clone(),
                        tool: name.clone(),
                        summary,
                    });
                    return Settled::Pending(approval_id);
                }
            }
        }
        Settled::Done
    }

    /// Appends a tool result to the results message that follows `assistant_id`.
    pub(super) fn result(
        &self,
        assistant_id: &str,
        tool_use_id: &str,
        content: &str,
        is_error: bool,
    ) {
        if self.fenced() {
            return;
        }
        self.emit(RunEvent::ToolResult {
            id: tool_use_id.to_owned(),
            content: content.to_owned(),
            is_error,
        });
        let rid = results_id(assistant_id);
        let block = Block::ToolResult {
            tool_use_id: tool_use_id.to_owned(),
            content: content.to_owned(),
            is_error,
        };
        let appended = if self.session.message(&rid).is_some() {
            self.session.append_block(&rid, &block).map(|_| ())
        } else {
            self.session.append_message(&Message {
                id: rid,
                role: Role::User,
                author: self.config.device.clone(),
                created_ms: now_ms(),
                blocks: vec![block],
            })
        };
        if let Err(e) = appended {
            tracing::error!(error = %e, "recording a tool result failed");
        }
    }
}

/// The result of a call that waited for an approval when the user sent a message instead.
pub(super) const NOT_RUN_NEW_MESSAGE: &str = "Not run: the user sent a new message instead of answering \
the approval.";

pub(super) fn summarize(tool: &str, input: &Value) -> String {
    let s = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("");
    match tool {
        "bash" => s("command").to_owned(),
        "write" | "edit" | "read" => format!("{tool} {}", s("path")),
        _ => format!("{tool} {input}"),
    }
}
