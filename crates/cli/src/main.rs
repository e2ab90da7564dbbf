//! `jarvis`: the headless face of a device. `jarvis run` runs an agent session in a folder,
//! printing streamed text or one JSON event per line. Logged in to a hub (`jarvis login`), the
//! session and its folder sync through the cloud agent, the session runs here under a lease,
//! and `jarvis handoff` moves it to the cloud and back; without a login (or with `--local`)
//! sessions live in the device's own store only.

mod connected;
mod login;
mod print;
mod run;
mod sync;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use jarvis_sync::doc::{Decision, DocName, SessionDoc};
use jarvis_sync::store::{SqliteStore, Store, open_persisted};

use crate::login::read_login;

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
pub enum OutputFormat {
    Text,
    StreamJson,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent session headless: send a prompt, print the reply.
    Run(run::RunArgs),
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

pub fn session_doc(store: &Arc<dyn Store>, id: &str) -> Result<SessionDoc> {
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
                Some(t) => login::login(&home, &hub, &t),
                None => {
                    let name = name.unwrap_or_else(|| {
                        std::fs::read_to_string("/etc/hostname")
                            .map(|h| h.trim().to_owned())
                            .unwrap_or_else(|_| "device".into())
                    });
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(login::pair(&home, &hub, &name))
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
            runtime.block_on(connected::handoff(
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
            runtime.block_on(connected::attach(
                login,
                store,
                &session,
                output_format,
                until_done,
                approve,
            ))
        }
        Command::Sessions { json: as_json } => {
            let login = read_login(&home)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(connected::sessions(login, as_json))
        }
        Command::Sync { dir, workspace } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(sync::sync(&home, store, &dir, workspace))
        }
        Command::Status => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(sync::status(&home, &store))
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
                if runtime.block_on(connected::approve(
                    &login, &session, &approval, decision, prefix,
                ))? {
                    println!("{} {approval}", decision.as_str());
                    return Ok(());
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
        Command::Run(args) => run::run_command(&home, store, args),
    }
}
