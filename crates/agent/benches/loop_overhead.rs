//! Overhead of the turn loop per streamed token and per turn, against receiving the same SSE
//! stream and throwing it away. `cargo bench -p jarvis-agent --bench loop_overhead`.
//!
//! Both sides run in this process against the same in-process fake server, so the server's CPU
//! is in both measurements and cancels out in the difference.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use jarvis_agent::anthropic::{AnthropicProvider, Auth};
use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, SessionDoc};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply, sse_body};
use tokio_util::sync::CancellationToken;
use yrs::Doc;

const TOKENS: usize = 50_000;
const RUNS: usize = 11;

/// CPU time of the whole process (all threads), with nanosecond resolution.
fn cpu_seconds() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

/// The least CPU a phase took over the runs: this VM's noise only ever adds time.
fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The same SSE bytes from memory, in the chunk sizes the fake server uses: isolates our CPU
/// from the socket round trips that dominate (and add noise to) the loopback numbers.
struct Replay(Vec<Vec<u8>>);

impl jarvis_agent::anthropic::Provider for Replay {
    fn stream<'a>(
        &'a self,
        _request: &'a jarvis_agent::anthropic::MessagesRequest,
        cancel: CancellationToken,
    ) -> jarvis_agent::anthropic::BoxFuture<
        'a,
        Result<jarvis_agent::anthropic::EventStream, jarvis_agent::anthropic::ProviderError>,
    > {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = self.0.iter().cloned().map(Ok).collect();
        Box::pin(async move {
            Ok(jarvis_agent::anthropic::sse_events(
                futures_util::stream::iter(chunks),
                cancel,
            ))
        })
    }
}

fn in_memory(events: &[serde_json::Value], text: &str) -> (f64, f64, usize) {
    let chunks = jarvis_testkit::fake::split(sse_body(events).as_bytes(), &[1024]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut parse, mut lp) = (vec![], vec![]);
    rt.block_on(async {
        for _ in 0..RUNS {
            let c0 = cpu_seconds();
            let owned: Vec<Result<Vec<u8>, std::io::Error>> =
                chunks.iter().cloned().map(Ok).collect();
            let mut s = jarvis_agent::anthropic::sse_events(
                futures_util::stream::iter(owned),
                CancellationToken::new(),
            );
            while let Some(e) = s.next().await {
                e.unwrap();
            }
            parse.push(cpu_seconds() - c0);

            let provider = Replay(chunks.clone());
            let dir = tempfile::tempdir().unwrap();
            let session = SessionDoc::new(Doc::new());
            Runner::send_user_message(&session, "user", "go");
            let mut runner = Runner::new(
                session.clone(),
                &provider,
                ToolBox::new(dir.path()),
                Permissions::new(Mode::Ask),
                RunnerConfig::new("fake", "bench"),
            );
            let c0 = cpu_seconds();
            assert_eq!(
                runner.run(&CancellationToken::new()).await,
                Outcome::EndTurn
            );
            lp.push(cpu_seconds() - c0);
            assert_eq!(
                session.messages()[1].blocks,
                vec![Block::Text {
                    text: text.to_owned()
                }]
            );
        }
    });
    (min(&parse), min(&lp), chunks.len())
}

