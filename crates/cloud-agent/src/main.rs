use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jarvis_cloud::control::{ADMIN_USER, Control};
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
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Desktop app updates served at /updates/... (signed where the app is built).
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// Exit 0 when a server on this machine answers GET /healthz with 200 (the container
    /// HEALTHCHECK: the runtime image carries no curl).
    Healthcheck {
        #[arg(long, env = "PORT", default_value_t = 8080)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; prints its first token once, on the last line.
    Add {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
        name: String,
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Publish a release for one platform: the artifact and the `.sig` file `tauri signer
    /// sign` wrote next to it.
    Publish {
        #[arg(long, env = "JARVIS_DATA_DIR", default_value = "./jarvis-data")]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        version: String,
        /// `<target>-<arch>` as the app asks for it: linux-x86_64, darwin-aarch64,
        /// windows-x86_64, ...
        #[arg(long)]
        platform: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// The signature file (default: <file>.sig).
        #[arg(long)]
        signature: Option<std::path::PathBuf>,
        #[arg(long, default_value = "")]
        notes: String,
        /// RFC 3339 date shown by the app.
        #[arg(long, default_value = "")]
        pub_date: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token; prints what it can do, then the token once, on the last line. Only the
    /// admin user's `--scope '*'` without `--read-only` has admin powers; `--scope gateway`
    /// makes a token for the LLM gateway alone.
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
        /// The user (name or id) the token acts for; default the admin.
        #[arg(long)]
        user: Option<String>,
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

fn control(data_dir: &std::path::Path) -> Result<Control> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    Ok(Control::open(&database_path(data_dir))?.0)
}

fn main() -> Result<()> {
    // Inside a sandbox, in front of a command: the egress forwarder (see jarvis_agent::egress).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(jarvis_agent::egress::FORWARD_ARG) {
        std::process::exit(jarvis_agent::egress::forward_main(&args[2..]));
    }
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
                user,
            } => {
                let c = control(&data_dir)?;
                let user = match user {
                    Some(u) => {
                        c.user_by_name(&u)?
                            .with_context(|| format!("no user {u:?}"))?
                            .id
                    }
                    None => ADMIN_USER.to_owned(),
                };
                let token = c.create_token(&user, None, &label, &scopes, read_only)?;
                // What this recipe can do, before the token itself (scripts read the last
                // line): no token's power is a surprise.
                let who = c.identify(&token)?;
                println!(
                    "token for user {} ({}), scopes {}{}:",
                    who.user_name,
                    who.user,
                    who.scopes.join(", "),
                    if who.read_only { ", read-only" } else { "" }
                );
                for line in jarvis_cloud::access::describe(&who.grant()) {
                    println!("  - {line}");
                }
                println!("{token}");
                Ok(())
            }
            TokenCommand::List { data_dir } => {
                for t in control(&data_dir)?.tokens(None)? {
                    println!("{}", serde_json::to_string(&t)?);
                }
                Ok(())
            }
            TokenCommand::Revoke { data_dir, id } => {
                // A running server notices on the next check; open sockets are closed by the
                // API's revoke (DELETE /api/tokens/{id}), which also revalidates them.
                control(&data_dir)?.revoke_token(id, None)?;
                println!("revoked token {id}");
                Ok(())
            }
        },
        Command::Update {
            command:
                UpdateCommand::Publish {
                    data_dir,
                    version,
                    platform,
                    file,
                    signature,
                    notes,
                    pub_date,
                },
        } => {
            let sig_path = signature.unwrap_or_else(|| {
                let mut p = file.clone().into_os_string();
                p.push(".sig");
                p.into()
            });
            let sig = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("reading the signature {}", sig_path.display()))?;
            let m = jarvis_cloud::updates::publish(
                &data_dir, &version, &platform, &file, &sig, &notes, &pub_date,
            )?;
            println!(
                "published {} for {}",
                m.version,
                m.platforms.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        Command::Healthcheck {
            port,
            host,
            timeout_ms,
        } => healthcheck(&host, port, std::time::Duration::from_millis(timeout_ms)),
        Command::User { command } => match command {
            UserCommand::Add {
                data_dir,
                name,
                admin,
            } => {
                let c = control(&data_dir)?;
                let user = c.create_user(&name, admin)?;
                let token = c.create_token(&user.id, None, "first token", &["*".into()], false)?;
                println!("created user {} ({})", user.name, user.id);
                println!("{token}");
                Ok(())
            }
            UserCommand::List { data_dir } => {
                for u in control(&data_dir)?.users()? {
                    println!("{}", serde_json::to_string(&u)?);
                }
                Ok(())
            }
        },
    }
}

fn healthcheck(host: &str, port: u16, timeout: std::time::Duration) -> Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port}"))?
        .next()
        .with_context(|| format!("{host}:{port} resolves to nothing"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .context("sending the request")?;
    let mut response = Vec::new();
    // The answer is a few hundred bytes; a server that sends more is not ours.
    stream
        .take(64 * 1024)
        .read_to_end(&mut response)
        .context("reading the answer")?;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        anyhow::bail!("unhealthy: {status:?}");
    }
    println!("healthy");
    Ok(())
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
