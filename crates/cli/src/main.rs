//! `jarvis`: the headless face of a device. `jarvis run` runs an agent session in a folder,
//! printing streamed text or one JSON event per line. Logged in to a hub (`jarvis login`), the
//! session and its folder sync through the cloud agent, the session runs here under a lease,
//! and `jarvis handoff` moves it to the cloud and back; without a login (or with `--local`)
//! sessions live in the device's own store only.

use jarvis_cli::connected;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use jarvis_agent::commands::{self, Builtin, Expanded};
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::{Mode, Permissions, Rule};
use jarvis_agent::providers::ProviderConfig;
use jarvis_agent::runner::{Outcome, RunEvent, Runner, RunnerConfig};
use jarvis_agent::settings::{ClaudeSetup, FileAllowStore, OwnDevice};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Decision, DocName, SessionDoc};
use jarvis_sync::store::{SqliteStore, Store, open_persisted};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "jarvis", version, about = "My Jarvis from the command line")]
struct Cli {
    /// Where this device keeps its documents.
    #[arg(long, env = "JARVIS_HOME", global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    StreamJson,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent session headless: send a prompt, print the reply.
    Run {
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
    },
    /// Remember a hub and this device's token for it. Without a token, pairs this device by a
    /// code that you approve where you are signed in.
    Login {
        /// e.g. http://127.0.0.1:8080 or https://jarvis.example.com
        hub: String,
        /// A token (from `jarvis-cloud token create` or `user add`); read from JARVIS_TOKEN.
        #[arg(long, env = "JARVIS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// This device's name, shown when pairing.
        #[arg(long)]
        name: Option<String>,
    },
    /// Continue in cloud / Continue here: move a session's runner.
    Handoff {
        session: String,
        /// cloud, here, or a device id.
        #[arg(long)]
        to: String,
        /// The folder to mirror the session's workspace into (needed for --to here; with
        /// --to cloud, syncs this folder first).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output_format: OutputFormat,
        #[arg(long, env = "ANTHROPIC_MODEL", default_value = jarvis_agent::models::DEFAULT_MODEL)]
        model: String,
        /// Permission mode for the part run here (default: the session's own).
        #[arg(long)]
        permission_mode: Option<String>,
    },
    /// Follow a session live, wherever it runs.
    Attach {
        session: String,
        #[arg(long, value_enum, default_value = "text")]
        output_format: OutputFormat,
        /// Return once the session has run and come to rest (done, failed, interrupted).
        #[arg(long)]
        until_done: bool,
        /// Answer every approval that comes up: allow, deny or always_allow.
        #[arg(long)]
        approve: Option<String>,
    },
    /// List the sessions of every device and the cloud.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// Mirror a folder as a workspace through the hub, until interrupted.
    Sync {
        dir: PathBuf,
        /// Workspace id shared by every device that mirrors it (default: the folder's name).
        #[arg(long)]
        workspace: Option<String>,
    },
    /// Show the hub this device uses and whether it answers.
    Status,
    /// Answer a pending approval of a session (then `jarvis run --session` continues it).
    Approve {
        session: String,
        approval: String,
        #[arg(long, conflicts_with = "always")]
        deny: bool,
        #[arg(long)]
        always: bool,
        /// With --always on a shell command: allow its prefix (`npm test:*`), not only this
        /// exact command. Kept on the hub for you and this workspace.
        #[arg(long, requires = "always")]
        prefix: bool,
    },
}

