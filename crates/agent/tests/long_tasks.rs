//! Long runs against the fake provider: compaction under a small window, handoffs in the middle
//! of a run and of a compaction, replies cut at max_tokens, streams that fail part-way, and the
//! run limit. The fake counts tokens by its stated rule (bytes / 4 of the request body) and
//! answers a request over the window as the real API does.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_agent::models::{ModelInfo, Pricing};
use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{CONTINUE_PROMPT, Outcome, Runner, RunnerConfig};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, Role, SessionDoc};
use jarvis_testkit::agent::{is_summary_request, last_step, provider};
use jarvis_testkit::fake::{
    FakeOptions, FakeResponse, FakeServer, RecordedRequest, count_tokens, reply,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const WINDOW: u64 = 20_000;
const STEPS: u32 = 300;

fn config(window: u64, max_output: u32) -> RunnerConfig {
    let info = ModelInfo::custom(
        "fake-model",
        window,
        max_output,
        Pricing::anthropic(3.0, 15.0),
    );
    let mut c = RunnerConfig::for_model("fake-model", &info, "laptop");
    c.flush_interval = Duration::from_millis(1);
    c.stream_backoff = Duration::from_millis(5);
    c
}

fn is_messages(r: &RecordedRequest) -> bool {
    r.method == "POST" && r.path == "/v1/messages"
}

fn usage_for(r: &RecordedRequest, output: &str) -> (u64, u64, u64, u64) {
    // Everything reported as cache read and write, as the API does with breakpoints; the
    // meter adds the three counts.
    let total = count_tokens(&r.raw_body);
    let read = total * 3 / 4;
    (
        total - read - 10,
        (output.len() as u64).div_ceil(4),
        10,
        read,
    )
}

/// A scripted model doing a 300-step task: step N writes steps/N.txt (about 1 KB), a summary
/// request gets a summary naming the last step, and after step 300 it ends its turn.
fn step_model(r: &RecordedRequest) -> FakeResponse {
    let done = last_step(&r.body);
    if is_summary_request(&r.body) {
        let s = format!(
            "The user asked for {STEPS} steps. Wrote steps/1.txt through steps/{done}.txt; each step writes the next file."
        );
        return FakeResponse::sse(&reply(&s, &[], usage_for(r, &s)), &[512]);
    }
    if done >= STEPS {
        let s = format!("All {STEPS} steps are done.");
        return FakeResponse::sse(&reply(&s, &[], usage_for(r, &s)), &[512]);
    }
    let n = done + 1;
    let input = json!({"path": format!("steps/{n}.txt"), "content": format!("step {n}\n{}", "x".repeat(1000))});
    let id = format!("toolu_{n:04}");
    let out = input.to_string();
    FakeResponse::sse(
        &reply("", &[(&id, "write", input)], usage_for(r, &out)),
        &[512],
    )
}

struct LongRun {
    server: FakeServer,
    /// (meter before the request, the fake's count of it), for every ordinary request.
    meter: Arc<Mutex<Vec<(u64, u64)>>>,
}

/// A fake whose responder runs `step_model`, records the meter the runner published before
/// each request, and cancels `stop` on the request `handoff_at` picks (a handoff).
async fn long_run(
    doc: SessionDoc,
    handoff_at: impl Fn(&RecordedRequest, u32) -> bool + Send + Sync + 'static,
    stop: Arc<Mutex<Option<CancellationToken>>>,
) -> LongRun {
    let meter = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicU32::new(0));
    let m = meter.clone();
    let responder = move |r: &RecordedRequest| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if is_messages(r) && !is_summary_request(&r.body) {
            // The runner writes the meter just before it sends; this request is that one.
            if let Some((tokens, _)) = doc.context() {
                m.lock().unwrap().push((tokens, count_tokens(&r.raw_body)));
            }
        }
        if handoff_at(r, n)
            && let Some(t) = stop.lock().unwrap().take()
        {
            t.cancel();
        }
        step_model(r)
    };
    let server = FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(responder)),
        },
    )
    .await
    .unwrap();
    server.set_context_window(WINDOW);
    LongRun { server, meter }
}

