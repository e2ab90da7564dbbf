//! A tool call whose start cannot be recorded is not run: the run stops with a notice instead
//! of risking a second execution after a restart (a resuming runner tells "may have run" from
//! "never started" by that record alone). The record fails here the way it can in a synced
//! session: the call's message is removed from the document (another device's edit) while a
//! `PreToolUse` hook is still deciding.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jarvis_agent::anthropic::{AnthropicProvider, Auth};
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{Outcome, Runner, RunnerConfig};
use jarvis_agent::settings::{ClaudeSetup, OwnDevice};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, Role, SessionDoc};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use yrs::{Array, Transact};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_whose_start_cannot_be_recorded_is_not_run() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Running it.",
                &[("tu_1", "bash", json!({"command": "touch tool-ran"}))],
                (10, 5, 0, 0),
            ),
            &[],
        ),
        FakeResponse::sse(&reply("Done.", &[], (10, 5, 0, 0)), &[]),
    ])
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    // The hook says it started, then holds the call until the test lets it go.
    std::fs::create_dir_all(root.join(".claude")).unwrap();
    std::fs::write(
        root.join(".claude/settings.json"),
        json!({"hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command",
            "command": "touch hook-started; while [ ! -f release-hook ]; do sleep 0.01; done",
            "timeout": 30}]}]}})
        .to_string(),
    )
    .unwrap();
    let setup = ClaudeSetup::load(&root, None, Location::Device("t".into()), &OwnDevice);
    let tools = ToolBox::new(&root);
    let permissions = setup.permissions(
        Permissions::new(Mode::AllowAll).with_root(&root),
        true,
        None,
    );
    let hooks = setup.hooks(&root, tools.sandbox.clone(), "s", permissions.mode);
    let doc = SessionDoc::new(yrs::Doc::new());
    Runner::send_user_message(&doc, "laptop", "run it");
    let provider = AnthropicProvider::new(
        &server.url(),
        Auth::ApiKey("sk-test-not-a-real-key".into()),
        BTreeMap::new(),
    );
    let mut config = RunnerConfig::new("fake-model", "laptop");
    config.flush_interval = Duration::from_millis(1);
    let run_doc = doc.clone();
    let run = tokio::spawn(async move {
        let mut runner =
            Runner::new(run_doc, &provider, tools, permissions, config).with_hooks(hooks);
        runner.run(&CancellationToken::new()).await
    });

    // While the hook runs, the call's message goes away (another device's edit).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !root.join("hook-started").exists() {
        assert!(Instant::now() < deadline, "the hook never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    {
        let messages = doc.doc().get_or_insert_array("messages");
        let mut txn = doc.doc().transact_mut();
        let len = messages.len(&txn);
        messages.remove(&mut txn, len - 1);
    }
    std::fs::write(root.join("release-hook"), "").unwrap();

    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    assert!(!root.join("tool-ran").exists(), "the call ran unrecorded");
    assert_eq!(
        server.requests().len(),
        1,
        "the run went on after the failed record"
    );
    let notice = doc
        .messages()
        .into_iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| m.blocks)
        .any(|b| matches!(&b, Block::Notice { kind, .. } if kind == "tool_status"));
    assert!(notice, "no notice: {:?}", doc.messages());
}
