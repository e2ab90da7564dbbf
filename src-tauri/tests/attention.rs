//! Notifications, minus the notification centre: the desktop core signed in to a real
//! `jarvis-cloud` notices a session running in the cloud that comes to need an approval, and
//! then finishes, and raises one `Attention` event for each (the shell turns each into a native
//! notification). The cloud runs with a fake Anthropic server speaking real SSE. The core keeps
//! its token in the keychain, so the core's half runs in a private D-Bus session with an
//! unlocked GNOME Keyring (the test re-runs itself there, as tests/keyring.rs does).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jarvis_desktop::core::{CoreConfig, CoreEvent, DesktopCore};
use serde_json::{Value, json};

const NAME: &str = "a_cloud_session_needing_approval_then_finishing_raises_attention_once_each";
const CHILD: &str = "JARVIS_ATTENTION_CHILD";

async fn until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    jarvis_testkit::eventually(what, timeout, cond)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_session_needing_approval_then_finishing_raises_attention_once_each() {
    if std::env::var(CHILD).is_ok() {
        return child().await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (_fake, agent, token) = support::cloud_with_planning_model(&data).await;
    let hub = agent.http_url("");
    // The core's half, inside a private D-Bus session with an unlocked keyring. The fake model
    // keeps serving from this process meanwhile.
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    support::rerun_in_keyring_session(NAME, CHILD, &hub, &token, &home).await;
    drop(agent);
}

async fn child() {
    let hub = std::env::var("JARVIS_TEST_HUB").unwrap();
    let token = std::env::var("JARVIS_TEST_TOKEN").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let events: Arc<Mutex<Vec<CoreEvent>>> = Arc::default();
    let sink = events.clone();
    let core = DesktopCore::start(
        CoreConfig {
            data_dir: dir.path().join("device"),
            keychain_service: "app.myjarvis.desktop.test".into(),
            env: HashMap::new(),
            model: "fake-model".into(),
        },
        Arc::new(move |e: CoreEvent| sink.lock().unwrap().push(e)),
    )
    .await
    .unwrap();
    core.sign_in(&hub, &token).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(core.status().await.connection == "online" && core.watching_sessions()) {
        assert!(Instant::now() < deadline, "the core never came online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attention = |title: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(e, CoreEvent::Attention { session, title: t, .. }
                    if session == "nightly" && t == title)
            })
            .count()
    };

    // Someone starts a session in the cloud (the web view, another device): it soon waits.
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Value| {
        let r = http
            .request(method, format!("{hub}{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "{path}: {status} {v}");
            v
        }
    };
    call(
        reqwest::Method::POST,
        "/api/workspaces".into(),
        json!({"id": "plans"}),
    )
    .await;
    call(
        reqwest::Method::POST,
        "/api/sessions".into(),
        json!({"id": "nightly", "workspace": "plans", "title": "Nightly plan",
               "message": "Write the plan", "permission_mode": "ask", "run": "cloud"}),
    )
    .await;
    until("an approval notice", Duration::from_secs(30), || {
        attention("Approval needed") == 1
    })
    .await;
    let notice = events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            CoreEvent::Attention { title, body, .. } if title == "Approval needed" => {
                Some(body.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(notice.contains("Nightly plan"), "{notice}");
    assert!(notice.contains("cloud"), "{notice}");

    call(
        reqwest::Method::POST,
        format!("/api/sessions/nightly/approvals/{}", support::PLAN_APPROVAL),
        json!({"decision": "allow"}),
    )
    .await;
    until("a finished notice", Duration::from_secs(30), || {
        attention("Session finished") == 1
    })
    .await;
    // Two more looks at the sessions change nothing: each notice came once.
    let polls = Instant::now();
    while polls.elapsed() < Duration::from_millis(4500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attention("Approval needed"), 1);
    assert_eq!(attention("Session finished"), 1);
}
