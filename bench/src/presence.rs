//! `jarvis-bench presence-flood`: the server's memory under a presence (awareness) flood from
//! read-only sockets (issue 15 item 5). Each of `--sockets` connections, with a read-only
//! `session/*` token, joins document after document and announces `--clients` client ids per
//! document, each with a `--state-bytes` JSON state, until it has covered `--documents`
//! documents or the server closes it. The sockets stay open while the server's RSS (VmRSS,
//! VmHWM peak, from /proc) is read, so whatever the hub keeps for them is still held.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use jarvis_sync::awareness::{self, AwarenessEntry};
use jarvis_sync::protocol::{AuthMessage, Frame, Limits, Message};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(clap::Parser, Clone)]
pub struct PresenceArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    jarvis_bin: PathBuf,
    /// Concurrent read-only sockets.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Documents each socket joins and floods.
    #[arg(long, default_value_t = 400)]
    documents: usize,
    /// Client ids each socket announces on each document.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Bytes of each presence state (a JSON string).
    #[arg(long, default_value_t = 16_000)]
    state_bytes: usize,
    /// Write the Markdown table here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What one socket got done: documents flooded, and how it ended.
struct Outcome {
    documents: usize,
    closed: Option<(u16, String)>,
    socket: Option<super::Ws>,
}

/// The next message for the socket, or its close; `Ok(None)` on any other end.
async fn next(ws: &mut super::Ws) -> Result<Result<Message, (u16, String)>> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no answer from the server in 60 s")?;
        match msg {
            Some(Ok(WsMessage::Binary(b))) => {
                if let Frame::Doc { message, .. } = Frame::decode(&b, &Limits::default())? {
                    return Ok(Ok(message));
                }
            }
            Some(Ok(WsMessage::Close(f))) => {
                return Ok(Err(f.map_or((0, String::new()), |f| {
                    (u16::from(f.code), f.reason.to_string())
                })));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ok(Err((0, format!("socket error: {e}")))),
            None => return Ok(Err((0, "ended without a close frame".into()))),
        }
    }
}

async fn send(ws: &mut super::Ws, doc: &str, m: Message) -> Result<()> {
    ws.send(WsMessage::Binary(Frame::doc(doc, m).encode().into()))
        .await
        .context("sending")
}

async fn flood(port: u16, token: String, socket: usize, args: PresenceArgs) -> Result<Outcome> {
    let mut ws = super::open_socket(port).await?;
    let state = format!("\"{}\"", "x".repeat(args.state_bytes.saturating_sub(2)));
    let mut last = None;
    for d in 0..args.documents {
        let doc = format!("session/flood-{socket}-{d}");
        send(
            &mut ws,
            &doc,
            Message::Auth(AuthMessage::Token {
                token: token.clone(),
                provider_version: None,
            }),
        )
        .await?;
        // Frames on one socket are handled in order: the answer to this auth also means the
        // previous document's presence was handled (or earned the close that comes instead).
        loop {
            match next(&mut ws).await? {
                Ok(Message::Auth(AuthMessage::Authenticated { .. })) => break,
                Ok(Message::Auth(AuthMessage::PermissionDenied { reason })) => {
                    bail!("denied: {reason}")
                }
                Ok(_) => continue,
                Err(close) => {
                    return Ok(Outcome {
                        documents: d,
                        closed: Some(close),
                        socket: None,
                    });
                }
            }
        }
        let entries: Vec<AwarenessEntry> = (0..args.clients)
            .map(|c| AwarenessEntry {
                client_id: (socket * 1_000_000 + d * 100 + c + 1) as u64,
                clock: 1,
                state: state.clone(),
            })
            .collect();
        send(
            &mut ws,
            &doc,
            Message::Awareness(awareness::encode_update(&entries)),
        )
        .await?;
        last = Some(doc);
    }
    // The last document's presence is handled once this query is answered.
    if let Some(doc) = last {
        send(&mut ws, &doc, Message::QueryAwareness).await?;
        loop {
            match next(&mut ws).await? {
                Ok(Message::Awareness(_)) => break,
                Ok(_) => continue,
                Err(close) => {
                    return Ok(Outcome {
                        documents: args.documents,
                        closed: Some(close),
                        socket: None,
                    });
                }
            }
        }
    }
    Ok(Outcome {
        documents: args.documents,
        closed: None,
        socket: Some(ws),
    })
}

pub async fn run(args: PresenceArgs) -> Result<()> {
    let data = tempfile::tempdir()?;
    // The README's read-only recipe; `user add` first so the token has an owner on any version.
    let out = Command::new(&args.jarvis_bin)
        .args(["user", "add", "bench", "--data-dir"])
        .arg(data.path())
        .output()
        .with_context(|| format!("running {} user add", args.jarvis_bin.display()))?;
    if !out.status.success() {
        bail!("user add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = super::create_token(
        &args.jarvis_bin,
        data.path(),
        &["--scope", "session/*", "--read-only"],
    )?;
    let server = serve(&args.jarvis_bin, data.path())?;
    let pid = server.child.id();
    let (_, before, _) = super::proc_stats(pid)?;
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.sockets)
        .map(|s| tokio::spawn(flood(server.port, token.clone(), s, args.clone())))
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.context("flood task")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, after, peak) = super::proc_stats(pid)?;
    // Documents whose presence was sent (the last one sent by a closed socket is what
    // closed it).
    let documents: usize = outcomes.iter().map(|o| o.documents).sum();
    let offered = (args.sockets * args.documents * args.clients * args.state_bytes) as f64 / 1e6;
    let sent = (documents * args.clients * args.state_bytes) as f64 / 1e6;
    let closed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.closed.as_ref())
        .map(|(code, reason)| format!("{code} {reason}"))
        .collect();
    let open = outcomes.iter().filter(|o| o.socket.is_some()).count();
    let ending = if closed.is_empty() {
        format!("none closed ({open} open while measured)")
    } else {
        let mut kinds = closed.clone();
        kinds.sort();
        kinds.dedup();
        format!(
            "{} closed ({}), {open} open",
            closed.len(),
            kinds.join("; ")
        )
    };
    let row = format!(
        "| {} sockets × {} documents × {} clients × {} B states ({offered:.0} MB offered) | {ending}; {documents} documents' presence ({sent:.1} MB) sent, in {elapsed:.1} s | {} → {} | {} |",
        args.sockets,
        args.documents,
        args.clients,
        args.state_bytes,
        before / 1024,
        after / 1024,
        peak / 1024,
    );
    let table = format!(
        "| presence flood (read-only sockets) | server's answer | server RSS before → after (MB) | peak RSS (MB) |\n|---|---|---|---|\n{row}"
    );
    // Held open until the figures are read.
    drop(outcomes);
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{table}\n"))?;
    }
    println!("{table}");
    Ok(())
}

/// `serve` on `data` (where the token was made), on a free loopback port.
fn serve(bin: &std::path::Path, data: &std::path::Path) -> Result<super::Server> {
    let mut child = Command::new(bin)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .env("JARVIS_SANDBOX", "limits")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let port = super::wait_listening(&mut child)?;
    Ok(super::Server {
        child,
        port,
        token: String::new(),
        _data: None,
    })
}
