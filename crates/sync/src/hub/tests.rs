#![allow(clippy::unwrap_used)]

use std::time::Duration;

use yrs::updates::encoder::Encode;
use yrs::{GetString, Text};

use super::connection::inspect_update;
use super::*;
use crate::store::MemoryStore;

struct Tokens;
impl Authorizer for Tokens {
    fn authorize(&self, token: &str, _doc: &str) -> Result<Access, String> {
        match token {
            "rw" => Ok(Access::ReadWrite),
            "ro" => Ok(Access::ReadOnly),
            _ => Err("unknown token".into()),
        }
    }
}

fn hub() -> (Hub, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    (
        Hub::new(store.clone(), Arc::new(Tokens), HubConfig::default()),
        store,
    )
}

fn frame(doc: &str, m: Message) -> Vec<u8> {
    Frame::doc(doc, m).encode()
}

fn token(doc: &str, t: &str) -> Vec<u8> {
    frame(
        doc,
        Message::Auth(AuthMessage::Token {
            token: t.into(),
            provider_version: None,
        }),
    )
}

async fn recv(rx: &mut mpsc::Receiver<Outbound>) -> Message {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Outbound::Frame(f) => match Frame::decode(&f, &Limits::default()).unwrap() {
            Frame::Doc { message, .. } => message,
            other => panic!("unexpected {other:?}"),
        },
        Outbound::Close(c) => panic!("unexpected close {c:?}"),
    }
}

fn edit(text: &str) -> (Doc, Vec<u8>) {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, text);
    let u = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    (doc, u)
}

async fn open(
    hub: &Hub,
    doc: &str,
    tok: &str,
) -> (HubConnection, mpsc::Receiver<Outbound>, CancellationToken) {
    let (mut c, mut rx, kill) = hub.connect();
    c.handle(&token(doc, tok)).await.unwrap();
    assert!(matches!(
        recv(&mut rx).await,
        Message::Auth(AuthMessage::Authenticated { .. })
    ));
    (c, rx, kill)
}

#[tokio::test]
async fn handshake_relay_and_ack_after_commit() {
    let (hub, store) = hub();
    let (mut a, mut arx, _) = open(&hub, "session/s", "rw").await;
    let (mut b, mut brx, _) = open(&hub, "session/s", "rw").await;
    let empty = StateVector::default().encode_v1();
    a.handle(&frame(
        "session/s",
        Message::Sync(SyncMessage::Step1(empty)),
    ))
    .await
    .unwrap();
    assert!(matches!(
        recv(&mut arx).await,
        Message::Sync(SyncMessage::Step1(_))
    ));
    assert!(matches!(
        recv(&mut arx).await,
        Message::Sync(SyncMessage::Step2(_))
    ));

    let (_, u) = edit("hello");
    a.handle(&frame(
        "session/s",
        Message::Sync(SyncMessage::Update(u.clone())),
    ))
    .await
    .unwrap();
    // B gets the relay; A gets the acknowledgement, and by then the store has it.
    assert_eq!(
        recv(&mut brx).await,
        Message::Sync(SyncMessage::Update(u.clone()))
    );
    assert_eq!(recv(&mut arx).await, Message::SyncStatus(true));
    assert_eq!(store.load("session/s").unwrap().updates, vec![u.clone()]);

    // A duplicate adds nothing: acknowledged, not stored again, not relayed.
    b.handle(&frame("session/s", Message::Sync(SyncMessage::Step2(u))))
        .await
        .unwrap();
    assert_eq!(recv(&mut brx).await, Message::SyncStatus(true));
    assert_eq!(store.load("session/s").unwrap().updates.len(), 1);
    assert!(arx.try_recv().is_err());
}

#[test]
fn incremental_updates_count_as_new() {
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    t.insert(&mut doc.transact_mut(), 0, "a");
    let sv1 = doc.transact().state_vector();
    t.insert(&mut doc.transact_mut(), 1, "b");
    let incremental = Update::decode_v1(&doc.transact().encode_diff_v1(&sv1)).unwrap();
    assert!(inspect_update(&incremental, &sv1).unwrap());
    let now = doc.transact().state_vector();
    assert!(!inspect_update(&incremental, &now).unwrap());
    t.remove_range(&mut doc.transact_mut(), 0, 1);
    let delete = Update::decode_v1(&doc.transact().encode_diff_v1(&now)).unwrap();
    assert!(inspect_update(&delete, &doc.transact().state_vector()).unwrap());
}

