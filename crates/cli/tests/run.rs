//! `jarvis run` as a user runs it: the real binary, a fake Anthropic server on loopback.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use jarvis_testkit::cli::{jarvis_with_fake, json_lines as lines};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use serde_json::json;

fn jarvis(
    server: &FakeServer,
    home: &std::path::Path,
    dir: &std::path::Path,
    args: &[&str],
) -> Output {
    let mut c = jarvis_with_fake(home, &server.url());
    c.args(args).current_dir(dir);
    c.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn text_output_streams_the_reply() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Let me look.",
                &[("t1", "read", json!({"path": "notes.md"}))],
                (10, 5, 3, 0),
            ),
            &[9, 4],
        ),
        FakeResponse::sse(&reply("The notes say hi.", &[], (10, 5, 0, 3)), &[9, 4]),
    ])
    .await
    .unwrap();
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(dir.path().join("notes.md"), "hi\n").unwrap();
    let output = jarvis(
        &server,
        home.path(),
        dir.path(),
        &["run", "what do my notes say?"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("Let me look."), "{stdout}");
    assert!(
        stdout.contains("[read]") && stdout.contains("The notes say hi."),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_json_approval_then_continue_the_session() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Writing it.",
                &[(
                    "t1",
                    "write",
                    json!({"path": "out.txt", "content": "made by jarvis\n"}),
                )],
                (10, 5, 0, 0),
            ),
            &[3],
        ),
        FakeResponse::sse(&reply("Written.", &[], (10, 5, 0, 0)), &[3]),
    ])
    .await
    .unwrap();
    let (home, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (h, d) = (home.path().to_owned(), dir.path().to_owned());
    let first = jarvis(
        &server,
        &h,
        &d,
        &["run", "write out.txt", "--output-format", "stream-json"],
    );
    assert_eq!(
        first.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let events = lines(&first);
    let approval = events
        .iter()
        .find(|e| e["type"] == "approval_needed")
        .unwrap();
    assert_eq!(approval["tool"], "write");
    let result = events.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["outcome"], "approval_pending");
    assert!(!d.join("out.txt").exists(), "wrote before approval");
    let session = result["session"].as_str().unwrap().to_owned();
    let id = approval["id"].as_str().unwrap().to_owned();

    let answered = jarvis(&server, &h, &d, &["approve", &session, &id]);
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let again = jarvis(
        &server,
        &h,
        &d,
        &[
            "run",
            "",
            "--session",
            &session,
            "--output-format",
            "stream-json",
        ],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let events = lines(&again);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "tool_result" && e["is_error"] == false)
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "text" && e["text"].as_str().unwrap().contains("Writ"))
    );
    assert_eq!(events.last().unwrap()["outcome"], "end_turn");
    assert_eq!(
        std::fs::read_to_string(d.join("out.txt")).unwrap(),
        "made by jarvis\n"
    );
    // A second answer to the same approval is refused with a clear error.
    let twice = jarvis(&server, &h, &d, &["approve", &session, &id, "--deny"]);
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already answered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_provider_configuration_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_jarvis"))
        .args(["run", "hi"])
        .env_clear()
        .env("JARVIS_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no provider configured"));
}
