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
    ApiMessage, ApiUsage, BlockStart, ContentBlock, Delta, MessagesRequest, Provider,
    ProviderError, StreamEvent, SystemBlock,
};
use crate::compaction::{self, Meter};
use crate::hooks::{Event as HookEvent, Hooks, PermissionDecision};
use crate::memory::{Memory, WorkspaceContext};
use crate::models::ModelInfo;
pub use crate::models::Pricing;
use crate::permissions::{Permissions, Verdict};
use crate::settings::AllowStore;
use crate::tools::{ToolBox, is_read_only};

/// How often Stop hooks may send the model back to work within one run.
const MAX_STOP_BLOCKS: u32 = 3;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub model: String,
    pub system_prompt: String,
    pub max_tokens: u32,
    /// Author id of what this runner writes (the device).
    pub device: String,
    /// Stop before a request once the session's cost reaches this (micro-dollars).
    pub budget_micros: Option<u64>,
    /// Model requests one `run` may make (`--max-turns`); None: no limit, the budget is the
    /// stop.
    pub max_turns: Option<u32>,
    /// Streamed text is written to the document at most this often.
    pub flush_interval: Duration,
    pub pricing: Pricing,
    /// Input tokens one request may carry (from the model table).
    pub context_window: u64,
    /// Compact before a request expected to pass this fraction of the window.
    pub compact_at: f64,
    /// Retirement date of the model, if it is deprecated (from the model table).
    pub end_of_life: Option<&'static str>,
    /// Retries of a stream that fails part-way (overloaded, connection dropped).
    pub stream_retries: u32,
    /// First backoff of those retries (doubled each time).
    pub stream_backoff: Duration,
}

/// Default of [`RunnerConfig::compact_at`]: near the limit, leaving room for the summary.
pub const DEFAULT_COMPACT_AT: f64 = 0.85;

impl RunnerConfig {
    /// A configuration with the model's limits and prices from the model table.
    pub fn new(model: &str, device: &str) -> Self {
        Self::for_model(model, &ModelInfo::resolve(model), device)
    }

    /// `model` is sent as written (a Bedrock or Vertex spelling stays one); `info` gives the
    /// limits and prices.
    pub fn for_model(model: &str, info: &ModelInfo, device: &str) -> Self {
        RunnerConfig {
            model: model.to_owned(),
            system_prompt: "You are My Jarvis, an agent working in the user's folder with the \
                            tools provided. Be careful and concise."
                .to_owned(),
            max_tokens: info.max_output,
            device: device.to_owned(),
            budget_micros: None,
            max_turns: None,
            flush_interval: Duration::from_millis(40),
            pricing: info.pricing,
            context_window: info.context_window,
            compact_at: DEFAULT_COMPACT_AT,
            end_of_life: info.end_of_life,
            stream_retries: 4,
            stream_backoff: Duration::from_millis(500),
        }
    }

    /// Reads the session's own limits (`max_turns`, `compact_at`), so every runner of the
    /// session applies the same ones.
    pub fn apply_session_settings(&mut self, session: &SessionDoc) {
        if let Some(n) = session.setting("max_turns").and_then(|v| v.parse().ok()) {
            self.max_turns = Some(n);
        }
        if let Some(f) = session
            .setting("compact_at")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|f| *f > 0.1 && *f <= 1.0)
        {
            self.compact_at = f;
        }
    }
}

