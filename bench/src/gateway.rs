//! `jarvis-bench gateway`: what the LLM gateway adds. The same streamed Messages request is sent
//! to a fake Anthropic server (real HTTP/1.1 keep-alive, real SSE, one event per write) directly
//! and through `jarvis-cloud`'s `/v1/messages`, in alternating batches from this process with
//! one pooled connection per path. Measured: time to the first body byte (the `message_start`
//! event) and to the end of the stream, and CPU per request — the gateway process's own (all of
//! it is added cost) and this process's (client and fake upstream, the same work both ways).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use jarvis_testkit::fake::{FakeOptions, FakeResponse, FakeServer, reply, sse_body};
use serde_json::json;

#[derive(clap::Parser, Clone)]
pub struct GatewayArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    pub jarvis_bin: PathBuf,
    /// Measured requests per path (after the warm-up).
    #[arg(long, default_value_t = 2000)]
    pub requests: usize,
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Size of the request body (a long system prompt), in KiB.
    #[arg(long, default_value_t = 32)]
    pub body_kb: usize,
    /// Characters of streamed reply text (five per delta event).
    #[arg(long, default_value_t = 400)]
    pub reply_chars: usize,
    /// Write the Markdown table here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Default)]
struct Samples {
    ttfb_us: Vec<f64>,
    total_us: Vec<f64>,
    own_cpu_s: f64,
    gateway_cpu_s: f64,
    n: usize,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn one(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &'static [u8],
    expect_len: usize,
) -> Result<(f64, f64)> {
    let t0 = Instant::now();
    let resp = http
        .post(url)
        .header("x-api-key", token)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let mut got = 0;
    let mut ttfb = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if ttfb.is_none() && !chunk.is_empty() {
            ttfb = Some(t0.elapsed());
        }
        got += chunk.len();
    }
    if got != expect_len {
        bail!("{url}: {got} bytes streamed, {expect_len} expected");
    }
    let ttfb = ttfb.context("empty stream")?;
    Ok((ttfb.as_secs_f64() * 1e6, t0.elapsed().as_secs_f64() * 1e6))
}

