//! The turn loop against a fake Anthropic server speaking real SSE over HTTP.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{Outcome, Runner};
use jarvis_agent::tools::ToolBox;
use jarvis_sync::doc::{Block, Decision, Role, SessionDoc, SessionStatus};
use jarvis_testkit::agent::{provider, runner_config as config};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply, split, sse_body};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// Awkward chunking: splits inside event names, JSON and multi-byte characters.
const CHUNKS: &[usize] = &[7, 13, 1, 64, 3];

fn workspace() -> (tempfile::TempDir, ToolBox) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "Hello, wörld!\n").unwrap();
    let tools = ToolBox::new(dir.path());
    (dir, tools)
}

fn sync(a: &Doc, b: &Doc) {
    for (from, to) in [(a, b), (b, a)] {
        let u = from
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        to.transact_mut()
            .apply_update(Update::decode_v1(&u).unwrap())
            .unwrap();
    }
}

#[tokio::test]
async fn two_tool_task_completes_with_full_transcript_and_cache_usage() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "I'll read it first. 🎉",
                &[("tu_1", "read", json!({"path": "hello.txt"}))],
                (100, 20, 900, 0),
            ),
            CHUNKS,
        ),
        FakeResponse::sse(
            &reply(
                "",
                &[(
                    "tu_2",
                    "edit",
                    json!({"path": "hello.txt", "old_string": "wörld", "new_string": "Jarvis"}),
                )],
                (30, 25, 40, 900),
            ),
            CHUNKS,
        ),
        FakeResponse::sse(
            &reply("Done: the greeting now says Jarvis.", &[], (20, 10, 0, 940)),
            CHUNKS,
        ),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    let (dir, tools) = workspace();
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "Change wörld to Jarvis in hello.txt");
    let mut runner = Runner::new(
        session.clone(),
        &p,
        tools,
        Permissions::new(Mode::AcceptEdits),
        config(),
    );
    let outcome = runner.run(&CancellationToken::new()).await;
    assert_eq!(outcome, Outcome::EndTurn);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hello.txt")).unwrap(),
        "Hello, Jarvis!\n"
    );

    // The transcript: user, assistant(text+read), results, assistant(edit), results, assistant(text).
    let msgs = session.messages();
    let roles: Vec<Role> = msgs.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert_eq!(
        msgs[1].blocks[0],
        Block::Text {
            text: "I'll read it first. 🎉".into()
        }
    );
    assert!(
        matches!(&msgs[1].blocks[1], Block::ToolUse { name, status, .. } if name == "read" && status == "done")
    );
    assert!(
        matches!(&msgs[2].blocks[0], Block::ToolResult { content, is_error: false, .. } if content.contains("Hello, wörld!"))
    );
    assert!(matches!(
        &msgs[4].blocks[0],
        Block::ToolResult {
            is_error: false,
            ..
        }
    ));
    assert_eq!(
        msgs[5].blocks,
        vec![Block::Text {
            text: "Done: the greeting now says Jarvis.".into()
        }]
    );
    assert_eq!(session.meta().status, SessionStatus::Done);

    // Usage, cache tokens included, totalled and per turn; cost from the pricing table.
    let usage = session.meta().usage;
    assert_eq!((usage.input_tokens, usage.output_tokens), (150, 55));
    assert_eq!(
        (usage.cache_write_tokens, usage.cache_read_tokens),
        (940, 1840)
    );
    assert_eq!(
        session
            .message_usage(&msgs[1].id)
            .unwrap()
            .cache_write_tokens,
        900
    );
    assert!(usage.cost_micros > 0);

    // What the provider saw: auth headers, cache breakpoints, and the tool results.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].path, "/v1/messages");
    assert_eq!(reqs[0].headers["x-api-key"], "sk-test-not-a-real-key");
    assert_eq!(reqs[0].headers["anthropic-version"], "2023-06-01");
    let second = &reqs[1].body;
    let last = second["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "user");
    assert_eq!(last["content"][0]["type"], "tool_result");
    assert_eq!(last["content"][0]["tool_use_id"], "tu_1");
    assert_eq!(last["content"][0]["cache_control"]["type"], "ephemeral");
    assert_eq!(second["system"][0]["cache_control"]["type"], "ephemeral");
    let tools = second["tools"].as_array().unwrap();
    assert_eq!(tools.last().unwrap()["cache_control"]["type"], "ephemeral");
    assert_eq!(second["stream"], true);
}

