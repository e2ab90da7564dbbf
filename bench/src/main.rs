//! `jarvis-bench relay`: relay latency, CPU and RSS of a sync server under N documents with three
//! clients each sending ten one-character Yjs updates a second, measured side by side in one run
//! against our hub (`jarvis-cloud serve`) and the Node Hocuspocus server, with the same client
//! load (this process) and the same protocol.
//!
//! Latency is the time from a client sending an update to each other client of the document
//! receiving it, keyed exactly by the update's (Yjs client id, clock).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use jarvis_sync::protocol::{AuthMessage, Frame, Limits, Message, SyncMessage};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Text, Transact};

#[derive(Parser)]
#[command(about = "Relay benchmark: jarvis-cloud against Node Hocuspocus")]
enum Cli {
    Relay(RelayArgs),
    /// File mirror: import, first download, edit propagation, against rsync.
    Mirror(mirror::MirrorArgs),
    /// Continue in cloud: request to the cloud's first streamed token, 1,000-file workspace.
    Handoff(handoff::HandoffArgs),
    /// LLM gateway overhead: first byte and CPU per request, direct against through the gateway.
    Gateway(gateway::GatewayArgs),
    /// Server memory under anonymous request-body and slow-header attacks (issue 15).
    AnonBodies(anon::AnonArgs),
    /// Prompt cache over a long session with one compaction, against Anthropic's cache rules.
    Cache(cache::CacheArgs),
    /// Server memory under a presence (awareness) flood from read-only sockets (issue 15).
    PresenceFlood(presence::PresenceArgs),
}

mod anon;
mod cache;
mod gateway;
mod handoff;
mod mirror;
mod presence;

#[derive(Parser, Clone)]
struct RelayArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    jarvis_bin: PathBuf,
    #[arg(long, default_value = "tests/js/hocuspocus-server.mjs")]
    hocuspocus_script: PathBuf,
    /// Comma-separated document counts.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    docs: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    clients_per_doc: usize,
    /// Updates per second per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Which servers to run: jarvis, hocuspocus.
    #[arg(long, default_value = "jarvis,hocuspocus", value_delimiter = ',')]
    servers: Vec<String>,
    /// Write the Markdown table here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// 10 documents, 3 s: a smoke test.
    #[arg(long)]
    quick: bool,
}

