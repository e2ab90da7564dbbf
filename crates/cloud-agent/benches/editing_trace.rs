//! The automerge-perf editing trace (259,778 keystrokes of one LaTeX paper) through our document
//! layer, our store, and a real hub over a loopback WebSocket.
//!
//! `cargo bench -p jarvis-cloud --bench editing_trace` (set `JARVIS_TRACE` to use another copy
//! of `editing-trace.json`). Prints a Markdown table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jarvis_cloud::control::{ADMIN_USER, Control};
use jarvis_cloud::hub_routes::{AppState, router as app};
use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::doc::FileText;
use jarvis_sync::hub::{Hub, HubConfig};
use jarvis_sync::store::{AppendItem, SqliteStore, Store};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

const FINAL_LEN: usize = 104_852;

fn trace_path() -> PathBuf {
    if let Ok(p) = std::env::var("JARVIS_TRACE") {
        return p.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/editing-trace.json")
}

enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
}

fn load_trace() -> Vec<Edit> {
    let path = trace_path();
    let raw = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let json: Vec<serde_json::Value> = serde_json::from_str(&raw).unwrap();
    json.into_iter()
        .map(|e| {
            let pos = e[0].as_u64().unwrap() as usize;
            let del = e[1].as_u64().unwrap() as usize;
            match e.get(2).and_then(|t| t.as_str()) {
                Some(text) if del == 0 => Edit::Insert(pos, text.to_owned()),
                _ => Edit::Delete(pos, del),
            }
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let edits = load_trace();
    let mut rows: Vec<(String, String)> = Vec::new();

    // 1. Replay: one transaction per keystroke, as an editor would produce them.
    let doc = Doc::new();
    let text = FileText::new(doc.clone());
    let update_bytes = Arc::new(Mutex::new((0usize, 0usize)));
    let counter = update_bytes.clone();
    jarvis_sync::doc::observe_updates_blocking(&doc, "bench", move |_, e| {
        let mut c = counter.lock().unwrap();
        c.0 += 1;
        c.1 += e.update.len();
    });
    let start = Instant::now();
    for e in &edits {
        match e {
            Edit::Insert(pos, s) => text.insert(*pos as u32, s).unwrap(),
            Edit::Delete(pos, n) => text.delete(*pos as u32, *n as u32).unwrap(),
        }
    }
    let replay = start.elapsed();
    assert_eq!(
        text.len() as usize,
        FINAL_LEN,
        "replay produced the wrong document"
    );
    let (updates, bytes) = *update_bytes.lock().unwrap();
    rows.push((
        format!("replay {} edits (one transaction each)", edits.len()),
        format!(
            "{} ({:.2} µs/edit)",
            ms(replay),
            replay.as_secs_f64() * 1e6 / edits.len() as f64
        ),
    ));
    rows.push((
        "bytes per update (v1 encoding)".into(),
        format!("{:.1}", bytes as f64 / updates as f64),
    ));

    // 2. Saved size: the compacted snapshot in the SQLite store.
    let dir = tempfile::tempdir().unwrap();
    let snapshot = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
    store
        .append(&[AppendItem {
            doc: "ws/bench/file/trace",
            update: &snapshot,
        }])
        .unwrap();
    store.compact("ws/bench/file/trace").unwrap();
    let stored = store.load("ws/bench/file/trace").unwrap();
    let saved = stored.snapshot.as_ref().map_or(0, Vec::len);
    rows.push((
        "saved size (compacted snapshot)".into(),
        format!(
            "{saved} bytes ({:.2} bytes/final char)",
            saved as f64 / FINAL_LEN as f64
        ),
    ));

    // 3. Load: read from the store and rebuild the document.
    let mut loads = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let stored = store.load("ws/bench/file/trace").unwrap();
        let d = Doc::new();
        {
            let mut txn = d.transact_mut();
            for u in stored.snapshot.iter().chain(stored.updates.iter()) {
                txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
            }
        }
        let t = FileText::new(d);
        assert_eq!(t.len() as usize, FINAL_LEN);
        loads.push(start.elapsed());
    }
    rows.push((
        "load from store (median of 20)".into(),
        format!("{} (target < 20 ms)", ms(median(loads))),
    ));

    // 4. A fresh peer syncs the document from a real hub over a loopback WebSocket.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cold, warm) = runtime.block_on(fresh_peer_sync(dir.path(), &snapshot));
    rows.push((
        "fresh peer sync over the hub, hub loads from disk (median of 5)".into(),
        format!("{} (target < 100 ms)", ms(cold)),
    ));
    rows.push((
        "fresh peer sync over the hub, document in hub memory (median of 10)".into(),
        format!("{} (target < 100 ms)", ms(warm)),
    ));

    println!("| editing trace | result |\n|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}

async fn fresh_peer_sync(dir: &std::path::Path, snapshot: &[u8]) -> (Duration, Duration) {
    let db = dir.join("hub.db");
    let token = {
        let (control, _) = Control::open(&db).unwrap();
        control
            .create_token(ADMIN_USER, None, "bench", &["*".into()], false)
            .unwrap()
    };
    let start_hub = || {
        let store = SqliteStore::open(&db).unwrap();
        let tokens = Arc::new(Control::open(&db).unwrap().0);
        let hub = Hub::new(Arc::new(store), tokens.clone(), HubConfig::default());
        AppState {
            hub,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            blobs: Arc::new(jarvis_cloud::blobs::BlobService {
                root: dir.join("blobs"),
                authorizer: tokens,
                max_bytes: 1 << 30,
                quota: None,
            }),
            control: None,
        }
    };
    let serve = |state: AppState| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = state.shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app(state))
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        (format!("ws://127.0.0.1:{port}/sync"), task)
    };
    let name = "ws/bench/file/uploaded";

    // Upload through a client, as a device would.
    let state = start_hub();
    let (url, task) = serve(state.clone()).await;
    let uploader_store = Arc::new(SqliteStore::open(&dir.join("uploader.db")).unwrap());
    let uploader = SyncClient::start(ClientConfig::new(&url, &token), uploader_store);
    let d = uploader.open(name).await.unwrap();
    d.transact_mut()
        .apply_update(Update::decode_v1(snapshot).unwrap())
        .unwrap();
    uploader.flush(name, Duration::from_secs(30)).await.unwrap();
    drop(uploader);

    let mut warm = Vec::new();
    for i in 0..10 {
        let store = Arc::new(jarvis_sync::store::MemoryStore::new());
        let client = SyncClient::start(ClientConfig::new(&url, &token), store);
        let start = Instant::now();
        let d = client.open(name).await.unwrap();
        client
            .wait_synced(name, Duration::from_secs(30))
            .await
            .unwrap();
        let elapsed = start.elapsed();
        assert_eq!(
            FileText::new(d).len() as usize,
            FINAL_LEN,
            "peer {i} got the wrong document"
        );
        warm.push(elapsed);
    }
    state.shutdown.cancel();
    state.hub.shutdown().await;
    task.await.unwrap();

    let mut cold = Vec::new();
    for _ in 0..5 {
        let state = start_hub();
        let (url, task) = serve(state.clone()).await;
        let store = Arc::new(jarvis_sync::store::MemoryStore::new());
        let client = SyncClient::start(ClientConfig::new(&url, &token), store);
        let start = Instant::now();
        let d = client.open(name).await.unwrap();
        client
            .wait_synced(name, Duration::from_secs(30))
            .await
            .unwrap();
        cold.push(start.elapsed());
        assert_eq!(FileText::new(d).len() as usize, FINAL_LEN);
        drop(client);
        state.shutdown.cancel();
        state.hub.shutdown().await;
        task.await.unwrap();
    }
    (median(cold), median(warm))
}