pub async fn run(args: GatewayArgs) -> Result<()> {
    if !args.jarvis_bin.exists() {
        bail!(
            "{} not found: cargo build --release -p jarvis-cloud",
            args.jarvis_bin.display()
        );
    }
    let text: String = "The quick brown fox jumps over the lazy dog. "
        .chars()
        .cycle()
        .take(args.reply_chars)
        .collect();
    let events = reply(&text, &[], (2000, 100, 0, 1800));
    let expect_len = sse_body(&events).len();
    // One event per write, as the API streams.
    let mut answer = FakeResponse::sse(&events, &[1 << 20]);
    answer.chunks = events
        .iter()
        .map(|e| sse_body(std::slice::from_ref(e)).into_bytes())
        .collect();
    let fake = FakeServer::start_with(
        Vec::new(),
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(move |_| answer.clone())),
        },
    )
    .await?;

    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("hub");
    let fake_url = fake.url();
    let server = crate::start_cloud(
        &args.jarvis_bin,
        &data,
        &[
            ("ANTHROPIC_BASE_URL", fake_url.as_str()),
            ("ANTHROPIC_API_KEY", "bench-upstream-key"),
            ("JARVIS_GATEWAY_RATE_BURST", "1000000000"),
            ("JARVIS_GATEWAY_RATE_PER_SECOND", "1000000"),
            ("JARVIS_SANDBOX", "limits"),
            // Unconfined by choice: this test is not about containment (see sandbox.rs).
            ("JARVIS_ALLOW_UNSANDBOXED", "1"),
        ],
    )?;
    let (port, pid, token) = (server.port, server.child.id(), server.token.clone());
    let _server = server;

    let system = "You are a careful assistant. ".repeat(args.body_kb * 1024 / 29 + 1);
    // Leaked once: every request sends the same bytes without copying them.
    let body: &'static [u8] = Box::leak(
        serde_json::to_vec(&json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
        "system": &system[..args.body_kb * 1024],
        "messages": [{"role": "user", "content": "Say something."}],
        }))?
        .into_boxed_slice(),
    );
    let direct_url = format!("{}/v1/messages", fake.url());
    let gateway_url = format!("http://127.0.0.1:{port}/v1/messages");
    // One client per path, so each keeps its own warm connection.
    let client = || {
        reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .build()
    };
    let (direct_http, gateway_http) = (client()?, client()?);

    for _ in 0..args.warmup {
        one(
            &direct_http,
            &direct_url,
            "bench-upstream-key",
            body,
            expect_len,
        )
        .await?;
        one(&gateway_http, &gateway_url, &token, body, expect_len).await?;
    }
    let mut direct = Samples::default();
    let mut via = Samples::default();
    let rounds = 10;
    let per_round = args.requests.div_ceil(rounds);
    for _ in 0..rounds {
        for (samples, http, url, key) in [
            (&mut direct, &direct_http, &direct_url, "bench-upstream-key"),
            (&mut via, &gateway_http, &gateway_url, token.as_str()),
        ] {
            let own0 = crate::proc_stats(std::process::id())?.0;
            let gw0 = crate::proc_stats(pid)?.0;
            for _ in 0..per_round {
                let (ttfb, total) = one(http, url, key, body, expect_len).await?;
                samples.ttfb_us.push(ttfb);
                samples.total_us.push(total);
            }
            samples.own_cpu_s += crate::proc_stats(std::process::id())?.0 - own0;
            samples.gateway_cpu_s += crate::proc_stats(pid)?.0 - gw0;
            samples.n += per_round;
        }
    }
    // Let the usage writer catch up, then check every gateway request was accounted.
    let usage: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/api/usage"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let recorded = usage["gateway"]["by_user"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|u| u["requests"].as_u64())
        .unwrap_or(0);

    let row = |name: &str, s: &mut Samples| {
        let n = s.n as f64;
        format!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.1} |\n",
            pct(&mut s.ttfb_us, 0.5) / 1000.0,
            pct(&mut s.ttfb_us, 0.99) / 1000.0,
            pct(&mut s.total_us, 0.5) / 1000.0,
            pct(&mut s.total_us, 0.99) / 1000.0,
            s.gateway_cpu_s / n * 1e6,
            s.own_cpu_s / n * 1e6,
        )
    };
    let d50 = pct(&mut direct.ttfb_us, 0.5);
    let g50 = pct(&mut via.ttfb_us, 0.5);
    let d99 = pct(&mut direct.ttfb_us, 0.99);
    let g99 = pct(&mut via.ttfb_us, 0.99);
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {}. Command: `{}`. {} measured requests per path ({} warm-up), request body {} KiB, \
         reply {} SSE events ({} bytes), one event per write.\n\n",
        crate::machine(),
        std::env::args().collect::<Vec<_>>().join(" "),
        direct.n,
        args.warmup,
        args.body_kb,
        events.len(),
        expect_len
    ));
    out.push_str("| path | first byte p50 ms | first byte p99 ms | whole stream p50 ms | whole stream p99 ms | gateway process CPU µs/request | client + fake upstream CPU µs/request |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    out.push_str(&row("direct to the fake upstream", &mut direct));
    out.push_str(&row("through the gateway", &mut via));
    out.push_str(&format!(
        "\nAdded time to first byte: p50 {:.3} ms, p99 {:.3} ms (target < 1 ms p50). Gateway requests \
         recorded in usage: {recorded}.\n",
        (g50 - d50) / 1000.0,
        (g99 - d99) / 1000.0
    ));
    println!("{out}");
    if let Some(p) = &args.out {
        std::fs::write(p, &out)?;
    }
    drop(fake);
    Ok(())
}