struct Server {
    child: Child,
    port: u16,
    token: String,
    _data: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<bin> token create <args> --data-dir <data>`: the new token.
fn create_token(bin: &Path, data: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(["token", "create"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .last()
        .context("no token")?
        .to_owned())
}

fn wait_listening(child: &mut Child) -> Result<u16> {
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("listening on ") {
                let _ = tx.send(rest.rsplit(':').next().unwrap_or_default().to_owned());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .context("server did not report a port")?;
    port.trim().parse().context("bad port")
}

/// `jarvis-cloud user add bench` in `data`, then `serve` on a free loopback port with `env`;
/// the server's token is the new user's.
fn start_cloud(
    bin: &std::path::Path,
    data: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<Server> {
    let out = Command::new(bin)
        .args(["user", "add", "bench", "--data-dir"])
        .arg(data)
        .output()
        .with_context(|| format!("running {} user add", bin.display()))?;
    if !out.status.success() {
        bail!("user add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .context("no token")?
        .to_owned();
    let mut child = Command::new(bin)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let port = wait_listening(&mut child)?;
    Ok(Server {
        child,
        port,
        token,
        _data: None,
    })
}

fn start_server(kind: &str, args: &RelayArgs) -> Result<Server> {
    match kind {
        "jarvis" => {
            let data = tempfile::tempdir()?;
            let token = create_token(&args.jarvis_bin, data.path(), &["--scope", "*"])?;
            let mut child = Command::new(&args.jarvis_bin)
                .args(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
                .arg(data.path())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let port = wait_listening(&mut child)?;
            Ok(Server {
                child,
                port,
                token,
                _data: Some(data),
            })
        }
        "hocuspocus" => {
            let token = "bench-token".to_owned();
            let mut child = Command::new("node")
                .arg(&args.hocuspocus_script)
                .args(["--port", "0", "--token", &token])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting node")?;
            let port = wait_listening(&mut child)?;
            Ok(Server {
                child,
                port,
                token,
                _data: None,
            })
        }
        other => bail!("unknown server {other}"),
    }
}

/// CPU seconds (user + system) and RSS of a process, from /proc.
fn proc_stats(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Linux reports CPU time in USER_HZ, 100 on every mainstream configuration.
    Ok((ticks / 100.0, kb("VmRSS:"), kb("VmHWM:")))
}

type Key = (u64, u32);

/// Send times of updates in the measured window, per document, and who still has to get each.
struct Ledger {
    sent: Vec<Mutex<HashMap<Key, (Instant, u8)>>>,
}

struct Stats {
    latencies_us: Mutex<Vec<u32>>,
    sent_measured: AtomicU64,
    received: AtomicU64,
}

struct Row {
    server: String,
    docs: usize,
    clients: usize,
    offered: f64,
    p50: f64,
    p99: f64,
    max: f64,
    samples: usize,
    lost: u64,
    cpu: f64,
    loadgen_cpu: f64,
    rss_mb: f64,
    peak_mb: f64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket to the server's `/sync` with Nagle off (`disable_nagle`), nothing sent yet.
async fn open_socket(port: u16) -> Result<Ws> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://127.0.0.1:{port}/sync"),
        None,
        true,
    )
    .await
    .context("connect")?;
    Ok(ws)
}

async fn connect(port: u16, token: &str, name: &str) -> Result<Ws> {
    let mut ws = open_socket(port).await?;
    let auth = Frame::doc(
        name,
        Message::Auth(AuthMessage::Token {
            token: token.to_owned(),
            provider_version: None,
        }),
    );
    ws.send(WsMessage::Binary(auth.encode().into())).await?;
    let step1 = Frame::doc(
        name,
        Message::Sync(SyncMessage::Step1(StateVector::default().encode_v1())),
    );
    ws.send(WsMessage::Binary(step1.encode().into())).await?;
    // Synced when the server's step 2 arrives; answer its step 1 like a provider does.
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("handshake timed out")?
            .context("closed during handshake")??;
        if let WsMessage::Binary(b) = msg {
            match Frame::decode(&b, &Limits::default())? {
                Frame::Doc {
                    message: Message::Sync(SyncMessage::Step2(_)),
                    ..
                } => return Ok(ws),
                Frame::Doc {
                    message: Message::Sync(SyncMessage::Step1(_)),
                    ..
                } => {
                    let empty = Doc::new()
                        .transact()
                        .encode_state_as_update_v1(&StateVector::default());
                    let reply = Frame::doc(name, Message::Sync(SyncMessage::Step2(empty)));
                    ws.send(WsMessage::Binary(reply.encode().into())).await?;
                }
                Frame::Doc {
                    message: Message::Auth(AuthMessage::PermissionDenied { reason }),
                    ..
                } => bail!("denied: {reason}"),
                _ => {}
            }
        }
    }
}

/// The first struct's (client, clock) of a v1 update, read straight from its header
/// (`varUint clients, varUint structs, varUint client, varUint clock, …`) so the load generator
/// does not spend its CPU decoding whole updates. Checked against yrs in a test below.
fn update_key(update: &[u8]) -> Option<Key> {
    let mut pos = 0;
    let mut next = || -> Option<u64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *update.get(pos)?;
            pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
    };
    let (clients, structs) = (next()?, next()?);
    if clients == 0 || structs == 0 {
        return None;
    }
    let client = next()?;
    let clock = u32::try_from(next()?).ok()?;
    Some((client, clock))
}

async fn run_size(kind: &str, docs: usize, args: &RelayArgs) -> Result<Row> {
    let server = start_server(kind, args)?;
    let pid = server.child.id();
    let port = server.port;
    let clients = args.clients_per_doc;
    let ledger = Arc::new(Ledger {
        sent: (0..docs).map(|_| Mutex::new(HashMap::new())).collect(),
    });
    let stats = Arc::new(Stats {
        latencies_us: Mutex::new(Vec::new()),
        sent_measured: AtomicU64::new(0),
        received: AtomicU64::new(0),
    });
    // Connect everything first (bounded concurrency keeps the accept queue sane).
    let mut sockets = Vec::with_capacity(docs * clients);
    for chunk in (0..docs * clients).collect::<Vec<_>>().chunks(64) {
        let mut pending = Vec::new();
        for &i in chunk {
            let name = format!("session/bench{}", i / clients);
            let token = server.token.clone();
            pending.push(tokio::spawn(async move {
                connect(port, &token, &name).await.map(|ws| (i, ws))
            }));
        }
        for p in pending {
            sockets.push(p.await??);
        }
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let sending = Arc::new(AtomicBool::new(true));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = Vec::new();
    for (i, ws) in sockets {
        let doc_idx = i / clients;
        let name = format!("session/bench{doc_idx}");
        let (mut sink, mut stream) = ws.split();
        let (ledger_r, stats_r) = (ledger.clone(), stats.clone());
        // Reader: record the latency of every relayed update.
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            while let Some(Ok(msg)) = stream.next().await {
                let WsMessage::Binary(b) = msg else { continue };
                let Ok(Frame::Doc {
                    message: Message::Sync(SyncMessage::Update(u)),
                    ..
                }) = Frame::decode(&b, &Limits::default())
                else {
                    continue;
                };
                let now = Instant::now();
                stats_r.received.fetch_add(1, Ordering::Relaxed);
                if let Some(key) = update_key(&u) {
                    let mut sent = ledger_r.sent[doc_idx]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if let Some((at, left)) = sent.get_mut(&key) {
                        local.push(now.duration_since(*at).as_micros() as u32);
                        *left -= 1;
                        if *left == 0 {
                            sent.remove(&key);
                        }
                    }
                }
            }
            stats_r
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(local);
        }));
        let (ledger_w, stats_w, measuring, sending) = (
            ledger.clone(),
            stats.clone(),
            measuring.clone(),
            sending.clone(),
        );
        let peers = (clients - 1) as u8;
        // Writer: a one-character insert every period, starting at a random phase.
        tasks.push(tokio::spawn(async move {
            // Each client appends to a text of its own, as a runner streaming into its message
            // does. (Inserting at the head of a text the client never merged would make every
            // update a concurrent head insert, whose conflict resolution scans the whole
            // document: a quadratic load no real peer produces.)
            let doc = Doc::new();
            let text = doc.get_or_insert_text(format!("client{}", i % clients).as_str());
            let phase = Duration::from_secs_f64(rand::random::<f64>() * period.as_secs_f64());
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while sending.load(Ordering::Relaxed) {
                tick.tick().await;
                let before = doc.transact().state_vector();
                text.push(&mut doc.transact_mut(), "x");
                let update = doc.transact().encode_diff_v1(&before);
                let frame =
                    Frame::doc(name.as_str(), Message::Sync(SyncMessage::Update(update))).encode();
                if measuring.load(Ordering::Relaxed) {
                    let clock = before.get(&doc.client_id());
                    let key = (doc.client_id().get(), clock);
                    ledger_w.sent[doc_idx]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, (Instant::now(), peers));
                    stats_w.sent_measured.fetch_add(1, Ordering::Relaxed);
                }
                if sink.send(WsMessage::Binary(frame.into())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let (cpu0, _, _) = proc_stats(pid)?;
    let (own0, _, _) = proc_stats(std::process::id())?;
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let (cpu1, rss, peak) = proc_stats(pid)?;
    let (own1, _, _) = proc_stats(std::process::id())?;
    let window = t0.elapsed().as_secs_f64();
    // Grace period for in-flight relays, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sending.store(false, Ordering::Relaxed);
    let lost: u64 = ledger
        .sent
        .iter()
        .map(|m| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|(_, left)| u64::from(*left))
                .sum::<u64>()
        })
        .sum();
    drop(server);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let mut lat =
        std::mem::take(&mut *stats.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i]) / 1000.0
    };
    Ok(Row {
        server: kind.to_owned(),
        docs,
        clients: docs * clients,
        offered: docs as f64 * clients as f64 * args.rate,
        p50: pct(0.50),
        p99: pct(0.99),
        max: pct(1.0),
        samples: lat.len(),
        lost,
        cpu: (cpu1 - cpu0) / window * 100.0,
        loadgen_cpu: (own1 - own0) / window * 100.0,
        rss_mb: rss as f64 / 1024.0,
        peak_mb: peak as f64 / 1024.0,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn main() -> Result<()> {
    let mut args = match Cli::parse() {
        Cli::Relay(a) => a,
        Cli::Mirror(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(mirror::run(a));
        }
        Cli::Handoff(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(handoff::run(a));
        }
        Cli::Gateway(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(gateway::run(a));
        }
        Cli::AnonBodies(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(anon::run(a));
        }
        Cli::Cache(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(cache::run(a));
        }
        Cli::PresenceFlood(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            return rt.block_on(presence::run(a));
        }
    };
    if args.quick {
        args.docs = vec![10];
        args.warmup = 1.0;
        args.duration = 3.0;
    }
    if !Path::new(&args.jarvis_bin).exists() {
        bail!(
            "{} not found: cargo build --release -p jarvis-cloud",
            args.jarvis_bin.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &docs in &args.docs {
        for server in &args.servers {
            eprintln!("running {server} with {docs} documents …");
            let row = runtime.block_on(run_size(server, docs, &args))?;
            eprintln!(
                "  p50 {:.2} ms, p99 {:.2} ms, lost {}, cpu {:.0}%, rss {:.0} MB",
                row.p50, row.p99, row.lost, row.cpu, row.rss_mb
            );
            rows.push(row);
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {}. Command: `{}`.\n\n",
        machine(),
        std::env::args().collect::<Vec<_>>().join(" ")
    ));
    out.push_str("| server | docs | clients | updates/s offered | p50 ms | p99 ms | max ms | samples | lost | server CPU % of one core | load generator CPU % | RSS MB (peak) |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {:.0} | {:.0} ({:.0}) |\n",
            r.server,
            r.docs,
            r.clients,
            r.offered,
            r.p50,
            r.p99,
            r.max,
            r.samples,
            r.lost,
            r.cpu,
            r.loadgen_cpu,
            r.rss_mb,
            r.peak_mb
        ));
    }
    out.push_str(
        "\nThe load generator shares the machine with the server. Hocuspocus runs without a \
         persistence extension (memory only); jarvis-cloud commits every update to SQLite with \
         fsync before acknowledging it.\n",
    );
    println!("{out}");
    if let Some(path) = &args.out {
        std::fs::write(path, &out)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use yrs::Update;
    use yrs::updates::decoder::Decode;

    use super::*;

    #[test]
    fn header_key_matches_yrs() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("content");
        for i in 0..300u32 {
            let before = doc.transact().state_vector();
            text.insert(&mut doc.transact_mut(), 0, "x");
            let update = doc.transact().encode_diff_v1(&before);
            let decoded = Update::decode_v1(&update).unwrap();
            let ins = decoded.insertions(false);
            let (client, ranges) = ins.iter().next().unwrap();
            let start = ranges.iter().next().unwrap().start;
            assert_eq!(update_key(&update), Some((client.get(), start)), "edit {i}");
            assert_eq!(start, before.get(&doc.client_id()));
        }
    }
}
