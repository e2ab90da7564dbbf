//! The desktop core holds sessions through `jarvis_device`, like every device:
//!
//! - Continue here keeps the session's own rules and budget: a session made at the hub with a
//!   deny rule and a budget, handed to the desktop core (which passes no options of its own),
//!   refuses the denied command and stops at the budget. A core that ran it with empty options
//!   would run `rm` (the session is allow-all) and make a second request.
//! - A lease held by another device reaches the window as `{code: "conflict", message}`: the
//!   hub's own words, no shell command in them.
//!
//! The first test's core keeps its token in the keychain, so its half runs in a private D-Bus
//! session with an unlocked GNOME Keyring (as tests/attention.rs does).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jarvis_desktop::core::{CoreConfig, CoreError, CoreEvent, DesktopCore};
use jarvis_sync::doc::Block;
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use jarvis_testkit::{CloudAgent, add_user, create_user_token};
use serde_json::{Value, json};

const NAME: &str = "continue_here_keeps_the_sessions_deny_rules_and_budget";
const CHILD: &str = "JARVIS_CONTINUE_HERE_CHILD";
const SESSION: &str = "keeprules0000001";

async fn call(hub: &str, token: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .request(method, format!("{hub}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_here_keeps_the_sessions_deny_rules_and_budget() {
    if std::env::var(CHILD).is_ok() {
        return child().await;
    }
    let (_tmp, agent, hub, token, home) = support::hub_with_workspace("dana", "proj").await;
    // The desktop's own model: first a command the session's deny rule refuses, then (only if
    // the budget did not stop the run) a closing sentence.
    let fake = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Cleaning up.",
                &[("t1", "bash", json!({"command": "rm -f victim.txt"}))],
                (10, 5, 0, 0),
            ),
            &[],
        ),
        FakeResponse::sse(&reply("All clean.", &[], (10, 5, 0, 0)), &[]),
    ])
    .await
    .unwrap();
    // Made at the hub (the web view, another device): allow-all, but never `rm`, and at most
    // ten micro-dollars (one request of the model costs more).
    call(
        &hub,
        &token,
        reqwest::Method::POST,
        "/api/sessions",
        json!({"id": SESSION, "workspace": "proj", "title": "Tidy up",
               "message": "Remove victim.txt", "permission_mode": "allow-all",
               "deny": ["Bash(rm:*)"], "budget_usd": 0.00001}),
    )
    .await;
    let fake_url = fake.url();
    support::rerun_in_keyring_session_with(
        NAME,
        CHILD,
        &hub,
        &token,
        &home,
        &[("JARVIS_TEST_FAKE", &fake_url)],
    )
    .await;
    // The budget stopped the run before a second request.
    assert_eq!(fake.requests().len(), 1, "the budget did not apply");
    drop(agent);
}

async fn child() {
    let hub = std::env::var("JARVIS_TEST_HUB").unwrap();
    let token = std::env::var("JARVIS_TEST_TOKEN").unwrap();
    let fake = std::env::var("JARVIS_TEST_FAKE").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The core names the workspace after the folder.
    let folder = tmp.path().join("proj");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("victim.txt"), "keep me\n").unwrap();
    let events: Arc<Mutex<Vec<CoreEvent>>> = Arc::default();
    let sink = events.clone();
    let core = DesktopCore::start(
        CoreConfig {
            data_dir: tmp.path().join("device"),
            keychain_service: "app.myjarvis.desktop.test".into(),
            env: HashMap::from([
                ("ANTHROPIC_BASE_URL".to_owned(), fake),
                ("ANTHROPIC_API_KEY".to_owned(), "test-key".to_owned()),
            ]),
            // A model with prices, so the budget counts.
            model: jarvis_agent::models::DEFAULT_MODEL.into(),
        },
        Arc::new(move |e: CoreEvent| sink.lock().unwrap().push(e)),
    )
    .await
    .unwrap();
    core.sign_in(&hub, &token).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while core.status().await.connection != "online" {
        assert!(Instant::now() < deadline, "the core never came online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    core.open_folder(folder.to_str().unwrap()).await.unwrap();

    // Continue here: the core asks for the session with no options of its own.
    let answer = core.continue_here(SESSION).await.unwrap();
    assert_eq!(answer["state"], "granted", "{answer}");
    let ended = |events: &[CoreEvent]| {
        events.iter().find_map(|e| match e {
            CoreEvent::Attention {
                session,
                title,
                body,
            } if session == SESSION => Some((title.clone(), body.clone())),
            _ => None,
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (title, body) = loop {
        if let Some(x) = ended(&events.lock().unwrap()) {
            break x;
        }
        assert!(Instant::now() < deadline, "the run never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(title, "Session ended", "{body}");
    assert!(body.contains("budget"), "{body}");
    // The deny rule held: the command was refused, the file is still there.
    assert_eq!(
        std::fs::read_to_string(folder.join("victim.txt")).unwrap(),
        "keep me\n"
    );
    let doc = core.session_doc(SESSION).await.unwrap();
    let refused = doc.messages().iter().any(|m| {
        m.blocks.iter().any(|b| {
            matches!(b, Block::ToolResult { tool_use_id, is_error: true, .. } if tool_use_id == "t1")
        })
    });
    assert!(
        refused,
        "the denied command was not refused: {:?}",
        doc.messages()
    );
}

/// A lease another device holds, as the window sees it: the hub's conflict through the
/// device crate and the core's error, serialised as the Tauri command returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_elsewhere_reaches_the_window_as_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let mine = add_user(&data, "dana").unwrap();
    let other = create_user_token(&data, Some("dana"), &["*"], false).unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let hub = agent.http_url("");
    call(
        &hub,
        &mine,
        reqwest::Method::POST,
        "/api/workspaces",
        json!({"id": "proj"}),
    )
    .await;
    call(
        &hub,
        &mine,
        reqwest::Method::POST,
        "/api/sessions",
        json!({"id": "heldelsewhere01", "workspace": "proj"}),
    )
    .await;
    // Dana's other device runs it.
    call(
        &hub,
        &other,
        reqwest::Method::POST,
        "/api/sessions/heldelsewhere01/lease",
        json!({"op": "acquire"}),
    )
    .await;
    let folder = tmp.path().join("proj");
    std::fs::create_dir_all(&folder).unwrap();
    let store = Arc::new(jarvis_sync::store::SqliteStore::open(&tmp.path().join("d.db")).unwrap());
    let device = jarvis_device::Device::connect(&hub, &mine, store)
        .await
        .unwrap();
    let refused = jarvis_device::prepare(
        &device,
        jarvis_device::RunOptions {
            prompt: String::new(),
            dir: folder,
            workspace: Some("proj".into()),
            session: Some("heldelsewhere01".into()),
            model: "fake-model".into(),
            overrides: Default::default(),
            mirror: None,
        },
        None,
    )
    .await;
    let Err(e) = refused else {
        panic!("a lease held elsewhere was taken");
    };
    assert!(e.is_conflict(), "{e}");
    let shown = serde_json::to_value(CoreError::from(e)).unwrap();
    assert_eq!(shown["code"], "conflict", "{shown}");
    let message = shown["message"].as_str().unwrap();
    assert!(message.contains("running on"), "{message}");
    assert!(!message.contains("jarvis "), "a shell command in {message}");
    assert!(!message.contains("HTTP"), "{message}");
}