/// The authority for a session's permission mode, asked before each request: `None` keeps
/// the mode the run has.
pub type ModeSource = Arc<dyn Fn() -> Option<crate::permissions::Mode> + Send + Sync>;

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
    /// Where the session's permission mode is read before each request when the document is
    /// not the authority (the hub's control plane for connected and cloud runs); None: the
    /// session document's setting applies (a local session on the user's own device).
    mode_source: Option<ModeSource>,
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
    meter: Meter,
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
    /// The provider said the prompt is too long (nothing was written).
    TooLong,
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compacted {
    /// A compaction block was written.
    Done {
        tokens_before: u64,
    },
    /// Nothing to compact (the transcript is empty or already just a summary).
    Nothing,
    Interrupted,
    /// A handoff asked to stop; nothing was written, the next runner compacts again.
    Yielded,
    LeaseLost,
    Failed(String),
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
            mode_source: None,
            context: None,
            memory_shown: None,
            notes: Vec::new(),
            hooks: None,
            hook_context: Vec::new(),
            session_started: false,
            allow_store: None,
            commands: Vec::new(),
            meter: Meter::default(),
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
    /// Reads the session's permission mode from an authority other than the document before
    /// each request (see [`ModeSource`]).
    pub fn with_mode_source(mut self, source: ModeSource) -> Self {
        self.mode_source = Some(source);
        self
    }

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
        self.warn_if_deprecated();
        let outcome = self.run_inner(cancel).await;
        // Background commands live as long as the run: an approval wait keeps them, anything
        // else (the end, an interrupt, a handoff, a lost lease) stops them.
        if !matches!(outcome, Outcome::ApprovalPending { .. }) {
            self.stop_background(&outcome).await;
        }
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

    /// A model or permission mode changed from another device (`PATCH /api/sessions/{id}`, a
    /// CLI follow-up) takes effect before the next request.
    fn apply_session_changes(&mut self) {
        let model = self.session.meta().model;
        if !model.is_empty() && model != self.config.model {
            let info = ModelInfo::resolve(&model);
            tracing::info!(from = %self.config.model, to = %model, "the session's model changed");
            self.config.model = model;
            self.config.max_tokens = info.max_output;
            self.config.context_window = info.context_window;
            self.config.pricing = info.pricing;
            self.config.end_of_life = info.end_of_life;
            self.meter.reset();
            self.warn_if_deprecated();
        }
        // The mode widens what runs without asking: it comes from the authority when there is
        // one (any member can write the document's copy), from the document only on the
        // user's own device.
        let mode = match &self.mode_source {
            Some(source) => source(),
            None => self
                .session
                .setting("permission_mode")
                .and_then(|m| crate::permissions::Mode::parse(&m)),
        };
        if let Some(mode) = mode {
            self.permissions.mode = mode;
        }
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
        let mut requests: u32 = 0;
        let mut stop_blocks = 0;
        // A compaction is followed by a request before another may start, so a transcript whose
        // tail alone is too big fails instead of compacting forever.
        let mut compacted_last = false;
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
            self.apply_session_changes();
            if let Some(outcome) = self.compact_command(cancel).await {
                return outcome;
            }
            // A reply cut by a handoff is kept for the reader but not sent to the model (it is
            // asked again) unless it got as far as complete tool calls; everything up to the
            // latest compaction is replaced by its summary.
            let messages = self.request_messages();
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
                self.notice(
                    "budget",
                    &format!(
                        "Budget of ${:.2} reached; stopping before the next request. Raise the \
                         session's budget and send a message to continue.",
                        budget as f64 / 1e6
                    ),
                );
                return Outcome::BudgetExhausted;
            }
            if let Some(max) = self.config.max_turns
                && requests >= max
            {
                self.notice(
                    "max_turns",
                    &format!(
                        "Stopped after {max} model requests, the limit for one run \
                         (--max-turns / the session's max_turns setting). Send a message to \
                         continue, or raise the limit."
                    ),
                );
                return Outcome::RequestLimit;
            }
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
            let estimate = self.meter.estimate(&request);
            if estimate as f64 > self.config.compact_at * self.config.context_window as f64
                && !compacted_last
            {
                match self.compact_inner("auto", None, &messages, cancel).await {
                    Compacted::Done { .. } => {
                        compacted_last = true;
                        continue;
                    }
                    Compacted::Nothing => {}
                    Compacted::Interrupted => return Outcome::Interrupted,
                    Compacted::Yielded => return Outcome::Yielded,
                    Compacted::LeaseLost => return Outcome::LeaseLost,
                    Compacted::Failed(reason) => {
                        self.notice(
                            "context",
                            &format!(
                                "The transcript is near the model's context window and \
                                 compacting it failed: {reason}. Run /compact or start a new \
                                 session."
                            ),
                        );
                        return Outcome::Failed(reason);
                    }
                }
            }
            // The reply may use what the window leaves, up to the model's maximum output.
            let room = self.config.context_window.saturating_sub(estimate);
            request.max_tokens = (self.config.max_tokens as u64).min(room.max(1024)) as u32;
            self.session
                .set_context(estimate, self.config.context_window);
            requests += 1;
            match self.stream_reply(&request, cancel).await {
                Ok(Streamed::Complete) => compacted_last = false,
                Ok(Streamed::Interrupted) => return Outcome::Interrupted,
                Ok(Streamed::Cut) => return Outcome::Yielded,
                Ok(Streamed::Fenced) => return Outcome::LeaseLost,
                Ok(Streamed::TooLong) if !compacted_last => {
                    // The estimate was low: compact now and ask again.
                    match self.compact_inner("auto", None, &messages, cancel).await {
                        Compacted::Done { .. } => compacted_last = true,
                        Compacted::Interrupted => return Outcome::Interrupted,
                        Compacted::Yielded => return Outcome::Yielded,
                        Compacted::LeaseLost => return Outcome::LeaseLost,
                        Compacted::Nothing | Compacted::Failed(_) => {
                            let reason = "the prompt is too long for the model and could not \
                                          be compacted"
                                .to_owned();
                            self.notice("context", &format!("Stopped: {reason}. Start a new session or choose a model with a larger window."));
                            return Outcome::Failed(reason);
                        }
                    }
                }
                Ok(Streamed::TooLong) => {
                    let reason =
                        "the prompt is too long for the model even after compaction".to_owned();
                    self.notice(
                        "context",
                        &format!(
                            "Stopped: {reason}. The latest messages alone exceed the window; \
                             start a new session or choose a model with a larger window."
                        ),
                    );
                    return Outcome::Failed(reason);
                }
                Err(_) if self.fenced() => return Outcome::LeaseLost,
                Err(reason) => {
                    self.notice(
                        "request_failed",
                        &format!(
                            "The model request failed: {reason}. Send a message to try again."
                        ),
                    );
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

    /// A system note in the transcript (loaded setup, hook output, warnings); never sent to
    /// the model.
    fn note(&self, text: &str) {
        if self.fenced() {
            return;
        }
        self.emit(RunEvent::Note(text.to_owned()));
        self.append_system(Block::Text {
            text: text.to_owned(),
        });
    }

    /// One system message holding `block` (notes and notices); a failed write is logged.
    fn append_system(&self, block: Block) {
        if let Err(e) = self.session.append_message(&Message {
            id: new_id("s-"),
            role: Role::System,
            author: self.config.device.clone(),
            created_ms: now_ms(),
            blocks: vec![block],
        }) {
            tracing::error!(error = %e, "writing a system message failed");
        }
    }

    /// The transcript as the next request carries it (see [`compaction::effective_messages`]).
    fn request_messages(&self) -> Vec<Message> {
        compaction::effective_messages(self.session.messages(), &self.session.cut_messages())
    }

    /// A `/compact [focus]` message as the user's latest word (sent from any device): compacts
    /// the transcript before it and ends the turn. Handled once: a compaction (or a notice)
    /// written after it marks it done.
    async fn compact_command(&mut self, cancel: &CancellationToken) -> Option<Outcome> {
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
    async fn compact_inner(
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
    async fn collect_text(
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
    async fn backoff(&self, attempt: u32, cancel: &CancellationToken) -> Result<(), Compacted> {
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

    /// Stops every background command, with a notice naming them.
    async fn stop_background(&self, outcome: &Outcome) {
        let stopped = self.tools.shells.stop_all().await;
        if stopped.is_empty() || self.fenced() {
            return;
        }
        self.session.set_background(&[]);
        let why = match outcome {
            Outcome::Interrupted => "the run was interrupted",
            Outcome::Yielded => "the session moved to another runner",
            _ => "the run ended",
        };
        let list: Vec<String> = stopped
            .iter()
            .map(|(id, cmd)| format!("{id} ({cmd})"))
            .collect();
        self.notice(
            "background_stopped",
            &format!(
                "Stopped background commands because {why}: {}. Start them again in a new \
                 run if they are still needed.",
                list.join(", ")
            ),
        );
    }

    /// Once per session and model: a notice when the model is deprecated or retired.
    fn warn_if_deprecated(&self) {
        let Some(info) = ModelInfo::lookup(&self.config.model) else {
            return;
        };
        let Some(text) = info.deprecation_warning(&crate::models::today_utc()) else {
            return;
        };
        if self.session.setting("deprecation_warned").as_deref() == Some(info.id.as_str()) {
            return;
        }
        tracing::warn!(model = %info.id, "{text}");
        self.notice("model_deprecated", &text);
        self.session.set_setting("deprecation_warned", &info.id);
    }

    /// A typed system note (see [`Block::Notice`]); never sent to the model.
    pub fn notice(&self, kind: &str, text: &str) {
        if self.fenced() {
            return;
        }
        self.append_system(Block::Notice {
            kind: kind.to_owned(),
            text: text.to_owned(),
        });
    }

    /// Streams one reply into a new assistant message; a stream that fails part-way
    /// (overloaded, connection dropped) is retried with backoff into the same message, its
    /// partial blocks removed first, so the document holds one full reply.
    async fn stream_reply(
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
    async fn stream_attempt(
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
    fn after_max_tokens(&self, msg_id: &str, cut_calls: &[String], max_tokens: u32) {
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

/// The result of a call that waited for an approval when the user sent a message instead.
const NOT_RUN_NEW_MESSAGE: &str = "Not run: the user sent a new message instead of answering \
the approval.";

/// Sent (as a user turn) after a text reply cut by `max_tokens`.
pub const CONTINUE_PROMPT: &str = "[Your reply reached the output limit and was cut off. \
Continue exactly where it stopped, without repeating anything.]";

enum CollectError {
    Stopped(Compacted),
    Provider(ProviderError),
}

/// A failure worth asking again: overload and server errors, a dropped connection.
fn retryable(e: &ProviderError) -> bool {
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
fn merge_usage(u: &mut ApiUsage, usage: &ApiUsage) {
    u.output_tokens = usage.output_tokens.max(u.output_tokens);
    u.input_tokens = usage.input_tokens.max(u.input_tokens);
    u.cache_read_input_tokens = usage.cache_read_input_tokens.max(u.cache_read_input_tokens);
    u.cache_creation_input_tokens = usage
        .cache_creation_input_tokens
        .max(u.cache_creation_input_tokens);
}

#[derive(Default)]
struct StreamState {
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