#[tokio::test]
async fn approval_answered_on_another_replica_resumes_and_denial_reaches_the_model() {
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "",
                &[("tu_b", "bash", json!({"command": "echo ran > proof.txt"}))],
                (10, 5, 0, 0),
            ),
            CHUNKS,
        ),
        FakeResponse::sse(
            &reply(
                "It ran.",
                &[("tu_c", "bash", json!({"command": "rm -rf important"}))],
                (10, 5, 0, 0),
            ),
            CHUNKS,
        ),
        FakeResponse::sse(
            &reply("Understood, I will not delete it.", &[], (10, 5, 0, 0)),
            CHUNKS,
        ),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    let (dir, tools) = workspace();
    std::fs::create_dir(dir.path().join("important")).unwrap();
    let runner_doc = SessionDoc::new(Doc::new());
    let phone = SessionDoc::new(Doc::new());
    Runner::send_user_message(&runner_doc, "user", "run it");
    let mut runner = Runner::new(
        runner_doc.clone(),
        &p,
        tools,
        Permissions::new(Mode::Ask),
        config(),
    );
    let cancel = CancellationToken::new();
    let outcome = runner.run(&cancel).await;
    assert_eq!(
        outcome,
        Outcome::ApprovalPending {
            approval_id: "ap-tu_b".into()
        }
    );
    assert_eq!(runner_doc.meta().status, SessionStatus::WaitingApproval);
    assert!(
        !dir.path().join("proof.txt").exists(),
        "ran before approval"
    );

    // The phone replica answers; the runner's replica receives it and the loop goes on.
    sync(runner_doc.doc(), phone.doc());
    phone
        .answer_approval("ap-tu_b", Decision::Allow, "phone", 1)
        .unwrap();
    sync(runner_doc.doc(), phone.doc());
    let outcome = runner.run(&cancel).await;
    assert_eq!(
        outcome,
        Outcome::ApprovalPending {
            approval_id: "ap-tu_c".into()
        }
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("proof.txt")).unwrap(),
        "ran\n"
    );

    // The second call is denied from the phone while the runner is waiting in `drive`.
    let (r2, ph2) = (runner_doc.clone(), phone.clone());
    let answer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sync(r2.doc(), ph2.doc());
        ph2.answer_approval("ap-tu_c", Decision::Deny, "phone", 2)
            .unwrap();
        sync(r2.doc(), ph2.doc());
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), runner.drive(&cancel))
        .await
        .unwrap();
    answer.await.unwrap();
    assert_eq!(outcome, Outcome::EndTurn);
    assert!(dir.path().join("important").exists());
    let reqs = server.requests();
    let last = reqs[2].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"][0]["tool_use_id"], "tu_c");
    assert_eq!(last["content"][0]["is_error"], true);
    assert!(
        last["content"][0]["content"]
            .as_str()
            .unwrap()
            .contains("denied")
    );
}

