//! A handoff in the middle of a compaction, end to end: a device (`jarvis run`, connected) works
//! through a long task under a small context window; while its summary request is streaming, the
//! session is handed to the cloud. The unfinished summary is never written; the cloud compacts
//! again by itself and finishes the task, each step done once.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jarvis_agent::compaction::SUMMARY_PROMPT;
use jarvis_agent::testing::{FakeOptions, FakeResponse, FakeServer, RecordedRequest, reply};
use jarvis_e2e::{CloudAgent, add_user, binary};
use serde_json::{Value, json};

const STEPS: u32 = 40;
/// Small enough that the transcript of ~20 steps passes 85% of it.
const WINDOW: &str = "9000";

struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let stdout = child.stdout.take().unwrap();
    let o = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut o = o.lock().unwrap();
            o.push_str(&line);
            o.push('\n');
        }
    });
    Proc { child, out }
}

fn jarvis(home: &Path, fake: &str) -> Command {
    let mut c = Command::new(binary("jarvis"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JARVIS_HOME", home)
        .env("ANTHROPIC_BASE_URL", fake)
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("JARVIS_CONTEXT_WINDOW", WINDOW)
        .env("RUST_LOG", "warn");
    c
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_summary_request(r: &RecordedRequest) -> bool {
    r.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .and_then(|c| c.last())
        .and_then(|b| b["text"].as_str())
        .is_some_and(|t| t.starts_with(SUMMARY_PROMPT))
}

fn last_step(r: &RecordedRequest) -> u32 {
    let text = r.body["messages"].to_string();
    let mut best = 0;
    for part in text.split("steps/").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if part[digits.len()..].starts_with(".txt") {
            best = best.max(digits.parse().unwrap_or(0));
        }
    }
    best
}

/// Step N writes steps/N.txt; the first summary streams slowly (the handoff lands in it).
fn model(summaries: &AtomicU32, r: &RecordedRequest) -> FakeResponse {
    let done = last_step(r);
    // Usage as the API reports it: the whole prompt by the fake's rule (the runner's meter
    // anchors on it).
    let input = jarvis_agent::testing::count_tokens(&r.raw_body);
    if is_summary_request(r) {
        let text = format!(
            "The user asked for {STEPS} steps. Wrote steps/1.txt through steps/{done}.txt. "
        );
        let first = summaries.fetch_add(1, Ordering::SeqCst) == 0;
        let text = if first { text.repeat(20) } else { text };
        let resp = FakeResponse::sse(&reply(&text, &[], (input, 50, 0, 0)), &[64]);
        return if first {
            resp.with_delay(Duration::from_millis(40))
        } else {
            resp
        };
    }
    if done >= STEPS {
        return FakeResponse::sse(&reply("All steps are done.", &[], (input, 5, 0, 0)), &[256]);
    }
    let n = done + 1;
    let call = json!({"path": format!("steps/{n}.txt"), "content": format!("step {n}\n{}", "x".repeat(900))});
    FakeResponse::sse(
        &reply(
            "",
            &[(&format!("toolu_{n:03}"), "write", call)],
            (input, 250, 0, 0),
        ),
        &[1024],
    )
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_compaction_resumes_in_the_cloud_and_finishes() {
    let summaries = Arc::new(AtomicU32::new(0));
    let s = summaries.clone();
    let fake = FakeServer::start_with(
        vec![],
        FakeOptions {
            keep_alive: false,
            responder: Some(Arc::new(move |r: &RecordedRequest| model(&s, r))),
        },
    )
    .await
    .unwrap();
    // Over the window the fake answers as the API does (400 "prompt is too long").
    fake.set_context_window(WINDOW.parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let alice = add_user(&data, "alice").unwrap();
    let agent = CloudAgent::start_with_env(
        &data,
        0,
        &[
            ("ANTHROPIC_BASE_URL", &fake.url()),
            ("ANTHROPIC_API_KEY", "test-key"),
            ("JARVIS_SANDBOX", "limits"),
            ("JARVIS_ALLOW_UNSANDBOXED", "1"),
            ("JARVIS_CONTEXT_WINDOW", WINDOW),
        ],
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", agent.port);
    let dev = tmp.path().join("proj");
    std::fs::create_dir_all(&dev).unwrap();
    let home = tmp.path().join("home");
    run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["login", &base, "--token", &alice]);
        c
    });
    // A model the table does not know, so JARVIS_CONTEXT_WINDOW sets its window everywhere.
    let mut device = spawn({
        let mut c = jarvis(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "s1",
            "--workspace",
            "proj",
            "--model",
            "fake-model",
        ])
        .args([
            "--permission-mode",
            "allow-all",
            "--output-format",
            "stream-json",
            "--dir",
        ])
        .arg(&dev)
        .arg("Do the steps.");
        c
    });
    // The device's summary request is streaming: hand the session to the cloud now.
    wait_for(
        "the device's summary request",
        Duration::from_secs(60),
        || fake.requests().iter().any(is_summary_request),
    )
    .await;
    let out = run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "s1", "--to", "cloud"]);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while device.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the device did not yield");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        device
            .out
            .lock()
            .unwrap()
            .contains("\"handed_to\":\"cloud\""),
        "{}",
        device.out.lock().unwrap()
    );

    // The cloud compacts by itself and finishes.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let session = loop {
        let v: Value = http
            .get(format!("{base}/api/sessions/s1"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] == "done" {
            break v;
        }
        assert!(Instant::now() < deadline, "the cloud did not finish: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let blocks: Vec<Value> = session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["blocks"].as_array().cloned().unwrap_or_default())
        .collect();
    let compactions: Vec<&Value> = blocks
        .iter()
        .filter(|b| b["type"] == "compaction")
        .collect();
    // The interrupted summary was not written; the cloud's own was.
    assert!(summaries.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        compactions.len() as u32,
        summaries.load(Ordering::SeqCst) - 1
    );
    let mut writes = vec![0; STEPS as usize + 1];
    for b in blocks.iter().filter(|b| b["type"] == "tool_use") {
        let input: Value = serde_json::from_str(b["input"].as_str().unwrap()).unwrap();
        let p = input["path"].as_str().unwrap();
        writes[p["steps/".len()..p.len() - 4].parse::<usize>().unwrap()] += 1;
    }
    assert!(writes[1..].iter().all(|w| *w == 1), "{writes:?}");
    let cloud_dir = data.join("workspaces/proj/steps");
    for n in 1..=STEPS {
        assert!(
            cloud_dir.join(format!("{n}.txt")).exists(),
            "steps/{n}.txt missing in the cloud copy"
        );
    }
    // Every request fitted the window by the fake's rule.
    for r in fake.requests() {
        assert!(
            jarvis_agent::testing::count_tokens(&r.raw_body) <= WINDOW.parse().unwrap(),
            "a request passed the window"
        );
    }
}
