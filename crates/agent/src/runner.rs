//! The turn loop. It reads everything from the session document and writes everything back:
//! the request is built from the transcript, the reply is streamed into it in small batches,
//! tool calls are settled (permission, approval, execution) and their results appended, until
//! the model ends its turn, the user interrupts, the budget runs out, or an approval is pending.
//!
//! Restart-safe by construction: a runner started on the document alone finds unsettled tool
//! calls and settles them; a side-effecting call that was running when a process died is
//! reported to the model as "may or may not have happened", never run a second time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jarvis_sync::doc::{
    Block, BlockRef, Decision, Message, Role, SessionDoc, SessionStatus, UpdateSignal, Usage,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::anthropic::{
    ApiMessage, ApiUsage, BlockStart, ContentBlock, Delta, MessagesRequest, Provider, StreamEvent,
    SystemBlock,
};
use crate::hooks::{Event as HookEvent, Hooks, PermissionDecision};
use crate::memory::{Memory, WorkspaceContext};
use crate::permissions::{Permissions, Verdict};
use crate::settings::AllowStore;
use crate::tools::{ToolBox, is_read_only};

/// How often Stop hooks may send the model back to work within one run.
const MAX_STOP_BLOCKS: u32 = 3;

/// Prices in US dollars per million tokens (so also micro-dollars per token).
#[derive(Debug, Clone, Copy)]
pub struct Pricing {
    pub input: f64,
    pub output: f64,
    pub cache_write: f64,
    pub cache_read: f64,
}

impl Default for Pricing {
    fn default() -> Self {
        // Sonnet-class list prices; configurable per model.
        Pricing {
            input: 3.0,
            output: 15.0,
            cache_write: 3.75,
            cache_read: 0.30,
        }
    }
}

impl Pricing {
    pub fn cost_micros(&self, u: &Usage) -> u64 {
        (u.input_tokens as f64 * self.input
            + u.output_tokens as f64 * self.output
            + u.cache_write_tokens as f64 * self.cache_write
            + u.cache_read_tokens as f64 * self.cache_read)
            .round() as u64
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub model: String,
    pub system_prompt: String,
    pub max_tokens: u32,
    /// Author id of what this runner writes (the device).
    pub device: String,
    /// Stop before a request once the session's cost reaches this (micro-dollars).
    pub budget_micros: Option<u64>,
    /// Model requests one `run` may make.
    pub max_requests: u32,
    /// Streamed text is written to the document at most this often.
    pub flush_interval: Duration,
    pub pricing: Pricing,
}

impl RunnerConfig {
    pub fn new(model: &str, device: &str) -> Self {
        RunnerConfig {
            model: model.to_owned(),
            system_prompt: "You are My Jarvis, an agent working in the user's folder with the \
                            tools provided. Be careful and concise."
                .to_owned(),
            max_tokens: 8192,
            device: device.to_owned(),
            budget_micros: None,
            max_requests: 50,
            flush_interval: Duration::from_millis(40),
            pricing: Pricing::default(),
        }
    }
}

/// Why `run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    EndTurn,
    Interrupted,
    ApprovalPending {
        approval_id: String,
    },
    BudgetExhausted,
    RequestLimit,
    Failed(String),
    /// Stopped at a safe point because the session is being handed to another runner.
    Yielded,
    /// The lease was lost: stopped at once, nothing more written.
    LeaseLost,
}

/// Events for a caller that prints the session as it happens (`jarvis run`).
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Text(String),
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
    /// A system note written to the session (warnings, loaded memory, hook notices).
    Note(String),
}

