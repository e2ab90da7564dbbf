//! Upgrades lose nothing: a hub data dir, a device home and its synced folder written by the
//! binaries of commit db3b687 (`tests/fixtures/upgrade-db3b687/make.sh`) open in this build —
//! users, tokens, workspaces, sessions and their transcripts, files and blobs, leases — and
//! the old device resumes `jarvis sync` on its folder without conflict copies. Every later
//! schema change must keep this test green.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jarvis_testkit::cli::{login, spawn_sync};
use jarvis_testkit::fs::copy_dir;
use jarvis_testkit::{CloudAgent, eventually};
use serde_json::Value;

/// Where make.sh kept the synced folder.
const FOLDER: &str = "/tmp/jarvis-upgrade-db3b687/notes";

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unpack(into: &Path) -> Value {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade-db3b687/fixture.tar.gz");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success(), "unpacking {}", fixture.display());
    serde_json::from_slice(&std::fs::read(into.join("fixture.json")).unwrap()).unwrap()
}

async fn get(agent: &CloudAgent, token: &str, path: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(agent.http_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Every file under `dir` (relative path → bytes), `.jarvis` state folders left out.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_and_a_device_from_db3b687_open_in_this_build() {
    let tmp = tempfile::tempdir().unwrap();
    let f = unpack(tmp.path());
    let admin = f["admin_token"].as_str().unwrap();
    let bob = f["bob_token"].as_str().unwrap();
    let session = f["session"].as_str().unwrap();
    let agent = CloudAgent::start(&tmp.path().join("hub"), 0).unwrap();
    let hub = format!("http://127.0.0.1:{}", agent.port);

    // Identity: both users' tokens still work and say who they are.
    let (status, me) = get(&agent, admin, "/api/me").await;
    assert_eq!(status, 200, "{me}");
    let (status, me) = get(&agent, bob, "/api/me").await;
    assert_eq!(status, 200, "{me}");
    assert!(me.to_string().contains("bob"), "{me}");
    let (status, users) = get(&agent, admin, "/api/users").await;
    assert_eq!(status, 200, "{users}");
    assert!(users.to_string().contains("\"bob\""), "{users}");

    // Workspaces and sessions, with the transcript the old build streamed.
    let (status, ws) = get(&agent, admin, "/api/workspaces").await;
    assert_eq!(status, 200, "{ws}");
    assert!(ws.to_string().contains("\"notes\""), "{ws}");
    let (status, one) = get(&agent, admin, &format!("/api/sessions/{session}")).await;
    assert_eq!(status, 200, "{one}");
    let text = one.to_string();
    assert!(
        text.contains("Summarise my notes into summary.md")
            && text.contains("Saved the summary in summary.md."),
        "{text}"
    );
    let (status, lease) = get(&agent, admin, &format!("/api/sessions/{session}/lease")).await;
    assert_eq!(status, 200, "{lease}");
    // A user who was never given the workspace still cannot see the session.
    let (status, _) = get(&agent, bob, &format!("/api/sessions/{session}")).await;
    assert!(
        status == 403 || status == 404,
        "bob read the admin's session: {status}"
    );

    // A fresh device gets every file, the blob and the executable bit.
    let fresh_home = tmp.path().join("fresh-home");
    let fresh = tmp.path().join("fresh/notes");
    std::fs::create_dir_all(&fresh).unwrap();
    login(&fresh_home, &hub, admin);
    let _fresh_sync = spawn_sync(&fresh_home, &fresh);
    // The device remembers its folder by path: the upgrade happens in place, so the folder
    // goes back exactly where the old build synced it (see make.sh).
    let old_folder = PathBuf::from(FOLDER);
    let _cleanup = RemoveOnDrop(old_folder.parent().unwrap().to_path_buf());
    let _ = std::fs::remove_dir_all(old_folder.parent().unwrap());
    std::fs::create_dir_all(old_folder.parent().unwrap()).unwrap();
    copy_dir(&tmp.path().join("notes"), &old_folder);
    let expected = tree(&old_folder);
    assert!(
        expected.iter().any(|(p, _)| p == "summary.md"),
        "{expected:?}"
    );
    let fresh2 = fresh.clone();
    let want = expected.clone();
    eventually(
        "the fresh device holds the old build's folder",
        Duration::from_secs(60),
        move || tree(&fresh2) == want,
    )
    .await
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(fresh.join("tool.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "tool.sh lost its executable bit");

    // The old device resumes on its own store and folder: nothing conflicts, and its edit
    // reaches the fresh device.
    let old_home = tmp.path().join("device");
    let login_path = old_home.join("login.json");
    let mut login: Value = serde_json::from_slice(&std::fs::read(&login_path).unwrap()).unwrap();
    login["hub"] = Value::String(hub.clone());
    std::fs::write(&login_path, serde_json::to_vec(&login).unwrap()).unwrap();
    // An edit made while the device was off (across the upgrade) merges when it comes back.
    let notes = old_folder.join("notes.md");
    let edited = format!(
        "{}line 4 written after the upgrade\n",
        std::fs::read_to_string(&notes).unwrap()
    );
    std::fs::write(&notes, &edited).unwrap();
    let _old_sync = spawn_sync(&old_home, &old_folder);
    let fresh_notes = fresh.join("notes.md");
    let want = edited.clone();
    eventually(
        "the old device's edit reaches the fresh device",
        Duration::from_secs(60),
        move || std::fs::read_to_string(&fresh_notes).ok().as_deref() == Some(want.as_str()),
    )
    .await
    .unwrap();
    for dir in [&old_folder, &fresh] {
        let conflicts: Vec<_> = tree(dir)
            .into_iter()
            .filter(|(p, _)| p.contains("(conflict"))
            .map(|(p, _)| p)
            .collect();
        assert!(
            conflicts.is_empty(),
            "conflict copies in {}: {conflicts:?}",
            dir.display()
        );
    }
    assert_eq!(tree(&old_folder), tree(&fresh));
}