/// Runs runners on the document until the task ends; each handoff starts a fresh runner (a
/// new process would know only the document).
async fn run_to_end(
    doc: &SessionDoc,
    run: &LongRun,
    tools: &ToolBox,
    stop: &Arc<Mutex<Option<CancellationToken>>>,
) -> (Outcome, u32) {
    let mut handoffs = 0;
    loop {
        let token = CancellationToken::new();
        *stop.lock().unwrap() = Some(token.clone());
        let p = provider(&run.server);
        let mut runner = Runner::new(
            doc.clone(),
            &p,
            tools.clone(),
            Permissions::new(Mode::AcceptEdits),
            config(WINDOW, 4096),
        )
        .with_stop(token);
        match runner.run(&CancellationToken::new()).await {
            Outcome::Yielded => handoffs += 1,
            other => return (other, handoffs),
        }
        assert!(handoffs < 5, "handoffs do not end");
    }
}

fn compactions(doc: &SessionDoc) -> usize {
    doc.messages()
        .iter()
        .flat_map(|m| m.blocks.iter())
        .filter(|b| matches!(b, Block::Compaction { .. }))
        .count()
}

/// Every step ran exactly once and every file is on disk.
fn assert_steps_done_once(doc: &SessionDoc, dir: &std::path::Path) {
    let mut writes = vec![0u32; STEPS as usize + 1];
    for m in doc.messages() {
        for b in &m.blocks {
            if let Block::ToolUse { input, .. } = b {
                let v: Value = serde_json::from_str(input).unwrap();
                let p = v["path"].as_str().unwrap();
                let n: usize = p["steps/".len()..p.len() - 4].parse().unwrap();
                writes[n] += 1;
            }
        }
    }
    for (n, w) in writes.iter().enumerate().skip(1) {
        assert_eq!(*w, 1, "step {n} ran {w} times");
        let body = std::fs::read_to_string(dir.join(format!("steps/{n}.txt"))).unwrap();
        assert!(body.starts_with(&format!("step {n}\n")));
    }
}

