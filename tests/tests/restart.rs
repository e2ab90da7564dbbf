//! A device that comes back loses nothing (tests/src/comeback.rs is the scenario): one side is
//! stopped — a `jarvis sync` killed with `kill -9` or stopped with Ctrl-C, or the whole server
//! with its cloud runner — both sides change the same files, it starts again. Every change from
//! both sides must be in every folder, byte for byte.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jarvis_testkit::comeback;
use jarvis_testkit::device::{Stop, SyncDevice, converge, converge_folders};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use jarvis_testkit::{CloudAgent, hub_with_token, hub_with_user};

async fn device_comes_back(how: Stop) {
    let (tmp, data, token) = hub_with_token(&["ws/notes/*"]);
    let hub = CloudAgent::start(&data, 0).unwrap();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let mut a = SyncDevice::new("a", tmp.path(), &url, &token, "notes").unwrap();
    let mut b = SyncDevice::new("b", tmp.path(), &url, &token, "notes").unwrap();
    comeback::seed(&a.dir).unwrap();
    a.start().unwrap();
    b.start().unwrap();
    if let Err(e) = converge(&[&a, &b], Duration::from_secs(60), comeback::seeded).await {
        panic!("{e}\n{}\n{}", a.log(), b.log());
    }

    // B's laptop closes. Meanwhile A changes the same files, and the hub has it: a third,
    // fresh device receives all of it.
    b.stop(how).unwrap();
    comeback::edit_elsewhere(&a.dir).unwrap();
    let mut c = SyncDevice::new("c", tmp.path(), &url, &token, "notes").unwrap();
    c.start().unwrap();
    if let Err(e) = converge(&[&a, &c], Duration::from_secs(60), comeback::has_elsewhere).await {
        panic!("{e}\n{}\n{}", a.log(), c.log());
    }

    // B's folder changes while its `jarvis sync` is not running; then it starts again.
    comeback::edit_offline(&b.dir).unwrap();
    b.start().unwrap();
    let all = match converge(&[&a, &b, &c], Duration::from_secs(60), comeback::merged).await {
        Ok(s) => s,
        Err(e) => panic!("{e}\nA:\n{}\nB:\n{}", a.log(), b.log()),
    };
    // A's image reached the hub first: it stays at the path, B's becomes the copy.
    comeback::check(&all, Some(1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_with_kill_9_loses_nothing_when_it_comes_back() {
    device_comes_back(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stopped_with_ctrl_c_loses_nothing_when_it_comes_back() {
    device_comes_back(Stop::Interrupt).await;
}

/// The cloud runner's folder is a mirror like any other: the server is killed while it holds a
/// session on the workspace; its folder changes while it is down (as an agent's writes the
/// mirror had not imported yet) and a device edits the same files offline. After the restart
/// both sides' work is in both folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_runner_restarted_loses_nothing() {
    let fake = FakeServer::start(vec![FakeResponse::sse(
        &reply("Holding the workspace.", &[], (10, 5, 0, 0)),
        &[64],
    )])
    .await
    .unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    // Unconfined by choice: this test is about the mirror, not containment (sandbox.rs).
    let agent = CloudAgent::options(&data)
        .fake_model(&fake)
        .unconfined()
        .start()
        .unwrap();
    let again = agent.again();
    let port = agent.port;
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth(&alice)
            .json(&body)
            .send()
    };
    let r = post("/api/workspaces", serde_json::json!({"id": "kw"}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let mut a = SyncDevice::new("a", tmp.path(), &url, &alice, "kw").unwrap();
    comeback::seed(&a.dir).unwrap();
    a.start().unwrap();
    // A session held by the cloud: its runner materialises the workspace and keeps it.
    let r = post(
        "/api/sessions",
        serde_json::json!({"id": "k", "workspace": "kw", "message": "Hold on.",
                           "permission_mode": "allow-all", "run": "cloud"}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let cloud_dir = data.join("workspaces/kw");
    let folders = [("device", a.dir.as_path()), ("cloud", cloud_dir.as_path())];
    if let Err(e) = converge_folders(&folders, Duration::from_secs(60), comeback::seeded).await {
        panic!("{e}\n{}", a.log());
    }
    // Synced, for this story, includes the runner's saved sync point, which it saves when the
    // pass that wrote the files ends. A kill inside that pass (seen on a loaded machine) is the
    // other crash: a file written without its saved base is kept as a conflict copy when both
    // sides then change it, never merged blind. Let the pass end, and check nothing moved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Err(e) = converge_folders(&folders, Duration::from_secs(5), comeback::seeded).await {
        panic!("{e}\n{}", a.log());
    }

    agent.kill9().unwrap();
    // While the server is down: the runner's folder changes, and the device edits offline.
    comeback::edit_offline(&cloud_dir).unwrap();
    comeback::edit_elsewhere(&a.dir).unwrap();
    let agent = again.start().unwrap();
    let all = match converge_folders(&folders, Duration::from_secs(60), comeback::merged).await {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", a.log()),
    };
    // Which image reached the hub first depends on who reconnected first: both are kept.
    comeback::check(&all, None).unwrap();
    drop(agent);
}

/// An upload that fails is retried in the background until it succeeds — not only at the file's
/// next edit — and the status line says what is waiting. Partial uploads a killed server left
/// behind are removed when it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_retried_and_partial_uploads_are_cleaned() {
    let (tmp, data, token) = hub_with_token(&["ws/notes/*"]);
    let hub = CloudAgent::start(&data, 0).unwrap();
    let port = hub.port;
    let url = format!("http://127.0.0.1:{port}");
    let mut a = SyncDevice::new("a", tmp.path(), &url, &token, "notes").unwrap();
    let mut b = SyncDevice::new("b", tmp.path(), &url, &token, "notes").unwrap();
    a.write("readme.md", "hello\n").unwrap();
    a.start().unwrap();
    b.start().unwrap();
    converge(&[&a, &b], Duration::from_secs(60), |s| s.len() == 1)
        .await
        .unwrap();

    hub.kill9().unwrap();
    // Half an upload, as a server killed mid-upload leaves it.
    let part = data
        .join("blobs/notes/ab")
        .join(format!(".{}.0badc0de.part", "ab".repeat(32)));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, vec![7u8; 1 << 20]).unwrap();
    // A binary file saved while the hub is down: its upload fails.
    a.write("photo.bin", comeback::binary_version(9)).unwrap();
    jarvis_testkit::eventually(
        "the status line says the upload waits",
        Duration::from_secs(30),
        || {
            a.log()
                .contains("1 file waiting to upload (photo.bin: upload failed")
        },
    )
    .await
    .unwrap();
    // `jarvis status`, another process, says so too.
    let status = a.cli(&["status"]).unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("1 file waiting to upload (photo.bin: upload failed"),
        "{said}"
    );

    let _hub = CloudAgent::start(&data, port).unwrap();
    assert!(!part.exists(), "the partial upload was removed at start-up");
    // No further edit of photo.bin: the retry alone brings it to the other device.
    let all = converge(&[&a, &b], Duration::from_secs(60), |s| {
        s.contains_key("photo.bin")
    })
    .await
    .unwrap();
    assert_eq!(all["photo.bin"].0, comeback::binary_version(9));
    jarvis_testkit::eventually(
        "the status line says nothing waits",
        Duration::from_secs(10),
        || a.log().contains("every upload has reached the hub"),
    )
    .await
    .unwrap();
    let status = a.cli(&["status"]).unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(!said.contains("waiting to upload"), "{said}");
}

/// A first download cut by `kill -9`, then edits elsewhere of the files it had already written:
/// when `jarvis sync` starts again the edits land in place, with no conflict copy (each file's
/// sync base was saved before the file appeared, so the folder's copy is known to be the
/// hub's, not a local edit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_download_cut_by_kill_9_takes_later_edits_without_conflict_copies() {
    const FILES: usize = 1000;
    let (tmp, data, token) = hub_with_token(&["ws/big/*"]);
    let hub = CloudAgent::start(&data, 0).unwrap();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let mut a = SyncDevice::new("a", tmp.path(), &url, &token, "big").unwrap();
    for i in 0..FILES {
        a.write(&format!("f{:02}/n{i:04}.md", i % 50), format!("note {i}\n"))
            .unwrap();
    }
    a.start().unwrap();
    let mut b = SyncDevice::new("b", tmp.path(), &url, &token, "big").unwrap();
    // Everything reaches the hub (a fresh device has it all) before B starts, so B's first
    // pass is one long download.
    let mut c = SyncDevice::new("c", tmp.path(), &url, &token, "big").unwrap();
    c.start().unwrap();
    if let Err(e) = converge(&[&a, &c], Duration::from_secs(120), |s| s.len() == FILES).await {
        panic!("{e}\n{}", a.log());
    }
    c.stop(Stop::Kill).unwrap();

    // B's first download, killed in the middle.
    b.start().unwrap();
    let bdir = b.dir.clone();
    jarvis_testkit::eventually(
        "b in its first download",
        Duration::from_secs(60),
        move || walk_count(&bdir) >= FILES / 4,
    )
    .await
    .unwrap();
    b.stop(Stop::Kill).unwrap();
    let written = walk_count(&b.dir);
    assert!(
        written < FILES,
        "the download finished before the kill: use more files"
    );

    // Every file B has is edited elsewhere; then B starts again.
    for i in 0..FILES {
        let rel = format!("f{:02}/n{i:04}.md", i % 50);
        if b.path(&rel).exists() {
            a.write(&rel, format!("note {i}\nedited elsewhere\n"))
                .unwrap();
        }
    }
    b.start().unwrap();
    let all = match converge(&[&a, &b], Duration::from_secs(120), |s| s.len() >= FILES).await {
        Ok(s) => s,
        Err(e) => panic!("{e}\nA:\n{}\nB:\n{}", a.log(), b.log()),
    };
    let copies: Vec<&String> = all.keys().filter(|p| p.contains("(conflict ")).collect();
    assert!(
        copies.is_empty(),
        "{written} files written before the kill; conflict copies: {} (first: {:?})\nB:\n{}",
        copies.len(),
        copies.first(),
        b.log()
    );
    assert_eq!(all.len(), FILES);
}

fn walk_count(dir: &std::path::Path) -> usize {
    jarvis_testkit::device::snapshot(dir)
        .map(|s| s.len())
        .unwrap_or(0)
}
