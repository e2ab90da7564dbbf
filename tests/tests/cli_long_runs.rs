//! `jarvis run` flags for long runs, through the real binary against a fake Anthropic server:
//! `--max-turns` ends a run with a typed notice and exit status; a follow-up's `--model` and
//! `--permission-mode` change the session from then on; `/compact focus` compacts on demand;
//! the default model and its output limit come from the model table.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use jarvis_agent::compaction::SUMMARY_PROMPT;
use jarvis_testkit::binary;
use jarvis_testkit::fake::{FakeResponse, FakeServer, RecordedRequest, reply};
use serde_json::{Value, json};

fn jarvis(home: &Path, fake: &str, dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(binary("jarvis"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("JARVIS_HOME", home.join(".jarvis"))
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env("ANTHROPIC_BASE_URL", fake)
        .args([
            "run",
            "--local",
            "--output-format",
            "stream-json",
            "--session",
            "s1",
            "--dir",
        ])
        .arg(dir)
        .args(args);
    c.output().unwrap()
}

fn result_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "result")
        .unwrap_or(Value::Null)
}

/// A model that looks around forever (glob calls) and summarises when asked.
fn model(r: &RecordedRequest) -> FakeResponse {
    let last = r.body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let asked_summary = last["content"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|b| b["text"].as_str())
        .is_some_and(|t| t.starts_with(SUMMARY_PROMPT));
    if asked_summary {
        return FakeResponse::sse(
            &reply("Summary: looked around.", &[], (30, 5, 0, 0)),
            &[128],
        );
    }
    let n = r.body["messages"].as_array().map_or(0, Vec::len);
    FakeResponse::sse(
        &reply(
            "",
            &[(&format!("toolu_{n}"), "glob", json!({"pattern": "*"}))],
            (30, 5, 0, 0),
        ),
        &[128],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_turns_follow_up_flags_and_compact() {
    let server = FakeServer::answering(model).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (home, dir) = (tmp.path().join("home"), tmp.path().join("work"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let url = server.url();

    // 1. Two requests, then the limit: a typed stop, not a silent one.
    let out = tokio::task::block_in_place(|| {
        jarvis(
            &home,
            &url,
            &dir,
            &[
                "--max-turns",
                "2",
                "--permission-mode",
                "plan",
                "Look around.",
            ],
        )
    });
    assert!(!out.status.success());
    assert_eq!(
        result_line(&out)["outcome"],
        "request_limit",
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    // The default model and its maximum output, from the model table.
    assert_eq!(reqs[0].body["model"], jarvis_agent::models::DEFAULT_MODEL);
    assert_eq!(reqs[0].body["max_tokens"], 128_000);

    // 2. A follow-up with another model: the session's limit still applies, the model changes.
    let out = tokio::task::block_in_place(|| {
        jarvis(
            &home,
            &url,
            &dir,
            &["--model", "claude-opus-5", "Keep going."],
        )
    });
    assert_eq!(result_line(&out)["outcome"], "request_limit");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[2].body["model"], "claude-opus-5");

    // 3. /compact with a focus: one summary request, nothing else.
    let out = tokio::task::block_in_place(|| jarvis(&home, &url, &dir, &["/compact the globbing"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 5);
    let summary = reqs[4].body["messages"].to_string();
    assert!(
        summary.contains("Focus the summary on: the globbing"),
        "{summary}"
    );
    assert_eq!(reqs[4].body["model"], "claude-opus-5");
}
