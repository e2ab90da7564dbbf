//! "Always allow" and memory kept per user on the hub: a device run asks about `npm test`, its
//! user answers "always" with the prefix option, the session continues in the cloud and the
//! cloud's next `npm test …` runs without asking; another member's session in the same
//! workspace still asks. The owner's hub memory reaches their cloud requests and nobody
//! else's. Real `jarvis` and `jarvis-cloud`, the fake model provider.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use jarvis_testkit::cli::{jarvis_with_fake as jarvis, spawn};
use jarvis_testkit::fake::{FakeResponse, FakeServer, bash, reply, text};
use jarvis_testkit::http::{Api, blocks_of, call};
use jarvis_testkit::{CloudAgent, add_user, hub_with_user};
use serde_json::{Value, json};

fn run(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits (with a deadline) until the session's status is one of `want`.
async fn until_status(base: &str, token: &str, id: &str, want: &[&str]) -> Value {
    Api::new(base)
        .until_status(token, id, want, Duration::from_secs(60))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_allow_prefix_survives_handoff_for_its_user_only() {
    let fake = FakeServer::start(vec![
        // The device run asks about `npm test`.
        bash("a1", "npm test"),
        // Answered: it ran on the device; this reply is cut by Continue in cloud.
        FakeResponse::sse(
            &reply(&"checking the output ".repeat(60), &[], (10, 5, 0, 0)),
            &[24],
        )
        .with_delay(Duration::from_millis(100)),
        // In the cloud, after the handoff: the answered call ran; a new one with arguments.
        bash("a2", "npm test -- --ci"),
        text("Tests ran in the cloud."),
        // Bob's cloud session in the same workspace.
        bash("b1", "npm test"),
        text("Bob's tests ran."),
    ])
    .await
    .unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    let bob = add_user(&data, "bob").unwrap();
    // Unconfined by choice: this test is about approvals, not containment (see sandbox.rs).
    let agent = CloudAgent::unconfined_with_fake(&data, &fake).unwrap();
    let base = agent.base();

    // Each user's memory for cloud runs, on the hub.
    for (token, text) in [(&alice, "ALICE-HUB-MEMORY"), (&bob, "BOB-HUB-MEMORY")] {
        let (s, v) = call(
            &base,
            "PUT",
            "/api/me/memory",
            token,
            Some(json!({"text": text})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = call(
        &base,
        "PUT",
        "/api/me/memory",
        &alice,
        Some(json!({"text": "x".repeat(40 * 1024)})),
    )
    .await;
    assert_eq!(s, 413, "an oversized memory is refused: {v}");

    let dev = tmp.path().join("proj");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("README.md"), "a project\n").unwrap();
    let home = tmp.path().join("home");
    let (ok, out) = run({
        let mut c = jarvis(&home, &fake.url());
        c.args(["login", &base, "--token", &alice]);
        c
    });
    assert!(ok, "{out}");
    // Ask mode: the device run waits at the approval.
    let mut device_run = spawn({
        let mut c = jarvis(&home, &fake.url());
        c.args(["run", "--session", "d1", "--workspace", "proj"])
            .args(["--permission-mode", "ask", "--dir"])
            .arg(&dev)
            .arg("Run the tests.");
        c
    });
    let v = until_status(&base, &alice, "d1", &["waiting_approval"]).await;
    let approvals = blocks_of(&v, "approval");
    assert_eq!(approvals.len(), 1, "{v}");
    let approval = approvals[0]["id"].as_str().unwrap().to_owned();
    let (ok, out) = run({
        let mut c = jarvis(&home, &fake.url());
        c.args(["approve", "d1", &approval, "--always", "--prefix"]);
        c
    });
    assert!(ok, "{out}");

    // Kept on the hub for alice and this workspace, as a prefix rule; bob has none.
    let (s, v) = call(
        &base,
        "GET",
        "/api/workspaces/proj/always-allow",
        &alice,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rules"][0]["rule"], "bash(npm test:*)", "{v}");
    assert_eq!(v["rules"].as_array().unwrap().len(), 1, "{v}");
    let (s, v) = call(
        &base,
        "PUT",
        "/api/workspaces/proj/members/bob",
        &alice,
        Some(json!({"role": "editor"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &base,
        "GET",
        "/api/workspaces/proj/always-allow",
        &bob,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["rules"],
        json!([]),
        "another member sees none of alice's rules"
    );
    // Nothing was written into the workspace, where it would sync to every member.
    let claude_dir = dev.join(".claude");
    assert!(!claude_dir.exists(), "a file appeared in the workspace");

    // Continue in cloud, while the device is streaming its next reply.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call(&base, "GET", "/api/sessions/d1", &alice, None).await;
        if blocks_of(&v, "text")
            .iter()
            .any(|t| t["text"].as_str().unwrap_or("").contains("checking"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the device never streamed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ok, out) = run({
        let mut c = jarvis(&home, &fake.url());
        c.args(["handoff", "d1", "--to", "cloud"]);
        c
    });
    assert!(ok, "{out}");
    assert!(device_run.wait(Duration::from_secs(30)).await.success());
    let done = until_status(&base, &alice, "d1", &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");
    // Both calls ran (results), and the only approval is the first one.
    let results = blocks_of(&done, "tool_result");
    let ran: Vec<&str> = results
        .iter()
        .filter_map(|r| r["tool_use_id"].as_str())
        .collect();
    assert_eq!(ran, ["a1", "a2"], "{done}");
    assert_eq!(blocks_of(&done, "approval").len(), 1, "{done}");

    // Bob's cloud session in the same workspace: the same command still asks.
    let (s, v) = call(
        &base,
        "POST",
        "/api/sessions",
        &bob,
        Some(
            json!({"id": "b1", "workspace": "proj", "message": "Bob runs the tests.",
                    "run": "cloud"}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let waiting = until_status(&base, &bob, "b1", &["waiting_approval", "done", "failed"]).await;
    assert_eq!(waiting["status"], "waiting_approval", "{waiting}");
    assert!(blocks_of(&waiting, "tool_result").is_empty(), "{waiting}");

    // Memory: alice's cloud requests carry hers, bob's carry his, never the other's.
    let requests = fake.requests();
    let bodies: Vec<String> = requests.iter().map(|r| r.body.to_string()).collect();
    // The provider was called in order: twice by the device (the prompt; the answered call's
    // result, cut by the handoff), twice by the cloud for alice, once for bob.
    assert_eq!(bodies.len(), 5, "{bodies:#?}");
    let (device, alice_cloud) = (&bodies[..2], &bodies[2..4]);
    for b in alice_cloud {
        assert!(b.contains("\"a1\""), "{b}");
        assert!(b.contains("ALICE-HUB-MEMORY"), "{b}");
        assert!(!b.contains("BOB-HUB-MEMORY"), "{b}");
    }
    let bob_cloud: Vec<&String> = bodies
        .iter()
        .filter(|b| b.contains("Bob runs the tests."))
        .collect();
    assert_eq!(bob_cloud.len(), 1);
    assert!(bob_cloud[0].contains("BOB-HUB-MEMORY"), "{}", bob_cloud[0]);
    assert!(
        !bob_cloud[0].contains("ALICE-HUB-MEMORY"),
        "{}",
        bob_cloud[0]
    );
    // The device's own request (before any answer) never had the hub memory: on a device
    // the user's own ~/.claude applies.
    assert!(device.iter().all(|b| !b.contains("ALICE-HUB-MEMORY")));

    // Alice answers "always" in bob's session: the rule is hers (who answered), not bob's.
    let approvals = blocks_of(&waiting, "approval");
    let (s, v) = call(
        &base,
        "POST",
        &format!(
            "/api/sessions/b1/approvals/{}",
            approvals[0]["id"].as_str().unwrap()
        ),
        &alice,
        Some(json!({"decision": "always_allow"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(
        &base,
        "GET",
        "/api/workspaces/proj/always-allow",
        &bob,
        None,
    )
    .await;
    assert_eq!(v["rules"], json!([]), "{v}");
    let (_, v) = call(
        &base,
        "GET",
        "/api/workspaces/proj/always-allow",
        &alice,
        None,
    )
    .await;
    let rules: Vec<&str> = v["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["bash(npm test:*)", "bash(npm test)"], "{v}");
    let done = until_status(&base, &bob, "b1", &["done", "failed"]).await;
    assert_eq!(done["status"], "done", "{done}");

    // Removing the rule through the API: gone for later runs.
    let (s, v) = call(
        &base,
        "DELETE",
        "/api/workspaces/proj/always-allow",
        &alice,
        Some(json!({"entry": {"tool": "bash", "prefix": "npm test"}})),
    )
    .await;
    assert_eq!((s, &v["removed"]), (200, &json!(true)), "{v}");
}