fn assert_under_window(server: &FakeServer) {
    let reqs: Vec<_> = server.requests().into_iter().filter(is_messages).collect();
    assert!(reqs.len() > STEPS as usize);
    for r in &reqs {
        let t = count_tokens(&r.raw_body);
        assert!(
            t <= WINDOW,
            "a request of {t} tokens passed the {WINDOW}-token window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_step_task_compacts_under_a_20k_window_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Do the 300 steps.");
    let stop = Arc::new(Mutex::new(None));
    let run = long_run(doc.clone(), |_, _| false, stop.clone()).await;
    let tools = ToolBox::new(dir.path());
    let (outcome, _) = run_to_end(&doc, &run, &tools, &stop).await;
    assert_eq!(outcome, Outcome::EndTurn);
    assert!(compactions(&doc) >= 1);
    assert_under_window(&run.server);
    assert_steps_done_once(&doc, dir.path());
    // The context meter is within 2% of the count the provider reports for the request.
    let meter = run.meter.lock().unwrap().clone();
    assert!(meter.len() > STEPS as usize);
    for (estimate, actual) in meter {
        let off = estimate.abs_diff(actual) as f64 / actual as f64;
        assert!(off <= 0.02, "meter {estimate} vs reported {actual}");
    }
    // The transcript before each compaction stays for readers.
    let last = doc.messages();
    assert!(last.iter().filter(|m| m.role == Role::Assistant).count() > STEPS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_mid_run_and_during_a_compaction_reach_the_same_end() {
    let dir = tempfile::tempdir().unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Do the 300 steps.");
    let stop = Arc::new(Mutex::new(None));
    let summaries = Arc::new(AtomicU32::new(0));
    let s = summaries.clone();
    // First a handoff at the 40th request, then one at the second summary request.
    let run = long_run(
        doc.clone(),
        move |r, n| {
            if is_messages(r) && is_summary_request(&r.body) {
                return s.fetch_add(1, Ordering::SeqCst) + 1 == 2;
            }
            n == 40
        },
        stop.clone(),
    )
    .await;
    let tools = ToolBox::new(dir.path());
    let (outcome, handoffs) = run_to_end(&doc, &run, &tools, &stop).await;
    assert_eq!(outcome, Outcome::EndTurn);
    assert_eq!(handoffs, 2);
    // The summary interrupted by the handoff was not written; the next runner made its own.
    assert!(summaries.load(Ordering::SeqCst) > compactions(&doc) as u32);
    assert!(compactions(&doc) >= 1);
    assert_under_window(&run.server);
    assert_steps_done_once(&doc, dir.path());
}

#[tokio::test]
async fn a_60kb_write_cut_at_max_tokens_is_split_and_lands_whole() {
    let dir = tempfile::tempdir().unwrap();
    let body: String = (0..1500)
        .map(|i| format!("line {i:05} ........................................\n"))
        .collect();
    assert!(body.len() >= 60_000);
    let (a, b) = body.split_at(body.len() / 2);
    // Reply 1: the whole file in one call, cut at max_tokens in the middle of its input.
    let full = json!({"path": "big.txt", "content": body}).to_string();
    let cut = &full[..full.len() / 3];
    let cut_reply = vec![
        json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "model": "fake", "content": [], "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_big", "name": "write", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": cut}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 4096}}),
        json!({"type": "message_stop"}),
    ];
    let server = FakeServer::start(vec![
        FakeResponse::sse(&cut_reply, &[1024]),
        FakeResponse::sse(
            &reply(
                "",
                &[("toolu_a", "write", json!({"path": "big.txt", "content": a}))],
                (60, 4000, 0, 0),
            ),
            &[1024],
        ),
        FakeResponse::sse(
            &reply(
                "",
                &[(
                    "toolu_b",
                    "write",
                    json!({"path": "big.txt", "content": b, "append": true}),
                )],
                (60, 4000, 0, 0),
            ),
            &[1024],
        ),
        FakeResponse::sse(&reply("Written in two parts.", &[], (60, 10, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Write big.txt.");
    let p = provider(&server);
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::AcceptEdits),
        config(200_000, 64_000),
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("big.txt")).unwrap(),
        body
    );
    let reqs = server.requests();
    // max_tokens comes from the model table (here: the configured model's 64k).
    assert_eq!(reqs[0].body["max_tokens"], 64_000);
    // The model was told why the call did not run, not "invalid JSON".
    let second = reqs[1].body["messages"].to_string();
    assert!(second.contains("reached the output limit"), "{second}");
    assert!(!second.contains("Invalid tool input JSON"));
}

#[tokio::test]
async fn a_text_reply_cut_at_max_tokens_continues() {
    let cut = {
        let mut ev = reply("The first half of the answer, ", &[], (40, 4096, 0, 0));
        let n = ev.len();
        ev[n - 2] = json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 4096}});
        ev
    };
    let server = FakeServer::start(vec![
        FakeResponse::sse(&cut, &[64]),
        FakeResponse::sse(&reply("and the second half.", &[], (60, 10, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Explain.");
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::Ask),
        config(200_000, 4096),
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    let second = server.requests()[1].body["messages"].to_string();
    assert!(second.contains("The first half of the answer"));
    assert!(second.contains(&CONTINUE_PROMPT[..40]));
    let texts: Vec<String> = doc
        .messages()
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.blocks.clone())
        .filter_map(|b| match b {
            Block::Text { text } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts.concat(),
        "The first half of the answer, and the second half."
    );
}

/// The events of a reply whose stream fails after some text: an `overloaded_error` event, or
/// (with `drop`) a connection closed mid-body.
fn failing_reply(text: &str, drop: bool) -> FakeResponse {
    let mut ev = reply(text, &[], (40, 10, 0, 0));
    // Keep message_start, the block start, a ping and the first two deltas.
    ev.truncate(5);
    if drop {
        FakeResponse::sse(&ev, &[64]).with_dropped_connection()
    } else {
        ev.push(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
        FakeResponse::sse(&ev, &[64])
    }
}

async fn one_full_reply_after(first: FakeResponse) {
    let text = "A complete reply that streams in several deltas.";
    let server = FakeServer::start(vec![
        first,
        FakeResponse::sse(&reply(text, &[], (40, 12, 0, 0)), &[7, 13]),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Hi");
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::Ask),
        config(200_000, 4096),
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    assert_eq!(server.requests().len(), 2);
    let assistant: Vec<_> = doc
        .messages()
        .into_iter()
        .filter(|m| m.role == Role::Assistant)
        .collect();
    assert_eq!(assistant.len(), 1);
    assert_eq!(assistant[0].blocks, vec![Block::Text { text: text.into() }]);
}

#[tokio::test]
async fn an_overloaded_error_mid_stream_retries_without_duplicated_text() {
    one_full_reply_after(failing_reply("A complete reply that streams", false)).await;
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_retries_without_duplicated_text() {
    one_full_reply_after(failing_reply("A complete reply that streams", true)).await;
}

#[tokio::test]
async fn no_hidden_request_cap_and_max_turns_ends_with_a_typed_notice() {
    // 60 tool steps (more than the old hidden cap of 50) run to the end by default.
    let steps = 60;
    let mut script: Vec<FakeResponse> = (0..steps)
        .map(|i| {
            FakeResponse::sse(
                &reply(
                    "",
                    &[(&format!("toolu_{i}"), "glob", json!({"pattern": "*.txt"}))],
                    (40, 5, 0, 0),
                ),
                &[256],
            )
        })
        .collect();
    script.push(FakeResponse::sse(
        &reply("Done.", &[], (40, 5, 0, 0)),
        &[64],
    ));
    let server = FakeServer::start(script).await.unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Look around a lot.");
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::Ask),
        config(200_000, 4096),
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    assert_eq!(server.requests().len(), steps + 1);

    // With --max-turns 3 the run stops after three requests and says so, typed.
    let server = FakeServer::start(
        (0..5)
            .map(|i| {
                FakeResponse::sse(
                    &reply(
                        "",
                        &[(&format!("toolu_{i}"), "glob", json!({"pattern": "*"}))],
                        (40, 5, 0, 0),
                    ),
                    &[256],
                )
            })
            .collect(),
    )
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Look around a lot.");
    let p = provider(&server);
    let mut c = config(200_000, 4096);
    c.max_turns = Some(3);
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::Ask),
        c,
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::RequestLimit
    );
    assert_eq!(server.requests().len(), 3);
    let notice = doc
        .messages()
        .into_iter()
        .rev()
        .find(|m| m.role == Role::System)
        .unwrap();
    assert!(matches!(
        &notice.blocks[0],
        Block::Notice { kind, text } if kind == "max_turns" && text.contains("--max-turns")
    ));
}

#[tokio::test]
async fn prompt_too_long_from_the_provider_compacts_and_asks_again() {
    // The runner believes the window is large; the provider's is small. Its 400 starts a
    // compaction instead of failing the run.
    let server = FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(|r: &RecordedRequest| {
                if is_summary_request(&r.body) {
                    return FakeResponse::sse(
                        &reply(
                            "Summary: the user said hello many times.",
                            &[],
                            (100, 10, 0, 0),
                        ),
                        &[256],
                    );
                }
                FakeResponse::sse(&reply("Hello!", &[], (100, 3, 0, 0)), &[256])
            })),
        },
    )
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    // A long transcript: 30 exchanges of ~1 KB.
    for i in 0..30 {
        Runner::send_user_message(&doc, "laptop", &format!("hello {i} {}", "y".repeat(1000)));
        doc.append_message(&jarvis_sync::doc::Message {
            id: format!("a-{i}"),
            role: Role::Assistant,
            author: "laptop".into(),
            created_ms: 0,
            blocks: vec![Block::Text {
                text: "Hello!".into(),
            }],
        })
        .unwrap();
    }
    Runner::send_user_message(&doc, "laptop", "hello again");
    server.set_context_window(6_000);
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::Ask),
        config(1_000_000, 4096),
    );
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    assert_eq!(compactions(&doc), 1);
    let statuses: Vec<u64> = server
        .requests()
        .iter()
        .map(|r| count_tokens(&r.raw_body))
        .collect();
    assert!(
        statuses[0] > 6_000,
        "the first request was over the fake's window"
    );
    assert!(*statuses.last().unwrap() < 6_000);
}

/// Every process whose command line contains `needle` (Linux /proc).
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_server_answers_a_later_call_and_nothing_survives_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hello.txt"),
        "hello from the background server",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A unique sleep length marks the grandchild that leaves the process group with setsid.
    let sleeper = format!("{}.{}", 600 + port % 97, port);
    let server_cmd =
        format!("setsid sleep {sleeper} & exec python3 -m http.server {port} --bind 127.0.0.1");
    let fetch = format!(
        "python3 -c \"import urllib.request,time\nfor i in range(200):\n  try:\n    print(urllib.request.urlopen('http://127.0.0.1:{port}/hello.txt').read().decode()); break\n  except Exception: time.sleep(0.05)\""
    );
    let doc = SessionDoc::new(yrs::Doc::new());
    let listed = Arc::new(Mutex::new(Vec::new()));
    let (d, l) = (doc.clone(), listed.clone());
    let seen = Arc::new(AtomicU32::new(0));
    let responder = move |r: &RecordedRequest| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let call = |id: &str, name: &str, input: Value| {
            FakeResponse::sse(&reply("", &[(id, name, input)], (50, 10, 0, 0)), &[256])
        };
        match n {
            0 => call(
                "toolu_bg",
                "bash",
                json!({"command": server_cmd, "run_in_background": true}),
            ),
            1 => {
                *l.lock().unwrap() = d.background();
                call(
                    "toolu_fetch",
                    "bash",
                    json!({"command": fetch, "timeout_ms": 30_000}),
                )
            }
            2 => {
                let text = r.body["messages"].to_string();
                let id = regex::Regex::new(r"sh-[0-9a-f]{8}")
                    .unwrap()
                    .find(&text)
                    .unwrap()
                    .as_str()
                    .to_owned();
                call("toolu_out", "bash_output", json!({"shell_id": id}))
            }
            _ => FakeResponse::sse(&reply("The server answered.", &[], (50, 5, 0, 0)), &[256]),
        }
    };
    let server = FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: true,
            responder: Some(Arc::new(responder)),
        },
    )
    .await
    .unwrap();
    Runner::send_user_message(&doc, "laptop", "Serve the folder and fetch hello.txt.");
    let p = provider(&server);
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::AllowAll),
        config(200_000, 4096),
    );
    assert!(processes_with(&sleeper).is_empty());
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    let results: Vec<(String, String)> = doc
        .messages()
        .iter()
        .flat_map(|m| m.blocks.clone())
        .filter_map(|b| match b {
            Block::ToolResult {
                tool_use_id,
                content,
                ..
            } => Some((tool_use_id, content)),
            _ => None,
        })
        .collect();
    let fetched = &results
        .iter()
        .find(|(id, _)| id == "toolu_fetch")
        .unwrap()
        .1;
    assert!(
        fetched.contains("hello from the background server"),
        "{fetched}"
    );
    let output = &results.iter().find(|(id, _)| id == "toolu_out").unwrap().1;
    assert!(output.contains("running"), "{output}");
    // The session listed the shell while it ran, and lists nothing now.
    let during = listed.lock().unwrap().clone();
    assert_eq!(during.len(), 1);
    assert!(during[0].1.contains("http.server"));
    assert!(doc.background().is_empty());
    let notice = doc
        .messages()
        .into_iter()
        .flat_map(|m| m.blocks)
        .find_map(|b| match b {
            Block::Notice { kind, text } if kind == "background_stopped" => Some(text),
            _ => None,
        })
        .unwrap();
    assert!(notice.contains(&during[0].0), "{notice}");
    // Nothing of it remains: not the server, not the setsid grandchild.
    assert!(
        processes_with(&sleeper).is_empty(),
        "the setsid grandchild survived"
    );
    assert!(
        processes_with(&format!("http.server {port}")).is_empty(),
        "the server survived"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_sent_during_a_running_bash_call_is_queued_after_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // The command runs until the test lets it finish (after the follow-up is written).
    let cmd = "while [ ! -f go ]; do sleep 0.02; done; echo bash-finished-intact";
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "",
                &[("toolu_wait", "bash", json!({"command": cmd}))],
                (50, 10, 0, 0),
            ),
            &[256],
        ),
        FakeResponse::sse(
            &reply("Done, and noted your follow-up.", &[], (50, 5, 0, 0)),
            &[256],
        ),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "Run the long command.");
    let p = provider(&server);
    let mut runner = Runner::new(
        doc.clone(),
        &p,
        ToolBox::new(dir.path()),
        Permissions::new(Mode::AllowAll),
        config(200_000, 4096),
    );
    let phone = doc.clone();
    let follow_up = tokio::spawn(async move {
        // Wait (with a deadline) until the call runs, then write from "another device".
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let running = phone
                .messages()
                .iter()
                .flat_map(|m| m.blocks.clone())
                .any(|b| matches!(b, Block::ToolUse { status, .. } if status == "running"));
            if running {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the call never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Runner::send_user_message(&phone, "phone", "Also update the README afterwards.");
        std::fs::write(go, "").unwrap();
    });
    assert_eq!(
        runner.run(&CancellationToken::new()).await,
        Outcome::EndTurn
    );
    follow_up.await.unwrap();
    let result = doc
        .messages()
        .into_iter()
        .flat_map(|m| m.blocks)
        .find_map(|b| match b {
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } if tool_use_id == "toolu_wait" => Some((content, is_error)),
            _ => None,
        })
        .unwrap();
    assert_eq!(result, ("bash-finished-intact\n".to_owned(), false));
    // The model got the result first, then the follow-up, in one user turn.
    let messages = server.requests()[1].body["messages"].clone();
    let last = messages.as_array().unwrap().last().unwrap()["content"].clone();
    assert_eq!(last[0]["type"], "tool_result");
    assert_eq!(last[0]["content"], "bash-finished-intact\n");
    assert_eq!(last[1]["text"], "Also update the README afterwards.");
    assert!(!messages.to_string().contains("Not run"));
}