fn main() {
    // A long reply: TOKENS text deltas of four characters (the fake splits the text in fives).
    let text: String = (0..TOKENS)
        .map(|i| format!("w{:03} ", i % 1000))
        .collect::<String>();
    let text: String = text.chars().take(TOKENS * 5).collect();
    let events = reply(&text, &[], (1000, TOKENS as u64, 0, 0));
    let body_len = sse_body(&events).len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut base_cpu, mut base_ttft, mut loop_cpu, mut loop_ttft, mut base_wall, mut loop_wall) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut parse_cpu, mut parse_wall) = (vec![], vec![]);
    rt.block_on(async {
        let server = FakeServer::start(vec![]).await.unwrap();
        for _ in 0..RUNS {
            // Baseline: the same request, the bytes to /dev/null.
            server.push(FakeResponse::sse(&events, &[1024]));
            let client = reqwest::Client::new();
            let (c0, t0) = (cpu_seconds(), Instant::now());
            let resp = client
                .post(format!("{}/v1/messages", server.url()))
                .header("x-api-key", "k")
                .body("{}")
                .send()
                .await
                .unwrap();
            let mut stream = resp.bytes_stream();
            let mut first = None;
            let mut n = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.unwrap();
                if first.is_none() && chunk.windows(10).any(|w| w == b"text_delta") {
                    first = Some(t0.elapsed());
                }
                n += chunk.len();
            }
            assert_eq!(n, body_len);
            base_wall.push(t0.elapsed().as_secs_f64());
            base_cpu.push(cpu_seconds() - c0);
            base_ttft.push(first.unwrap().as_secs_f64());

            // What any client pays: the same stream parsed into events, then dropped.
            server.push(FakeResponse::sse(&events, &[1024]));
            let (c0, t0) = (cpu_seconds(), Instant::now());
            let resp = client
                .post(format!("{}/v1/messages", server.url()))
                .body("{}")
                .send()
                .await
                .unwrap();
            let mut parsed =
                jarvis_agent::anthropic::sse_events(resp.bytes_stream(), CancellationToken::new());
            let mut count = 0;
            while let Some(ev) = parsed.next().await {
                ev.unwrap();
                count += 1;
            }
            assert_eq!(count, events.len());
            parse_wall.push(t0.elapsed().as_secs_f64());
            parse_cpu.push(cpu_seconds() - c0);

            // Our loop: the same reply streamed into a session document.
            server.push(FakeResponse::sse(&events, &[1024]));
            let provider =
                AnthropicProvider::new(&server.url(), Auth::ApiKey("k".into()), BTreeMap::new());
            let dir = tempfile::tempdir().unwrap();
            let session = SessionDoc::new(Doc::new());
            Runner::send_user_message(&session, "user", "go");
            // The first streamed characters ("w000") appear raw in the update that carries
            // them, so the observer can time their arrival in the document without a read
            // transaction (which it could not take inside the commit).
            let first_text: Arc<Mutex<Option<Instant>>> = Arc::default();
            let seen = first_text.clone();
            jarvis_sync::doc::observe_updates(session.doc(), "bench", move |_, e| {
                let mut s = seen.lock().unwrap();
                if s.is_none() && e.update.windows(4).any(|w| w == b"w000") {
                    *s = Some(Instant::now());
                }
            })
            .await;
            let mut runner = Runner::new(
                session.clone(),
                &provider,
                ToolBox::new(dir.path()),
                Permissions::new(Mode::Ask),
                RunnerConfig::new("fake", "bench"),
            );
            let (c0, t0) = (cpu_seconds(), Instant::now());
            let outcome = runner.run(&CancellationToken::new()).await;
            assert_eq!(outcome, Outcome::EndTurn);
            loop_wall.push(t0.elapsed().as_secs_f64());
            loop_cpu.push(cpu_seconds() - c0);
            let seen_at = first_text.lock().unwrap().unwrap();
            loop_ttft.push(seen_at.duration_since(t0).as_secs_f64());
            let got = session.messages();
            assert_eq!(got[1].blocks, vec![Block::Text { text: text.clone() }]);
        }
    });
    let (bc, pc, lc) = (min(&base_cpu), min(&parse_cpu), min(&loop_cpu));
    let (bt, lt) = (median(&base_ttft), median(&loop_ttft));
    let (bw, pw, lw) = (median(&base_wall), median(&parse_wall), median(&loop_wall));
    let deltas = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .count();
    let (mem_parse, mem_loop, _) = in_memory(&events, &text);
    let per = |x: f64| x * 1e6 / deltas as f64;
    println!(
        "| {deltas} streamed deltas, {RUNS} runs (CPU: least, times: median) | SSE bytes to /dev/null | SSE parsed to events, dropped | our loop into the session document |"
    );
    println!("|---|---|---|---|");
    println!(
        "| loopback: CPU per turn (whole process, fake server included) | {:.1} ms | {:.1} ms | {:.1} ms |",
        bc * 1e3,
        pc * 1e3,
        lc * 1e3
    );
    println!(
        "| loopback: wall time per turn | {:.1} ms | {:.1} ms | {:.1} ms |",
        bw * 1e3,
        pw * 1e3,
        lw * 1e3
    );
    println!(
        "| loopback: time to first token | {:.2} ms (first text_delta bytes) | — | {:.2} ms (text visible in the document; +{:.2} ms) |",
        bt * 1e3,
        lt * 1e3,
        (lt - bt) * 1e3
    );
    println!(
        "| in memory (no sockets): CPU per streamed delta | — | {:.2} µs | {:.2} µs (loop adds {:.2} µs = {:.0}% of the loopback /dev/null cost of {:.2} µs) |",
        per(mem_parse),
        per(mem_loop),
        per(mem_loop - mem_parse),
        (mem_loop - mem_parse) / bc * 100.0,
        per(bc)
    );
}
