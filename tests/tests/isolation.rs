//! Isolation between users on one real `jarvis-cloud`: user B's token tries every endpoint and
//! the sync socket against user A's sessions and workspaces and gets nothing; a revoked token
//! stops working at once, open sockets included.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::{ConnectionStatus, SyncClient};
use jarvis_sync::doc::{Block, Message, Role, SessionDoc};
use jarvis_testkit::http::Api;
use jarvis_testkit::sync_client::sync_client_with_backoff;
use jarvis_testkit::{CloudAgent, add_user, create_user_token, hub_with_user};
use serde_json::{Value, json};
use yrs::{GetString, ReadTxn, Text, Transact};

const T: Duration = Duration::from_secs(20);

/// The kit's API client, plus the refusal check every request here ends in.
struct Http(Api);

impl std::ops::Deref for Http {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.0
    }
}

impl Http {
    /// A refusal: 403 or 404 with `{code, message}`, never the data.
    async fn refused(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> u16 {
        let (s, v) = self.call(method, path, token, body).await;
        assert!(
            s == 403 || s == 404,
            "{method} {path} should be refused, got {s}: {v}"
        );
        assert!(
            v["code"].is_string() && v["message"].is_string(),
            "{method} {path}: error without code/message: {v}"
        );
        let text = v.to_string();
        assert!(
            !text.contains("secret"),
            "{method} {path} leaked data: {text}"
        );
        s
    }
}

fn client(agent: &CloudAgent, token: &str, dir: &std::path::Path, name: &str) -> SyncClient {
    // Slow retries, so the state after a closed socket can be observed before the next try.
    let slow = Duration::from_secs(3);
    sync_client_with_backoff(agent, token, &dir.join(format!("{name}.db")), slow, slow)
}

/// The id of the token labelled `label` in a `GET /api/tokens` answer.
fn token_id(list: &Value, label: &str) -> i64 {
    list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == label)
        .unwrap_or_else(|| panic!("no token labelled {label} in {list}"))["id"]
        .as_i64()
        .unwrap()
}

