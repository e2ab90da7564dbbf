//! Shared by the desktop tests that need a cloud session to come to need the person.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;

use jarvis_testkit::CloudAgent;
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use serde_json::json;

/// `scripts/with-keyring.sh`: a command run through it gets a private D-Bus session with an
/// unlocked GNOME Keyring, once the keyring is on the bus. Add the command as arguments.
pub fn keyring_session() -> std::process::Command {
    std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-keyring.sh"),
    )
}

/// The approval id the planning model's write asks for.
pub const PLAN_APPROVAL: &str = "ap-toolu_plan";

/// A real `jarvis-cloud` in `data` whose runner's model (a fake speaking real SSE) first writes
/// plan.md — a call that needs approval in ask mode — then closes with a sentence; and the
/// token of its user "dana". Keep the server and the fake alive for the test.
pub async fn cloud_with_planning_model(data: &Path) -> (FakeServer, CloudAgent, String) {
    let fake = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "I will write the plan.",
                &[(
                    "toolu_plan",
                    "write",
                    json!({"path": "plan.md", "content": "# Plan\n"}),
                )],
                (10, 5, 0, 0),
            ),
            &[64],
        ),
        FakeResponse::sse(&reply("The plan is written.", &[], (10, 5, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let token = jarvis_testkit::add_user(data, "dana").unwrap();
    let agent = CloudAgent::options(data)
        .fake_model(&fake)
        .env("JARVIS_SANDBOX", "limits")
        .start()
        .unwrap();
    (fake, agent, token)
}

/// Runs the test `name` of this test binary again as a child, inside a private D-Bus session
/// with an unlocked GNOME Keyring (the core keeps its token in the keychain), with `child_var`
/// set and the hub's address and token in `JARVIS_TEST_HUB` / `JARVIS_TEST_TOKEN`; panics
/// unless the child's test passed.
pub async fn rerun_in_keyring_session(
    name: &str,
    child_var: &str,
    hub: &str,
    token: &str,
    home: &Path,
) {
    rerun_in_keyring_session_with(name, child_var, hub, token, home, &[]).await
}

/// [`rerun_in_keyring_session`] with more variables for the child (`env`).
pub async fn rerun_in_keyring_session_with(
    name: &str,
    child_var: &str,
    hub: &str,
    token: &str,
    home: &Path,
    env: &[(&str, &str)],
) {
    let exe = std::env::current_exe().unwrap();
    let (name, child_var, hub, token, home) = (
        name.to_owned(),
        child_var.to_owned(),
        hub.to_owned(),
        token.to_owned(),
        home.to_path_buf(),
    );
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        keyring_session()
            .arg(exe)
            .args(["--exact", &name, "--nocapture", "--test-threads", "1"])
            .env(child_var, "1")
            .env("JARVIS_TEST_HUB", &hub)
            .env("JARVIS_TEST_TOKEN", &token)
            .env("HOME", &home)
            .envs(env)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the core's half failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub with user `name` (started on port 0) and the user's workspace `workspace`, and a home
/// folder for the core's child: (temporary folder, the hub, its address, the user's token,
/// the home folder).
pub async fn hub_with_workspace(
    name: &str,
    workspace: &str,
) -> (
    tempfile::TempDir,
    CloudAgent,
    String,
    String,
    std::path::PathBuf,
) {
    let (tmp, data, token) = jarvis_testkit::hub_with_user(name);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let hub = agent.http_url("");
    jarvis_testkit::http::Api::new(&hub)
        .ok(
            "POST",
            "/api/workspaces",
            &token,
            Some(json!({"id": workspace})),
        )
        .await;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    (tmp, agent, hub, token, home)
}
