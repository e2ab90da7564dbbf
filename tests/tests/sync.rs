//! The sync core end to end: real `jarvis-cloud serve` processes on port 0, real Rust clients.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::doc::{self, Block, FileText, Role, SessionDoc};
use jarvis_sync::protocol::{AuthMessage, Frame, Message, SyncMessage};
use jarvis_sync::store::SqliteStore;
use jarvis_testkit::socket::{self, Socket, auth, connect};
use jarvis_testkit::sync_client::sync_client;
use jarvis_testkit::{CloudAgent, create_token, eventually, http_get, hub_with_token};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::{GetString, Text, Transact};

const T: Duration = Duration::from_secs(20);

fn client(agent: &CloudAgent, token: &str, dir: &std::path::Path, name: &str) -> SyncClient {
    sync_client(agent, token, &dir.join(format!("{name}.db")))
}

fn text_of(doc: &yrs::Doc, name: &str) -> String {
    let text = doc.get_or_insert_text(name);
    text.get_string(&doc.transact())
}

fn append(doc: &yrs::Doc, name: &str, s: &str) {
    let text = doc.get_or_insert_text(name);
    let mut txn = doc.transact_mut();
    let len = text.len(&txn);
    text.insert(&mut txn, len, s);
}

fn user_message(id: &str, author: &str, text: &str) -> doc::Message {
    doc::Message {
        id: id.into(),
        role: Role::User,
        author: author.into(),
        created_ms: 0,
        blocks: vec![Block::Text { text: text.into() }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_including_offline_edits() {
    let (dir, data, token) = hub_with_token(&["*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let a = client(&agent, &token, dir.path(), "a");
    let b = client(&agent, &token, dir.path(), "b");
    let (s, f) = ("session/s1", "ws/w1/file/f1");
    for n in [s, f] {
        a.open(n).await.unwrap();
        b.open(n).await.unwrap();
        a.wait_synced(n, T).await.unwrap();
        b.wait_synced(n, T).await.unwrap();
    }
    let (sa, sb) = (
        SessionDoc::new(a.open(s).await.unwrap()),
        SessionDoc::new(b.open(s).await.unwrap()),
    );
    let (fa, fb) = (
        FileText::new(a.open(f).await.unwrap()),
        FileText::new(b.open(f).await.unwrap()),
    );

    // Online: A starts a conversation and streams a reply while B sends a follow-up; both
    // edit the file.
    sa.append_message(&user_message("m1", "a", "hello"))
        .unwrap();
    fa.apply_text_diff("line one\nline two\n");
    a.flush_all(T).await.unwrap();
    let (sb2, fb2) = (sb.clone(), fb.clone());
    eventually("b sees a", T, || {
        sb2.message("m1").is_some() && fb2.text() == "line one\nline two\n"
    })
    .await
    .unwrap();
    sa.append_message(&doc::Message {
        id: "m2".into(),
        role: Role::Assistant,
        author: "a".into(),
        created_ms: 0,
        blocks: vec![],
    })
    .unwrap();
    let block = sa
        .append_block(
            "m2",
            &Block::Text {
                text: String::new(),
            },
        )
        .unwrap();
    for chunk in ["stream", "ing ", "reply"] {
        sa.push_text(&block, chunk).unwrap();
    }
    sb.append_message(&user_message("m3", "b", "follow-up"))
        .unwrap();
    let (sa2, sb2) = (sa.clone(), sb.clone());
    eventually("session converges online", T, || {
        let m = sa2.messages();
        m.len() == 3 && m == sb2.messages()
    })
    .await
    .unwrap();
    assert_eq!(
        sb.message("m2").unwrap().blocks,
        vec![Block::Text {
            text: "streaming reply".into()
        }]
    );

    // B goes offline; both edit the same line of the file and the session; B comes back.
    b.set_online(false);
    fa.apply_text_diff("line one, edited on a\nline two\n");
    fb.apply_text_diff("line one\nline two, edited offline on b\n");
    sa.push_text(&block, " (more)").unwrap();
    sb.append_message(&user_message("m4", "b", "typed while offline"))
        .unwrap();
    a.flush_all(T).await.unwrap();
    assert!(b.document_status(f).unwrap().pending() > 0);
    b.set_online(true);
    b.flush_all(T).await.unwrap();
    let (fa2, fb2, sa2, sb2) = (fa.clone(), fb.clone(), sa.clone(), sb.clone());
    eventually("everything converges after offline edits", T, || {
        fa2.text() == fb2.text() && sa2.messages() == sb2.messages() && sa2.messages().len() == 4
    })
    .await
    .unwrap();
    assert_eq!(
        fa.text(),
        "line one, edited on a\nline two, edited offline on b\n"
    );
    assert_eq!(
        sb.message("m2").unwrap().blocks,
        vec![Block::Text {
            text: "streaming reply (more)".into()
        }]
    );

    // A third, fresh device gets exactly the same state from the hub.
    let c = client(&agent, &token, dir.path(), "c");
    let sc = SessionDoc::new(c.open(s).await.unwrap());
    let fc = FileText::new(c.open(f).await.unwrap());
    c.wait_synced(s, T).await.unwrap();
    c.wait_synced(f, T).await.unwrap();
    assert_eq!(sc.messages(), sa.messages());
    assert_eq!(fc.text(), fa.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_update() {
    let (dir, data, token) = hub_with_token(&["*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let port = agent.port;
    let url = agent.sync_url();
    let writer = client(&agent, &token, dir.path(), "writer");
    let doc = writer.open("session/durable").await.unwrap();
    writer.wait_synced("session/durable", T).await.unwrap();

    // Stream numbered lines; kill the hub while acknowledgements are still arriving.
    let total = 400u64;
    let status = writer.watch_document("session/durable").unwrap();
    let mut acked_at_kill = 0;
    let mut agent = Some(agent);
    for i in 1..=total {
        append(&doc, "log", &format!("line {i}\n"));
        if i % 10 == 0 {
            tokio::task::yield_now().await;
        }
        let acked = status.borrow().acknowledged_edits;
        if acked >= 100 && agent.is_some() {
            acked_at_kill = acked;
            agent.take().unwrap().kill9().unwrap();
        }
    }
    if let Some(a) = agent.take() {
        // The machine was fast enough to acknowledge fewer than 100 before we finished
        // writing; kill now, mid-acknowledgement.
        acked_at_kill = status.borrow().acknowledged_edits;
        a.kill9().unwrap();
    }
    assert!(
        acked_at_kill > 0,
        "no update was acknowledged before the kill"
    );
    // Anything acknowledged after the kill signal was sent is also covered by the check below,
    // because acknowledgement happens only after commit.
    let acked_final = status.borrow().acknowledged_edits;

    // The hub restarts on the same port; a fresh device sees every acknowledged line.
    let agent = CloudAgent::start(&data, port).unwrap();
    assert_eq!(agent.sync_url(), url);
    let reader_store = SqliteStore::open(&dir.path().join("reader.db")).unwrap();
    let reader = SyncClient::start(
        ClientConfig::new(agent.sync_url(), &token),
        Arc::new(reader_store),
    );
    let rdoc = reader.open("session/durable").await.unwrap();
    reader.wait_synced("session/durable", T).await.unwrap();
    let seen = text_of(&rdoc, "log");
    for i in 1..=acked_final {
        assert!(
            seen.contains(&format!("line {i}\n")),
            "acknowledged line {i} missing after kill -9 (acked at kill: {acked_at_kill}, final: {acked_final})"
        );
    }

    // The writer reconnects by itself and delivers what was never acknowledged.
    writer.flush("session/durable", T).await.unwrap();
    let rdoc2 = rdoc.clone();
    eventually("every line after reconnect", T, || {
        let s = text_of(&rdoc2, "log");
        (1..=total).all(|i| s.contains(&format!("line {i}\n")))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_and_exits_cleanly() {
    let (dir, data, token) = hub_with_token(&["session/*"]);
    let agent = CloudAgent::start(&data, 0).unwrap();
    let port = agent.port;
    let c = client(&agent, &token, dir.path(), "c");
    let doc = c.open("session/t").await.unwrap();
    c.wait_synced("session/t", T).await.unwrap();
    append(&doc, "x", "before shutdown");
    c.flush("session/t", T).await.unwrap();
    let status = agent.terminate(T).unwrap();
    assert!(status.success(), "exit status {status}");
    drop(c);
    let agent = CloudAgent::start(&data, port).unwrap();
    let c2 = client(&agent, &token, dir.path(), "c2");
    let doc2 = c2.open("session/t").await.unwrap();
    c2.wait_synced("session/t", T).await.unwrap();
    assert_eq!(text_of(&doc2, "x"), "before shutdown");
}

async fn raw(agent: &CloudAgent) -> Socket {
    connect(agent).await
}

async fn next_frame(ws: &mut Socket) -> Result<Frame, Option<(u16, String)>> {
    socket::next_frame(ws, T).await
}

async fn expect_close(ws: &mut Socket) -> (u16, String) {
    loop {
        match next_frame(ws).await {
            Ok(_) => continue,
            Err(Some((code, reason))) => return (code, reason),
            Err(None) => panic!("socket ended without a close frame"),
        }
    }
}

async fn expect_denied(ws: &mut Socket, doc: &str, token: &str) -> String {
    ws.send(auth(doc, token)).await.unwrap();
    match next_frame(ws).await {
        Ok(Frame::Doc {
            address,
            message: Message::Auth(AuthMessage::PermissionDenied { reason }),
        }) if address == doc => reason,
        other => panic!("expected PermissionDenied for {doc}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_the_offending_connection() {
    let (dir, data, token) = hub_with_token(&["session/*"]);
    let other_doc_token = create_token(&data, &["session/other"], false).unwrap();
    let mut agent = CloudAgent::start(&data, 0).unwrap();

    // A well-behaved client stays connected throughout.
    let good = client(&agent, &token, dir.path(), "good");
    let gdoc = good.open("session/ok").await.unwrap();
    good.wait_synced("session/ok", T).await.unwrap();

    // Malformed frame: the address length points past the end.
    let mut ws = raw(&agent).await;
    ws.send(WsMessage::Binary(vec![0x20, b'a'].into()))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400, "{reason}");
    assert!(reason.contains("malformed"), "{reason}");

    // Unknown message type.
    let mut ws = raw(&agent).await;
    ws.send(WsMessage::Binary(vec![1, b'a', 42].into()))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.contains("unknown message type 42"), "{reason}");

    // Text frames are not part of the protocol.
    let mut ws = raw(&agent).await;
    ws.send(WsMessage::Text("hello".into())).await.unwrap();
    assert_eq!(expect_close(&mut ws).await.0, 1003);

    // An invalid Yjs update inside a well-formed frame, after authenticating.
    let mut ws = raw(&agent).await;
    ws.send(auth("session/bad", &token)).await.unwrap();
    assert!(matches!(
        next_frame(&mut ws).await,
        Ok(Frame::Doc {
            message: Message::Auth(AuthMessage::Authenticated { .. }),
            ..
        })
    ));
    let garbage = Frame::doc(
        "session/bad",
        Message::Sync(SyncMessage::Update(vec![0xff; 12])),
    );
    ws.send(WsMessage::Binary(garbage.encode().into()))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 4400);
    assert!(reason.contains("invalid update"), "{reason}");

    // Oversized frame (over the 16 MiB protocol limit, under the socket's hard cap).
    let mut ws = raw(&agent).await;
    let big = Frame::doc(
        "session/big",
        Message::Sync(SyncMessage::Update(vec![0; 17 * 1024 * 1024])),
    );
    ws.send(WsMessage::Binary(big.encode().into()))
        .await
        .unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1009, "{reason}");

    // Wrong, missing and foreign tokens: a clear PermissionDenied per document.
    let mut ws = raw(&agent).await;
    assert_eq!(
        expect_denied(&mut ws, "session/x", "jt_wrong").await,
        "unknown token"
    );
    assert_eq!(
        expect_denied(&mut ws, "session/x", "").await,
        "missing token"
    );
    let reason = expect_denied(&mut ws, "session/x", &other_doc_token).await;
    assert!(reason.contains("no access to session/x"), "{reason}");
    let reason = expect_denied(&mut ws, "../etc/passwd", &token).await;
    assert!(reason.contains("invalid document name"), "{reason}");
    // A denied document gets nothing: a sync request for it is never answered with state.
    // Repeated failures end the socket.
    for _ in 0..12 {
        ws.send(auth("session/x", "jt_wrong")).await.unwrap();
    }
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 4401);

    // The process is alive, healthy, counted the refusals, and the good client still syncs.
    assert!(agent.is_running());
    let (status, body) = http_get(agent.port, "/healthz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    // /metrics answers only an admin user's token that covers it: the monitoring recipe.
    let (status, _) = http_get(agent.port, "/metrics").await.unwrap();
    assert_eq!(status, 401);
    let monitor = create_token(&data, &["metrics"], true).unwrap();
    let (_, metrics) = jarvis_testkit::http_get_as(agent.port, "/metrics", Some(&monitor))
        .await
        .unwrap();
    let denied: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jarvis_hub_auth_denied_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    // Four deliberate refusals, then up to twelve more until the socket was cut at sixteen.
    assert_eq!(denied, 16, "{metrics}");
    append(&gdoc, "t", "still fine");
    good.flush("session/ok", T).await.unwrap();
    let probe = client(&agent, &token, dir.path(), "probe");
    let pdoc = probe.open("session/ok").await.unwrap();
    probe.wait_synced("session/ok", T).await.unwrap();
    assert_eq!(text_of(&pdoc, "t"), "still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tokens_cannot_write() {
    let (dir, data, rw) = hub_with_token(&["session/*"]);
    let ro = create_token(&data, &["session/shared"], true).unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let writer = client(&agent, &rw, dir.path(), "w");
    let reader = client(&agent, &ro, dir.path(), "r");
    let wdoc = writer.open("session/shared").await.unwrap();
    let rdoc = reader.open("session/shared").await.unwrap();
    writer.wait_synced("session/shared", T).await.unwrap();
    reader.wait_synced("session/shared", T).await.unwrap();
    assert!(reader.document_status("session/shared").unwrap().read_only);
    append(&wdoc, "t", "from writer");
    let r = rdoc.clone();
    eventually("reader sees writer", T, || {
        text_of(&r, "t") == "from writer"
    })
    .await
    .unwrap();
    append(&rdoc, "t", " + sneaky");
    // The hub refuses it: the reader is told, its edit stays unacknowledged, and neither the
    // writer nor a fresh device ever sees it.
    let mut status = reader.watch_document("session/shared").unwrap();
    tokio::time::timeout(T, status.wait_for(|s| s.refused_messages > 0))
        .await
        .unwrap()
        .unwrap();
    assert!(reader.document_status("session/shared").unwrap().pending() > 0);
    append(&wdoc, "t", "; later");
    writer.flush("session/shared", T).await.unwrap();
    let fresh = client(&agent, &rw, dir.path(), "fresh");
    let fdoc = fresh.open("session/shared").await.unwrap();
    fresh.wait_synced("session/shared", T).await.unwrap();
    assert_eq!(text_of(&fdoc, "t"), "from writer; later");
    assert_eq!(text_of(&wdoc, "t"), "from writer; later");
}