fn ids(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {list}"))
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_reach_each_others_sessions_and_revoked_tokens_stop_at_once() {
    let (tmp, data, alice) = hub_with_user("alice");
    let alice2 = create_user_token(&data, Some("alice"), &["*"], false).unwrap();
    let bob = add_user(&data, "bob").unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let api = Http(agent.api());

    // Alice's workspace and session, with content in the session, a file and a blob.
    for (token, ws, session) in [(&alice, "wa", "sa"), (&bob, "wb", "sb")] {
        let (s, v) = api
            .call("POST", "/api/workspaces", token, Some(json!({"id": ws})))
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = api
            .call(
                "POST",
                "/api/sessions",
                token,
                Some(json!({"id": session, "workspace": ws, "title": format!("{ws} plans")})),
            )
            .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    let a = client(&agent, &alice, tmp.path(), "alice");
    let sdoc = a.open("session/sa").await.unwrap();
    a.wait_synced("session/sa", T).await.unwrap();
    SessionDoc::new(sdoc.clone())
        .append_message(&Message {
            id: "m1".into(),
            role: Role::User,
            author: "alice".into(),
            created_ms: 0,
            blocks: vec![Block::Text {
                text: "the secret launch date".into(),
            }],
        })
        .unwrap();
    let fdoc = a.open("ws/wa/file/f1").await.unwrap();
    {
        let t = fdoc.get_or_insert_text("text");
        let mut txn = fdoc.transact_mut();
        t.insert(&mut txn, 0, "secret source\n");
    }
    a.flush_all(T).await.unwrap();
    let blob = b"secret binary".to_vec();
    let hash = blake3::hash(&blob).to_hex().to_string();
    let r = api
        .http()
        .put(format!("{}/blobs/{hash}", api.base()))
        .bearer_auth(&alice)
        .header("x-jarvis-workspace", "wa")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // Bob lists: only his own.
    let (s, v) = api.call("GET", "/api/sessions", &bob, None).await;
    assert_eq!((s, ids(&v, "sessions")), (200, vec!["sb".to_owned()]));
    let (s, v) = api
        .call("GET", "/api/sessions?workspace=wa", &bob, None)
        .await;
    assert!(
        s == 404 || (s == 200 && ids(&v, "sessions").is_empty()),
        "{s} {v}"
    );
    let (s, v) = api.call("GET", "/api/workspaces", &bob, None).await;
    assert_eq!((s, ids(&v, "workspaces")), (200, vec!["wb".to_owned()]));
    let (s, v) = api.call("GET", "/api/usage", &bob, None).await;
    assert_eq!(s, 200);
    let used: Vec<&str> = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["session"].as_str().unwrap())
        .collect();
    assert_eq!(used, ["sb"], "{v}");
    let (s, v) = api.call("GET", "/api/tokens", &bob, None).await;
    assert_eq!(s, 200);
    let bob_id = api.call("GET", "/api/me", &bob, None).await.1["user"].clone();
    assert!(
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["user"] == bob_id),
        "{v}"
    );
    let (s, v) = api.call("GET", "/api/devices", &bob, None).await;
    assert_eq!(s, 200);
    assert!(v["devices"].as_array().unwrap().is_empty(), "{v}");

    // Bob reads, writes, runs and takes: every one refused, and reads do not disclose existence.
    for path in [
        "/api/sessions/sa",
        "/api/sessions/sa/lease",
        "/api/workspaces/wa",
    ] {
        assert_eq!(api.refused("GET", path, &bob, None).await, 404, "{path}");
    }
    let attempts: Vec<(&str, &str, Option<Value>)> = vec![
        (
            "POST",
            "/api/sessions/sa/messages",
            Some(json!({"text": "hi"})),
        ),
        ("POST", "/api/sessions/sa/interrupt", None),
        (
            "POST",
            "/api/sessions/sa/approvals/ap1",
            Some(json!({"decision": "allow"})),
        ),
        (
            "POST",
            "/api/sessions/sa/handoff",
            Some(json!({"to": "cloud"})),
        ),
        (
            "POST",
            "/api/sessions/sa/lease",
            Some(json!({"op": "acquire"})),
        ),
        (
            "POST",
            "/api/sessions/sa/lease",
            Some(json!({"op": "release", "epoch": 1})),
        ),
        (
            "POST",
            "/api/sessions",
            Some(json!({"id": "intruder", "workspace": "wa"})),
        ),
        (
            "PUT",
            "/api/workspaces/wa/members/bob",
            Some(json!({"role": "owner"})),
        ),
        ("DELETE", "/api/workspaces/wa/members/alice", None),
        ("GET", "/api/audit", None),
        ("GET", "/api/users", None),
        ("POST", "/api/users", Some(json!({"name": "mallory"}))),
    ];
    for (method, path, body) in attempts {
        api.refused(method, path, &bob, body).await;
    }
    // Claiming her ids for himself does not take them over.
    let (s, v) = api
        .call("POST", "/api/workspaces", &bob, Some(json!({"id": "wa"})))
        .await;
    assert!(s >= 400, "bob took workspace wa: {v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &bob,
            Some(json!({"id": "sa", "workspace": "wb"})),
        )
        .await;
    assert!(s >= 400, "bob re-registered session sa: {v}");
    // Alice's tokens cannot be revoked by him.
    let (_, mine) = api.call("GET", "/api/tokens", &alice, None).await;
    for t in mine["tokens"].as_array().unwrap() {
        let id = t["id"].as_i64().unwrap();
        api.refused("DELETE", &format!("/api/tokens/{id}"), &bob, None)
            .await;
    }

    // Blobs: not by naming her workspace, and not by naming his own.
    for ws in ["wa", "wb"] {
        let r = api
            .http()
            .get(format!("{}/blobs/{hash}", api.base()))
            .bearer_auth(&bob)
            .header("x-jarvis-workspace", ws)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(status == 403 || status == 404, "{ws}: {status} {body}");
        assert!(!body.contains("secret"), "{body}");
    }
    let r = api
        .http()
        .put(format!("{}/blobs/{hash}", api.base()))
        .bearer_auth(&bob)
        .header("x-jarvis-workspace", "wa")
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 404), "{}", r.status());

    // The sync socket: each of her documents is denied and nothing of it arrives.
    let b = client(&agent, &bob, tmp.path(), "bob");
    for name in ["session/sa", "ws/wa/index", "ws/wa/file/f1"] {
        let doc = b.open(name).await.unwrap();
        let err = b.wait_synced(name, T).await.unwrap_err();
        assert!(err.to_string().contains("denied"), "{name}: {err}");
        let status = b.document_status(name).unwrap();
        assert!(
            status.denied.is_some() && !status.synced,
            "{name}: {status:?}"
        );
        let txn = doc.transact();
        let anything = !txn.state_vector().is_empty();
        assert!(!anything, "{name}: bob received state");
    }
    // Bob's own session syncs on the same socket: the refusals were per document.
    b.open("session/sb").await.unwrap();
    b.wait_synced("session/sb", T).await.unwrap();

    // Alice's data is untouched by all of that.
    let (s, v) = api.call("GET", "/api/sessions/sa", &alice, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"], "wa");
    assert!(v.to_string().contains("the secret launch date"), "{v}");
    let (_, ws) = api.call("GET", "/api/workspaces/wa", &alice, None).await;
    assert_eq!(
        ws["workspace"]["id"], "wa",
        "alice lost her workspace: {ws}"
    );
    assert_eq!(
        fdoc.get_or_insert_text("text").get_string(&fdoc.transact()),
        "secret source\n"
    );

    // Revocation: alice's second token has a socket open and works on the API.
    let a2 = client(&agent, &alice2, tmp.path(), "alice2");
    let a2doc = a2.open("session/sa").await.unwrap();
    a2.wait_synced("session/sa", T).await.unwrap();
    assert_eq!(SessionDoc::new(a2doc.clone()).messages().len(), 1);
    assert_eq!(api.call("GET", "/api/me", &alice2, None).await.0, 200);
    let mut conn = a2.connection();
    assert_eq!(*conn.borrow_and_update(), ConnectionStatus::Connected);
    let second = token_id(&mine, "second");
    let (s, v) = api
        .call("DELETE", &format!("/api/tokens/{second}"), &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["sockets_closed"].as_u64().unwrap() >= 1, "{v}");
    // The open socket was closed by the hub, with the reason, before the next retry.
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let ConnectionStatus::Offline { reason } = &*conn.borrow_and_update() {
                assert!(reason.contains("withdrawn"), "{reason}");
                break;
            }
            conn.changed().await.unwrap();
        }
    })
    .await
    .expect("the revoked token's socket stayed open");
    // Everything else refuses it now.
    let (s, v) = api.call("GET", "/api/me", &alice2, None).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (s, _) = api.call("GET", "/api/sessions/sa", &alice2, None).await;
    assert_eq!(s, 401);
    let r = api
        .http()
        .get(format!("{}/blobs/{hash}", api.base()))
        .bearer_auth(&alice2)
        .header("x-jarvis-workspace", "wa")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    // After its reconnect, the document is denied and later edits do not reach it.
    SessionDoc::new(sdoc.clone())
        .append_message(&Message {
            id: "m2".into(),
            role: Role::User,
            author: "alice".into(),
            created_ms: 0,
            blocks: vec![Block::Text {
                text: "after the revocation".into(),
            }],
        })
        .unwrap();
    a.flush_all(T).await.unwrap();
    let err = a2.wait_synced("session/sa", T).await.unwrap_err();
    assert!(err.to_string().contains("denied"), "{err}");
    assert_eq!(SessionDoc::new(a2doc).messages().len(), 1);
    // The first token is unaffected.
    assert_eq!(api.call("GET", "/api/me", &alice, None).await.0, 200);
}