fn home(cli_home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = cli_home {
        return Ok(h);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither JARVIS_HOME, XDG_DATA_HOME nor HOME is set")?;
    Ok(base.join("jarvis"))
}

fn session_doc(store: &Arc<dyn Store>, id: &str) -> Result<SessionDoc> {
    let name = DocName::session(id).with_context(|| format!("invalid session id {id:?}"))?;
    Ok(SessionDoc::new(open_persisted(
        store.clone(),
        &name.to_string(),
    )?))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let home = home(cli.home)?;
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&home.join("device.db")).context("opening the device store")?);
    match cli.command {
        Command::Login { hub, token, name } => {
            let hub = hub.trim_end_matches('/').to_owned();
            match token {
                Some(t) => login(&home, &hub, &t),
                None => {
                    let name = name.unwrap_or_else(|| {
                        std::fs::read_to_string("/etc/hostname")
                            .map(|h| h.trim().to_owned())
                            .unwrap_or_else(|_| "device".into())
                    });
                    let runtime = tokio::runtime::Runtime::new()?;
                    let (token, device) = runtime.block_on(connected::pair(&hub, &name))?;
                    login(&home, &hub, &token)?;
                    println!("paired as device {device}");
                    Ok(())
                }
            }
        }
        Command::Handoff {
            session,
            to,
            dir,
            output_format,
            model,
            permission_mode,
        } => {
            let login = read_login(&home)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(handoff_cmd(
                login,
                store,
                &session,
                &to,
                dir,
                output_format,
                model,
                permission_mode,
            ))
        }
        Command::Attach {
            session,
            output_format,
            until_done,
            approve,
        } => {
            let login = read_login(&home)?;
            let approve = match approve.as_deref() {
                None => None,
                Some(d) => Some(
                    Decision::parse(d)
                        .with_context(|| format!("--approve {d:?}: allow, deny or always_allow"))?,
                ),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let device = connected::Device::connect(&login.hub, &login.token, store).await?;
                connected::attach(
                    &device,
                    &session,
                    matches!(output_format, OutputFormat::StreamJson),
                    until_done,
                    approve,
                )
                .await
            })
        }
        Command::Sessions { json: as_json } => {
            let login = read_login(&home)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let api = connected::Api::new(&login.hub, &login.token);
                let v = api.get("/api/sessions").await?;
                if as_json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(());
                }
                println!(
                    "{:<18} {:<18} {:<16} {:<8} TITLE",
                    "SESSION", "STATUS", "WORKSPACE", "WHERE"
                );
                for s in v["sessions"].as_array().into_iter().flatten() {
                    println!(
                        "{:<18} {:<18} {:<16} {:<8} {}",
                        s["id"].as_str().unwrap_or(""),
                        s["status"].as_str().unwrap_or(""),
                        s["workspace"].as_str().unwrap_or(""),
                        s["where"].as_str().unwrap_or(""),
                        s["title"].as_str().unwrap_or("")
                    );
                }
                Ok(())
            })
        }
        Command::Sync { dir, workspace } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(sync(&home, store, &dir, workspace))
        }
        Command::Status => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(status(&home, &store))
        }
        Command::Approve {
            session,
            approval,
            deny,
            always,
            prefix,
        } => {
            let decision = match (deny, always) {
                (true, _) => Decision::Deny,
                (_, true) => Decision::AlwaysAllow,
                _ => Decision::Allow,
            };
            // A session the hub knows is answered there, so every device sees it at once.
            if let Ok(login) = read_login(&home) {
                let runtime = tokio::runtime::Runtime::new()?;
                let api = connected::Api::new(&login.hub, &login.token);
                let remote = runtime.block_on(api.post(
                    &format!("/api/sessions/{session}/approvals/{approval}"),
                    json!({"decision": decision.as_str(), "prefix": prefix}),
                ));
                match remote {
                    Ok(_) => {
                        println!("{} {approval}", decision.as_str());
                        return Ok(());
                    }
                    Err(e) => match e.downcast_ref::<connected::ApiError>() {
                        Some(a) if a.code == "not_found" => {}
                        _ => return Err(e),
                    },
                }
            }
            let doc = session_doc(&store, &session)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            doc.answer_approval(&approval, decision, "cli", now)?;
            println!("{} {approval}", decision.as_str());
            Ok(())
        }
        Command::Run {
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
        } => {
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
            let connected = if local { None } else { read_login(&home).ok() };
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
                let provider =
                    ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
                let runtime = tokio::runtime::Runtime::new()?;
                let mut allow = allow;
                allow.extend(command_allow.iter().map(|r| r.to_string()));
                return runtime.block_on(connected_run(
                    login,
                    store,
                    provider.as_ref(),
                    connected::RunOptions {
                        prompt,
                        dir,
                        workspace,
                        session,
                        model: model.unwrap_or_else(|| jarvis_agent::models::DEFAULT_MODEL.into()),
                        permission_mode,
                        allow,
                        deny,
                        budget_usd,
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
                bail!(
                    "unknown permission mode {m:?}: ask, accept-edits, plan, dont-ask or allow-all"
                );
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
            let allow_store = Arc::new(FileAllowStore::new(&home, "local", &dir.to_string_lossy()));
            let mut permissions =
                setup.permissions(permissions, explicit_mode, Some(allow_store.as_ref()));
            let env: HashMap<String, String> = std::env::vars().collect();
            let provider =
                ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
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
                let done =
                    runtime.block_on(runner.compact(focus.as_deref(), &CancellationToken::new()));
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
            let outcome = runtime.block_on(run(
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
    }
}

/// What `jarvis login` stores: the hub and this device's token, in a file readable only by
/// the user (no OS keychain support in the CLI yet; the desktop app uses the keychain).
#[derive(serde::Serialize, serde::Deserialize)]
struct Login {
    hub: String,
    token: String,
}

fn login_path(home: &std::path::Path) -> PathBuf {
    home.join("login.json")
}

fn login(home: &std::path::Path, hub: &str, token: &str) -> Result<()> {
    let hub = hub.trim_end_matches('/');
    anyhow::ensure!(
        hub.starts_with("http://") || hub.starts_with("https://"),
        "the hub address must start with http:// or https://"
    );
    anyhow::ensure!(!token.trim().is_empty(), "the token is empty");
    let path = login_path(home);
    let json = serde_json::to_vec_pretty(&Login {
        hub: hub.to_owned(),
        token: token.trim().to_owned(),
    })?;
    jarvis_sync::paths::atomic_write(&path, &json, Some(0o600))
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "logged in to {hub}; the token is stored in {} (file mode 0600, not the OS keychain)",
        path.display()
    );
    Ok(())
}

fn read_login(home: &std::path::Path) -> Result<Login> {
    let path = login_path(home);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "not logged in ({} missing): run `jarvis login <hub> --token …`",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is malformed", path.display()))
}

fn ws_url(hub: &str) -> String {
    connected::ws_url(hub)
}

/// Prints run events as text or JSON lines; returns the printer task.
fn printer(
    format: OutputFormat,
    session: String,
) -> (
    tokio::sync::mpsc::UnboundedSender<RunEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
    let task = tokio::spawn(async move {
        use std::io::Write;
        while let Some(e) = rx.recv().await {
            let mut out = std::io::stdout().lock();
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
            "input": serde_json::from_str::<serde_json::Value>(input).unwrap_or(serde_json::Value::Null)
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

/// `jarvis run` when logged in: the session runs here under a lease, synced through the hub.
async fn connected_run(
    login: Login,
    store: Arc<dyn Store>,
    provider: &dyn jarvis_agent::anthropic::Provider,
    opts: connected::RunOptions,
    granted: Option<connected::Lease>,
    format: OutputFormat,
) -> Result<()> {
    let device = connected::Device::connect(&login.hub, &login.token, store).await?;
    let session = opts
        .session
        .clone()
        .unwrap_or_else(|| format!("{:016x}", connected::rand_u64()));
    let opts = connected::RunOptions {
        session: Some(session.clone()),
        ..opts
    };
    let (tx, task) = printer(format, session.clone());
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let report = connected::run_here(&device, provider, opts, granted, Some(tx), cancel).await;
    let _ = task.await;
    let report = report.map_err(|e| match e.downcast_ref::<connected::ApiError>() {
        Some(a) if a.code == "conflict" => anyhow::anyhow!(
            "{}: run `jarvis handoff {session} --to here --dir <folder>` to take it",
            a.message
        ),
        _ => e,
    })?;
    let doc = device.session(&report.session).await?;
    let usage = doc.meta().usage;
    let name = outcome_name(&report.outcome);
    match format {
        OutputFormat::StreamJson => println!(
            "{}",
            json!({"type": "result", "session": report.session, "outcome": name,
                   "handed_to": report.handed_to, "usage": usage,
                   "cost_usd": usage.cost_micros as f64 / 1e6})
        ),
        OutputFormat::Text => {
            println!();
            match &report.handed_to {
                Some(to) => eprintln!("session {}: continued on {to}", report.session),
                None => eprintln!("session {}: {name}", report.session),
            }
        }
    }
    match report.outcome {
        Outcome::EndTurn | Outcome::Yielded => Ok(()),
        Outcome::Failed(reason) => bail!("the session failed: {reason}"),
        other => bail!("the session stopped: {}", outcome_name(&other)),
    }
}

#[allow(clippy::too_many_arguments)]
async fn handoff_cmd(
    login: Login,
    store: Arc<dyn Store>,
    session: &str,
    to: &str,
    dir: Option<PathBuf>,
    format: OutputFormat,
    model: String,
    permission_mode: Option<String>,
) -> Result<()> {
    if to == "here" && dir.is_none() {
        bail!("--to here needs --dir <folder>: where this device keeps the workspace");
    }
    let device = connected::Device::connect(&login.hub, &login.token, store.clone()).await?;
    let granted = connected::request_handoff(&device, session, to, dir.as_deref()).await?;
    let Some(lease) = granted else {
        bail!("the handoff is still pending: the current runner has not yielded yet");
    };
    if to != "here" {
        println!(
            "session {session} now runs on {}",
            lease.device.as_deref().unwrap_or("?")
        );
        return Ok(());
    }
    eprintln!(
        "session {session} is on this device now (epoch {})",
        lease.epoch
    );
    drop(device);
    // The cloud's commits come back on the agent's branch (never onto the user's own).
    if let Some(d) = dir.as_deref() {
        match jarvis_sync::gitstate::receive_from_cloud(&login.hub, &login.token, session, d).await
        {
            Ok(Some(b)) => eprintln!(
                "the cloud's commits are on branch {} (at {}){}",
                b.branch,
                &b.head[..b.head.len().min(10)],
                b.note.map(|n| format!("; note: {n}")).unwrap_or_default()
            ),
            Ok(None) => {}
            Err(e) => eprintln!("warning: the cloud's commits did not come back: {e}"),
        }
    }
    // Continue here: run whatever the session was in the middle of, in the folder.
    let env: HashMap<String, String> = std::env::vars().collect();
    let provider = ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
    connected_run(
        login,
        store,
        provider.as_ref(),
        connected::RunOptions {
            prompt: String::new(),
            dir: dir.unwrap_or_default(),
            workspace: None,
            session: Some(session.to_owned()),
            model,
            permission_mode,
            allow: vec![],
            deny: vec![],
            budget_usd: None,
            mirror: None,
        },
        Some(lease),
        format,
    )
    .await
}

async fn sync(
    home: &std::path::Path,
    store: Arc<dyn Store>,
    dir: &std::path::Path,
    workspace: Option<String>,
) -> Result<()> {
    let login = read_login(home)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("folder {} is not accessible", dir.display()))?;
    let workspace = workspace.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| {
                n.to_string_lossy()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '-'
                        }
                    })
                    .take(64)
                    .collect()
            })
            .unwrap_or_else(|| "workspace".into())
    });
    if !register_workspace(&login, &workspace).await? {
        // Offline at start: the folder syncs from the device's store meanwhile, and the
        // workspace is registered as soon as the hub answers.
        let (login, workspace) = (
            Login {
                hub: login.hub.clone(),
                token: login.token.clone(),
            },
            workspace.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                match register_workspace(&login, &workspace).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("{e:#}");
                        break;
                    }
                }
            }
        });
    }
    let client = Arc::new(jarvis_sync::client::SyncClient::start(
        jarvis_sync::client::ClientConfig::new(ws_url(&login.hub), login.token),
        store,
    ));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("importing {pos}/{len} files {wide_bar} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b2 = bar.clone();
    let mirror = jarvis_sync::mirror::FileMirror::start(
        &dir,
        &workspace,
        client.clone(),
        Some(Box::new(move |done, total| {
            b2.set_length(total as u64);
            b2.set_position(done as u64);
        })),
    )
    .await
    .with_context(|| format!("mirroring {}", dir.display()))?;
    bar.finish_and_clear();
    println!(
        "syncing {} as workspace {workspace} with {} (Ctrl-C to stop)",
        dir.display(),
        login.hub
    );
    println!(
        "open it in a browser: {}/ (Files, workspace {workspace})",
        login.hub
    );
    let line = indicatif::ProgressBar::new_spinner();
    let mut conn = client.connection();
    let mut last_waiting = Vec::new();
    loop {
        let files = mirror.index().list().len();
        let state = match &*conn.borrow() {
            jarvis_sync::client::ConnectionStatus::Connected => "connected".to_owned(),
            jarvis_sync::client::ConnectionStatus::Connecting => "connecting".to_owned(),
            jarvis_sync::client::ConnectionStatus::Offline { reason } => {
                format!("offline ({reason})")
            }
        };
        let pending = client
            .document_status(&format!("ws/{workspace}/index"))
            .map_or(0, |s| s.pending());
        let waiting = mirror.waiting_uploads();
        let uploads = waiting_line(&waiting);
        line.set_message(format!(
            "{state} · {files} files · {pending} index edits not yet acknowledged{}",
            uploads
                .as_deref()
                .map(|u| format!(" · {u}"))
                .unwrap_or_default()
        ));
        line.tick();
        if waiting != last_waiting {
            // Also as a plain line: the spinner is invisible without a terminal.
            match &uploads {
                Some(u) => println!("{u}"),
                None => println!("every upload has reached the hub"),
            }
            last_waiting = waiting;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = conn.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
    line.finish_and_clear();
    // Finish the pass in progress, so its sync state is saved with the changes it made.
    mirror.settle(false).await;
    client
        .flush_all(std::time::Duration::from_secs(10))
        .await
        .context("some changes were not acknowledged by the hub before stopping; they are kept locally and sent next time")?;
    drop(mirror);
    println!("stopped; everything is acknowledged by the hub");
    Ok(())
}

/// A folder that is synced is a workspace the hub lists (and the web view shows): register it
/// before mirroring. `Ok(false)`: the hub did not answer (the caller retries); a refusal names
/// the fix instead of syncing into a workspace nobody sees.
async fn register_workspace(login: &Login, workspace: &str) -> Result<bool> {
    let api = connected::Api::new(&login.hub, &login.token);
    match api
        .post(
            "/api/workspaces",
            json!({"id": workspace, "name": workspace}),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => match e.downcast_ref::<connected::ApiError>() {
            Some(a) if a.status == 401 => bail!(
                "the hub refused this device's token ({}): sign in again with `jarvis login {} --token …`",
                a.message,
                login.hub
            ),
            Some(a) if a.status == 403 || a.code == "conflict" => bail!(
                "you may not use workspace {workspace:?} on {} ({}): ask an owner of it to add you \
                 as a member, or sync the folder under another name with `--workspace <name>`",
                login.hub,
                a.message
            ),
            Some(_) => Err(e.context(format!("registering workspace {workspace}"))),
            None => {
                eprintln!(
                    "the hub is not reachable ({e:#}); syncing from this device's copy, the \
                     workspace is registered as soon as the hub answers"
                );
                Ok(false)
            }
        },
    }
}

/// "2 files waiting to upload (a.bin: upload failed: hub unreachable; …)", or None.
fn waiting_line(waiting: &[(String, String)]) -> Option<String> {
    if waiting.is_empty() {
        return None;
    }
    let shown: Vec<String> = waiting
        .iter()
        .take(3)
        .map(|(p, r)| format!("{p}: {r}"))
        .collect();
    let more = if waiting.len() > 3 { "; …" } else { "" };
    Some(format!(
        "{} file{} waiting to upload ({}{more}), retrying",
        waiting.len(),
        if waiting.len() == 1 { "" } else { "s" },
        shown.join("; ")
    ))
}

async fn status(home: &std::path::Path, store: &Arc<dyn Store>) -> Result<()> {
    let docs = store.list_docs()?.len();
    println!(
        "device store: {} ({docs} documents)",
        home.join("device.db").display()
    );
    match read_login(home) {
        Ok(login) => {
            let health = reqwest_free_health(&login.hub).await;
            println!("hub: {} ({health})", login.hub);
        }
        Err(e) => println!("hub: none ({e})"),
    }
    // Written by `jarvis sync` (possibly running now in another process).
    for (folder, files) in jarvis_sync::mirror::waiting_uploads(store.as_ref()) {
        let files: Vec<(String, String)> = files.into_iter().collect();
        if let Some(line) = waiting_line(&files) {
            println!("{folder}: {line}");
        }
    }
    Ok(())
}

/// GET /healthz over a plain TCP connection (http only; https hubs report "not checked").
async fn reqwest_free_health(hub: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rest) = hub.strip_prefix("http://") else {
        return "not checked over https".into();
    };
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(5), attempt).await {
        Ok(Ok(r)) if r.starts_with("HTTP/1.1 200") => "reachable".into(),
        Ok(Ok(r)) => format!("answered {}", r.lines().next().unwrap_or("")),
        Ok(Err(e)) => format!("unreachable: {e}"),
        Err(_) => "unreachable: timed out".into(),
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

fn outcome_name(o: &Outcome) -> &'static str {
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

#[allow(clippy::too_many_arguments)]
async fn run<'p>(
    doc: SessionDoc,
    provider: &'p dyn jarvis_agent::anthropic::Provider,
    tools: ToolBox,
    permissions: Permissions,
    config: RunnerConfig,
    format: OutputFormat,
    id: &str,
    configure: impl FnOnce(Runner<'p>) -> Runner<'p>,
) -> Outcome {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut runner =
        configure(Runner::new(doc, provider, tools, permissions, config)).with_events(tx);
    let cancel = CancellationToken::new();
    let ctrl_c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let session = id.to_owned();
    let printer = tokio::spawn(async move {
        use std::io::Write;
        while let Some(e) = rx.recv().await {
            // Locked per event: a lock cannot be held across the await.
            let mut out = std::io::stdout().lock();
            let line = match (&e, format) {
                (RunEvent::Text(t), OutputFormat::Text) => {
                    let _ = write!(out, "{t}");
                    let _ = out.flush();
                    continue;
                }
                (RunEvent::ToolUse { name, input, .. }, OutputFormat::Text) => format!("\n[{name}] {input}"),
                (RunEvent::ToolResult { is_error: true, content, .. }, OutputFormat::Text) => {
                    format!("[error] {}", content.lines().next().unwrap_or(""))
                }
                (RunEvent::ToolResult { .. }, OutputFormat::Text) => continue,
                (RunEvent::ApprovalNeeded { id, tool, summary }, OutputFormat::Text) => {
                    format!("\n[approval needed {id}] {tool}: {summary}")
                }
                (RunEvent::Text(t), OutputFormat::StreamJson) => json!({"type": "text", "session": session, "text": t}).to_string(),
                (RunEvent::ToolUse { id, name, input }, OutputFormat::StreamJson) => {
                    json!({"type": "tool_use", "session": session, "id": id, "name": name,
                           "input": serde_json::from_str::<serde_json::Value>(input).unwrap_or(serde_json::Value::Null)})
                    .to_string()
                }
                (RunEvent::ToolResult { id, content, is_error }, OutputFormat::StreamJson) => {
                    json!({"type": "tool_result", "session": session, "id": id, "content": content, "is_error": is_error}).to_string()
                }
                (RunEvent::ApprovalNeeded { id, tool, summary }, OutputFormat::StreamJson) => {
                    json!({"type": "approval_needed", "session": session, "id": id, "tool": tool, "summary": summary}).to_string()
                }
                (RunEvent::Note(text), OutputFormat::Text) => {
                    // Notes go to stderr: stdout stays the reply.
                    eprintln!("[note] {text}");
                    continue;
                }
                (RunEvent::Note(text), OutputFormat::StreamJson) => {
                    json!({"type": "system", "session": session, "text": text}).to_string()
                }
            };
            let _ = writeln!(out, "{line}");
        }
    });
    let outcome = runner.run(&cancel).await;
    drop(runner);
    let _ = printer.await;
    outcome
}