pub struct Runner<'a> {
    pub session: SessionDoc,
    provider: &'a dyn Provider,
    pub tools: ToolBox,
    pub permissions: Permissions,
    pub config: RunnerConfig,
    events: Option<tokio::sync::mpsc::UnboundedSender<RunEvent>>,
    /// Cancelled when a handoff wants the session: stop at the next safe point (between tool
    /// calls; a streaming reply is cut and kept).
    stop: CancellationToken,
    /// Cancelled when the lease is lost: stop at once and write nothing more.
    fence: CancellationToken,
    /// Memory files and the environment, added after the system prompt (see `memory`).
    context: Option<WorkspaceContext>,
    /// What the session was last told about loaded memory, so it is told again only on change.
    memory_shown: Option<Memory>,
    /// Notes (loaded setup, rules that can never match, settings that do not parse) shown
    /// once when the run starts.
    notes: Vec<String>,
    /// Claude Code command hooks (see `hooks`).
    hooks: Option<Hooks>,
    /// What SessionStart hooks said, added to the context block.
    hook_context: Vec<String>,
    session_started: bool,
    /// Where "always allow" answers are kept beyond this run.
    allow_store: Option<Arc<dyn AllowStore>>,
    /// The workspace's slash commands, expanded when a prompt names one (any composer).
    commands: Vec<crate::commands::Command>,
}

enum Settled {
    /// Every tool call of the last assistant message has a result.
    Done,
    Pending(String),
    Interrupted,
    Yielded,
}

/// How one streamed reply ended.
enum Streamed {
    Complete,
    Interrupted,
    Cut,
    Fenced,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn results_id(assistant_id: &str) -> String {
    format!("{assistant_id}-results")
}

impl<'a> Runner<'a> {
    pub fn new(
        session: SessionDoc,
        provider: &'a dyn Provider,
        tools: ToolBox,
        permissions: Permissions,
        config: RunnerConfig,
    ) -> Self {
        let (mut permissions, mut tools) = (permissions, tools);
        if permissions.root().is_none() {
            // Path rules are anchored where the tools work.
            permissions.set_root(tools.root());
        }
        if !permissions.deny.is_empty() {
            let p = permissions.clone();
            tools.hide(std::sync::Arc::new(move |path| p.read_denied(path)));
        }
        Runner {
            session,
            provider,
            tools,
            permissions,
            config,
            events: None,
            stop: CancellationToken::new(),
            fence: CancellationToken::new(),
            context: None,
            memory_shown: None,
            notes: Vec::new(),
            hooks: None,
            hook_context: Vec::new(),
            session_started: false,
            allow_store: None,
            commands: Vec::new(),
        }
    }

    /// Expands a prompt that names one of these commands (`/review src/lib.rs`), wherever it
    /// was typed.
    pub fn with_commands(mut self, commands: Vec<crate::commands::Command>) -> Self {
        self.commands = commands;
        self
    }

    /// Runs these hooks at their events.
    pub fn with_hooks(mut self, hooks: Hooks) -> Self {
        self.hooks = (!hooks.config.is_empty()).then_some(hooks);
        self
    }

    /// Records "always allow" answers here (and takes them into account from now on).
    pub fn with_allow_store(mut self, store: Arc<dyn AllowStore>) -> Self {
        self.allow_store = Some(store);
        self
    }

    /// Adds memory files and the environment to every request.
    pub fn with_context(mut self, context: WorkspaceContext) -> Self {
        self.context = Some(context);
        self
    }

    /// Notes to show in the session (as system notes) when the run starts.
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }

    /// See the `stop` field: a handoff's request to yield at a safe point.
    pub fn with_stop(mut self, stop: CancellationToken) -> Self {
        self.stop = stop;
        self
    }

    /// See the `fence` field: cancelled when this runner's lease is gone.
    pub fn with_fence(mut self, fence: CancellationToken) -> Self {
        self.fence = fence;
        self
    }

    fn fenced(&self) -> bool {
        self.fence.is_cancelled()
    }

