//! The turn loop with a workspace's Claude Code setup: lifecycle hooks (SessionStart,
//! UserPromptSubmit, Stop), nested memory, and "always allow" kept across runners.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use jarvis_agent::anthropic::AnthropicProvider;
use jarvis_agent::memory::Location;
use jarvis_agent::permissions::{Mode, Permissions};
use jarvis_agent::runner::{Outcome, Runner};
use jarvis_agent::settings::{AllowStore, ClaudeSetup, FileAllowStore, OwnDevice, Unapproved};
use jarvis_agent::tools::{Sandbox, ToolBox};
use jarvis_sync::doc::{Block, Decision, Role, SessionDoc};
use jarvis_testkit::agent::{provider, runner_config as config};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yrs::Doc;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn runner<'a>(
    session: &SessionDoc,
    p: &'a AnthropicProvider,
    root: &Path,
    approval: &dyn jarvis_agent::settings::ConfigApproval,
    store: Option<Arc<dyn AllowStore>>,
) -> Runner<'a> {
    let setup = ClaudeSetup::load(root, None, Location::Device("test".into()), approval);
    let permissions = setup.permissions(
        Permissions::new(Mode::Ask).with_root(root),
        false,
        store.as_deref(),
    );
    let hooks = setup.hooks(root, Sandbox::Host, "s1", permissions.mode);
    let mut r = Runner::new(
        session.clone(),
        p,
        ToolBox::new(root),
        permissions,
        config(),
    )
    .with_context(setup.context.clone())
    .with_hooks(hooks)
    .with_commands(setup.commands.clone())
    .with_notes(setup.notes());
    if let Some(s) = store {
        r = r.with_allow_store(s);
    }
    r
}

fn user_texts(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .flat_map(|m| m["content"].as_array().unwrap().clone())
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn lifecycle_hooks_shape_the_turn() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        ".claude/settings.json",
        &json!({"hooks": {
            "SessionStart": [{"hooks": [{"type": "command", "command": "echo 'Sprint goal: ship the parser'"}]}],
            "UserPromptSubmit": [{"hooks": [{"type": "command",
                "command": "input=$(cat); case \"$input\" in *password*) echo 'prompts must not contain passwords' >&2; exit 2;; esac; echo 'Ticket: JAR-7'"}]}],
            "Stop": [{"hooks": [{"type": "command",
                "command": "input=$(cat); case \"$input\" in *'\"stop_hook_active\":false'*) echo 'run the tests before stopping' >&2; exit 2;; esac"}]}]
        }})
        .to_string(),
    );
    write(root, "pkg/CLAUDE.md", "Marker: NESTED-MEMORY-c41d\n");
    write(root, "pkg/a.txt", "a\n");
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Reading.",
                &[("t1", "read", json!({"path": "pkg/a.txt"}))],
                (10, 5, 0, 0),
            ),
            &[64],
        ),
        FakeResponse::sse(&reply("Done.", &[], (10, 5, 0, 0)), &[64]),
        FakeResponse::sse(&reply("Tests pass; done now.", &[], (10, 5, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "look at pkg/a.txt");
    let outcome = runner(&session, &p, root, &OwnDevice, None)
        .run(&CancellationToken::new())
        .await;
    assert_eq!(outcome, Outcome::EndTurn);
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "the Stop hook sent the model back once");
    let system = |i: usize| {
        requests[i].body["system"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["text"].as_str().unwrap().to_owned())
            .collect::<String>()
    };
    // SessionStart output is context; the nested CLAUDE.md joins once the agent works there.
    assert!(system(0).contains("Sprint goal: ship the parser"));
    assert!(!system(0).contains("NESTED-MEMORY-c41d"));
    assert!(system(1).contains("NESTED-MEMORY-c41d"));
    // UserPromptSubmit stdout is added to the prompt.
    assert!(
        user_texts(&requests[0].body)
            .iter()
            .any(|t| t.contains("Ticket: JAR-7"))
    );
    // The Stop hook's reason reached the model; the second stop (hook active) was let through.
    assert!(
        user_texts(&requests[2].body)
            .iter()
            .any(|t| t.contains("Stop hook feedback:\nrun the tests before stopping"))
    );

    // A blocked prompt stays in the transcript for the user but never reaches the model.
    Runner::send_user_message(&session, "user", "my password is hunter2");
    let outcome = runner(&session, &p, root, &OwnDevice, None)
        .run(&CancellationToken::new())
        .await;
    assert_eq!(outcome, Outcome::EndTurn);
    assert_eq!(
        server.requests().len(),
        3,
        "no request for a blocked prompt"
    );
    let notes: Vec<String> = session
        .messages()
        .iter()
        .filter(|m| m.role == Role::System)
        .flat_map(|m| m.blocks.clone())
        .filter_map(|b| match b {
            Block::Text { text } => Some(text),
            _ => None,
        })
        .collect();
    assert!(
        notes.iter().any(|n| n.contains(
            "Prompt blocked by a UserPromptSubmit hook: prompts must not contain passwords"
        )),
        "{notes:?}"
    );
    // Notes are not repeated by later runs of the same setup.
    let loaded = notes
        .iter()
        .filter(|n| n.starts_with("Claude Code setup loaded"))
        .count();
    assert_eq!(loaded, 1, "{notes:?}");

    // Unapproved (the cloud): the same file's hooks do not run.
    let server2 = FakeServer::start(vec![FakeResponse::sse(
        &reply("Hi.", &[], (1, 1, 0, 0)),
        &[64],
    )])
    .await
    .unwrap();
    let p2 = provider(&server2);
    let cloud = SessionDoc::new(Doc::new());
    Runner::send_user_message(&cloud, "user", "hello");
    runner(&cloud, &p2, root, &Unapproved, None)
        .run(&CancellationToken::new())
        .await;
    let body = &server2.requests()[0].body;
    assert!(!body.to_string().contains("Sprint goal"));
    assert!(!user_texts(body).iter().any(|t| t.contains("JAR-7")));
}