/// A device that opens a session document before the session is registered is refused; once
/// the session exists, opening it again authenticates afresh instead of repeating the old
/// refusal (found by the handoff benchmark, whose observer raced the registration).
#[tokio::test]
async fn a_document_refused_before_its_session_exists_opens_once_it_does() {
    let (tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::start(&data, 0).unwrap();
    let api = Http(agent.api());
    let c = client(&agent, &alice, tmp.path(), "early");
    c.open("session/early").await.unwrap();
    let refused = c.wait_synced("session/early", T).await.unwrap_err();
    assert!(refused.to_string().contains("denied"), "{refused}");

    let (s, v) = api
        .call("POST", "/api/workspaces", &alice, Some(json!({"id": "we"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "early", "workspace": "we", "title": "late registration"})),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");

    let doc = SessionDoc::new(c.open("session/early").await.unwrap());
    c.wait_synced("session/early", T).await.unwrap();
    assert_eq!(doc.meta().title, "late registration");
}

/// The session-list stream (`GET /api/sessions/changes`, what makes the web view's list live)
/// tells a user about changes to her sessions — created, or edited from any device — and never
/// names another user's; a revoked token's stream ends at the next change.
#[tokio::test]
async fn the_session_list_stream_names_only_the_callers_sessions_and_ends_on_revocation() {
    use futures_util::StreamExt;
    let (tmp, data, alice) = hub_with_user("alice");
    let alice2 = create_user_token(&data, Some("alice"), &["*"], false).unwrap();
    let bob = add_user(&data, "bob").unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let api = Http(agent.api());
    let follow = |token: &str| {
        let r = api
            .http()
            .get(agent.http_url("/api/sessions/changes"))
            .bearer_auth(token);
        async move {
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            let text = Arc::new(std::sync::Mutex::new(String::new()));
            let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (t, e) = (text.clone(), ended.clone());
            tokio::spawn(async move {
                let mut body = resp.bytes_stream();
                while let Some(Ok(chunk)) = body.next().await {
                    t.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk));
                }
                e.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            (text, ended)
        }
    };
    let (seen, _) = follow(&alice).await;
    let (seen2, ended2) = follow(&alice2).await;
    jarvis_testkit::eventually("both streams open", T, || {
        seen.lock().unwrap().contains("following") && seen2.lock().unwrap().contains("following")
    })
    .await
    .unwrap();
    for (token, ws, session) in [(&bob, "wb", "bobs-plans"), (&alice, "wa", "alices-plans")] {
        let (s, v) = api
            .call("POST", "/api/workspaces", token, Some(json!({"id": ws})))
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = api
            .call(
                "POST",
                "/api/sessions",
                token,
                Some(json!({"id": session, "workspace": ws, "title": "plans"})),
            )
            .await;
        assert!(s == 200 || s == 201, "{v}");
    }
    jarvis_testkit::eventually("alice told of her new session", T, || {
        seen.lock().unwrap().contains("\"alices-plans\"")
    })
    .await
    .unwrap();
    // An edit from a device (here a sync client) is news too.
    let before = seen.lock().unwrap().matches("event: changed").count();
    let c = client(&agent, &alice, tmp.path(), "alice");
    let doc = SessionDoc::new(c.open("session/alices-plans").await.unwrap());
    c.wait_synced("session/alices-plans", T).await.unwrap();
    doc.append_message(&Message {
        id: "m-device".into(),
        role: Role::User,
        author: "alice".into(),
        created_ms: 0,
        blocks: vec![Block::Text {
            text: "one more thing".into(),
        }],
    })
    .unwrap();
    jarvis_testkit::eventually("alice told of the device's edit", T, || {
        seen.lock().unwrap().matches("event: changed").count() > before
    })
    .await
    .unwrap();
    assert!(
        !seen.lock().unwrap().contains("bobs-plans"),
        "alice's stream named bob's session: {}",
        seen.lock().unwrap()
    );

    // Revoke alice's second token: its stream ends at the next change.
    let (_, mine) = api.call("GET", "/api/tokens", &alice, None).await;
    let second = token_id(&mine, "second");
    let (s, v) = api
        .call("DELETE", &format!("/api/tokens/{second}"), &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "after", "workspace": "wa", "title": "after"})),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
    jarvis_testkit::eventually("the revoked token's stream ended", T, || {
        ended2.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await
    .unwrap();
    assert!(!seen2.lock().unwrap().contains("\"after\""));
    // An open stream does not hold up a graceful shutdown.
    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}");
}
