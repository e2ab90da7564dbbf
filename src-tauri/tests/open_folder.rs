//! A folder opened in the desktop app is a workspace the hub lists (issue 22): the core
//! registers it before it syncs, so the web view shows it; a folder whose name is another
//! user's workspace is refused with the hub's code and words, and nothing is synced into it.
//! The core keeps its token in the keychain, so its half runs in a private D-Bus session with
//! an unlocked GNOME Keyring (as tests/comeback.rs does).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use jarvis_desktop::core::{CoreConfig, CoreEvent, DesktopCore};
use jarvis_testkit::add_user;
use serde_json::Value;

const NAME: &str = "an_opened_folder_is_a_workspace_the_hub_lists";
const CHILD: &str = "JARVIS_OPEN_FOLDER_CHILD";

async fn get(hub: &str, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{hub}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_folder_is_a_workspace_the_hub_lists() {
    if std::env::var(CHILD).is_ok() {
        return child().await;
    }
    // Omar already has a workspace called "ledger": Dana's folder of that name is not his.
    let (tmp, agent, hub, omar, home) = support::hub_with_workspace("omar", "ledger").await;
    let dana = add_user(&tmp.path().join("hub"), "dana").unwrap();
    support::rerun_in_keyring_session(NAME, CHILD, &hub, &dana, &home).await;
    // What the child opened is listed for Dana, and Omar's workspace kept only his files.
    let (status, v) = get(&hub, &dana, "/api/workspaces").await;
    assert_eq!(status, 200, "{v}");
    let ids: Vec<&str> = v
        .as_array()
        .or_else(|| v["workspaces"].as_array())
        .unwrap()
        .iter()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert!(ids.contains(&"meeting-notes"), "{v}");
    assert!(!ids.contains(&"ledger"), "{v}");
    let (status, v) = get(&hub, &omar, "/api/workspaces/ledger").await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["files"].as_array().is_none_or(|f| f.is_empty()),
        "Dana's folder synced into Omar's workspace: {v}"
    );
    drop(agent);
}

async fn child() {
    let hub = std::env::var("JARVIS_TEST_HUB").unwrap();
    let token = std::env::var("JARVIS_TEST_TOKEN").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let core = DesktopCore::start(
        CoreConfig {
            data_dir: tmp.path().join("device"),
            keychain_service: "app.myjarvis.desktop.test".into(),
            env: HashMap::new(),
            model: "fake-model".into(),
        },
        Arc::new(|_: CoreEvent| {}),
    )
    .await
    .unwrap();
    core.sign_in(&hub, &token).await.unwrap();

    // A new folder: registered at once, before anything else is asked of the hub.
    let notes = tmp.path().join("meeting-notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("agenda.md"), "# Monday\n").unwrap();
    let info = core.open_folder(notes.to_str().unwrap()).await.unwrap();
    assert_eq!(info.workspace, "meeting-notes");
    let (status, v) = get(&hub, &token, "/api/workspaces/meeting-notes").await;
    assert_eq!(
        status, 200,
        "the opened folder is not a workspace at the hub: {v}"
    );

    // Another user's workspace name: the window gets the hub's code and words, and the folder
    // is not remembered (so it never syncs into a workspace that is not Dana's).
    let ledger = tmp.path().join("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    std::fs::write(ledger.join("private.md"), "mine\n").unwrap();
    let err = core
        .open_folder(ledger.to_str().unwrap())
        .await
        .unwrap_err();
    let v = serde_json::to_value(&err).unwrap();
    assert!(
        matches!(v["code"].as_str(), Some("conflict" | "forbidden")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("ledger"), "{v}");
    drop(core);
}
