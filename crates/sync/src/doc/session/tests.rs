#![allow(clippy::unwrap_used)]

use super::*;
use crate::doc::sync_replicas;

fn msg(id: &str, role: Role, blocks: Vec<Block>) -> NewMessage {
    Message {
        id: id.into(),
        role,
        author: "dev-1".into(),
        created_ms: 1,
        blocks,
    }
}

#[test]
fn meta_round_trip() {
    let s = SessionDoc::new(Doc::new());
    assert_eq!(s.meta().status, SessionStatus::Idle);
    s.set_title("Fix the build");
    s.set_workspace("w1");
    s.set_model("claude");
    s.set_status(&SessionStatus::WaitingApproval);
    let runner = Runner {
        device: "laptop".into(),
        epoch: 3,
        expires_ms: 99,
    };
    s.set_runner(Some(&runner));
    let turn = Usage {
        input_tokens: 10,
        output_tokens: 5,
        cache_read_tokens: 100,
        cache_write_tokens: 7,
        cost_micros: 1234,
    };
    s.add_usage(&turn);
    s.add_usage(&turn);
    let m = s.meta();
    assert_eq!(m.title, "Fix the build");
    assert_eq!(m.status, SessionStatus::WaitingApproval);
    assert_eq!(m.runner, Some(runner));
    assert_eq!(m.usage.cache_read_tokens, 200);
    assert_eq!(m.usage.cost_micros, 2468);
    s.set_runner(None);
    assert_eq!(s.meta().runner, None);
}

#[test]
fn streaming_and_replicas_converge() {
    let a = SessionDoc::new(Doc::new());
    let b = SessionDoc::new(Doc::new());
    a.append_message(&msg(
        "u1",
        Role::User,
        vec![Block::Text { text: "hi".into() }],
    ))
    .unwrap();
    sync_replicas(a.doc(), b.doc());
    let reply = msg("a1", Role::Assistant, vec![]);
    a.append_message(&reply).unwrap();
    let block = a
        .append_block(
            "a1",
            &Block::Text {
                text: String::new(),
            },
        )
        .unwrap();
    for chunk in ["Hel", "lo", " there"] {
        a.push_text(&block, chunk).unwrap();
    }
    // Meanwhile b appends a follow-up of its own.
    b.append_message(&msg(
        "u2",
        Role::User,
        vec![Block::Text {
            text: "more".into(),
        }],
    ))
    .unwrap();
    sync_replicas(a.doc(), b.doc());
    let (ma, mb) = (a.messages(), b.messages());
    assert_eq!(ma, mb);
    assert_eq!(ma.len(), 3);
    assert_eq!(
        b.message("a1").unwrap().blocks,
        vec![Block::Text {
            text: "Hello there".into()
        }]
    );
    // A handle taken after the fact streams into the same block.
    let again = b.block_ref("a1", 0).unwrap();
    b.push_text(&again, "!").unwrap();
    sync_replicas(a.doc(), b.doc());
    assert_eq!(
        a.message("a1").unwrap().blocks,
        vec![Block::Text {
            text: "Hello there!".into()
        }]
    );
    assert!(matches!(
        a.append_message(&msg("u1", Role::User, vec![])),
        Err(DocError::DuplicateMessage(_))
    ));
    assert!(matches!(
        a.append_block(
            "nope",
            &Block::Text {
                text: String::new()
            }
        ),
        Err(DocError::UnknownMessage(_))
    ));
    assert!(matches!(
        a.block_ref("a1", 7),
        Err(DocError::NoSuchBlock { .. })
    ));
}

