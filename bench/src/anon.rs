//! `jarvis-bench anon-bodies`: the server's memory under anonymous request-body attacks (issue
//! 15): `--connections` clients from one address each announce a large body on an endpoint
//! anyone may call and send it as fast as the server takes it; then `--slow-headers`
//! connections that send half their headers and stop. Reports each endpoint's answers and the
//! server's RSS (VmRSS after, VmHWM peak), from /proc.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Parser, Clone)]
pub struct AnonArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    jarvis_bin: PathBuf,
    /// Concurrent attacking connections per endpoint (one address).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Body size each attacker announces and tries to send, in MiB.
    #[arg(long, default_value_t = 20)]
    body_mib: usize,
    /// Half-sent-header connections held open.
    #[arg(long, default_value_t = 300)]
    slow_headers: usize,
    /// Write the Markdown table here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One attacker: headers, then the body in 64 KiB writes until done or cut off; returns the
/// status the server answered (0: closed without one) and the bytes it took.
async fn attack(port: u16, path: String, extra: String, body: usize) -> (u16, usize) {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, 0);
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {body}\r\n{extra}\r\n"
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return (0, 0);
    }
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        while sent < body {
            let n = chunk.len().min(body - sent);
            if w.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        sent
    });
    let mut buf = vec![0u8; 1024];
    let status = match tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    writer.abort();
    let sent = writer.await.unwrap_or(0);
    (status, sent)
}

fn rss(pid: u32) -> Result<(u64, u64)> {
    let (_, rss, peak) = super::proc_stats(pid)?;
    Ok((rss / 1024, peak / 1024))
}

fn start(args: &AnonArgs) -> Result<(super::Server, tempfile::TempDir)> {
    let data = tempfile::tempdir()?;
    let server = super::start_cloud(
        &args.jarvis_bin,
        data.path(),
        &[
            ("JARVIS_GITHUB_WEBHOOK_SECRET", "bench-secret"),
            ("JARVIS_SANDBOX", "limits"),
        ],
    )?;
    Ok((server, data))
}

/// Each attack against a fresh server, so one's budget use does not shape the next.
pub async fn run(args: AnonArgs) -> Result<()> {
    let body = args.body_mib * 1024 * 1024;
    let mut rows = vec![
        "| attack (one address) | answers | server RSS before → after (MB) | peak RSS (MB) |\n|---|---|---|---|"
            .to_owned(),
    ];
    let endpoints = [
        ("/v1/messages", String::new()),
        (
            "/webhooks/github",
            "X-GitHub-Event: ping\r\nX-GitHub-Delivery: d\r\nX-Hub-Signature-256: sha256=00\r\n"
                .to_owned(),
        ),
        ("/api/pair/start", String::new()),
        (
            "/webhooks/agents/w/a",
            "X-Jarvis-Delivery: d\r\nX-Jarvis-Timestamp: 0\r\nX-Jarvis-Signature: sha256=00\r\n"
                .to_owned(),
        ),
    ];
    for (path, extra) in endpoints {
        let (server, _data) = start(&args)?;
        let pid = server.child.id();
        let (before, _) = rss(pid)?;
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.connections)
            .map(|_| tokio::spawn(attack(server.port, path.to_owned(), extra.clone(), body)))
            .collect();
        let mut answers = std::collections::BTreeMap::<u16, usize>::new();
        for t in tasks {
            let (status, _) = t.await.context("attacker task")?;
            *answers.entry(status).or_default() += 1;
        }
        let (after, peak) = rss(pid)?;
        let answers: Vec<String> = answers
            .iter()
            .map(|(s, n)| {
                format!(
                    "{n}× {}",
                    if *s == 0 {
                        "closed".into()
                    } else {
                        s.to_string()
                    }
                )
            })
            .collect();
        let row = format!(
            "| {} × {} MiB bodies to `{path}` | {} in {:.1} s | {before} → {after} | {peak} |",
            args.connections,
            args.body_mib,
            answers.join(", "),
            started.elapsed().as_secs_f64()
        );
        println!("{row}");
        rows.push(row);
    }
    // Half-sent headers: held until the server's header timeout closes them.
    let (server, _data) = start(&args)?;
    let pid = server.child.id();
    let (before, _) = rss(pid)?;
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..args.slow_headers {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await
            && s.write_all(b"POST /api/pair/start HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_ok()
        {
            held.push(s);
        }
    }
    // One deadline for all: a server without a header timeout holds every one of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut closed = 0;
    for mut s in held {
        let mut b = [0u8; 256];
        if tokio::time::timeout_at(deadline, s.read(&mut b))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    let (after, peak) = rss(pid)?;
    let row = format!(
        "| {} half-sent headers | {closed} closed by the server (waited up to 20 s; {:.1} s) | {before} → {after} | {peak} |",
        args.slow_headers,
        started.elapsed().as_secs_f64()
    );
    println!("{row}");
    rows.push(row);
    let table = rows.join("\n");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{table}\n"))?;
    }
    println!("\n{table}");
    Ok(())
}
