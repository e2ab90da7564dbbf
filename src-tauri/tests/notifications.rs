//! Native notifications end to end: the real desktop binary, signed in (its token in GNOME
//! Keyring) to a real `jarvis-cloud` whose runner uses a fake Anthropic server, under Xvfb in a
//! private D-Bus session where a stand-in notification daemon owns
//! org.freedesktop.Notifications. A cloud session that comes to need an approval, then
//! finishes, must reach the daemon as two notifications.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_session_needing_approval_then_finishing_notifies_the_desktop() {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: scripts/install-deps.sh makes it",
        python.display()
    );
    let app = jarvis_testkit::binary("jarvis-desktop");
    assert!(app.exists(), "{} not built", app.display());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let (_fake, agent, token) = support::cloud_with_planning_model(&data).await;
    let hub = agent.http_url("");
    let device = tmp.path().join("device");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(
        device.join("desktop.json"),
        json!({"hub": hub, "device": null, "folders": []}).to_string(),
    )
    .unwrap();
    // Everything that needs the private bus runs inside it; the fake model keeps serving from
    // this process meanwhile. Every wait is bounded.
    let script = r#"
        set -u
        # with-keyring.sh starts this once the keyring is on the bus (a call before that hung
        # secret-tool on a second, locked daemon); still bounded and retried.
        stored=no
        for i in 1 2 3; do
          if printf %s "$TOKEN" | timeout 15 secret-tool store --label="My Jarvis hub token" \
            service "$SERVICE" username hub-token target default application rust-keyring; then
            stored=yes; break
          fi
          sleep 0.5
        done
        [ "$stored" = yes ] || { echo "secret-tool store never answered"; exit 2; }
        "$PYTHON" "$DAEMON" "$TMPD/notes.log" > "$TMPD/daemon.log" 2>&1 & DAEMON_PID=$!
        wait_for() { # file pattern tries
          i=0
          until grep -q "$2" "$1" 2>/dev/null; do
            i=$((i+1)); [ $i -gt "$3" ] && { echo "gave up waiting for $2 in $1"; return 1; }
            sleep 0.05
          done
        }
        wait_for "$TMPD/daemon.log" "ready" 400 || exit 3
        "$APP" > "$TMPD/app.log" 2>&1 & APP_PID=$!
        trap 'kill $APP_PID $DAEMON_PID 2>/dev/null' EXIT
        wait_for "$TMPD/app.log" "watching sessions" 1200 || { cat "$TMPD/app.log"; exit 4; }
        api() { curl -sf -X "$1" -H "authorization: Bearer $TOKEN" \
          -H 'content-type: application/json' -d "$3" "$HUB$2" >/dev/null; }
        api POST /api/workspaces '{"id":"plans"}' || exit 5
        api POST /api/sessions '{"id":"nightly","workspace":"plans","title":"Nightly plan","message":"Write the plan","permission_mode":"ask","run":"cloud"}' || exit 6
        wait_for "$TMPD/notes.log" "Approval needed" 1200 || { cat "$TMPD/app.log"; exit 7; }
        api POST "/api/sessions/nightly/approvals/$APPROVAL" '{"decision":"allow"}' || exit 8
        wait_for "$TMPD/notes.log" "Session finished" 1200 || { cat "$TMPD/app.log"; exit 9; }
        echo "notified"
    "#;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (app2, tmpd) = (app.clone(), tmp.path().to_path_buf());
    let daemon = repo().join("src-tauri/tests/support/notification_daemon.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("xvfb-run")
            .arg("-a")
            .arg(repo().join("scripts/with-keyring.sh"))
            .args(["sh", "-c", script])
            .env("APP", &app2)
            .env("TMPD", &tmpd)
            .env("PYTHON", &python)
            .env("DAEMON", &daemon)
            .env("TOKEN", &token)
            .env("HUB", &hub)
            .env("APPROVAL", support::PLAN_APPROVAL)
            .env("SERVICE", "app.myjarvis.desktop.notify-test")
            .env(
                "JARVIS_KEYCHAIN_SERVICE",
                "app.myjarvis.desktop.notify-test",
            )
            .env("JARVIS_DESKTOP_DATA", tmpd.join("device"))
            .env("HOME", &home)
            .env("NO_AT_BRIDGE", "1")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    drop(agent);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("notified"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = std::fs::read_to_string(tmp.path().join("notes.log")).unwrap();
    let lines: Vec<serde_json::Value> = notes
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let approval: Vec<_> = lines
        .iter()
        .filter(|n| n["summary"] == "Approval needed")
        .collect();
    assert_eq!(approval.len(), 1, "{notes}");
    assert!(
        approval[0]["body"]
            .as_str()
            .unwrap()
            .contains("Nightly plan"),
        "{notes}"
    );
    let finished = lines
        .iter()
        .filter(|n| n["summary"] == "Session finished")
        .count();
    assert_eq!(finished, 1, "{notes}");
}