#[tokio::test]
async fn frames_before_auth_are_replayed_and_denials_are_clear() {
    let (hub, _) = hub();
    let (mut c, mut rx, _) = hub.connect();
    let (_, u) = edit("early");
    c.handle(&frame("session/q", Message::Sync(SyncMessage::Update(u))))
        .await
        .unwrap();
    c.handle(&token("session/q", "rw")).await.unwrap();
    assert!(matches!(
        recv(&mut rx).await,
        Message::Auth(AuthMessage::Authenticated { .. })
    ));
    assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
    let state = hub.document_state("session/q").await.unwrap();
    let d = Doc::new();
    d.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    assert_eq!(d.get_or_insert_text("t").get_string(&d.transact()), "early");

    c.handle(&token("session/z", "nope")).await.unwrap();
    assert_eq!(
        recv(&mut rx).await,
        Message::Auth(AuthMessage::PermissionDenied {
            reason: "unknown token".into()
        })
    );
}

#[tokio::test]
async fn read_only_updates_are_refused() {
    let (hub, store) = hub();
    let (mut c, mut rx, _) = open(&hub, "session/r", "ro").await;
    let (_, u) = edit("nope");
    c.handle(&frame("session/r", Message::Sync(SyncMessage::Update(u))))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await, Message::SyncStatus(false));
    assert!(store.load("session/r").unwrap().is_empty());
}

