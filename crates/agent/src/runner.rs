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

mod compact;
mod hooks;
mod request;
mod settle;
mod stream;

pub use request::build_request;
use stream::{merge_usage, retryable};

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

/// Sent (as a user turn) after a text reply cut by `max_tokens`.
pub const CONTINUE_PROMPT: &str = "[Your reply reached the output limit and was cut off. \
Continue exactly where it stopped, without repeating anything.]";
