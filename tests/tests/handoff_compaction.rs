//! A handoff in the middle of a compaction, end to end: a device (`jarvis run`, connected) works
//! through a long task under a small context window; while its summary request is streaming, the
//! session is handed to the cloud. The unfinished summary is never written; the cloud compacts
//! again by itself and finishes the task, each step done once.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jarvis_testkit::agent::{is_summary_request, last_step};
use jarvis_testkit::cli::{jarvis_with_fake, run_ok, spawn};
use jarvis_testkit::fake::{FakeResponse, FakeServer, RecordedRequest, reply};
use jarvis_testkit::{CloudAgent, eventually, hub_with_user};
use serde_json::{Value, json};

const STEPS: u32 = 40;
/// Small enough that the transcript of ~20 steps passes 85% of it.
const WINDOW: &str = "9000";

fn jarvis(home: &Path, fake: &str) -> Command {
    let mut c = jarvis_with_fake(home, fake);
    c.env("JARVIS_CONTEXT_WINDOW", WINDOW);
    c
}

/// Step N writes steps/N.txt; the first summary streams slowly (the handoff lands in it).
fn model(summaries: &AtomicU32, r: &RecordedRequest) -> FakeResponse {
    let done = last_step(&r.body);
    // Usage as the API reports it: the whole prompt by the fake's rule (the runner's meter
    // anchors on it).
    let input = jarvis_testkit::fake::count_tokens(&r.raw_body);
    if is_summary_request(&r.body) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_during_a_compaction_resumes_in_the_cloud_and_finishes() {
    let summaries = Arc::new(AtomicU32::new(0));
    let s = summaries.clone();
    let fake = FakeServer::answering(move |r: &RecordedRequest| model(&s, r))
        .await
        .unwrap();
    // Over the window the fake answers as the API does (400 "prompt is too long").
    fake.set_context_window(WINDOW.parse().unwrap());
    let (tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::options(&data)
        .fake_model(&fake)
        .unconfined()
        .env("JARVIS_CONTEXT_WINDOW", WINDOW)
        .start()
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
    eventually(
        "the device's summary request",
        Duration::from_secs(60),
        || fake.requests().iter().any(|r| is_summary_request(&r.body)),
    )
    .await
    .unwrap();
    let out = run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "s1", "--to", "cloud"]);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    device.wait(Duration::from_secs(30)).await;
    assert!(
        device.output().contains("\"handed_to\":\"cloud\""),
        "{}",
        device.output()
    );

    // The cloud compacts by itself and finishes.
    let session = agent
        .api()
        .until_status(&alice, "s1", &["done"], Duration::from_secs(120))
        .await;
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
            jarvis_testkit::fake::count_tokens(&r.raw_body) <= WINDOW.parse().unwrap(),
            "a request passed the window"
        );
    }
}