#[tokio::test]
async fn storage_failure_acknowledges_nothing_and_recovers() {
    let (hub, store) = hub();
    let (mut c, mut rx, kill) = open(&hub, "session/f", "rw").await;
    store.fail_next_append();
    let (_, u) = edit("lost?");
    c.handle(&frame(
        "session/f",
        Message::Sync(SyncMessage::Update(u.clone())),
    ))
    .await
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
    {
        Outbound::Close(r) => assert_eq!(r.code, close_code::INTERNAL_ERROR),
        other => panic!("expected a close, got {other:?}"),
    }
    // The writer queues the close, then cancels: the close can arrive first.
    tokio::time::timeout(Duration::from_secs(5), kill.cancelled())
        .await
        .unwrap();
    drop(c);
    // The client reconnects and re-sends; the document was evicted, so the update is new
    // to the reloaded copy and gets stored this time.
    let (mut c, mut rx, _) = open(&hub, "session/f", "rw").await;
    c.handle(&frame(
        "session/f",
        Message::Sync(SyncMessage::Step2(u.clone())),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
    assert_eq!(store.load("session/f").unwrap().updates, vec![u]);
}

#[tokio::test]
async fn awareness_is_relayed_replayed_and_cleared() {
    let (hub, _) = hub();
    let (mut a, _arx, _) = open(&hub, "session/p", "rw").await;
    let (mut b, mut brx, _) = open(&hub, "session/p", "rw").await;
    let entry = awareness::AwarenessEntry {
        client_id: 7,
        clock: 1,
        state: r#"{"name":"a"}"#.into(),
    };
    let update = awareness::encode_update([&entry]);
    a.handle(&frame("session/p", Message::Awareness(update.clone())))
        .await
        .unwrap();
    assert_eq!(recv(&mut brx).await, Message::Awareness(update.clone()));
    b.handle(&frame("session/p", Message::QueryAwareness))
        .await
        .unwrap();
    assert_eq!(recv(&mut brx).await, Message::Awareness(update));
    drop(a);
    match recv(&mut brx).await {
        Message::Awareness(u) => {
            let gone = awareness::decode_update(&u).unwrap();
            assert_eq!(gone[0].client_id, 7);
            assert_eq!(gone[0].state, "null");
        }
        other => panic!("expected awareness removal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_update_that_fails_part_way_leaves_nothing_behind() {
    use yrs::{Map, MapPrelim};
    // The hub holds client 1's map entry "x" as a string; client 2's update (made against
    // a replica where client 1's "x" is a map) first inserts text, then writes into "x" as
    // if it were a map. yrs integrates the text, then fails on the parent.
    let (hub, _) = hub();
    let c = Doc::with_client_id(1);
    c.get_or_insert_map("m")
        .insert(&mut c.transact_mut(), "x", "a string");
    let hub_state = c
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let a = Doc::with_client_id(1);
    a.get_or_insert_map("m")
        .insert(&mut a.transact_mut(), "x", MapPrelim::default());
    let b = Doc::with_client_id(2);
    b.transact_mut()
        .apply_update(
            Update::decode_v1(
                &a.transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )
            .unwrap(),
        )
        .unwrap();
    let before = b.transact().state_vector();
    b.get_or_insert_text("t")
        .insert(&mut b.transact_mut(), 0, "smuggled");
    {
        let m = b.get_or_insert_map("m");
        let mut txn = b.transact_mut();
        let Some(yrs::Out::YMap(inner)) = m.get(&txn, "x") else {
            panic!("no nested map")
        };
        inner.insert(&mut txn, "k", "v");
    }
    let hostile = b.transact().encode_diff_v1(&before);
    // The premise: plain yrs applies this update part-way and then fails.
    {
        let plain = Doc::new();
        let mut txn = plain.transact_mut();
        txn.apply_update(Update::decode_v1(&hub_state).unwrap())
            .unwrap();
        assert!(
            txn.apply_update(Update::decode_v1(&hostile).unwrap())
                .is_err()
        );
        drop(txn);
        assert_eq!(
            plain.get_or_insert_text("t").get_string(&plain.transact()),
            "smuggled"
        );
    }

    let (mut w, mut wrx, _) = open(&hub, "session/poison", "rw").await;
    w.handle(&frame(
        "session/poison",
        Message::Sync(SyncMessage::Update(hub_state.clone())),
    ))
    .await
    .unwrap();
    assert_eq!(recv(&mut wrx).await, Message::SyncStatus(true));
    let (_watcher, _, watcher_kill) = open(&hub, "session/poison", "ro").await;
    let (mut h, _hrx, _) = open(&hub, "session/poison", "rw").await;
    let err = h
        .handle(&frame(
            "session/poison",
            Message::Sync(SyncMessage::Update(hostile)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, close_code::BAD_REQUEST, "{err:?}");
    // The others on the document are told to reconnect; the copy they would reconnect to
    // is the stored one, without the smuggled text.
    assert!(watcher_kill.is_cancelled());
    drop((w, h, _watcher));
    let state = hub.document_state("session/poison").await.unwrap();
    let d = Doc::new();
    d.transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    assert_eq!(d.get_or_insert_text("t").get_string(&d.transact()), "");
    assert_eq!(
        d.transact().state_vector(),
        c.transact().state_vector(),
        "the reloaded document is exactly the stored one"
    );
    // And it serves again.
    let (mut again, mut arx, _) = open(&hub, "session/poison", "rw").await;
    let (_, u) = edit("fine");
    again
        .handle(&frame(
            "session/poison",
            Message::Sync(SyncMessage::Update(u)),
        ))
        .await
        .unwrap();
    assert_eq!(recv(&mut arx).await, Message::SyncStatus(true));
}

fn presence(client_id: u64, clock: u64, state: &str) -> Vec<u8> {
    awareness::encode_update([&awareness::AwarenessEntry {
        client_id,
        clock,
        state: state.into(),
    }])
}

#[tokio::test]
async fn presence_is_bounded_and_only_its_owner_changes_it() {
    let (hub, _) = hub();
    let (mut alice, _arx, _) = open(&hub, "session/pr", "rw").await;
    let (mut bob, mut brx, _) = open(&hub, "session/pr", "rw").await;
    alice
        .handle(&frame(
            "session/pr",
            Message::Awareness(presence(7, 1, r#"{"name":"alice"}"#)),
        ))
        .await
        .unwrap();
    assert!(matches!(recv(&mut brx).await, Message::Awareness(_)));
    // A read-only socket tries to overwrite and clear Alice's presence: neither takes,
    // and neither is relayed.
    let (mut mallory, _mrx, _) = open(&hub, "session/pr", "ro").await;
    for forged in [
        presence(7, 50, r#"{"name":"mallory"}"#),
        presence(7, 51, "null"),
    ] {
        mallory
            .handle(&frame("session/pr", Message::Awareness(forged)))
            .await
            .unwrap();
    }
    bob.handle(&frame("session/pr", Message::QueryAwareness))
        .await
        .unwrap();
    match recv(&mut brx).await {
        Message::Awareness(u) => assert_eq!(
            awareness::decode_update(&u).unwrap(),
            vec![awareness::AwarenessEntry {
                client_id: 7,
                clock: 1,
                state: r#"{"name":"alice"}"#.into()
            }]
        ),
        other => panic!("expected the states, got {other:?}"),
    }
    // Too many client ids from one connection, or an oversized state, closes it.
    let cap = hub.config().presence.max_clients_per_connection as u64;
    let many: Vec<awareness::AwarenessEntry> = (100..100 + cap + 1)
        .map(|id| awareness::AwarenessEntry {
            client_id: id,
            clock: 1,
            state: "{}".into(),
        })
        .collect();
    let err = mallory
        .handle(&frame(
            "session/pr",
            Message::Awareness(awareness::encode_update(&many)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, close_code::RESET_CONNECTION);
    drop(mallory);
    let big = "x".repeat(hub.config().presence.max_state_bytes + 1);
    let (mut m2, _, _) = open(&hub, "session/pr", "ro").await;
    let err = m2
        .handle(&frame(
            "session/pr",
            Message::Awareness(presence(200, 1, &format!("\"{big}\""))),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code, close_code::RESET_CONNECTION);
    drop(m2);
    // What the closed connections announced is gone; Alice's state stays.
    let doc = lock(&hub.inner.docs).get("session/pr").cloned().unwrap();
    assert_eq!(lock(&doc.inner).awareness.len(), 1);
}

#[tokio::test]
async fn presence_across_documents_is_bounded_per_connection() {
    let store = Arc::new(MemoryStore::new());
    let mut config = HubConfig::default();
    config.presence.max_bytes_per_connection = 4 * (awareness::ENTRY_OVERHEAD + 100);
    let hub = Hub::new(store, Arc::new(Tokens), config);
    let (mut c, _rx, _) = hub.connect();
    let state = format!("\"{}\"", "y".repeat(98));
    let mut closed = None;
    for i in 0..10u64 {
        let doc = format!("session/many{i}");
        c.handle(&token(&doc, "ro")).await.unwrap();
        if let Err(e) = c
            .handle(&frame(&doc, Message::Awareness(presence(i + 1, 1, &state))))
            .await
        {
            closed = Some((i, e));
            break;
        }
    }
    let (i, e) = closed.expect("the connection was never stopped");
    assert_eq!(i, 4, "{e:?}");
    assert_eq!(e.code, close_code::RESET_CONNECTION);
    // Leaving a document gives its share back.
    let mut c2 = hub.connect().0;
    for i in 0..8u64 {
        let doc = format!("session/cycle{i}");
        c2.handle(&token(&doc, "ro")).await.unwrap();
        c2.handle(&frame(&doc, Message::Awareness(presence(i + 1, 1, &state))))
            .await
            .unwrap();
        c2.handle(&frame(
            &doc,
            Message::Close {
                reason: String::new(),
            },
        ))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn new_documents_per_connection_are_capped() {
    let store = Arc::new(MemoryStore::new());
    let config = HubConfig {
        max_new_documents_per_connection: 3,
        ..HubConfig::default()
    };
    let hub = Hub::new(store, Arc::new(Tokens), config);
    let (mut c, _rx, _) = hub.connect();
    let mut result = Ok(());
    for i in 0..4 {
        let doc = format!("session/new{i}");
        c.handle(&token(&doc, "rw")).await.unwrap();
        let (_, u) = edit("x");
        result = c
            .handle(&frame(&doc, Message::Sync(SyncMessage::Update(u))))
            .await;
        if i < 3 {
            result.clone().unwrap();
        }
    }
    assert_eq!(result.unwrap_err().code, close_code::RESET_CONNECTION);
    // Writing to documents that exist is not creating.
    let (mut c, mut rx, _) = open(&hub, "session/new0", "rw").await;
    for text in ["a", "b", "c", "d"] {
        let (_, u) = edit(text);
        c.handle(&frame(
            "session/new0",
            Message::Sync(SyncMessage::Update(u)),
        ))
        .await
        .unwrap();
        assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
    }
}

#[tokio::test]
async fn idle_documents_unload_after_their_writes() {
    let (hub, _) = hub();
    let (mut c, mut rx, _) = open(&hub, "session/u", "rw").await;
    let (_, u) = edit("x");
    c.handle(&frame("session/u", Message::Sync(SyncMessage::Update(u))))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
    assert_eq!(hub.loaded_documents(), 1);
    drop(c);
    // The writer may still be finishing the batch; whichever of it and the leaving
    // connection comes last unloads the document.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hub.loaded_documents() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "document never unloaded"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    hub.shutdown().await;
}