#[tokio::test]
async fn always_allow_is_kept_for_later_runners() {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let root = dir.path();
    let call = json!({"command": "echo kept"});
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply("", &[("t1", "bash", call.clone())], (1, 1, 0, 0)),
            &[64],
        ),
        FakeResponse::sse(&reply("ok", &[], (1, 1, 0, 0)), &[64]),
        FakeResponse::sse(
            &reply("", &[("t2", "bash", call.clone())], (1, 1, 0, 0)),
            &[64],
        ),
        FakeResponse::sse(&reply("ok again", &[], (1, 1, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    let store: Arc<dyn AllowStore> = Arc::new(FileAllowStore::new(
        home.path(),
        "alice",
        &root.to_string_lossy(),
    ));
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "echo");
    let first = runner(&session, &p, root, &OwnDevice, Some(store.clone()))
        .run(&CancellationToken::new())
        .await;
    let Outcome::ApprovalPending { approval_id } = first else {
        panic!("{first:?}")
    };
    session
        .answer_approval(&approval_id, Decision::AlwaysAllow, "alice", 1)
        .unwrap();
    let done = runner(&session, &p, root, &OwnDevice, Some(store.clone()))
        .run(&CancellationToken::new())
        .await;
    assert_eq!(done, Outcome::EndTurn);
    // A new session, a new runner: the same command runs without asking.
    let later = SessionDoc::new(Doc::new());
    Runner::send_user_message(&later, "user", "echo again");
    let again = runner(&later, &p, root, &OwnDevice, Some(store.clone()))
        .run(&CancellationToken::new())
        .await;
    assert_eq!(again, Outcome::EndTurn);
    // Another user's store does not have it.
    let bob = FileAllowStore::new(home.path(), "bob", &root.to_string_lossy());
    assert!(bob.entries().is_empty());
}

#[tokio::test]
async fn a_command_typed_in_any_composer_is_expanded_by_the_runner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        ".claude/commands/review.md",
        "---\ndescription: Review a file\nallowed-tools: Bash(git diff:*)\n---\nReview $ARGUMENTS for bugs.\n",
    );
    let server = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "",
                &[("t1", "bash", json!({"command": "git diff src/lib.rs"}))],
                (1, 1, 0, 0),
            ),
            &[64],
        ),
        FakeResponse::sse(&reply("Reviewed.", &[], (1, 1, 0, 0)), &[64]),
        FakeResponse::sse(&reply("Hi.", &[], (1, 1, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let p = provider(&server);
    // What the web view or the desktop composer writes: the text as typed.
    let session = SessionDoc::new(Doc::new());
    Runner::send_user_message(&session, "user", "/review src/lib.rs");
    let outcome = runner(&session, &p, root, &OwnDevice, None)
        .run(&CancellationToken::new())
        .await;
    // The command's allowed-tools let `git diff` run without asking.
    assert_eq!(outcome, Outcome::EndTurn);
    let texts = user_texts(&server.requests()[0].body);
    assert_eq!(texts[0], "/review src/lib.rs");
    assert!(
        texts[1].contains("Review src/lib.rs for bugs."),
        "{texts:?}"
    );

    // Unapproved (the cloud): expanded, but its allowed-tools do not apply.
    let cloud = SessionDoc::new(Doc::new());
    Runner::send_user_message(&cloud, "user", "/review src/lib.rs");
    let server2 = FakeServer::start(vec![FakeResponse::sse(
        &reply(
            "",
            &[("t1", "bash", json!({"command": "git diff src/lib.rs"}))],
            (1, 1, 0, 0),
        ),
        &[64],
    )])
    .await
    .unwrap();
    let p2 = provider(&server2);
    let outcome = runner(&cloud, &p2, root, &Unapproved, None)
        .run(&CancellationToken::new())
        .await;
    assert!(
        matches!(outcome, Outcome::ApprovalPending { .. }),
        "{outcome:?}"
    );
    assert!(user_texts(&server2.requests()[0].body)[1].contains("Review src/lib.rs for bugs."));
}