#[tokio::test]
async fn a_deprecated_model_gets_one_notice_per_session() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(&reply("One.", &[], (10, 2, 0, 0)), &[64]),
        FakeResponse::sse(&reply("Two.", &[], (10, 2, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    for prompt in ["first", "second"] {
        Runner::send_user_message(&doc, "laptop", prompt);
        // The table's limits and prices for the old default; the fake answers anyway.
        let mut c = RunnerConfig::new("claude-sonnet-4-5", "laptop");
        c.flush_interval = Duration::from_millis(1);
        assert_eq!(c.context_window, 200_000);
        let mut runner = Runner::new(
            doc.clone(),
            &p,
            ToolBox::new(dir.path()),
            Permissions::new(Mode::Ask),
            c,
        );
        assert_eq!(
            runner.run(&CancellationToken::new()).await,
            Outcome::EndTurn
        );
    }
    let notices: Vec<String> = doc
        .messages()
        .into_iter()
        .flat_map(|m| m.blocks)
        .filter_map(|b| match b {
            Block::Notice { kind, text } if kind == "model_deprecated" => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("2026-11-30") && notices[0].contains("claude-sonnet-5-5"));
    assert_eq!(server.requests()[0].body["max_tokens"], 64_000);
}

#[tokio::test]
async fn compact_sent_as_a_message_from_any_device_compacts_once_and_idles() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(&reply("Hello.", &[], (10, 2, 0, 0)), &[64]),
        FakeResponse::sse(
            &reply(
                "Summary: greeted the user; tests pending.",
                &[],
                (10, 8, 0, 0),
            ),
            &[64],
        ),
        FakeResponse::sse(
            &reply("Continuing from the summary.", &[], (10, 4, 0, 0)),
            &[64],
        ),
    ])
    .await
    .unwrap();
    let doc = SessionDoc::new(yrs::Doc::new());
    let p = provider(&server);
    let dir = tempfile::tempdir().unwrap();
    let run = |doc: SessionDoc| {
        let p = &p;
        let root = dir.path().to_owned();
        async move {
            let mut runner = Runner::new(
                doc,
                p,
                ToolBox::new(root),
                Permissions::new(Mode::Ask),
                config(200_000, 4096),
            );
            runner.run(&CancellationToken::new()).await
        }
    };
    Runner::send_user_message(&doc, "laptop", "Hi there.");
    assert_eq!(run(doc.clone()).await, Outcome::EndTurn);
    // From the phone: a command, not a message for the model.
    Runner::send_user_message(&doc, "phone", "/compact the tests");
    assert_eq!(run(doc.clone()).await, Outcome::EndTurn);
    assert_eq!(compactions(&doc), 1);
    let summary_req = server.requests()[1].body.to_string();
    assert!(summary_req.contains("Focus the summary on: the tests"));
    assert!(
        !summary_req.contains("/compact"),
        "the command reached the model"
    );
    // Handled once: running again asks nothing.
    assert_eq!(run(doc.clone()).await, Outcome::EndTurn);
    assert_eq!(server.requests().len(), 2);
    // The next message is answered from the summary, without the replaced transcript.
    Runner::send_user_message(&doc, "laptop", "Go on.");
    assert_eq!(run(doc.clone()).await, Outcome::EndTurn);
    let next = server.requests()[2].body["messages"].to_string();
    assert!(
        next.contains("tests pending") && !next.contains("Hi there."),
        "{next}"
    );
}
