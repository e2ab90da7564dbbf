use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jarvis_cloud::auth::TokenStore;
use jarvis_cloud::server::{ServeArgs, database_path, serve};
use tokio_util::sync::CancellationToken;

/// The My Jarvis cloud agent.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub: the sync WebSocket at /sync, /healthz and /metrics.
    Serve(ServeArgs),
    /// Manage device tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints it once, on the last line.
    Create {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
        /// Document names the token may open: exact, or a prefix ending in '*'. Repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        read_only: bool,
        #[arg(long, default_value = "device")]
        label: String,
    },
    /// List tokens (never their values).
    List {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
    },
    /// Revoke a token by id; it stops working at once.
    Revoke {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
        id: i64,
    },
}

fn tokens(data_dir: &std::path::Path) -> Result<TokenStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    TokenStore::open(&database_path(data_dir))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let json = std::env::var("JARVIS_LOG_FORMAT").is_ok_and(|v| v == "json");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("shutdown signal received");
                    signal.cancel();
                });
                serve(args, shutdown).await
            })
        }
        Command::Token { command } => match command {
            TokenCommand::Create {
                data_dir,
                scopes,
                read_only,
                label,
            } => {
                let token = tokens(&data_dir)?.create(&label, &scopes, read_only)?;
                println!("{token}");
                Ok(())
            }
            TokenCommand::List { data_dir } => {
                for t in tokens(&data_dir)?.list()? {
                    println!("{}", serde_json::to_string(&t)?);
                }
                Ok(())
            }
            TokenCommand::Revoke { data_dir, id } => {
                anyhow::ensure!(tokens(&data_dir)?.revoke(id)?, "no token with id {id}");
                println!("revoked token {id}");
                Ok(())
            }
        },
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
