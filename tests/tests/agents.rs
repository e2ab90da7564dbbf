//! Background agents end to end: the real `jarvis-cloud` with its scheduler on a clock the test
//! moves by hand (`JARVIS_CLOCK_FILE`), a fake Anthropic server answering every run, restarts
//! (SIGKILL and SIGTERM) between occurrences, a device syncing a folder whose edit fires a
//! files trigger, a webhook-triggered run, budgets that count cache writes, and the concurrency
//! limit.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::SyncClient;
use jarvis_sync::mirror::FileMirror;
use jarvis_testkit::fake::{FakeResponse, FakeServer, RecordedRequest, reply};
use jarvis_testkit::http::Api;
use jarvis_testkit::poll::until_async;
use jarvis_testkit::sign::github_signature as sign;
use jarvis_testkit::sync_client::sync_client;
use jarvis_testkit::{CloudAgent, create_token};
use serde_json::{Value, json};

fn ms(s: &str) -> u64 {
    // RFC 3339 UTC, e.g. 2026-11-25T09:00:00Z, without a date library in the tests.
    let out = std::process::Command::new("date")
        .args(["-u", "-d", s, "+%s%3N"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn set_clock(path: &Path, at: u64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{at}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn llm(usage: (u64, u64, u64, u64), delay: Duration) -> FakeServer {
    FakeServer::answering(move |_: &RecordedRequest| {
        FakeResponse::sse(&reply("Run finished: all good.", &[], usage), &[48]).with_delay(delay)
    })
    .await
    .unwrap()
}

struct Client {
    api: Api,
    token: String,
}

impl Client {
    fn new(agent: &CloudAgent, token: &str) -> Self {
        Client {
            api: agent.api(),
            token: token.to_owned(),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api.call(method, path, &self.token, body).await
    }

    async fn runs(&self, ws: &str, name: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/workspaces/{ws}/agents/{name}/runs"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["runs"].as_array().unwrap().clone()
    }

    /// Polls `f` over the API until it returns Some (or fails after `timeout`).
    async fn until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl AsyncFnMut(&Client) -> Option<T>,
    ) -> T {
        until_async(what, timeout, async || f(self).await).await
    }

    async fn agent(&self, ws: &str, name: &str) -> Value {
        let (s, v) = self
            .call("GET", &format!("/api/workspaces/{ws}/agents"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }
}

fn start(data: &Path, env: &[(&str, String)]) -> CloudAgent {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    CloudAgent::start_with_env(data, 0, &env).unwrap()
}

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_agent_runs_at_its_time_once_across_restarts_and_catches_up_by_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let clock = tmp.path().join("clock");
    set_clock(&clock, ms("2026-11-25T08:59:58Z"));
    let fake = llm((100, 20, 0, 0), Duration::ZERO).await;
    let env = vec![
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "limits".to_owned()),
        // Unconfined by choice: this test is not about containment (see sandbox.rs).
        ("JARVIS_ALLOW_UNSANDBOXED", "1".to_owned()),
        ("JARVIS_CLOCK_FILE", clock.display().to_string()),
        ("JARVIS_AGENTS_TICK_MS", "50".to_owned()),
    ];
    let agent = start(&data, &env);
    let admin = create_token(&data, &["*"], false).unwrap();
    let c = Client::new(&agent, &admin);
    let (s, v) = c
        .call("POST", "/api/workspaces", Some(json!({"id": "team"})))
        .await;
    assert_eq!(s, 200, "{v}");
    // 04:00 in New York in November (EST, UTC-5) is 09:00Z.
    let def = "---\ntrigger: cron\nschedule: \"0 4 * * *\"\ntimezone: America/New_York\n\
               permission_mode: plan\n---\nWrite the standup notes.\n";
    let (s, v) = c
        .call(
            "PUT",
            "/api/workspaces/team/agents/standup",
            Some(json!({"definition": def})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["next_run_ms"], json!(ms("2026-11-25T09:00:00Z")));
    assert_eq!(v["path"], ".jarvis/agents/standup.md");
    let (s, v) = c
        .call("GET", "/api/workspaces/team/agents/standup", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["text"], def, "the file as written");
    assert_eq!(v["definition"]["trigger"]["timezone"], "America/New_York");
    c.until("the scheduler to see the agent", T, async |c| {
        c.agent("team", "standup").await["checked_ms"]
            .as_u64()
            .filter(|&t| t >= ms("2026-11-25T08:59:58Z"))
    })
    .await;
    assert!(c.runs("team", "standup").await.is_empty());
    assert_eq!(fake.requests().len(), 0, "ran before its time");

    set_clock(&clock, ms("2026-11-25T09:00:01Z"));
    let run = c
        .until("the 09:00 run to finish", T, async |c| {
            c.runs("team", "standup")
                .await
                .into_iter()
                .find(|r| r["status"] == "done")
        })
        .await;
    assert_eq!(run["scheduled_ms"], json!(ms("2026-11-25T09:00:00Z")));
    assert_eq!(run["trigger"], "cron");
    assert_eq!(fake.requests().len(), 1);
    let prompt = fake.requests()[0].body["messages"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(prompt.starts_with("Write the standup notes."), "{prompt}");
    // The run is an ordinary session in the workspace.
    let session = run["session"].as_str().unwrap();
    let (s, v) = c
        .call("GET", &format!("/api/sessions/{session}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["workspace"], "team");
    assert_eq!(v["status"], "done");

    // kill -9 and back, later in the same minute: the 09:00 run is not repeated.
    agent.kill9().unwrap();
    set_clock(&clock, ms("2026-11-25T09:00:30Z"));
    let agent = start(&data, &env);
    let c = Client::new(&agent, &admin);
    c.until("the scheduler to look after the restart", T, async |c| {
        let (_, v) = c.call("GET", "/api/workspaces/team/agents", None).await;
        (v["agents"][0]["scheduled"] == true)
            .then_some(())
            .and(v["scheduler_ms"].as_u64())
            .filter(|&t| t >= ms("2026-11-25T09:00:30Z"))
    })
    .await;
    assert_eq!(c.runs("team", "standup").await.len(), 1);
    assert_eq!(fake.requests().len(), 1, "run twice across a restart");

    // Down over the next day's 09:00, back 20 minutes later: caught up once.
    agent
        .terminate(Duration::from_secs(20))
        .expect("clean exit on SIGTERM");
    set_clock(&clock, ms("2026-11-26T09:20:00Z"));
    let agent = start(&data, &env);
    let c = Client::new(&agent, &admin);
    let run = c
        .until("the missed run to be caught up", T, async |c| {
            c.runs("team", "standup")
                .await
                .into_iter()
                .find(|r| r["scheduled_ms"] == json!(ms("2026-11-26T09:00:00Z")))
                .filter(|r| r["status"] == "done")
        })
        .await;
    assert!(
        run["note"]
            .as_str()
            .unwrap()
            .contains("caught up 1200 s late"),
        "{run}"
    );
    assert_eq!(fake.requests().len(), 2);

    // Down for three days, back three hours after the last occurrence: beyond the one-hour
    // catch-up window, so it is recorded as skipped and nothing runs.
    agent.terminate(Duration::from_secs(20)).unwrap();
    set_clock(&clock, ms("2026-11-29T12:00:00Z"));
    let agent = start(&data, &env);
    let c = Client::new(&agent, &admin);
    let run = c
        .until("the skipped run to be recorded", T, async |c| {
            c.runs("team", "standup")
                .await
                .into_iter()
                .find(|r| r["scheduled_ms"] == json!(ms("2026-11-29T09:00:00Z")))
        })
        .await;
    assert_eq!(run["status"], "skipped", "{run}");
    assert_eq!(c.runs("team", "standup").await.len(), 3);
    assert_eq!(fake.requests().len(), 2);
}

fn device(agent: &CloudAgent, token: &str, db: &Path) -> Arc<SyncClient> {
    Arc::new(sync_client(agent, token, db))
}

fn prompts(fake: &FakeServer) -> Vec<String> {
    fake.requests()
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_edit_fires_a_files_trigger_and_a_webhook_trigger_runs_with_its_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let fake = llm((100, 20, 0, 0), Duration::ZERO).await;
    let env = vec![
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "limits".to_owned()),
        // Unconfined by choice: this test is not about containment (see sandbox.rs).
        ("JARVIS_ALLOW_UNSANDBOXED", "1".to_owned()),
        ("JARVIS_AGENTS_TICK_MS", "50".to_owned()),
        ("JARVIS_AGENTS_FILE_DEBOUNCE_MS", "300".to_owned()),
    ];
    let agent = start(&data, &env);
    let admin = create_token(&data, &["*"], false).unwrap();
    let c = Client::new(&agent, &admin);
    let (s, v) = c
        .call("POST", "/api/workspaces", Some(json!({"id": "proj"})))
        .await;
    assert_eq!(s, 200, "{v}");
    let folder: PathBuf = tmp.path().join("device");
    std::fs::create_dir_all(folder.join("src")).unwrap();
    std::fs::write(folder.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(folder.join("README.md"), "# proj\n").unwrap();
    let client = device(&agent, &admin, &tmp.path().join("device.db"));
    let mirror = FileMirror::start(&folder, "proj", client.clone(), None)
        .await
        .unwrap();
    client.flush_all(T).await.unwrap();

    let def = "---\ntrigger: files\npaths: [\"src/**/*.rs\"]\ntools: [read, grep]\n---\n\
               Scan the changed files for security problems.\n";
    let (s, v) = c
        .call(
            "PUT",
            "/api/workspaces/proj/agents/scan",
            Some(json!({"definition": def})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    c.until("the scheduler to watch the workspace", T, async |c| {
        (c.agent("proj", "scan").await["scheduled"] == true).then_some(())
    })
    .await;
    // The definition reached the device too: it is an ordinary workspace file.
    let synced = folder.join(".jarvis/agents/scan.md");
    c.until("the definition on the device", T, async |_| {
        std::fs::read_to_string(&synced).ok().filter(|t| t == def)
    })
    .await;

    // An edit outside the globs, then one inside, each synced through the hub.
    std::fs::write(folder.join("README.md"), "# proj\n\nMore words.\n").unwrap();
    mirror.rescan().await;
    client.flush_all(T).await.unwrap();
    std::fs::write(
        folder.join("src/lib.rs"),
        "pub fn f() {}\npub fn g(s: &str) { std::process::Command::new(s); }\n",
    )
    .unwrap();
    mirror.rescan().await;
    client.flush_all(T).await.unwrap();
    let run = c
        .until("the files-triggered run to finish", T, async |c| {
            c.runs("proj", "scan")
                .await
                .into_iter()
                .find(|r| r["status"] == "done")
        })
        .await;
    assert_eq!(run["trigger"], "files");
    assert_eq!(run["detail"], "src/lib.rs", "{run}");
    let p = prompts(&fake);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("Changed files:\nsrc/lib.rs"), "{}", p[0]);

    // An edit that keeps the file's size leaves its index entry alone; the file's own document
    // changes, and that is watched too.
    std::fs::write(
        folder.join("src/lib.rs"),
        "pub fn f() {}\npub fn h(s: &str) { std::process::Command::new(s); }\n",
    )
    .unwrap();
    mirror.rescan().await;
    client.flush_all(T).await.unwrap();
    c.until("a second files-triggered run", T, async |c| {
        let runs = c.runs("proj", "scan").await;
        (runs.len() == 2 && runs.iter().all(|r| r["status"] == "done")).then_some(())
    })
    .await;
    let runs = c.runs("proj", "scan").await;
    assert_eq!(runs[0]["detail"], "src/lib.rs", "{runs:?}");
    assert_eq!(prompts(&fake).len(), 2);

    // A webhook trigger: a run on request, with the payload in its prompt.
    let def = "---\ntrigger: webhook\n---\nWrite release notes for the pushed tag.\n";
    let (s, v) = c
        .call(
            "PUT",
            "/api/workspaces/proj/agents/release-notes",
            Some(json!({"definition": def})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = c
        .call(
            "POST",
            "/api/workspaces/proj/agents/release-notes/runs",
            Some(json!({"payload": {"ref": "refs/tags/v1.2.0"}})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["trigger"], "webhook");
    c.until("the webhook run to finish", T, async |c| {
        c.runs("proj", "release-notes")
            .await
            .into_iter()
            .find(|r| r["status"] == "done")
    })
    .await;
    let p = prompts(&fake);
    assert!(p.iter().any(|t| t.contains("refs/tags/v1.2.0")), "{p:?}");
    // The same agent from a sender without a token: signed with the agent's own secret over a
    // timestamp, a delivery id and the body; acted on once per delivery id.
    let (s, v) = c
        .call(
            "POST",
            "/api/workspaces/proj/agents/release-notes/webhook-secret",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    let push =
        serde_json::to_vec(&json!({"ref": "refs/tags/v1.3.0", "after": "ec26c3e5"})).unwrap();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hook = |secret: &str, delivery: &str, ts: u64| {
        let mut signed = format!("{ts}.{delivery}.").into_bytes();
        signed.extend_from_slice(&push);
        reqwest::Client::new()
            .post(agent.http_url("/webhooks/agents/proj/release-notes"))
            .header("content-type", "application/json")
            .header("x-jarvis-delivery", delivery)
            .header("x-jarvis-timestamp", ts.to_string())
            .header("x-jarvis-signature", sign(&signed, secret))
            .body(push.clone())
            .send()
    };
    let bad = hook("wrong-secret", "a-1", now_s).await.unwrap();
    assert_eq!(bad.status(), 401);
    // Signed correctly but ten minutes old: refused as stale.
    let stale = hook(&secret, "a-0", now_s - 600).await.unwrap();
    assert_eq!(stale.status(), 401);
    let ok = hook(&secret, "a-1", now_s).await.unwrap();
    assert_eq!(ok.status(), 202);
    // A replay of the same delivery is refused.
    let again = hook(&secret, "a-1", now_s).await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["code"], "conflict");
    c.until("the signed webhook run to finish", T, async |c| {
        let runs = c.runs("proj", "release-notes").await;
        (runs.len() == 2 && runs.iter().all(|r| r["status"] == "done")).then_some(())
    })
    .await;
    let p = prompts(&fake);
    assert_eq!(
        p.iter().filter(|t| t.contains("refs/tags/v1.3.0")).count(),
        1,
        "{p:?}"
    );

    // An unknown agent and a bad definition are refused.
    let (s, _) = c
        .call(
            "POST",
            "/api/workspaces/proj/agents/nope/runs",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = c
        .call(
            "PUT",
            "/api/workspaces/proj/agents/bad",
            Some(json!({"definition": "---\ntrigger: cron\nschedule: sometimes\n---\nx"})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("schedule"), "{v}");
    drop(mirror);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_count_cache_writes_and_runs_respect_the_concurrency_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let clock = tmp.path().join("clock");
    set_clock(&clock, ms("2026-11-25T10:00:30Z"));
    // Each reply writes 400,000 tokens to the prompt cache: $1.50 at $3.75 per million, and
    // almost nothing else.
    let fake = llm((10, 10, 400_000, 0), Duration::from_millis(40)).await;
    let env = vec![
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "limits".to_owned()),
        // Unconfined by choice: this test is not about containment (see sandbox.rs).
        ("JARVIS_ALLOW_UNSANDBOXED", "1".to_owned()),
        ("JARVIS_CLOCK_FILE", clock.display().to_string()),
        ("JARVIS_AGENTS_TICK_MS", "50".to_owned()),
        ("JARVIS_AGENTS_USER_DAILY_BUDGET_USD", "2".to_owned()),
        ("JARVIS_AGENTS_MAX_CONCURRENT", "1".to_owned()),
        // Priced by the model table: $3.75 per million cache-write tokens.
        ("ANTHROPIC_MODEL", "claude-sonnet-4-6".to_owned()),
    ];
    let agent = start(&data, &env);
    let admin = create_token(&data, &["*"], false).unwrap();
    let c = Client::new(&agent, &admin);
    c.call("POST", "/api/workspaces", Some(json!({"id": "ops"})))
        .await;

    // Concurrency: two requested runs of a webhook agent with one slot: never both active.
    let def = "---\ntrigger: webhook\nbudget_usd: 5\n---\nSummarise the incident.\n";
    c.call(
        "PUT",
        "/api/workspaces/ops/agents/incident",
        Some(json!({"definition": def})),
    )
    .await;
    for i in 0..2 {
        let (s, v) = c
            .call(
                "POST",
                "/api/workspaces/ops/agents/incident/runs",
                Some(json!({"payload": {"n": i}})),
            )
            .await;
        assert_eq!(s, 202, "{v}");
    }
    let mut saw_queued_behind_running = false;
    c.until("both incident runs to finish", T, async |c| {
        let runs = c.runs("ops", "incident").await;
        let active = runs
            .iter()
            .filter(|r| r["status"] == "running" || r["status"] == "starting")
            .count();
        assert!(active <= 1, "{active} runs active with one slot: {runs:?}");
        if active == 1 && runs.iter().any(|r| r["status"] == "queued") {
            saw_queued_behind_running = true;
        }
        (runs.len() == 2 && runs.iter().all(|r| r["status"] == "done")).then_some(())
    })
    .await;
    assert!(saw_queued_behind_running, "the second run never waited");
    // Two runs, $1.50 each in cache writes: the owner's $2 a day is spent.
    let runs = c.runs("ops", "incident").await;
    for r in &runs {
        let cost = r["cost_micros"].as_u64().unwrap();
        assert!((1_500_000..1_510_000).contains(&cost), "{r}");
    }

    // A cron agent of the same owner is now over budget: recorded, not run.
    let def = "---\ntrigger: cron\nschedule: \"* * * * *\"\n---\nCheck the dashboards.\n";
    c.call(
        "PUT",
        "/api/workspaces/ops/agents/dashboards",
        Some(json!({"definition": def})),
    )
    .await;
    c.until("the scheduler to see the cron agent", T, async |c| {
        c.agent("ops", "dashboards").await["checked_ms"].as_u64()
    })
    .await;
    let before = fake.requests().len();
    set_clock(&clock, ms("2026-11-25T10:01:00Z"));
    let run = c
        .until("the over-budget run to be recorded", T, async |c| {
            c.runs("ops", "dashboards")
                .await
                .into_iter()
                .find(|r| r["status"] != "queued")
        })
        .await;
    assert_eq!(run["status"], "over_budget", "{run}");
    assert!(run["note"].as_str().unwrap().contains("$3.0"), "{run}");
    assert_eq!(fake.requests().len(), before);
}