#[tokio::test]
async fn interrupt_mid_stream_keeps_the_partial_text() {
    let events = reply(
        "one two three four five six seven eight nine ten",
        &[],
        (5, 5, 0, 0),
    );
    let server = FakeServer::start(vec![
        FakeResponse::sse(&events, &[40]).with_delay(Duration::from_millis(60)),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    let (_dir, tools) = workspace();
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "count");
    let mut runner = Runner::new(
        session.clone(),
        &p,
        tools,
        Permissions::new(Mode::Ask),
        config(),
    );
    let cancel = CancellationToken::new();
    let watcher = session.clone();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        // Interrupt once some text has arrived.
        loop {
            let has_text = watcher.messages().iter().any(|m| {
                m.role == Role::Assistant
                    && m.blocks
                        .iter()
                        .any(|b| matches!(b, Block::Text { text } if !text.is_empty()))
            });
            if has_text {
                c2.cancel();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), runner.run(&cancel))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(session.meta().status, SessionStatus::Interrupted);
    let msgs = session.messages();
    let Block::Text { text } = &msgs[1].blocks[0] else {
        panic!("{:?}", msgs[1])
    };
    assert!(
        !text.is_empty() && text.len() < "one two three four five six seven eight nine ten".len(),
        "{text:?}"
    );
}

#[tokio::test]
async fn a_restarted_runner_continues_from_the_document_without_repeating_tools() {
    let server = FakeServer::start(vec![FakeResponse::sse(
        &reply(
            "",
            &[("tu_1", "bash", json!({"command": "echo x >> count.txt"}))],
            (1, 1, 0, 0),
        ),
        CHUNKS,
    )])
    .await
    .unwrap();
    let p = provider(&server);
    let (dir, tools) = workspace();
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "append once");
    let cancel = CancellationToken::new();
    {
        let mut first = Runner::new(
            session.clone(),
            &p,
            tools.clone(),
            Permissions::new(Mode::AllowAll),
            config(),
        );
        // The first runner "crashes" after the tool ran: the script has no further reply, so
        // its next request fails; everything up to there is in the document.
        let outcome = first.run(&cancel).await;
        assert!(
            matches!(outcome, Outcome::Failed(ref r) if r.contains("500")),
            "{outcome:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("count.txt")).unwrap(),
        "x\n"
    );
    // A new runner on a replica rebuilt from the document's bytes alone.
    let replica = SessionDoc::new(Doc::new());
    sync(session.doc(), replica.doc());
    server.push(FakeResponse::sse(
        &reply("Appended once.", &[], (1, 1, 0, 0)),
        CHUNKS,
    ));
    let mut second = Runner::new(
        replica.clone(),
        &p,
        tools.clone(),
        Permissions::new(Mode::AllowAll),
        config(),
    );
    assert_eq!(second.run(&cancel).await, Outcome::EndTurn);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("count.txt")).unwrap(),
        "x\n",
        "tool ran twice"
    );

    // A side-effecting call that was running when a runner died is reported, not re-run.
    let crashed = SessionDoc::new(Doc::new());
    Runner::send_user_message(&crashed, "user", "write");
    crashed
        .append_message(&jarvis_sync::doc::Message {
            id: "a-crash".into(),
            role: Role::Assistant,
            author: "laptop".into(),
            created_ms: 0,
            blocks: vec![Block::ToolUse {
                id: "tu_w".into(),
                name: "bash".into(),
                input: json!({"command": "echo y >> count.txt"}).to_string(),
                status: "running".into(),
            }],
        })
        .unwrap();
    server.push(FakeResponse::sse(
        &reply("I'll check first.", &[], (1, 1, 0, 0)),
        CHUNKS,
    ));
    let mut third = Runner::new(
        crashed.clone(),
        &p,
        tools,
        Permissions::new(Mode::AllowAll),
        config(),
    );
    assert_eq!(third.run(&cancel).await, Outcome::EndTurn);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("count.txt")).unwrap(),
        "x\n"
    );
    let results = crashed.message("a-crash-results").unwrap();
    assert!(
        matches!(&results.blocks[0], Block::ToolResult { content, is_error: true, .. } if content.contains("may or may not"))
    );
}

