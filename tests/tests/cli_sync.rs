//! `jarvis login`, `jarvis status` and two `jarvis sync` processes mirroring one workspace.
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use jarvis_testkit::cli::{Killed, jarvis, login, spawn_sync};
use jarvis_testkit::http::Api;
use jarvis_testkit::{CloudAgent, create_token, eventually, hub_with_token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_status_and_two_syncing_devices() {
    let (tmp, data, token) = hub_with_token(&["ws/notes/*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let hub = format!("http://127.0.0.1:{}", agent.port);
    let (h1, h2) = (tmp.path().join("home1"), tmp.path().join("home2"));
    let (d1, d2) = (tmp.path().join("notes"), tmp.path().join("other/notes"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    std::fs::write(d1.join("todo.md"), "- buy milk\n").unwrap();

    for home in [&h1, &h2] {
        let out = login(home, &hub, &token);
        assert!(out.contains("mode 0600"), "{out}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("login.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bad = jarvis(&h1)
        .args(["login", "ftp://x", "--token", "t"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let status = jarvis(&h1).arg("status").output().unwrap();
    assert!(
        // "(reachable)", not "unreachable: …".
        String::from_utf8_lossy(&status.stdout).contains("(reachable)"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    let _s1 = spawn_sync(&h1, &d1);
    let _s2 = spawn_sync(&h2, &d2);
    let t = d2.join("todo.md");
    eventually(
        "device 2 gets todo.md",
        Duration::from_secs(30),
        move || std::fs::read_to_string(&t).ok().as_deref() == Some("- buy milk\n"),
    )
    .await
    .unwrap();
    std::fs::write(d2.join("todo.md"), "- buy milk\n- call mum\n").unwrap();
    let t = d1.join("todo.md");
    eventually(
        "device 1 gets the edit",
        Duration::from_secs(30),
        move || std::fs::read_to_string(&t).ok().as_deref() == Some("- buy milk\n- call mum\n"),
    )
    .await
    .unwrap();
    // A token without access to the workspace is refused clearly.
    let h3 = tmp.path().join("home3");
    let other = create_token(&data, &["ws/elsewhere/*"], false).unwrap();
    jarvis(&h3)
        .args(["login", &hub, "--token", &other])
        .output()
        .unwrap();
    let denied = jarvis(&h3).arg("sync").arg(&d1).output().unwrap();
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("you may not use workspace \"notes\"") && err.contains("ws/notes/"),
        "{err}"
    );
}

/// A folder synced with `jarvis sync` is a workspace the hub lists with its files — for the
/// admin and for an ordinary user — so the web view shows it without a `jarvis run` first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_folder_is_a_listed_workspace_for_admin_and_member() {
    let (tmp, data, admin) = hub_with_token(&["*"]);
    let bob = jarvis_testkit::add_user(&data, "bob").unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let hub = format!("http://127.0.0.1:{}", agent.port);
    let mut syncs = Vec::new();
    for (who, token, name) in [("admin", &admin, "admin-notes"), ("bob", &bob, "bob-notes")] {
        let home = tmp.path().join(format!("home-{who}"));
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello.md"), format!("# {who}\n")).unwrap();
        let out = jarvis(&home)
            .args(["login", &hub, "--token", token])
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut child = jarvis(&home)
            .arg("sync")
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        syncs.push(Killed(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut printed = String::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            printed.push_str(&line);
            printed.push('\n');
            if line.starts_with("open it in a browser") {
                break;
            }
        }
        assert!(printed.contains(&format!("{hub}/")), "{printed}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let list: serde_json::Value = Api::new(&hub)
                .get_json(&format!("/api/workspaces/{name}"), token)
                .await;
            if list["files"].to_string().contains("hello.md") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{who}'s synced folder is not a workspace with files: {list}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let all: serde_json::Value = Api::new(&hub).get_json("/api/workspaces", token).await;
        assert!(all.to_string().contains(name), "{all}");
    }
    // Bob does not see the admin's workspace.
    let all: serde_json::Value = Api::new(&hub).get_json("/api/workspaces", &bob).await;
    assert!(!all.to_string().contains("admin-notes"), "{all}");
}
