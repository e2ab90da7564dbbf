//! Two folders mirroring one workspace through a real `jarvis-cloud` hub.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::SyncClient;
use jarvis_sync::doc::{EntryKind, FileEntry, WorkspaceIndex};
use jarvis_sync::mirror::FileMirror;
use jarvis_testkit::sync_client::{MirroredFolder, mirrored_folder, sync_client};
use jarvis_testkit::{CloudAgent, eventually, hub_with_token};

const T: Duration = Duration::from_secs(20);

fn client(agent: &CloudAgent, token: &str, db: &Path) -> Arc<SyncClient> {
    Arc::new(sync_client(agent, token, db))
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

async fn until_file(path: &Path, want: &str) {
    let p = path.to_owned();
    let w = want.to_owned();
    eventually(&format!("{} == {want:?}", path.display()), T, move || {
        read(&p).as_deref() == Some(w.as_str())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; found {:?}", read(path)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mirrors_sync_merge_and_resist_hostile_entries() {
    let (tmp, data, token) = hub_with_token(&["ws/w1/*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(a_dir.join("src")).unwrap();
    std::fs::create_dir_all(a_dir.join("target")).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    std::fs::write(
        a_dir.join("README.md"),
        "# Project\n\nline two\nline three\n",
    )
    .unwrap();
    std::fs::write(a_dir.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(a_dir.join("target/build.log"), "ignored by default\n").unwrap();
    std::fs::write(a_dir.join(".gitignore"), "secret.env\n").unwrap();
    std::fs::write(a_dir.join("secret.env"), "KEY=ignored\n").unwrap();
    // A write a killed mirror never renamed: swept by the first walk, never synced.
    let leftover = a_dir.join("src/.lib.rs.jarvis-tmp-0badf00d");
    std::fs::write(&leftover, "half a write").unwrap();

    let ca = client(&agent, &token, &tmp.path().join("a.db"));
    let cb = client(&agent, &token, &tmp.path().join("b.db"));
    let progress = Arc::new(std::sync::Mutex::new((0, 0)));
    let seen = progress.clone();
    let ma = FileMirror::start(
        &a_dir,
        "w1",
        ca.clone(),
        Some(Box::new(move |d, t| *seen.lock().unwrap() = (d, t))),
    )
    .await
    .unwrap();
    assert_eq!(
        *progress.lock().unwrap(),
        (3, 3),
        "README.md, src/lib.rs, .gitignore"
    );
    assert!(
        !leftover.exists(),
        "a leftover temporary file survived the start"
    );
    ca.flush_all(T).await.unwrap();
    let _mb = FileMirror::start(&b_dir, "w1", cb.clone(), None)
        .await
        .unwrap();

    // B receives A's files, and nothing ignored.
    until_file(
        &b_dir.join("README.md"),
        "# Project\n\nline two\nline three\n",
    )
    .await;
    until_file(&b_dir.join("src/lib.rs"), "pub fn f() {}\n").await;
    assert!(!b_dir.join("target").exists() && !b_dir.join("secret.env").exists());

    // Edits both ways, a new file, a deletion.
    std::fs::write(a_dir.join("src/lib.rs"), "pub fn f() -> u8 { 1 }\n").unwrap();
    until_file(&b_dir.join("src/lib.rs"), "pub fn f() -> u8 { 1 }\n").await;
    std::fs::write(b_dir.join("notes.txt"), "from b\n").unwrap();
    until_file(&a_dir.join("notes.txt"), "from b\n").await;
    std::fs::remove_file(b_dir.join("notes.txt")).unwrap();
    let gone = a_dir.join("notes.txt");
    eventually("deletion reaches a", T, move || !gone.exists())
        .await
        .unwrap();

    // The same file edited on both sides while B is offline: both edits survive.
    cb.set_online(false);
    std::fs::write(
        a_dir.join("README.md"),
        "# Project (edited on a)\n\nline two\nline three\n",
    )
    .unwrap();
    std::fs::write(
        b_dir.join("README.md"),
        "# Project\n\nline two\nline three, edited offline on b\n",
    )
    .unwrap();
    // Delete on A while B edits the same file offline: the edit wins.
    std::fs::remove_file(a_dir.join("src/lib.rs")).unwrap();
    let b_edit = "pub fn f() -> u8 { 2 } // b\n";
    std::fs::write(b_dir.join("src/lib.rs"), b_edit).unwrap();
    ma.rescan().await;
    ca.flush_all(T).await.unwrap();
    // Let B's watcher import its offline edits before it reconnects.
    let idx = _mb.index().clone();
    eventually("b indexed its offline edit", T, move || {
        idx.get("src/lib.rs")
            .unwrap()
            .is_some_and(|e| e.size == b_edit.len() as u64)
    })
    .await
    .unwrap();
    cb.set_online(true);
    let merged = "# Project (edited on a)\n\nline two\nline three, edited offline on b\n";
    until_file(&a_dir.join("README.md"), merged).await;
    until_file(&b_dir.join("README.md"), merged).await;
    until_file(&a_dir.join("src/lib.rs"), "pub fn f() -> u8 { 2 } // b\n").await;
    until_file(&b_dir.join("src/lib.rs"), "pub fn f() -> u8 { 2 } // b\n").await;

    // Binary files travel as blobs; concurrent changes keep both versions.
    let png_a: Vec<u8> = [b"\x89PNG\r\n\x1a\n\0a".as_slice(), &[0u8; 64]].concat();
    std::fs::write(a_dir.join("logo.png"), &png_a).unwrap();
    let p = b_dir.join("logo.png");
    let want = png_a.clone();
    eventually("binary reaches b", T, move || {
        std::fs::read(&p).ok() == Some(want.clone())
    })
    .await
    .unwrap();
    // A large file (over the 2 MiB text limit) is streamed as a blob.
    let large: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    std::fs::write(a_dir.join("data.csv"), &large).unwrap();
    let p = b_dir.join("data.csv");
    eventually("large file reaches b", T, move || {
        std::fs::read(&p).ok() == Some(large.clone())
    })
    .await
    .unwrap();
    cb.set_online(false);
    let (v_a, v_b) = (
        b"\x89PNG version A \0".to_vec(),
        b"\x89PNG version B \0\xff".to_vec(),
    );
    std::fs::write(a_dir.join("logo.png"), &v_a).unwrap();
    std::fs::write(b_dir.join("logo.png"), &v_b).unwrap();
    ma.rescan().await;
    ca.flush_all(T).await.unwrap();
    let idx = _mb.index().clone();
    let vb_hash = blake3::hash(&v_b).to_hex().to_string();
    eventually("b indexed its offline binary", T, move || {
        idx.get("logo.png").unwrap().and_then(|e| e.hash) == Some(vb_hash.clone())
    })
    .await
    .unwrap();
    cb.set_online(true);
    let (ad, bd) = (a_dir.clone(), b_dir.clone());
    let (va, vb) = (v_a.clone(), v_b.clone());
    eventually("both versions kept on both devices", T, move || {
        [&ad, &bd].iter().all(|d| {
            let main = std::fs::read(d.join("logo.png")).ok();
            let copies: Vec<Vec<u8>> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("logo (conflict ")
                })
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect();
            match main {
                Some(m) if m == va => copies == vec![vb.clone()],
                Some(m) if m == vb => copies == vec![va.clone()],
                _ => false,
            }
        })
    })
    .await
    .unwrap();

    // A binary deleted on A while B changes it offline: B's version survives on both.
    cb.set_online(false);
    std::fs::remove_file(a_dir.join("logo.png")).unwrap();
    let v_c = b"\x89PNG version C, edited while deleted \0".to_vec();
    std::fs::write(b_dir.join("logo.png"), &v_c).unwrap();
    ma.rescan().await;
    ca.flush_all(T).await.unwrap();
    let idx = _mb.index().clone();
    let vc_hash = blake3::hash(&v_c).to_hex().to_string();
    eventually("b indexed its offline binary edit", T, move || {
        idx.get("logo.png").unwrap().and_then(|e| e.hash) == Some(vc_hash.clone())
    })
    .await
    .unwrap();
    cb.set_online(true);
    for d in [&a_dir, &b_dir] {
        let p = d.join("logo.png");
        let want = v_c.clone();
        eventually("the edited binary beats the delete", T, move || {
            std::fs::read(&p).ok() == Some(want.clone())
        })
        .await
        .unwrap();
    }

    // A hostile peer writes entries that point outside the folder.
    std::os::unix::fs::symlink(tmp.path(), b_dir.join("link")).unwrap();
    let hostile_client = client(&agent, &token, &tmp.path().join("h.db"));
    let hostile = WorkspaceIndex::new(hostile_client.open("ws/w1/index").await.unwrap());
    hostile_client.wait_synced("ws/w1/index", T).await.unwrap();
    let evil = FileEntry {
        kind: EntryKind::Text,
        doc: Some("evil".into()),
        hash: None,
        base: None,
        size: 5,
        mode: 0o644,
        modified_ms: 1,
        deleted: false,
    };
    {
        // Raw writes: the typed API refuses these paths, a hostile peer need not use it.
        use yrs::{Any, Map, Transact};
        let files = hostile.doc().get_or_insert_map("files");
        let mut txn = hostile.doc().transact_mut();
        let value = Any::from(std::collections::HashMap::from([
            ("kind".to_owned(), Any::from("text")),
            ("doc".to_owned(), Any::from("evil")),
            ("size".to_owned(), Any::from(5i64)),
        ]));
        for p in [
            "../escape.txt",
            "/tmp/jarvis-abs-escape.txt",
            "link/pwned.txt",
            ".git/config",
        ] {
            files.insert(&mut txn, p, value.clone());
        }
    }
    hostile.upsert("after-attack.txt", &evil).unwrap();
    let evil_doc =
        jarvis_sync::doc::FileText::new(hostile_client.open("ws/w1/file/evil").await.unwrap());
    evil_doc.replace_all("pwned");
    hostile_client.flush_all(T).await.unwrap();
    // The legitimate entry arrives; the hostile ones never touch the disk.
    until_file(&b_dir.join("after-attack.txt"), "pwned").await;
    assert!(!tmp.path().join("escape.txt").exists());
    assert!(!Path::new("/tmp/jarvis-abs-escape.txt").exists());
    assert!(!tmp.path().join("pwned.txt").exists());
    assert!(!b_dir.join(".git").exists());
    // And the mirror keeps working.
    std::fs::write(b_dir.join("README.md"), "still syncing\n").unwrap();
    until_file(&a_dir.join("README.md"), "still syncing\n").await;
}

/// A text entry for raw writes into an index (what a peer that skips the typed API sends).
fn raw_text_entry(doc: &str) -> yrs::Any {
    yrs::Any::from(std::collections::HashMap::from([
        ("kind".to_owned(), yrs::Any::from("text")),
        ("doc".to_owned(), yrs::Any::from(doc)),
        ("size".to_owned(), yrs::Any::from(2i64)),
    ]))
}

/// Seen under load in CI: a hostile entry naming the same document as a real file, handled
/// after it, took the document away from the file, so later edits of it never reached the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_sharing_a_document_does_not_take_its_edits_from_the_file() {
    use yrs::{Map, Transact};
    let (tmp, data, token) = hub_with_token(&["ws/w1/*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let peer = client(&agent, &token, &tmp.path().join("peer.db"));
    let index = peer.open("ws/w1/index").await.unwrap();
    peer.wait_synced("ws/w1/index", T).await.unwrap();
    let text = jarvis_sync::doc::FileText::new(peer.open("ws/w1/file/shared").await.unwrap());
    text.replace_all("v1");
    {
        let files = index.get_or_insert_map("files");
        files.insert(
            &mut index.transact_mut(),
            "shown.txt",
            raw_text_entry("shared"),
        );
    }
    peer.flush_all(T).await.unwrap();
    let MirroredFolder { dir, mirror, .. } =
        mirrored_folder(&agent, &token, tmp.path(), "b", "w1").await;
    until_file(&dir.join("shown.txt"), "v1").await;

    // Refused entries (outside the folder, inside .git) naming the same document, handled
    // after the real file.
    {
        let files = index.get_or_insert_map("files");
        let mut txn = index.transact_mut();
        for p in ["../outside.txt", ".git/config"] {
            files.insert(&mut txn, p, raw_text_entry("shared"));
        }
    }
    peer.flush_all(T).await.unwrap();
    let seen = mirror.index().clone();
    eventually("the mirror received the refused entries", T, move || {
        seen.list_all().iter().any(|(p, _)| p == ".git/config")
    })
    .await
    .unwrap();
    mirror.settle(false).await;

    text.replace_all("v2");
    peer.flush_all(T).await.unwrap();
    until_file(&dir.join("shown.txt"), "v2").await;
    assert!(!tmp.path().join("outside.txt").exists());
    assert!(!dir.join(".git").exists());
}

/// A file made in this folder and then edited elsewhere through its document alone (the index
/// entry untouched) still gets the edit on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_made_here_gets_an_edit_of_its_document_alone() {
    let (tmp, data, token) = hub_with_token(&["ws/w1/*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let MirroredFolder {
        dir,
        client: ca,
        mirror,
    } = mirrored_folder(&agent, &token, tmp.path(), "a", "w1").await;
    std::fs::write(dir.join("made-here.txt"), "from this folder\n").unwrap();
    let index = mirror.index().clone();
    eventually("the new file is indexed", T, move || {
        index.get("made-here.txt").ok().flatten().is_some()
    })
    .await
    .unwrap();
    mirror.settle(false).await;
    ca.flush_all(T).await.unwrap();
    let doc = mirror
        .index()
        .get("made-here.txt")
        .unwrap()
        .unwrap()
        .doc
        .unwrap();

    let peer = client(&agent, &token, &tmp.path().join("peer.db"));
    let name = format!("ws/w1/file/{doc}");
    let text = jarvis_sync::doc::FileText::new(peer.open(&name).await.unwrap());
    peer.wait_synced(&name, T).await.unwrap();
    assert_eq!(text.text(), "from this folder\n");
    text.replace_all("edited elsewhere\n");
    peer.flush_all(T).await.unwrap();
    until_file(&dir.join("made-here.txt"), "edited elsewhere\n").await;
}
