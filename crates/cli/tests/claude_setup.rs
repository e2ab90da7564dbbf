//! A Claude Code project through `jarvis run`: the real binary, a fake Anthropic server on
//! loopback, and a fixture workspace with real files (`tests/fixtures/claude-setup`): a
//! `CLAUDE.md` with an `@import`, `.claude/settings.json` rules, hooks and a nonsense rule, a
//! command and a skill.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;

use jarvis_testkit::cli::{jarvis_with_fake, json_lines as lines};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use jarvis_testkit::fs::copy_dir;
use serde_json::{Value, json};

/// A fresh copy of the fixture (runs write into it).
fn fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claude-setup"),
        d.path(),
    );
    d
}

fn jarvis(server: &FakeServer, home: &Path, dir: &Path, args: &[&str]) -> Output {
    let mut c = jarvis_with_fake(home, &server.url());
    c.args(args)
        .current_dir(dir)
        .env("HOME", home.join("user-home"));
    c.output().unwrap()
}

fn system_text(body: &Value) -> String {
    body["system"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["text"].as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tool_result blocks of a request, by tool_use_id.
fn results(body: &Value) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().unwrap() {
        for b in m["content"].as_array().unwrap() {
            if b["type"] == "tool_result" {
                out.push((
                    b["tool_use_id"].as_str().unwrap().to_owned(),
                    b["content"].as_str().unwrap_or("").to_owned(),
                    b["is_error"].as_bool().unwrap_or(false),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_project_rules_memory_and_hooks_hold_in_jarvis_run() {
    let calls = [
        ("t-env", "read", json!({"path": ".env"})),
        ("t-env2", "read", json!({"path": "./docs/../.env"})),
        ("t-npm", "bash", json!({"command": "npm test"})),
        ("t-rm", "bash", json!({"command": "rm -rf x"})),
        ("t-rm-chain", "bash", json!({"command": "true && rm -rf x"})),
        ("t-rm-semi", "bash", json!({"command": "echo hi; rm x"})),
        ("t-rm-subst", "bash", json!({"command": "echo $(rm -rf x)"})),
        ("t-grep", "grep", json!({"pattern": "dotenv-content"})),
        (
            "t-protected",
            "write",
            json!({"path": "protected/a.txt", "content": "no"}),
        ),
        (
            "t-notes",
            "write",
            json!({"path": "notes.txt", "content": "fine\n"}),
        ),
    ];
    let server = FakeServer::start(vec![
        FakeResponse::sse(&reply("On it.", &calls, (10, 5, 0, 0)), &[64]),
        FakeResponse::sse(&reply("Done.", &[], (10, 5, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ws = fixture();
    let out = jarvis(
        &server,
        home.path(),
        ws.path(),
        &["run", "tidy up", "--output-format", "stream-json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&out);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);

    // CLAUDE.md and its import reach the model, after the stable system prompt.
    let system = system_text(&requests[0].body);
    assert!(system.contains("CLAUDE-MD-ROOT-7f3a"), "{system}");
    assert!(system.contains("IMPORTED-CONVENTIONS-2b9c"), "{system}");
    assert!(system.contains("<env>") && system.contains("Runs on: the user's device"));
    assert!(system.contains("release-notes: Write release notes from the git log"));
    let blocks = requests[0].body["system"].as_array().unwrap();
    assert!(
        blocks[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("You are My Jarvis")
    );
    assert!(blocks[0].get("cache_control").is_none() && blocks[1].get("cache_control").is_some());
    // The same prefix on the next request: nothing there changed.
    assert_eq!(requests[1].body["system"], requests[0].body["system"]);

    // The session shows what was loaded and warns about the rule that can never match.
    let notes: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "system")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Frobnicate(everything)") && n.starts_with("Warning")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n
                .contains("Memory loaded: CLAUDE.md, docs/conventions.md (imported by CLAUDE.md)")),
        "{notes:?}"
    );

    let got = results(&requests[1].body);
    let result = |id: &str| got.iter().find(|r| r.0 == id).unwrap().clone();
    for id in ["t-env", "t-env2"] {
        let (_, content, is_error) = result(id);
        assert!(
            is_error && content.contains("denied by rule Read(./.env)"),
            "{id}: {content}"
        );
    }
    let (_, content, is_error) = result("t-npm");
    assert!(
        !is_error && content.contains("fixture-tests-ok"),
        "npm test: {content}"
    );
    for id in ["t-rm", "t-rm-chain", "t-rm-semi", "t-rm-subst"] {
        let (_, content, is_error) = result(id);
        assert!(
            is_error && content.contains("denied by rule Bash(rm:*)"),
            "{id}: {content}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(ws.path().join("x")).unwrap(),
        "keep me\n"
    );
    // grep does not read what a Read deny covers.
    let (_, content, _) = result("t-grep");
    assert_eq!(content, "no matches");
    let everything = serde_json::to_string(&requests[1].body).unwrap();
    assert!(!everything.contains("dotenv-content-must-not-reach"));

    // The PreToolUse hook blocked the write and the model was told why.
    let (_, content, is_error) = result("t-protected");
    assert!(is_error, "{content}");
    assert!(
        content.contains("protected/ is read-only in this project"),
        "{content}"
    );
    assert!(!ws.path().join("protected/a.txt").exists());
    // The allowed write ran (acceptEdits from defaultMode), and PostToolUse saw its result.
    let (_, content, is_error) = result("t-notes");
    assert!(!is_error, "{content}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes.txt")).unwrap(),
        "fine\n"
    );
    let log = std::fs::read_to_string(ws.path().join("post-tool-use.jsonl")).unwrap();
    let posted: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(posted.len(), 1, "{log}");
    assert_eq!(posted[0]["hook_event_name"], "PostToolUse");
    assert_eq!(posted[0]["tool_name"], "Write");
    assert_eq!(posted[0]["tool_input"]["file_path"], "notes.txt");
    assert_eq!(posted[0]["tool_response"]["is_error"], false);
    assert!(
        posted[0]["tool_response"]["content"]
            .as_str()
            .unwrap()
            .contains("wrote 5 bytes to notes.txt")
    );
    assert_eq!(posted[0]["permission_mode"], "acceptEdits");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_command_expands_and_builtins_dispatch() {
    let server = FakeServer::start(vec![FakeResponse::sse(
        &reply("Looks fine.", &[], (10, 5, 0, 0)),
        &[64],
    )])
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ws = fixture();
    let out = jarvis(
        &server,
        home.path(),
        ws.path(),
        &[
            "run",
            "/review src/lib.rs",
            "--output-format",
            "stream-json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = &server.requests()[0].body;
    let last = body["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        last["content"][0]["text"],
        "Review src/lib.rs for bugs and unclear names. Quote the lines you mean.\n"
    );
    let help = jarvis(&server, home.path(), ws.path(), &["run", "/help"]);
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("/review <file>\tReview one file for bugs"),
        "{help}"
    );
    let unknown = jarvis(&server, home.path(), ws.path(), &["run", "/shout hello"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown command /shout"));
    assert_eq!(
        server.requests().len(),
        1,
        "no request for /help or an unknown command"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_users_own_claude_md_applies_on_their_device() {
    let server = FakeServer::start(vec![FakeResponse::sse(
        &reply("Hi.", &[], (10, 5, 0, 0)),
        &[64],
    )])
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let user = home.path().join("user-home/.claude");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("CLAUDE.md"), "Marker: USER-MEMORY-51e0\n").unwrap();
    std::fs::write(
        user.join("settings.json"),
        r#"{"permissions": {"deny": ["Bash(curl:*)"]}}"#,
    )
    .unwrap();
    let ws = fixture();
    let out = jarvis(
        &server,
        home.path(),
        ws.path(),
        &["run", "hello", "--output-format", "stream-json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let system = system_text(&server.requests()[0].body);
    assert!(system.contains("USER-MEMORY-51e0"), "{system}");
    assert!(
        system.contains("Contents of ~/.claude/CLAUDE.md (user)"),
        "{system}"
    );
    let events = lines(&out);
    assert!(events.iter().any(|e| {
        e["type"] == "system"
            && e["text"]
                .as_str()
                .unwrap()
                .contains("settings: ~/.claude/settings.json, .claude/settings.json")
    }));
}

/// Issue 15's spellings that used to pass deny rules, against the real binary: even in
/// allow-all mode, the rules hold.
#[tokio::test(flavor = "multi_thread")]
async fn deny_rules_hold_against_chained_and_respelled_calls() {
    let calls = [
        ("d1", "bash", json!({"command": "rm x; true"})),
        ("d2", "read", json!({"path": "./secrets/key"})),
        ("d3", "read", json!({"path": "secrets/../secrets/key"})),
        (
            "d4",
            "write",
            json!({"path": "./protected/b.txt", "content": "no"}),
        ),
        (
            "d5",
            "edit",
            json!({"path": "protected//b.txt", "old_string": "keep", "new_string": "no"}),
        ),
        ("d6", "bash", json!({"command": "echo `rm x`"})),
    ];
    let server = FakeServer::start(vec![
        FakeResponse::sse(&reply("", &calls, (10, 5, 0, 0)), &[64]),
        FakeResponse::sse(&reply("Done.", &[], (10, 5, 0, 0)), &[64]),
    ])
    .await
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let ws = tempfile::tempdir().unwrap();
    for (f, text) in [
        ("x", "keep\n"),
        ("secrets/key", "s3cr3t-fixture\n"),
        ("protected/b.txt", "keep\n"),
    ] {
        let p = ws.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let out = jarvis(
        &server,
        home.path(),
        ws.path(),
        &[
            "run",
            "go",
            "--output-format",
            "stream-json",
            "--permission-mode",
            "allow-all",
            "--deny",
            "bash(rm:*)",
            "--deny",
            "read(secrets/**)",
            "--deny",
            "write(protected/**)",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = results(&server.requests()[1].body);
    assert_eq!(got.len(), calls.len());
    for (id, content, is_error) in &got {
        assert!(
            *is_error && content.starts_with("denied by rule"),
            "{id}: {content}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(ws.path().join("x")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("protected/b.txt")).unwrap(),
        "keep\n"
    );
    assert!(
        !serde_json::to_string(&server.requests()[1].body)
            .unwrap()
            .contains("s3cr3t-fixture")
    );
}