    pub fn with_events(mut self, tx: tokio::sync::mpsc::UnboundedSender<RunEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    fn emit(&self, e: RunEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// Appends a user message (what a device does when the user sends one).
    pub fn send_user_message(session: &SessionDoc, author: &str, text: &str) -> String {
        let id = new_id("u-");
        // A fresh random id cannot collide; if it somehow did, the error says so in the log.
        if let Err(e) = session.append_message(&Message {
            id: id.clone(),
            role: Role::User,
            author: author.to_owned(),
            created_ms: now_ms(),
            blocks: vec![Block::Text {
                text: text.to_owned(),
            }],
        }) {
            tracing::error!(error = %e, "appending the user message failed");
        }
        id
    }

    /// Runs until the model ends its turn or something stops it. Call again after an approval
    /// is answered (see [`Runner::drive`]) or after a new user message.
    pub async fn run(&mut self, cancel: &CancellationToken) -> Outcome {
        if self.fenced() {
            return Outcome::LeaseLost;
        }
        self.session.set_status(&SessionStatus::Running);
        let outcome = self.run_inner(cancel).await;
        if self.fenced() {
            return Outcome::LeaseLost;
        }
        let status = match &outcome {
            Outcome::EndTurn => SessionStatus::Done,
            Outcome::Interrupted => SessionStatus::Interrupted,
            Outcome::ApprovalPending { .. } => SessionStatus::WaitingApproval,
            Outcome::BudgetExhausted | Outcome::RequestLimit => SessionStatus::Idle,
            Outcome::Failed(_) => SessionStatus::Failed,
            Outcome::Yielded => SessionStatus::Idle,
            Outcome::LeaseLost => return outcome,
        };
        self.session.set_status(&status);
        outcome
    }

    async fn run_inner(&mut self, cancel: &CancellationToken) -> Outcome {
        for n in std::mem::take(&mut self.notes) {
            self.note_once(&n);
        }
        self.session_start_hooks().await;
        self.expand_command();
        if let Some(outcome) = self.prompt_hooks().await {
            return outcome;
        }
        let mut requests = 0;
        let mut stop_blocks = 0;
        loop {
            if self.fenced() {
                return Outcome::LeaseLost;
            }
            if cancel.is_cancelled() {
                return Outcome::Interrupted;
            }
            if self.stop.is_cancelled() {
                return Outcome::Yielded;
            }
            match self.settle_tools(cancel).await {
                Settled::Done => {}
                Settled::Pending(id) => return Outcome::ApprovalPending { approval_id: id },
                Settled::Interrupted => return Outcome::Interrupted,
                Settled::Yielded => return Outcome::Yielded,
            }
            if self.stop.is_cancelled() {
                return Outcome::Yielded;
            }
            // A reply cut by a handoff is kept for the reader but not sent to the model (it is
            // asked again) unless it got as far as complete tool calls.
            let cut = self.session.cut_messages();
            let messages: Vec<Message> = self
                .session
                .messages()
                .into_iter()
                .filter(|m| {
                    !cut.contains(&m.id)
                        || m.blocks.iter().any(|b| matches!(b, Block::ToolUse { .. }))
                })
                .collect();
            match messages.iter().rev().find(|m| m.role != Role::System) {
                Some(m) if m.role == Role::User => {}
                // Nothing to answer: the model had the last word (unless a Stop hook objects).
                _ => {
                    if requests > 0
                        && stop_blocks < MAX_STOP_BLOCKS
                        && let Some(reason) = self.stop_hooks(stop_blocks > 0).await
                    {
                        stop_blocks += 1;
                        Runner::send_user_message(
                            &self.session,
                            &self.config.device,
                            &format!("Stop hook feedback:\n{reason}"),
                        );
                        continue;
                    }
                    return Outcome::EndTurn;
                }
            }
            if let Some(budget) = self.config.budget_micros
                && self.session.meta().usage.cost_micros >= budget
            {
                self.note(&format!(
                    "Budget of ${:.2} reached; stopping before the next request.",
                    budget as f64 / 1e6
                ));
                return Outcome::BudgetExhausted;
            }
            if requests >= self.config.max_requests {
                return Outcome::RequestLimit;
            }
            requests += 1;
            let mut request = build_request(&self.config, &messages);
            let mut extra = String::new();
            if let Some(ctx) = &self.context {
                // Re-read before every request: an edited CLAUDE.md applies at once.
                let permissions = &self.permissions;
                let (text, memory) = ctx.block(&messages, &|p| permissions.read_denied(p));
                if self.memory_shown.as_ref() != Some(&memory) {
                    if !memory.files.is_empty() {
                        self.note_once(&format!("Memory loaded: {}", memory.summary()));
                    }
                    for w in &memory.warnings {
                        self.note_once(&format!("Memory warning: {w}"));
                    }
                    self.memory_shown = Some(memory);
                }
                extra = text;
            }
            for c in &self.hook_context {
                extra.push_str(&format!(
                    "\n<session-start-hook>\n{c}\n</session-start-hook>"
                ));
            }
            crate::memory::add_to_request(&mut request, extra);
            match self.stream_reply(&request, cancel).await {
                Ok(Streamed::Complete) => continue,
                Ok(Streamed::Interrupted) => return Outcome::Interrupted,
                Ok(Streamed::Cut) => return Outcome::Yielded,
                Ok(Streamed::Fenced) => return Outcome::LeaseLost,
                Err(_) if self.fenced() => return Outcome::LeaseLost,
                Err(reason) => {
                    self.note(&format!("The model request failed: {reason}"));
                    return Outcome::Failed(reason);
                }
            }
        }
    }

    /// A note the session already shows is not written again (every run of a session loads
    /// the same setup; the reader needs to see it once, and again when it changes).
    fn note_once(&self, text: &str) {
        let shown = self.session.messages().iter().any(|m| {
            m.role == Role::System
                && matches!(m.blocks.as_slice(), [Block::Text { text: t }] if t == text)
        });
        if !shown {
            self.note(text);
        } else {
            self.emit(RunEvent::Note(text.to_owned()));
        }
    }

    /// A system note in the transcript (errors, budget stops); never sent to the model.
    fn note(&self, text: &str) {
        if self.fenced() {
            return;
        }
        self.emit(RunEvent::Note(text.to_owned()));
        let _ = self.session.append_message(&Message {
            id: new_id("s-"),
            role: Role::System,
            author: self.config.device.clone(),
            created_ms: now_ms(),
            blocks: vec![Block::Text {
                text: text.to_owned(),
            }],
        });
    }

    /// Streams one reply into a new assistant message. Ok(false): interrupted (partial kept).
    async fn stream_reply(
        &mut self,
        request: &MessagesRequest,
        cancel: &CancellationToken,
    ) -> Result<Streamed, String> {
        let mut stream = tokio::select! {
            biased;
            _ = self.fence.cancelled() => return Ok(Streamed::Fenced),
            _ = self.stop.cancelled() => return Ok(Streamed::Cut),
            s = self.provider.stream(request, cancel.clone()) => match s {
                Ok(s) => s,
                Err(crate::anthropic::ProviderError::Cancelled) => return Ok(Streamed::Interrupted),
                Err(e) => return Err(e.to_string()),
            },
        };
        let msg_id = new_id("a-");
        self.session
            .append_message(&Message {
                id: msg_id.clone(),
                role: Role::Assistant,
                author: self.config.device.clone(),
                created_ms: now_ms(),
                blocks: vec![],
            })
            .map_err(|e| e.to_string())?;
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
                Some(Err(crate::anthropic::ProviderError::Cancelled)) => {
                    break Ok(Streamed::Interrupted);
                }
                Some(Err(e)) => break Err(e.to_string()),
                None => break Err("the stream ended before message_stop".to_owned()),
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
                                .map_err(|e| e.to_string())?;
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
                                .map_err(|e| e.to_string())?;
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
                                .map_err(|e| e.to_string())?;
                        }
                        (Some(Open::Tool { json, .. }), Delta::InputJsonDelta { partial_json }) => {
                            json.push_str(&partial_json)
                        }
                        _ => {}
                    }
                    if state.since_flush() >= self.config.flush_interval {
                        self.flush(&mut state)?;
                    }
                }
                StreamEvent::ContentBlockStop { index } => {
                    self.flush(&mut state)?;
                    if let Some(Open::Tool { id, name, json }) = state.open.remove(&index) {
                        let input = if json.trim().is_empty() {
                            "{}".to_owned()
                        } else {
                            json
                        };
                        self.emit(RunEvent::ToolUse {
                            id: id.clone(),
                            name: name.clone(),
                            input: input.clone(),
                        });
                        self.session
                            .append_block(
                                &msg_id,
                                &Block::ToolUse {
                                    id,
                                    name,
                                    input,
                                    status: "pending".into(),
                                },
                            )
                            .map_err(|e| e.to_string())?;
                    }
                }
                StreamEvent::MessageDelta { delta, usage } => {
                    // message_delta usage is cumulative; some providers (OpenAI-compatible
                    // ones, newer API versions) only report input and cache counts here.
                    let u = &mut state.usage;
                    u.output_tokens = usage.output_tokens.max(u.output_tokens);
                    u.input_tokens = usage.input_tokens.max(u.input_tokens);
                    u.cache_read_input_tokens =
                        usage.cache_read_input_tokens.max(u.cache_read_input_tokens);
                    u.cache_creation_input_tokens = usage
                        .cache_creation_input_tokens
                        .max(u.cache_creation_input_tokens);
                    state.stop_reason = delta.stop_reason;
                }
                StreamEvent::MessageStop => break Ok(Streamed::Complete),
                StreamEvent::Error { error } => {
                    break Err(format!("{}: {}", error.kind, error.message));
                }
                StreamEvent::Ping | StreamEvent::Unknown => {}
            }
        };
        if self.fenced() {
            return Ok(Streamed::Fenced);
        }
        // Whatever happened, the text streamed so far stays in the transcript.
        self.flush(&mut state)?;
        self.record_usage(&msg_id, &state.usage);
        if let Ok(Streamed::Cut) = result {
            self.session.mark_cut(&msg_id).map_err(|e| e.to_string())?;
        }
        if let Ok(Streamed::Complete) = result {
            tracing::debug!(stop_reason = ?state.stop_reason, "reply complete");
        }
        result
    }

    fn flush(&self, state: &mut StreamState) -> Result<(), String> {
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

    fn record_usage(&self, msg_id: &str, u: &ApiUsage) {
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

    /// Settles the tool calls of the last assistant message: each gets exactly one result.
    async fn settle_tools(&mut self, cancel: &CancellationToken) -> Settled {
        let messages = self.session.messages();
        let Some(ai) = messages.iter().rposition(|m| m.role == Role::Assistant) else {
            return Settled::Done;
        };
        let assistant = &messages[ai];
        // A user message written after the assistant's (not our results) means the user moved
        // on; the conversion to the API fills in results for calls left unsettled.
        let rid = results_id(&assistant.id);
        if messages[ai + 1..]
            .iter()
            .any(|m| m.role == Role::User && m.id != rid)
        {
            return Settled::Done;
        }
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
                Some((approval_id, None)) => return Settled::Pending(approval_id.clone()),
                None => match self.permissions.check(name, &input) {
                    deny @ Verdict::Deny(_) => deny,
                    verdict => self.pre_tool_hooks(name, &input, verdict).await,
                },
            };
            match verdict {
                Verdict::Allow => {
                    let _ = self.session.set_tool_status(id, "running");
                    let mut out = self.tools.run(name, &input, cancel).await;
                    if self.fenced() {
                        return Settled::Interrupted;
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

    /// SessionStart hooks, once per runner: "startup" the first time the session runs,
    /// "resume" after that. What they print is context for the model.
    async fn session_start_hooks(&mut self) {
        if self.session_started {
            return;
        }
        self.session_started = true;
        let Some(hooks) = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::SessionStart))
        else {
            return;
        };
        let source = if self.session.setting("hooks_started").is_some() {
            "resume"
        } else {
            "startup"
        };
        self.session.set_setting("hooks_started", "1");
        let o = hooks
            .run(HookEvent::SessionStart, None, json!({ "source": source }))
            .await;
        self.hook_context = o.context;
        for n in o.notices {
            self.note(&format!("Hook: {n}"));
        }
    }

    /// A new prompt that is `/name args` for a workspace command gets the command's text as a
    /// second block (the model sees both, as Claude Code shows it the command and its
    /// expansion), and the command's approved `allowed-tools` apply for this run. Each prompt
    /// once (`commands_prompt` setting).
    fn expand_command(&mut self) {
        if self.commands.is_empty() {
            return;
        }
        let messages = self.session.messages();
        let Some(last) = messages.iter().rev().find(|m| m.role != Role::System) else {
            return;
        };
        let [Block::Text { text }] = last.blocks.as_slice() else {
            return;
        };
        if last.role != Role::User
            || !text.trim_start().starts_with('/')
            || self.session.setting("commands_prompt").as_deref() == Some(last.id.as_str())
        {
            return;
        }
        self.session.set_setting("commands_prompt", &last.id);
        let Ok(crate::commands::Expanded::Prompt {
            text: expanded,
            allow,
            warnings,
            ..
        }) = crate::commands::expand(text, &self.commands)
        else {
            // Built-ins belong to the composer; anything else is ordinary text.
            return;
        };
        let block = Block::Text {
            text: format!("<command-expansion>\n{expanded}\n</command-expansion>"),
        };
        if let Err(e) = self.session.append_block(&last.id, &block) {
            tracing::error!(error = %e, "adding a command's expansion failed");
            return;
        }
        for w in warnings {
            self.note(&format!("Warning: {w}"));
        }
        self.permissions.allow.extend(allow);
    }

    /// UserPromptSubmit hooks for a new prompt (each prompt once, even across restarts): a
    /// block keeps the prompt in the transcript for the user but never sends it.
    async fn prompt_hooks(&mut self) -> Option<Outcome> {
        let hooks = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::UserPromptSubmit))?;
        let messages = self.session.messages();
        let last = messages.iter().rev().find(|m| m.role != Role::System)?;
        let prompt: Vec<&str> = last
            .blocks
            .iter()
            .filter_map(|b| match b {
                Block::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let is_prompt = last.role == Role::User
            && !prompt.is_empty()
            && !last
                .blocks
                .iter()
                .any(|b| matches!(b, Block::ToolResult { .. }));
        if !is_prompt || self.session.setting("hooks_prompt").as_deref() == Some(last.id.as_str()) {
            return None;
        }
        self.session.set_setting("hooks_prompt", &last.id);
        let o = hooks
            .run(
                HookEvent::UserPromptSubmit,
                None,
                json!({ "prompt": prompt.join("\n") }),
            )
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            self.note(&format!(
                "Prompt blocked by a UserPromptSubmit hook: {reason}"
            ));
            if let Err(e) = self.session.mark_cut(&last.id) {
                tracing::error!(error = %e, "keeping a blocked prompt from the model failed");
                return Some(Outcome::Failed(e.to_string()));
            }
            return Some(Outcome::EndTurn);
        }
        for c in o.context {
            let text = format!("<user-prompt-submit-hook>\n{c}\n</user-prompt-submit-hook>");
            if let Err(e) = self.session.append_block(&last.id, &Block::Text { text }) {
                tracing::error!(error = %e, "adding a hook's context failed");
            }
        }
        None
    }

    /// PreToolUse hooks for a call the rules did not deny: a block or a hook's "deny" refuses
    /// it with the hook's reason (which the model sees); "ask" and "allow" replace the verdict.
    async fn pre_tool_hooks(&self, tool: &str, input: &Value, verdict: Verdict) -> Verdict {
        let Some(hooks) = self.hooks.as_ref().filter(|h| h.has(HookEvent::PreToolUse)) else {
            return verdict;
        };
        let o = hooks
            .run(
                HookEvent::PreToolUse,
                Some(tool),
                Hooks::tool_payload(tool, input),
            )
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            return Verdict::Deny(format!("Blocked by a PreToolUse hook: {reason}"));
        }
        match o.permission {
            Some((PermissionDecision::Deny, reason)) => {
                Verdict::Deny(format!("Denied by a PreToolUse hook: {reason}"))
            }
            Some((PermissionDecision::Ask, _)) => Verdict::Ask,
            Some((PermissionDecision::Allow, _)) => Verdict::Allow,
            None => verdict,
        }
    }

    /// PostToolUse hooks: they see the result; what they block with or add reaches the model
    /// with the result.
    async fn post_tool_hooks(
        &self,
        id: &str,
        tool: &str,
        input: &Value,
        out: &mut crate::tools::ToolOutput,
    ) {
        let Some(hooks) = self
            .hooks
            .as_ref()
            .filter(|h| h.has(HookEvent::PostToolUse))
        else {
            return;
        };
        let mut payload = Hooks::tool_payload(tool, input);
        payload["tool_use_id"] = json!(id);
        payload["tool_response"] = json!({"content": out.content, "is_error": out.is_error});
        let o = hooks.run(HookEvent::PostToolUse, Some(tool), payload).await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        if let Some(reason) = o.block {
            out.content
                .push_str(&format!("\n\nPostToolUse hook feedback:\n{reason}"));
        }
        for c in o.context {
            out.content.push_str(&format!("\n\n{c}"));
        }
    }

    /// Stop hooks when the model ends its turn: a block is the reason to go on.
    async fn stop_hooks(&self, active: bool) -> Option<String> {
        let hooks = self.hooks.as_ref().filter(|h| h.has(HookEvent::Stop))?;
        let o = hooks
            .run(HookEvent::Stop, None, json!({ "stop_hook_active": active }))
            .await;
        for n in &o.notices {
            self.note(&format!("Hook: {n}"));
        }
        o.block
    }

    /// Appends a tool result to the results message that follows `assistant_id`.
    fn result(&self, assistant_id: &str, tool_use_id: &str, content: &str, is_error: bool) {
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

    /// Runs, and whenever an approval is pending waits for any replica of the document to
    /// answer it, then goes on. Returns on anything but a pending approval.
    pub async fn drive(&mut self, cancel: &CancellationToken) -> Outcome {
        // Any replica may ask for an interrupt through the document; so may the caller, and a
        // lost lease stops everything.
        let local = cancel.child_token();
        let watcher = {
            let session = self.session.clone();
            let base = session.interrupt_count();
            let local = local.clone();
            let fence = self.fence.clone();
            tokio::spawn(async move {
                let notify = UpdateSignal::subscribe(session.doc()).await;
                loop {
                    if session.interrupt_count() > base {
                        local.cancel();
                    }
                    if local.is_cancelled() {
                        break;
                    }
                    tokio::select! {
                        _ = notify.changed() => {}
                        _ = fence.cancelled() => local.cancel(),
                        _ = local.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            })
        };
        let outcome = loop {
            match self.run(&local).await {
                Outcome::ApprovalPending { approval_id } => {
                    if !self.wait_for_answer(&approval_id, &local).await {
                        break if self.fenced() {
                            Outcome::LeaseLost
                        } else if self.stop.is_cancelled() {
                            Outcome::Yielded
                        } else {
                            self.session.set_status(&SessionStatus::Interrupted);
                            Outcome::Interrupted
                        };
                    }
                }
                other => break other,
            }
        };
        // Stops the watcher (the child token never affects the caller's).
        local.cancel();
        let _ = watcher.await;
        outcome
    }

    async fn wait_for_answer(&self, approval_id: &str, cancel: &CancellationToken) -> bool {
        let notify = UpdateSignal::subscribe(self.session.doc()).await;
        let answered = || {
            !self
                .session
                .pending_approvals()
                .iter()
                .any(|(_, b)| matches!(b, Block::Approval { id, .. } if id == approval_id))
        };
        loop {
            if answered() {
                return true;
            }
            tokio::select! {
                _ = notify.changed() => {}
                _ = cancel.cancelled() => return false,
                _ = self.stop.cancelled() => return false,
                _ = self.fence.cancelled() => return false,
                // Belt and braces: a missed notification costs at most this long.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[derive(Default)]
struct StreamState {
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

enum Open {
    Text(BlockRef, String),
    Thinking(BlockRef, String),
    Tool {
        id: String,
        name: String,
        json: String,
    },
    Ignored,
}

fn summarize(tool: &str, input: &Value) -> String {
    let s = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("");
    match tool {
        "bash" => s("command").to_owned(),
        "write" | "edit" | "read" => format!("{tool} {}", s("path")),
        _ => format!("{tool} {input}"),
    }
}

/// The Messages request for the transcript: user and assistant turns alternate (consecutive
/// same-role messages are merged), approvals and system notes stay out, every tool_use gets a
/// tool_result (a call the user never let run is reported as such), cache breakpoints are set.
pub fn build_request(config: &RunnerConfig, messages: &[Message]) -> MessagesRequest {
    let mut api: Vec<ApiMessage> = Vec::new();
    let mut open_calls: Vec<String> = Vec::new();
    for m in messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => continue,
        };
        let mut content = Vec::new();
        if role == "user" {
            // Results first: the API wants them at the start of the user turn.
            for b in &m.blocks {
                if let Block::ToolResult {
                    tool_use_id,
                    content: c,
                    is_error,
                } = b
                {
                    open_calls.retain(|id| id != tool_use_id);
                    content.push(ContentBlock::ToolResult {
                        tool_use_id: tool_use_id.clone(),
                        content: c.clone(),
                        is_error: *is_error,
                        cache_control: None,
                    });
                }
            }
            for id in open_calls.drain(..) {
                content.insert(
                    0,
                    ContentBlock::ToolResult {
                        tool_use_id: id,
                        content: "Not run: the user sent a new message instead.".into(),
                        is_error: true,
                        cache_control: None,
                    },
                );
            }
        }
        for b in &m.blocks {
            match b {
                Block::Text { text } if !text.is_empty() => content.push(ContentBlock::Text {
                    text: text.clone(),
                    cache_control: None,
                }),
                Block::Thinking {
                    text,
                    signature: Some(sig),
                } if role == "assistant" => content.push(ContentBlock::Thinking {
                    thinking: text.clone(),
                    signature: sig.clone(),
                }),
                Block::ToolUse {
                    id, name, input, ..
                } if role == "assistant" => {
                    open_calls.push(id.clone());
                    content.push(ContentBlock::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                        input: serde_json::from_str(input)
                            .unwrap_or(Value::Object(Default::default())),
                        cache_control: None,
                    });
                }
                _ => {}
            }
        }
        if content.is_empty() {
            continue;
        }
        match api.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => api.push(ApiMessage {
                role: role.to_owned(),
                content,
            }),
        }
    }
    MessagesRequest {
        model: config.model.clone(),
        max_tokens: config.max_tokens,
        system: vec![SystemBlock {
            kind: "text".into(),
            text: config.system_prompt.clone(),
            cache_control: None,
        }],
        messages: api,
        tools: ToolBox::definitions(),
        stream: true,
    }
    .with_cache_breakpoints()
}
