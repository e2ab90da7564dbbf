//! `jarvis run`: a session in a folder. Logged in to a hub, it runs here under the hub's lease
//! through `jarvis_device` (see `connected.rs`); with `--local` or no login, in the device's
//! own store only. Also the built-in slash commands of a local session.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use jarvis_agent::commands::{self, Builtin, Expanded};
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::{Mode, Permissions, Rule};
use jarvis_agent::providers::ProviderConfig;
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::settings::{ClaudeSetup, FileAllowStore, OwnDevice};
use jarvis_agent::tools::ToolBox;
use jarvis_device::{RunOptions, RunOverrides};
use jarvis_sync::doc::SessionDoc;
use jarvis_sync::store::Store;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::login::read_login;
use crate::print::{outcome_name, printer};
use crate::{OutputFormat, session_doc};

#[derive(Args)]
pub struct RunArgs {
    prompt: String,
    /// The folder the agent works in.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Continue this session instead of starting a new one.
    #[arg(long)]
    session: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    output_format: OutputFormat,
    /// ask, accept-edits, plan, dont-ask or allow-all (default: the session's, else the
    /// workspace's .claude/settings.json defaultMode, else ask). On a follow-up it changes
    /// the session's mode from here on.
    #[arg(long)]
    permission_mode: Option<String>,
    /// Allow rules such as 'Bash(cargo test:*)'. Repeatable.
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Deny rules. Repeatable.
    #[arg(long = "deny")]
    deny: Vec<String>,
    /// The model (default: the session's, else the current default). On a follow-up
    /// (`--session`) it changes the session's model from here on.
    #[arg(long, env = "ANTHROPIC_MODEL")]
    model: Option<String>,
    /// Stop before a request once the session has cost this many US dollars.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// Model requests one run may make (default: no limit; the budget is the stop). Kept
    /// as a session setting, so every runner of the session applies it.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Workspace id (logged in; default: the folder's name, or the session's workspace).
    #[arg(long)]
    workspace: Option<String>,
    /// Keep the session on this device only, even when logged in to a hub.
    #[arg(long)]
    local: bool,
}

pub fn run_command(home: &Path, store: Arc<dyn Store>, args: RunArgs) -> Result<()> {
    let RunArgs {
        prompt,
        dir,
        session,
        output_format,
        permission_mode,
        allow,
        deny,
        model,
        budget_usd,
        max_turns,
        workspace,
        local,
    } = args;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("folder {} is not accessible", dir.display()))?;
    // This is the user's own device: their ~/.claude applies, and the workspace's
    // files apply as Claude Code applies them.
    let user_dir = ClaudeSetup::user_dir();
    let setup = ClaudeSetup::load(
        &dir,
        user_dir.as_deref(),
        Location::Device("jarvis run".into()),
        &OwnDevice,
    );
    let mut notes = setup.notes();
    let mut model = model;
    let mut command_allow = Vec::new();
    let connected = if local { None } else { read_login(home).ok() };
    let prompt = match commands::expand(&prompt, &setup.commands)? {
        Expanded::Text(t) => t,
        Expanded::Prompt {
            text,
            allow,
            model: m,
            warnings,
        } => {
            notes.extend(warnings.into_iter().map(|w| format!("Warning: {w}")));
            command_allow = allow;
            model = m.or(model);
            text
        }
        // The session's runner compacts on `/compact [focus]` (local or connected).
        Expanded::Builtin(commands::Builtin::Compact(_)) => prompt.clone(),
        Expanded::Builtin(_) if connected.is_some() => {
            bail!("built-in commands run in local sessions only for now (use --local)")
        }
        Expanded::Builtin(b) => return builtin(b, &store, session.as_deref(), &setup),
    };
    if let Some(login) = connected {
        let env: HashMap<String, String> = std::env::vars().collect();
        let provider = ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
        let runtime = tokio::runtime::Runtime::new()?;
        let mut allow = allow;
        allow.extend(command_allow.iter().map(|r| r.to_string()));
        return runtime.block_on(crate::connected::run(
            login,
            store,
            provider.as_ref(),
            RunOptions {
                prompt,
                dir,
                workspace,
                session,
                model: model.unwrap_or_else(|| jarvis_agent::models::DEFAULT_MODEL.into()),
                overrides: RunOverrides {
                    permission_mode,
                    allow,
                    deny,
                    budget_usd,
                },
                mirror: None,
            },
            None,
            output_format,
        ));
    }
    let explicit_mode = permission_mode.is_some();
    if let Some(m) = &permission_mode
        && Mode::parse(m).is_none()
    {
        bail!("unknown permission mode {m:?}: ask, accept-edits, plan, dont-ask or allow-all");
    }
    let mode = permission_mode
        .as_deref()
        .and_then(Mode::parse)
        .unwrap_or(Mode::Ask);
    let mut permissions = Permissions::new(mode).with_root(&dir);
    for r in &allow {
        permissions.allow.push(Rule::parse(r)?);
    }
    for r in &deny {
        permissions.deny.push(Rule::parse(r)?);
    }
    permissions.allow.extend(command_allow);
    let allow_store = Arc::new(FileAllowStore::new(home, "local", &dir.to_string_lossy()));
    let mut permissions = setup.permissions(permissions, explicit_mode, Some(allow_store.as_ref()));
    let env: HashMap<String, String> = std::env::vars().collect();
    let provider = ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
    let id = session.unwrap_or_else(|| format!("{:016x}", rand_id()));
    let doc = session_doc(&store, &id)?;
    let known = doc.meta().model;
    let model = model
        .or_else(|| (!known.is_empty()).then_some(known.clone()))
        .unwrap_or_else(|| jarvis_agent::models::DEFAULT_MODEL.to_owned());
    if doc.meta().workspace.is_empty() {
        doc.set_workspace(&dir.to_string_lossy());
        doc.set_title(&prompt.chars().take(80).collect::<String>());
    }
    if known != model {
        doc.set_model(&model);
    }
    if let Some(n) = max_turns {
        doc.set_setting("max_turns", &n.to_string());
    }
    // The mode travels with the session: a flag sets it, else the session's own applies.
    if let Some(m) = &permission_mode {
        doc.set_setting("permission_mode", m);
    }
    if let Some(mode) = doc.setting("permission_mode").and_then(|m| Mode::parse(&m)) {
        permissions.mode = mode;
    }
    let compact = jarvis_agent::compaction::compact_command(&prompt);
    if !prompt.is_empty() && compact.is_none() {
        Runner::send_user_message(&doc, "cli", &prompt);
    }
    let mut config = RunnerConfig::new(&model, "cli");
    config.budget_micros = budget_usd.map(|d| (d * 1e6) as u64);
    config.apply_session_settings(&doc);
    let mut tools = ToolBox::new(&dir);
    tools.env = setup.settings.env.clone();
    let hooks = setup.hooks(&dir, tools.sandbox.clone(), &id, permissions.mode);
    let context = setup.context.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    if let Some(focus) = compact {
        let mut runner = Runner::new(
            doc.clone(),
            provider.as_ref(),
            ToolBox::new(&dir),
            permissions,
            config,
        );
        let done = runtime.block_on(runner.compact(focus.as_deref(), &CancellationToken::new()));
        return match done {
            jarvis_agent::runner::Compacted::Done { tokens_before } => {
                eprintln!("session {id}: compacted ({tokens_before} tokens summarised)");
                Ok(())
            }
            jarvis_agent::runner::Compacted::Nothing => {
                eprintln!("session {id}: nothing to compact");
                Ok(())
            }
            other => bail!("compacting session {id} did not finish: {other:?}"),
        };
    }
    let outcome = runtime.block_on(run_local(
        doc.clone(),
        provider.as_ref(),
        tools,
        permissions,
        config,
        output_format,
        &id,
        move |r| {
            r.with_context(context)
                .with_hooks(hooks)
                .with_notes(notes)
                .with_allow_store(allow_store)
        },
    ));
    let usage = doc.meta().usage;
    match output_format {
        OutputFormat::StreamJson => println!(
            "{}",
            json!({"type": "result", "session": id, "outcome": outcome_name(&outcome),
                   "usage": usage, "cost_usd": usage.cost_micros as f64 / 1e6})
        ),
        OutputFormat::Text => {
            println!();
            eprintln!("session {id}: {}", outcome_name(&outcome));
        }
    }
    match outcome {
        Outcome::EndTurn => Ok(()),
        Outcome::ApprovalPending { approval_id } => {
            eprintln!(
                "waiting for approval {approval_id}: answer with `jarvis approve {id} {approval_id}` (or --deny), then `jarvis run --session {id} \"\"`"
            );
            std::process::exit(3)
        }
        Outcome::Failed(reason) => bail!("the session failed: {reason}"),
        other => bail!("the session stopped: {}", outcome_name(&other)),
    }
}