#[test]
fn approvals_answered_on_another_replica_and_first_answer_wins() {
    let runner = SessionDoc::new(Doc::new());
    let phone = SessionDoc::new(Doc::new());
    runner
        .append_message(&msg(
            "a1",
            Role::Assistant,
            vec![
                Block::ToolUse {
                    id: "t1".into(),
                    name: "bash".into(),
                    input: r#"{"command":"cargo test"}"#.into(),
                    status: "pending".into(),
                },
                Block::Approval {
                    id: "ap1".into(),
                    tool_use_id: "t1".into(),
                    tool: "bash".into(),
                    summary: "cargo test".into(),
                    decision: None,
                    decided_by: None,
                    decided_at: None,
                },
            ],
        ))
        .unwrap();
    assert_eq!(runner.pending_approvals().len(), 1);
    sync_replicas(runner.doc(), phone.doc());
    phone
        .answer_approval("ap1", Decision::Allow, "phone", 42)
        .unwrap();
    let err = phone
        .answer_approval("ap1", Decision::Deny, "laptop", 43)
        .unwrap_err();
    assert!(matches!(err, DocError::AlreadyAnswered { ref by, .. } if by == "phone"));
    sync_replicas(runner.doc(), phone.doc());
    assert!(runner.pending_approvals().is_empty());
    let blocks = runner.message("a1").unwrap().blocks;
    assert!(matches!(
        &blocks[1],
        Block::Approval { decision: Some(Decision::Allow), decided_by: Some(by), decided_at: Some(42), .. } if by == "phone"
    ));
    runner.set_tool_status("t1", "done").unwrap();
    assert!(
        matches!(&runner.message("a1").unwrap().blocks[0], Block::ToolUse { status, .. } if status == "done")
    );
    assert!(matches!(
        runner.answer_approval("nope", Decision::Allow, "x", 0),
        Err(DocError::UnknownApproval(_))
    ));
}

#[test]
fn compaction_and_notice_blocks_round_trip() {
    let s = SessionDoc::new(Doc::new());
    let blocks = vec![
        Block::Compaction {
            summary: "Did A, then B.".into(),
            upto: "a-1".into(),
            replaced: 7,
            tokens_before: 18_000,
            trigger: "auto".into(),
            focus: Some("tests".into()),
        },
        Block::Notice {
            kind: "max_turns".into(),
            text: "Stopped after 3 requests.".into(),
        },
    ];
    s.append_message(&msg("s-1", Role::System, blocks.clone()))
        .unwrap();
    let other = SessionDoc::new(Doc::new());
    sync_replicas(s.doc(), other.doc());
    assert_eq!(other.message("s-1").unwrap().blocks, blocks);
    s.set_context(1234, 20_000);
    s.set_background(&[("sh-1".into(), "python -m http.server".into())]);
    sync_replicas(s.doc(), other.doc());
    assert_eq!(other.context(), Some((1234, 20_000)));
    assert_eq!(
        other.background(),
        vec![("sh-1".to_owned(), "python -m http.server".to_owned())]
    );
}

#[test]
fn hostile_shapes_never_panic() {
    let doc = Doc::new();
    {
        // A peer writes garbage with raw yrs.
        let meta = doc.get_or_insert_map("meta");
        let messages = doc.get_or_insert_array("messages");
        let mut txn = doc.transact_mut();
        meta.insert(&mut txn, "status", 12.5);
        meta.insert(&mut txn, "runner", "not a map");
        meta.insert(
            &mut txn,
            "usage",
            Any::from(HashMap::from([("input".to_owned(), Any::from(-3.0))])),
        );
        messages.push_back(&mut txn, "a string, not a map");
        let m: MapRef = messages.push_back(&mut txn, MapPrelim::default());
        m.insert(&mut txn, "id", 5);
        let m: MapRef = messages.push_back(&mut txn, MapPrelim::default());
        m.insert(&mut txn, "id", "ok");
        m.insert(&mut txn, "role", "assistant");
        m.insert(&mut txn, "blocks", ArrayPrelim::from([Any::from(1.0)]));
        let m: MapRef = messages.push_back(&mut txn, MapPrelim::default());
        m.insert(&mut txn, "id", "future");
        m.insert(&mut txn, "role", "assistant");
        let blocks: ArrayRef = m.insert(&mut txn, "blocks", ArrayPrelim::default());
        let b: MapRef = blocks.push_back(&mut txn, MapPrelim::default());
        b.insert(&mut txn, "type", "hologram");
    }
    let s = SessionDoc::new(doc);
    let meta = s.meta();
    assert_eq!(meta.status, SessionStatus::Idle);
    assert_eq!(meta.runner, None);
    assert_eq!(meta.usage.input_tokens, 0);
    let msgs = s.messages();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        msgs[0].blocks,
        vec![Block::Unknown {
            kind: "malformed".into()
        }]
    );
    assert_eq!(
        msgs[1].blocks,
        vec![Block::Unknown {
            kind: "hologram".into()
        }]
    );
    assert!(matches!(
        s.block_ref("ok", 0),
        Err(DocError::NoSuchBlock { .. })
    ));
    let no_text = s.block_ref("future", 0).unwrap();
    assert!(matches!(
        s.push_text(&no_text, "x"),
        Err(DocError::NotText { .. })
    ));
    assert_eq!(
        SessionStatus::parse("quantum"),
        SessionStatus::Other("quantum".into())
    );
}
