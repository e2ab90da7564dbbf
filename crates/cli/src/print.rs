//! The one printer of session events: a run's [`RunEvent`]s and a followed session's
//! [`AttachEvent`]s, as text for a person or one JSON object per line for a program. Notes go
//! to stderr in text mode, so stdout stays the reply.

use std::io::Write;

use jarvis_agent::runner::{Outcome, RunEvent};
use jarvis_device::attach::AttachEvent;
use serde_json::{Value, json};

use crate::OutputFormat;

/// Prints run events as text or JSON lines; returns the sender and the printer task.
pub fn printer(
    format: OutputFormat,
    session: String,
) -> (
    tokio::sync::mpsc::UnboundedSender<RunEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
    let task = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            // Locked per event: a lock cannot be held across the await.
            let mut out = std::io::stdout().lock();
            // A closed stdout (`| head`) ends nothing else: the run goes on.
            if let Some(line) = event_line(&e, format, &session) {
                let _ = writeln!(out, "{line}");
            } else if let (RunEvent::Text(t), OutputFormat::Text) = (&e, format) {
                let _ = write!(out, "{t}");
            }
            let _ = out.flush();
        }
    });
    (tx, task)
}

fn event_line(e: &RunEvent, format: OutputFormat, session: &str) -> Option<String> {
    Some(match (e, format) {
        (RunEvent::Text(_), OutputFormat::Text) => return None,
        (RunEvent::ToolUse { name, input, .. }, OutputFormat::Text) => format!("\n[{name}] {input}"),
        (RunEvent::ToolResult { is_error: true, content, .. }, OutputFormat::Text) => {
            format!("[error] {}", content.lines().next().unwrap_or(""))
        }
        (RunEvent::ToolResult { .. }, OutputFormat::Text) => return None,
        (RunEvent::ApprovalNeeded { id, tool, summary }, OutputFormat::Text) => {
            format!("\n[approval needed {id}] {tool}: {summary}")
        }
        (RunEvent::Text(t), OutputFormat::StreamJson) => {
            json!({"type": "text", "session": session, "text": t}).to_string()
        }
        (RunEvent::ToolUse { id, name, input }, OutputFormat::StreamJson) => json!({
            "type": "tool_use", "session": session, "id": id, "name": name,
            "input": serde_json::from_str::<Value>(input).unwrap_or(Value::Null)
        })
        .to_string(),
        (RunEvent::ToolResult { id, content, is_error }, OutputFormat::StreamJson) => json!({
            "type": "tool_result", "session": session, "id": id, "content": content, "is_error": is_error
        })
        .to_string(),
        (RunEvent::ApprovalNeeded { id, tool, summary }, OutputFormat::StreamJson) => json!({
            "type": "approval_needed", "session": session, "id": id, "tool": tool, "summary": summary
        })
        .to_string(),
        (RunEvent::Note(text), OutputFormat::Text) => {
            eprintln!("[note] {text}");
            return None;
        }
        (RunEvent::Note(text), OutputFormat::StreamJson) => {
            json!({"type": "system", "session": session, "text": text}).to_string()
        }
    })
}

/// Prints one event of a followed session (`jarvis attach`).
pub fn attach_event(
    out: &mut impl Write,
    e: &AttachEvent,
    format: OutputFormat,
    session: &str,
) -> std::io::Result<()> {
    let json_lines = matches!(format, OutputFormat::StreamJson);
    match e {
        AttachEvent::Text {
            message,
            role,
            author,
            text,
        } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "text", "message": message, "role": role, "author": author, "text": text})
                )?;
            } else {
                write!(out, "{text}")?;
            }
        }
        AttachEvent::ToolUse { id, name, input } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                )?;
            } else {
                writeln!(out, "\n[{name}] {input}")?;
            }
        }
        AttachEvent::ToolResult {
            id,
            content,
            is_error,
        } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "tool_result", "id": id, "content": content, "is_error": is_error})
                )?;
            } else if *is_error {
                writeln!(out, "[error] {}", content.lines().next().unwrap_or(""))?;
            }
        }
        AttachEvent::ApprovalNeeded { id, tool, summary } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "approval_needed", "id": id, "tool": tool, "summary": summary})
                )?;
            } else {
                writeln!(
                    out,
                    "\n[approval needed {id}] {tool}: {summary}  (jarvis approve {session} {id})"
                )?;
            }
        }
        AttachEvent::Status { status, runner } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "status", "status": status, "runner": runner})
                )?;
            } else if runner.is_empty() {
                writeln!(out, "\n[{status}]")?;
            } else {
                writeln!(out, "\n[{status} on {runner}]")?;
            }
        }
        AttachEvent::Answered { id, decision } => {
            if json_lines {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "approval_answered", "id": id, "decision": decision.as_str()})
                )?;
            }
        }
    }
    out.flush()
}

pub fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::EndTurn => "end_turn",
        Outcome::Interrupted => "interrupted",
        Outcome::ApprovalPending { .. } => "approval_pending",
        Outcome::BudgetExhausted => "budget_exhausted",
        Outcome::RequestLimit => "request_limit",
        Outcome::Failed(_) => "failed",
        Outcome::Yielded => "handed_off",
        Outcome::LeaseLost => "lease_lost",
    }
}