fn rand_id() -> u64 {
    // Time plus process id is unique enough for a local session id and needs no RNG crate.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The built-in slash commands in `jarvis run` (the one dispatch point; `/compact` is the
/// "long tasks" work and is not wired here yet).
fn builtin(
    b: Builtin,
    store: &Arc<dyn Store>,
    session: Option<&str>,
    setup: &ClaudeSetup,
) -> Result<()> {
    let session_doc_of = |what: &str| -> Result<SessionDoc> {
        let id = session.with_context(|| format!("{what} needs --session <id>"))?;
        session_doc(store, id)
    };
    match b {
        Builtin::Clear => {
            println!("a new conversation starts with the next `jarvis run` without --session");
        }
        Builtin::Cost => {
            let usage = session_doc_of("/cost")?.meta().usage;
            println!(
                "${:.4} ({} input, {} output, {} cache read, {} cache write tokens)",
                usage.cost_micros as f64 / 1e6,
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens,
                usage.cache_write_tokens
            );
        }
        Builtin::Model(m) if m.is_empty() => {
            println!("model: {}", session_doc_of("/model")?.meta().model);
        }
        Builtin::Model(m) => {
            session_doc_of("/model")?.set_model(&m);
            println!("model: {m}");
        }
        // Sent to the runner as the prompt instead (see `Run`): it compacts the transcript.
        Builtin::Compact(_) => bail!("/compact is run by the session's runner"),
        Builtin::Help => {
            for (name, what) in commands::BUILTINS {
                println!("/{name}\t{what}");
            }
            for c in &setup.commands {
                println!(
                    "/{}{}\t{} ({})",
                    c.name,
                    c.argument_hint
                        .as_deref()
                        .map(|h| format!(" {h}"))
                        .unwrap_or_default(),
                    c.description.as_deref().unwrap_or(""),
                    c.label
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_local<'p>(
    doc: SessionDoc,
    provider: &'p dyn jarvis_agent::anthropic::Provider,
    tools: ToolBox,
    permissions: Permissions,
    config: RunnerConfig,
    format: OutputFormat,
    id: &str,
    configure: impl FnOnce(Runner<'p>) -> Runner<'p>,
) -> Outcome {
    let (tx, task) = printer(format, id.to_owned());
    let mut runner =
        configure(Runner::new(doc, provider, tools, permissions, config)).with_events(tx);
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let outcome = runner.run(&cancel).await;
    // Dropping the runner closes the events channel; the printer then ends.
    drop(runner);
    if let Err(e) = task.await {
        tracing::warn!(error = %e, "the printer stopped");
    }
    outcome
}
