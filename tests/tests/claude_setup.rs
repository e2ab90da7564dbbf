//! A Claude Code project in the cloud: the fixture workspace (`crates/cli/tests/fixtures/
//! claude-setup`) synced from a device by the real `jarvis`, then a session run by the real
//! `jarvis-cloud` in its copy. Memory and deny rules apply there; the settings file's hooks and
//! allow rules, which nobody approved, do not.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use jarvis_testkit::cli::{jarvis_with_fake, run_ok};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply, text};
use jarvis_testkit::fs::copy_dir;
use jarvis_testkit::http::Api;
use jarvis_testkit::{CloudAgent, eventually, hub_with_user};
use serde_json::{Value, json};

fn jarvis(home: &Path, fake: &str, args: &[&str]) -> String {
    let mut c = jarvis_with_fake(home, fake);
    c.args(args);
    run_ok(c)
}

fn blocks(session: &Value, role: Option<&str>) -> Vec<Value> {
    session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| role.is_none_or(|r| m["role"] == r))
        .flat_map(|m| m["blocks"].as_array().unwrap().clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cloud_applies_memory_and_deny_rules_but_not_unapproved_hooks() {
    let calls = [
        ("c-env", "read", json!({"path": ".env"})),
        ("c-rm", "bash", json!({"command": "true && rm -rf x"})),
        (
            "c-protected",
            "write",
            json!({"path": "protected/a.txt", "content": "written in the cloud\n"}),
        ),
    ];
    let fake = FakeServer::start(vec![
        text("Ready."),
        FakeResponse::sse(&reply("On it.", &calls, (10, 5, 0, 0)), &[4096]),
        text("Done in the cloud."),
        // After the owner approved the settings file: its hook now guards protected/.
        FakeResponse::sse(
            &reply(
                "Once more.",
                &[(
                    "c2-protected",
                    "write",
                    json!({"path": "protected/b.txt", "content": "after approval\n"}),
                )],
                (10, 5, 0, 0),
            ),
            &[4096],
        ),
        text("Done again."),
    ])
    .await
    .unwrap();
    let (tmp, data, alice) = hub_with_user("alice");
    let agent = CloudAgent::start_with_env(
        &data,
        0,
        &[
            ("ANTHROPIC_BASE_URL", &fake.url()),
            ("ANTHROPIC_API_KEY", "test-key"),
        ],
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", agent.port);
    let dev = tmp.path().join("proj");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/cli/tests/fixtures/claude-setup"),
        &dev,
    );
    let home = tmp.path().join("home");
    jarvis(&home, &fake.url(), &["login", &base, "--token", &alice]);
    // The device's run syncs the folder to the hub.
    jarvis(
        &home,
        &fake.url(),
        &[
            "run",
            "--session",
            "d1",
            "--workspace",
            "proj",
            "--dir",
            dev.to_str().unwrap(),
            "hello",
        ],
    );
    let cloud_copy = data.join("workspaces/proj");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{base}/api/sessions"))
        .bearer_auth(&alice)
        .json(
            &json!({"id": "c1", "workspace": "proj", "message": "tidy up in the cloud",
                      "permission_mode": "allow-all", "run": "cloud"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status().as_u16(),
        201,
        "{}",
        created.text().await.unwrap()
    );
    let mut done = Value::Null;
    for _ in 0..1500 {
        let v: Value = Api::new(&base).get_json("/api/sessions/c1", &alice).await;
        if v["status"] == "done" || v["status"] == "failed" {
            done = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(done["status"], "done", "{done}");
    eventually(
        "the cloud copy has the workspace",
        Duration::from_secs(30),
        || cloud_copy.join(".claude/hooks/protect.sh").is_file(),
    )
    .await
    .unwrap();
    eventually(
        "the cloud copy has the workspace",
        Duration::from_secs(30),
        || cloud_copy.join(".claude/hooks/protect.sh").is_file(),
    )
    .await
    .unwrap();

    // The cloud's request carried CLAUDE.md and its import, and says where it runs.
    let requests = fake.requests();
    let cloud_request = requests
        .iter()
        .find(|r| r.body.to_string().contains("tidy up in the cloud"))
        .unwrap();
    let system = cloud_request.body["system"].to_string();
    assert!(system.contains("CLAUDE-MD-ROOT-7f3a"), "{system}");
    assert!(system.contains("IMPORTED-CONVENTIONS-2b9c"), "{system}");
    assert!(system.contains("the cloud runner"), "{system}");

    let results = blocks(&done, None)
        .into_iter()
        .filter(|b| b["type"] == "tool_result")
        .collect::<Vec<_>>();
    let result = |id: &str| {
        results
            .iter()
            .find(|r| r["tool_use_id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}: {done}"))
            .clone()
    };
    // Deny rules hold even in allow-all mode.
    let env = result("c-env");
    assert_eq!(env["is_error"], true);
    assert!(
        env["content"]
            .as_str()
            .unwrap()
            .contains("denied by rule Read(./.env)")
    );
    let rm = result("c-rm");
    assert!(
        rm["content"]
            .as_str()
            .unwrap()
            .contains("denied by rule Bash(rm:*)"),
        "{rm}"
    );
    assert_eq!(
        std::fs::read_to_string(cloud_copy.join("x")).unwrap(),
        "keep me\n"
    );
    // The settings file's PreToolUse and PostToolUse hooks were not approved: they did not run.
    assert_eq!(result("c-protected")["is_error"], false);
    assert_eq!(
        std::fs::read_to_string(cloud_copy.join("protected/a.txt")).unwrap(),
        "written in the cloud\n"
    );
    assert!(!cloud_copy.join("post-tool-use.jsonl").exists());
    // And the session says so, with the rule that can never match.
    let notes: Vec<String> = blocks(&done, Some("system"))
        .iter()
        .filter_map(|b| b["text"].as_str().map(str::to_owned))
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n
                .contains(".claude/settings.json: allow rules, defaultMode, hooks not applied")),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains("Frobnicate(everything)")),
        "{notes:?}"
    );

    // The owner approves the settings file's exact content through the API; from then on its
    // hooks run in the cloud (inside the sandbox) and block the write they guard.
    let config: Value = Api::new(&base)
        .get_json("/api/workspaces/proj/config", &alice)
        .await;
    let settings = config["config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == ".claude/settings.json")
        .unwrap_or_else(|| panic!("settings.json is not listed for approval: {config}"))
        .clone();
    assert_eq!(settings["kind"], "settings");
    assert_eq!(settings["approved"], false, "{settings}");
    let approved = http
        .post(format!("{base}/api/workspaces/proj/config/approve"))
        .bearer_auth(&alice)
        .json(
            &json!({"kind": "settings", "path": ".claude/settings.json", "hash": settings["hash"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        approved.status().as_u16(),
        200,
        "{}",
        approved.text().await.unwrap()
    );
    let created = http
        .post(format!("{base}/api/sessions"))
        .bearer_auth(&alice)
        .json(
            &json!({"id": "c2", "workspace": "proj", "message": "once more in the cloud",
                      "permission_mode": "allow-all", "run": "cloud"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status().as_u16(),
        201,
        "{}",
        created.text().await.unwrap()
    );
    let mut again = Value::Null;
    for _ in 0..1500 {
        let v: Value = Api::new(&base).get_json("/api/sessions/c2", &alice).await;
        if v["status"] == "done" || v["status"] == "failed" {
            again = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again["status"], "done", "{again}");
    let blocked = blocks(&again, None)
        .into_iter()
        .find(|b| b["type"] == "tool_result" && b["tool_use_id"] == "c2-protected")
        .unwrap_or_else(|| panic!("no result for c2-protected: {again}"));
    assert_eq!(blocked["is_error"], true, "{blocked}");
    assert!(
        blocked["content"]
            .as_str()
            .unwrap()
            .contains("protected/ is read-only"),
        "{blocked}"
    );
    assert!(!cloud_copy.join("protected/b.txt").exists());
}