#[tokio::test]
async fn bad_input_becomes_clear_errors_and_the_process_survives() {
    let (dir, mut tools) = workspace();
    tools.bash_timeout = Duration::from_millis(300);
    // Malformed SSE (invalid JSON in data), then a truncated stream, then an overload that
    // recovers, then tool calls with broken input, an escaping path and a command that never ends.
    let mut truncated = sse_body(&reply("partial answer", &[], (1, 1, 0, 0)));
    truncated.truncate(truncated.find("message_delta").unwrap());
    let server = FakeServer::start(vec![FakeResponse::sse(&[], CHUNKS).with_header("x", "y")])
        .await
        .unwrap();
    let p = provider(&server);
    let session = SessionDoc::new(Doc::new());
    let cancel = CancellationToken::new();
    // Streams that fail part-way are retried (tests in long_tasks.rs); here each failure is
    // to reach the transcript as it is.
    let mut c = config();
    c.stream_retries = 0;
    let mut runner = Runner::new(
        session.clone(),
        &p,
        tools,
        Permissions::new(Mode::AllowAll),
        c,
    );

    // 1. An empty body: the stream ends before message_stop.
    Runner::send_user_message(&session, "user", "hi");
    let outcome = runner.run(&cancel).await;
    assert!(
        matches!(outcome, Outcome::Failed(ref r) if r.contains("before message_stop")),
        "{outcome:?}"
    );
    assert_eq!(session.meta().status, SessionStatus::Failed);

    // 2. Malformed event JSON.
    server.push(FakeResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: split(b"event: message_start\ndata: {not json\n\n", CHUNKS),
        chunk_delay: Duration::ZERO,
    });
    Runner::send_user_message(&session, "user", "again");
    let outcome = runner.run(&cancel).await;
    assert!(
        matches!(outcome, Outcome::Failed(ref r) if r.contains("malformed")),
        "{outcome:?}"
    );

    // 3. Truncated mid-stream: the partial text stays.
    server.push(FakeResponse {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: split(truncated.as_bytes(), CHUNKS),
        chunk_delay: Duration::ZERO,
    });
    Runner::send_user_message(&session, "user", "once more");
    assert!(matches!(runner.run(&cancel).await, Outcome::Failed(_)));
    let notes: Vec<String> = session
        .messages()
        .iter()
        .filter(|m| m.role == Role::System)
        .filter_map(|m| match &m.blocks[0] {
            Block::Notice { kind, text } if kind == "request_failed" => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        session
            .messages()
            .iter()
            .any(|m| m.blocks.contains(&Block::Text {
                text: "partial answer".into()
            }))
    );

    // 4. Overloaded twice (retried with backoff), then tools with bad input.
    server.push(FakeResponse::raw(
        529,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    ));
    server.push(
        FakeResponse::raw(
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#,
        )
        .with_header("retry-after", "0"),
    );
    let mut bad_json = reply("", &[("tu_j", "write", json!({"path": "x"}))], (1, 1, 0, 0));
    for e in &mut bad_json {
        if e["delta"]["type"] == "input_json_delta" {
            e["delta"]["partial_json"] = json!("{\"path\": ");
        }
    }
    server.push(FakeResponse::sse(&bad_json, CHUNKS));
    server.push(FakeResponse::sse(
        &reply(
            "",
            &[
                (
                    "tu_e",
                    "write",
                    json!({"path": "../escape.txt", "content": "x"}),
                ),
                ("tu_s", "bash", json!({"command": "sleep 600"})),
            ],
            (1, 1, 0, 0),
        ),
        CHUNKS,
    ));
    server.push(FakeResponse::sse(
        &reply("Those failed; stopping.", &[], (1, 1, 0, 0)),
        CHUNKS,
    ));
    Runner::send_user_message(&session, "user", "try tools");
    let outcome = tokio::time::timeout(Duration::from_secs(30), runner.run(&cancel))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::EndTurn);
    let results: Vec<(String, bool)> = session
        .messages()
        .iter()
        .flat_map(|m| m.blocks.clone())
        .filter_map(|b| match b {
            Block::ToolResult {
                content, is_error, ..
            } => Some((content, is_error)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results[0].1 && results[0].0.contains("Invalid tool input JSON"),
        "{results:?}"
    );
    assert!(
        results[1].1 && results[1].0.contains("refused"),
        "{results:?}"
    );
    assert!(
        results[2].1 && results[2].0.contains("timed out"),
        "{results:?}"
    );
    assert!(!dir.path().parent().unwrap().join("escape.txt").exists());
}
