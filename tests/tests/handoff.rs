//! Continue in cloud and Continue here, end to end: the real `jarvis-cloud` and `jarvis`
//! binaries on loopback, a fake Anthropic server speaking real SSE, a device folder and the
//! cloud's materialised copy of it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jarvis_testkit::cli::{jarvis_with_fake as jarvis, run_ok, spawn};
use jarvis_testkit::fake::{FakeResponse, FakeServer, bash, reply, text};
use jarvis_testkit::http::blocks_of;
use jarvis_testkit::{CloudAgent, eventually, hub_with_user};
use serde_json::{Value, json};

/// A reply that streams `text` slowly: `pieces` deltas, `gap` apart.
fn slow_text(text: &str, gap: Duration) -> FakeResponse {
    let events = reply(text, &[], (10, 5, 0, 0));
    // One chunk per event, then the text delta split further by the chunk sizes: many small
    // writes with a pause between each.
    FakeResponse::sse(&events, &[24]).with_delay(gap)
}

/// Every tool_use has exactly one tool_result.
fn assert_each_tool_ran_once(session: &Value) {
    let uses = blocks_of(session, "tool_use");
    let results = blocks_of(session, "tool_result");
    for u in &uses {
        let id = u["id"].as_str().unwrap();
        let n = results.iter().filter(|r| r["tool_use_id"] == id).count();
        assert_eq!(n, 1, "tool call {id} has {n} results");
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continue_in_cloud_and_back_with_full_history() {
    let final_text =
        "The cloud finished the task: log updated, notes written, all checks green. ".repeat(3);
    let fake = FakeServer::start(vec![
        bash("t1", "echo one >> log.txt"),
        FakeResponse::sse(
            &reply(
                "",
                &[(
                    "t2",
                    "write",
                    json!({"path": "notes.md", "content": "from the device\n"}),
                )],
                (10, 5, 0, 0),
            ),
            &[4096],
        ),
        // Long enough that the handoff always cuts it.
        slow_text(
            &"still thinking about the next step ".repeat(40),
            Duration::from_millis(100),
        ),
        bash("t3", "echo three >> log.txt"),
        slow_text(&final_text, Duration::from_millis(15)),
        bash("t4", "echo four >> log.txt"),
        text("Back on the device, done."),
    ])
    .await
    .unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    // Unconfined by choice: this test is not about containment (see sandbox.rs).
    let agent = CloudAgent::unconfined_with_fake(&data, &fake).unwrap();
    let hub = agent.api();
    let dev = tmp.path().join("proj");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("README.md"), "# project\n").unwrap();
    let (home, watcher_home) = (tmp.path().join("home"), tmp.path().join("home-attach"));
    for h in [&home, &watcher_home] {
        run_ok({
            let mut c = jarvis(h, &fake.url());
            c.args(["login", hub.base(), "--token", &alice]);
            c
        });
    }

    // The device starts the task.
    let mut device_run = spawn({
        let mut c = jarvis(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "s1",
            "--workspace",
            "proj",
            "--permission-mode",
        ])
        .args(["allow-all", "--output-format", "stream-json", "--dir"])
        .arg(&dev)
        .arg("Update the log and write notes.");
        c
    });
    // Two tool calls in, with the third reply streaming: hand it to the cloud.
    let mut streaming = false;
    for _ in 0..1000 {
        let (s, v) = hub.call("GET", "/api/sessions/s1", &alice, None).await;
        if s == 200 && blocks_of(&v, "tool_result").len() == 2 {
            let texts = blocks_of(&v, "text");
            if texts
                .iter()
                .any(|t| t["text"].as_str().unwrap_or("").contains("still thinking"))
            {
                streaming = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        streaming,
        "the device never got two tool calls in: {}",
        device_run.output()
    );
    let mut follower = spawn({
        let mut c = jarvis(&watcher_home, &fake.url());
        c.args([
            "attach",
            "s1",
            "--output-format",
            "stream-json",
            "--until-done",
        ]);
        c
    });
    let out = run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "s1", "--to", "cloud"]);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    let status = device_run.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "device run: {}", device_run.output());
    assert!(
        device_run.output().contains("\"handed_to\":\"cloud\""),
        "{}",
        device_run.output()
    );

    // The cloud finishes; the follower sees it stream.
    let status = follower.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{}", follower.output());
    let followed = follower.output();
    let cloud_deltas: Vec<String> = followed
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "text" && v["author"] == "cloud")
        .map(|v| v["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        cloud_deltas.len() > 3,
        "the cloud's reply should arrive in many live pieces, got {}: {followed}",
        cloud_deltas.len()
    );
    assert!(cloud_deltas.concat().contains(&final_text), "{followed}");
    let cloud_dir = data.join("workspaces/proj");
    assert_eq!(read(&cloud_dir.join("log.txt")), "one\nthree\n");
    assert_eq!(read(&cloud_dir.join("notes.md")), "from the device\n");
    assert_eq!(read(&cloud_dir.join("README.md")), "# project\n");

    // Continue here: the folder catches up, then one more turn locally.
    let out = run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "s1", "--to", "here", "--dir"]).arg(&dev);
        c
    });
    let _ = out;
    assert_eq!(read(&dev.join("log.txt")), "one\nthree\n");
    run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "s1",
            "--permission-mode",
            "allow-all",
            "--dir",
        ])
        .arg(&dev)
        .arg("One more: add four.");
        c
    });
    assert_eq!(read(&dev.join("log.txt")), "one\nthree\nfour\n");
    eventually(
        "the cloud's copy to match the device",
        Duration::from_secs(10),
        || read(&cloud_dir.join("log.txt")) == "one\nthree\nfour\n",
    )
    .await
    .unwrap();
    for f in ["log.txt", "notes.md", "README.md"] {
        assert_eq!(read(&dev.join(f)), read(&cloud_dir.join(f)), "{f}");
    }

    // History: every turn, in order, each tool call run exactly once, by the right runner.
    let s = hub.session(&alice, "s1").await;
    assert_each_tool_ran_once(&s);
    let msgs = s["messages"].as_array().unwrap();
    let users: Vec<&str> = msgs
        .iter()
        .filter(|m| m["role"] == "user" && !m["id"].as_str().unwrap().ends_with("-results"))
        .map(|m| m["blocks"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        users,
        ["Update the log and write notes.", "One more: add four."]
    );
    let author_of = |tool: &str| {
        msgs.iter()
            .find(|m| {
                m["blocks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["type"] == "tool_use" && b["id"] == tool)
            })
            .map(|m| m["author"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(author_of("t3"), "cloud");
    assert_ne!(author_of("t1"), "cloud");
    assert_eq!(author_of("t1"), author_of("t4"));
    assert_eq!(s["cut_messages"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["status"], "done");
    assert_eq!(
        fake.requests().len(),
        7,
        "one model request per step, none repeated"
    );
    // The cloud's request after the cut does not contain the cut reply.
    let cloud_req = &fake.requests()[3].body;
    assert!(
        !cloud_req.to_string().contains("still thinking"),
        "{cloud_req}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_edits_made_before_the_handoff_reach_the_cloud() {
    let fake = FakeServer::start(vec![
        slow_text(
            &"reading the notes carefully ".repeat(60),
            Duration::from_millis(100),
        ),
        bash("c1", "cat notes.md"),
        text("The notes say what you wrote offline."),
    ])
    .await
    .unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    // Unconfined by choice: this test is not about containment (see sandbox.rs).
    let agent = CloudAgent::options(&data)
        .fake_model(&fake)
        .unconfined()
        .start()
        .unwrap();
    let again = agent.again();
    let hub = agent.api();
    let dev = tmp.path().join("notes");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("notes.md"), "old notes\n").unwrap();
    let home = tmp.path().join("home");
    run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["login", hub.base(), "--token", &alice]);
        c
    });
    let mut device_run = spawn({
        let mut c = jarvis(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "n1",
            "--workspace",
            "notes",
            "--permission-mode",
        ])
        .args(["allow-all", "--output-format", "stream-json", "--dir"])
        .arg(&dev)
        .arg("What do my notes say?");
        c
    });
    let mut streaming = false;
    for _ in 0..1000 {
        let (s, v) = hub.call("GET", "/api/sessions/n1", &alice, None).await;
        if s == 200
            && blocks_of(&v, "text")
                .iter()
                .any(|t| t["text"].as_str().unwrap_or("").contains("reading"))
        {
            streaming = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(streaming, "{}", device_run.output());

    // The hub goes away; the device keeps working and the person edits offline.
    agent.terminate(Duration::from_secs(10)).unwrap();
    std::fs::write(dev.join("notes.md"), "edited while offline\n").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = again.start().unwrap();
    let hub = agent.api();

    let out = run_ok({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "n1", "--to", "cloud"]);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    assert!(device_run.wait(Duration::from_secs(30)).await.success());
    let mut done = Value::Null;
    for _ in 0..1500 {
        let v = hub.session(&alice, "n1").await;
        if v["status"] == "done" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(done["status"], "done", "the cloud did not finish");
    let results = blocks_of(&done, "tool_result");
    assert_eq!(results.len(), 1);
    assert!(
        results[0]["content"]
            .as_str()
            .unwrap()
            .contains("edited while offline"),
        "the cloud ran on stale files: {}",
        results[0]
    );
    assert_eq!(
        read(&data.join("workspaces/notes/notes.md")),
        "edited while offline\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cloud_killed_mid_run_resumes_after_restart() {
    let fake = FakeServer::start(vec![
        bash("k1", "echo a >> k.txt"),
        slow_text(&"working on it ".repeat(80), Duration::from_millis(100)),
        bash("k2", "echo b >> k.txt"),
        text("Finished after the restart."),
    ])
    .await
    .unwrap();
    let (_tmp, data, alice) = hub_with_user("alice");
    // Unconfined by choice: this test is not about containment (see sandbox.rs).
    let agent = CloudAgent::options(&data)
        .fake_model(&fake)
        .unconfined()
        .env("JARVIS_LEASE_TTL_MS", "2000")
        .start()
        .unwrap();
    let again = agent.again();
    let hub = agent.api();
    let (s, v) = hub
        .call("POST", "/api/workspaces", &alice, Some(json!({"id": "kw"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = hub
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(
                json!({"id": "k", "workspace": "kw", "message": "Append a and b.",
                        "permission_mode": "allow-all", "run": "cloud"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["handoff"]["state"], "granted", "{v}");
    let mut mid = false;
    for _ in 0..1000 {
        let v = hub.session(&alice, "k").await;
        if blocks_of(&v, "text")
            .iter()
            .any(|t| t["text"].as_str().unwrap_or("").contains("working"))
        {
            mid = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mid, "the cloud never got mid-run");
    agent.kill9().unwrap();
    let agent = again.start().unwrap();
    let hub = agent.api();
    let mut done = Value::Null;
    for _ in 0..1500 {
        let v = hub.session(&alice, "k").await;
        if v["status"] == "done" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        done["status"], "done",
        "the session did not resume and complete"
    );
    assert_each_tool_ran_once(&done);
    assert_eq!(read(&data.join("workspaces/kw/k.txt")), "a\nb\n");
    assert_eq!(fake.requests().len(), 4);
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_devices_race_for_one_session() {
    let fake = FakeServer::start(vec![]).await.unwrap();
    let (_tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::with_fake(&data, &fake).unwrap();
    let hub = Arc::new(agent.api());
    // Two paired devices of the same person.
    let mut devices = Vec::new();
    for name in ["laptop", "desktop"] {
        let (s, p) = hub
            .call("POST", "/api/pair/start", "", Some(json!({"name": name})))
            .await;
        assert_eq!(s, 200, "{p}");
        let (s, v) = hub
            .call(
                "POST",
                "/api/pair/poll",
                "",
                Some(json!({"device_code": p["device_code"]})),
            )
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (428, Some("authorization_pending"))
        );
        let (s, v) = hub
            .call(
                "POST",
                "/api/pair/approve",
                &alice,
                Some(json!({"code": p["code"]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = hub
            .call(
                "POST",
                "/api/pair/poll",
                "",
                Some(json!({"device_code": p["device_code"]})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        devices.push(v["token"].as_str().unwrap().to_owned());
    }
    hub.call("POST", "/api/workspaces", &alice, Some(json!({"id": "rw"})))
        .await;
    for id in ["r1", "r2"] {
        let (s, v) = hub
            .call(
                "POST",
                "/api/sessions",
                &alice,
                Some(json!({"id": id, "workspace": "rw"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // A free session: both take it at once.
    let race = |path: &'static str, body: Value| {
        let calls = devices.iter().map(|t| {
            let (hub, t, body) = (hub.clone(), t.clone(), body.clone());
            tokio::spawn(async move { hub.call("POST", path, &t, Some(body)).await })
        });
        futures_util::future::join_all(calls)
    };
    let results: Vec<(u16, Value)> = race("/api/sessions/r1/lease", json!({"op": "acquire"}))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let wins = results.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(wins, 1, "{results:?}");
    let loser = results.iter().find(|(s, _)| *s != 200).unwrap();
    assert_eq!(loser.0, 409);
    assert_eq!(loser.1["code"], "conflict");
    assert!(
        loser.1["message"].as_str().unwrap().contains("running on"),
        "{}",
        loser.1
    );

    // A session in the cloud: both press Continue here at once.
    let (s, v) = hub
        .call(
            "POST",
            "/api/sessions/r2/handoff",
            &alice,
            Some(json!({"to": "cloud"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let results: Vec<(u16, Value)> = race(
        "/api/sessions/r2/handoff",
        json!({"to": "here", "wait_ms": 10_000}),
    )
    .await
    .into_iter()
    .map(|r| r.unwrap())
    .collect();
    let wins: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(wins.len(), 1, "{results:?}");
    assert_eq!(wins[0].1["state"], "granted");
    let loser = results.iter().find(|(s, _)| *s != 200).unwrap();
    assert_eq!(loser.0, 409, "{results:?}");
    assert!(
        loser.1["message"]
            .as_str()
            .unwrap()
            .contains("already being handed")
            || loser.1["message"].as_str().unwrap().contains("superseded")
            || loser.1["message"].as_str().unwrap().contains("running on"),
        "{}",
        loser.1
    );
    let (_, lease) = hub
        .call("GET", "/api/sessions/r2/lease", &alice, None)
        .await;
    assert_ne!(lease["device"], "cloud");
}

/// A session whose cloud turn failed (here: the provider refused the key) is not run again by
/// a restarted server: only a new message from the person starts another turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_never_reruns_a_failed_session() {
    let fake = FakeServer::start(vec![
        FakeResponse::raw(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        ),
        text("Fine now."),
        text("Second session answered."),
    ])
    .await
    .unwrap();
    let (_tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::options(&data)
        .fake_model(&fake)
        .start()
        .unwrap();
    let again = agent.again();
    let hub = agent.api();
    let (s, v) = hub
        .call("POST", "/api/workspaces", &alice, Some(json!({"id": "fw"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = hub
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "f1", "workspace": "fw", "message": "Hello?", "run": "cloud"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut failed = false;
    for _ in 0..1500 {
        if hub.session(&alice, "f1").await["status"] == "failed" {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "the session did not fail");
    assert_eq!(fake.requests().len(), 1);
    agent.terminate(Duration::from_secs(20)).unwrap();

    let agent = again.start().unwrap();
    let hub = agent.api();
    // A second cloud session runs to the end after the restart: by then the restarted runner
    // has resumed every session it holds, the failed one included.
    let (s, v) = hub
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "f2", "workspace": "fw", "message": "Another?", "run": "cloud"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut done = false;
    for _ in 0..1500 {
        if hub.session(&alice, "f2").await["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "the second session did not finish");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "the failed session ran again unasked");
    assert!(requests[1].body.to_string().contains("Another?"));
    assert_eq!(hub.session(&alice, "f1").await["status"], "failed");
    // Asked again, it runs.
    let (s, v) = hub
        .call(
            "POST",
            "/api/sessions/f1/messages",
            &alice,
            Some(json!({"text": "Try again please."})),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    let mut answered = false;
    for _ in 0..1500 {
        if hub.session(&alice, "f1").await["status"] == "done" {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answered, "the failed session did not run when asked");
    drop(agent);
}
