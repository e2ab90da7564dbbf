//! The cloud's containment, end to end, as an attacker with an ordinary account would try it:
//! the real `jarvis-cloud` with a fake model provider that scripts the bash calls of a
//! non-admin user's allow-all cloud session. Also the refusal where namespaces are missing
//! (simulated with a `bwrap` that fails as it does in such containers), the operator's opt-in,
//! and the secret store: a secret reaches the process that names it and nothing else.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jarvis_testkit::fake::{FakeResponse, FakeServer, text, tool};
use jarvis_testkit::http::Api;
use jarvis_testkit::{CloudAgent, add_user, hub_with_user};
use serde_json::{Value, json};

const PROVIDER_KEY: &str = "sk-ant-test-provider-key-5c1d0e";
const GITHUB_TOKEN: &str = "ghp_test_server_token_8a7b6c";

/// An API client that keeps every response body, so a test can search all of them.
struct Client {
    api: Api,
    seen: Mutex<Vec<String>>,
}

impl Client {
    fn new(agent: &CloudAgent) -> Self {
        Client {
            api: agent.api(),
            seen: Mutex::new(Vec::new()),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, text) = self.api.call_text(method, path, token, body).await;
        self.seen.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until the session stops running (done or failed).
    async fn finished(&self, token: &str, id: &str, timeout: Duration) -> Value {
        let v = self
            .api
            .until_status(token, id, &["done", "failed"], timeout)
            .await;
        self.seen.lock().unwrap().push(v.to_string());
        v
    }

    fn responses(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

fn bash(id: &str, command: &str, timeout_ms: u64) -> FakeResponse {
    tool(
        id,
        "bash",
        json!({"command": command, "timeout_ms": timeout_ms}),
    )
}

/// The result of tool call `id` in a session: (content, is_error).
fn result(session: &Value, id: &str) -> (String, bool) {
    for m in session["messages"].as_array().unwrap() {
        for b in m["blocks"].as_array().unwrap() {
            if b["type"] == "tool_result" && b["tool_use_id"] == id {
                return (
                    b["content"].as_str().unwrap().to_owned(),
                    b["is_error"].as_bool().unwrap(),
                );
            }
        }
    }
    panic!("no result for tool call {id}: {session}");
}

/// Host processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            found.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    found
}

/// The server's own environment: the secrets a command must never see.
fn server_env(fake: &FakeServer) -> Vec<(&'static str, String)> {
    vec![
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", PROVIDER_KEY.to_owned()),
        ("GITHUB_TOKEN", GITHUB_TOKEN.to_owned()),
        ("JARVIS_SANDBOX_MEMORY_MB", "256".to_owned()),
        ("JARVIS_SANDBOX_PROCESSES", "64".to_owned()),
    ]
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A `bwrap` that fails as it does in a container without user namespaces.
fn broken_bwrap(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("bwrap");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel does not allow non-privileged user namespaces.' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_admins_cloud_bash_reaches_nothing_and_leaves_nothing() {
    let (_tmp, data, alice) = hub_with_user("alice");
    // What the attacker is after: another user's materialised workspace and the server's files.
    std::fs::create_dir_all(data.join("workspaces/bobs")).unwrap();
    std::fs::write(data.join("workspaces/bobs/plans.txt"), "bob-private-plans").unwrap();
    std::fs::create_dir_all(data.join("blobs/ab")).unwrap();
    std::fs::write(data.join("blobs/ab/abcdef"), "blob-private-bytes").unwrap();
    let marker = format!("jarvis-e2e-{:08x}", std::process::id());
    let fake = FakeServer::start(vec![]).await.unwrap();
    let env = server_env(&fake);
    let agent = CloudAgent::start_with_env(&data, 0, &env_refs(&env)).unwrap();
    let api = Client::new(&agent);
    let (s, info) = api.call("GET", "/api/server", &alice, None).await;
    assert_eq!(s, 200, "{info}");
    if !info["sandbox"]["confined"].as_bool().unwrap() {
        // No namespaces on this machine: the refusal is what holds (tested below).
        assert!(info["sandbox"]["refusing"].as_bool().unwrap(), "{info}");
        eprintln!("skipping: {}", info["sandbox"]["description"]);
        return;
    }
    let d = data.canonicalize().unwrap();
    let d = d.display();
    let fake_port: u16 = fake
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let probes = [
        ("env", "env".to_owned(), 10_000),
        (
            "read",
            format!(
                "cat {d}/workspaces/bobs/plans.txt; head -c 64 {d}/hub.db; ls -a {d}; ls -a {d}/workspaces; \
                 ls {d}/blobs; head -c 64 {d}/cloud-device.db; cat {d}/secret.key; echo probed"
            ),
            10_000,
        ),
        (
            "write",
            format!(
                "for f in {d}/workspaces/bobs/x {d}/x {d}/hub.db /usr/x /etc/x /x; do (echo x >> $f) 2>/dev/null && echo wrote $f; done; \
                 echo x > mine.txt; echo probed"
            ),
            10_000,
        ),
        (
            "net",
            format!(
                "for a in 127.0.0.1/{} 127.0.0.1/{fake_port} 169.254.169.254/80 1.1.1.1/443 10.0.0.1/80; do \
                 timeout 3 bash -c \"echo > /dev/tcp/$a\" 2>/dev/null && echo reached $a; done; echo probed",
                agent.port
            ),
            20_000,
        ),
        (
            "setsid",
            format!("setsid sh -c 'sleep 600; : {marker}' > /dev/null 2>&1 & echo started"),
            10_000,
        ),
        (
            "bomb",
            format!("b() {{ b | b & }}; b; sleep 600; : {marker}"),
            4_000,
        ),
        (
            "hog",
            "head -c 2000000000 /dev/zero | tail".to_owned(),
            20_000,
        ),
        ("endless", format!("while :; do :; done; : {marker}"), 2_000),
    ];
    // Root without a pids cgroup has no process limit (the server says so): a fork bomb would
    // take this machine, not the sandbox, so it is only thrown where a limit holds.
    let description = info["sandbox"]["description"].as_str().unwrap();
    let bomb_contained = !description.contains("processes NOT limited");
    for (id, cmd, t) in &probes {
        if *id == "bomb" && !bomb_contained {
            eprintln!("not throwing the fork bomb: {description}");
            fake.push(bash(id, "echo skipped", *t));
            continue;
        }
        fake.push(bash(id, cmd, *t));
    }
    // The file tools run outside the sandbox: links a command planted lead them nowhere.
    fake.push(bash(
        "links",
        &format!("ln -s {d} escape; ln -s {d}/hub.db db.link; echo linked"),
        5_000,
    ));
    fake.push(tool(
        "via-link-write",
        "write",
        json!({"path": "escape/x", "content": "pwned"}),
    ));
    fake.push(tool("via-link-read", "read", json!({"path": "db.link"})));
    fake.push(text("Done probing."));
    let (s, v) = api
        .call(
            "POST",
            "/api/workspaces",
            &alice,
            Some(json!({"id": "alices"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(
                json!({"id": "probe", "workspace": "alices", "message": "Look around.",
                        "permission_mode": "allow-all", "run": "cloud"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let started = Instant::now();
    let session = api
        .finished(&alice, "probe", Duration::from_secs(180))
        .await;
    assert_eq!(session["status"], "done", "{session}");
    assert!(
        session["sandbox"]
            .as_str()
            .unwrap()
            .starts_with("bubblewrap"),
        "{session}"
    );

    let (env_out, _) = result(&session, "env");
    assert!(
        !env_out.contains(PROVIDER_KEY) && !env_out.contains(GITHUB_TOKEN),
        "{env_out}"
    );
    let mut names: Vec<&str> = env_out
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["HOME", "LANG", "PATH", "PWD", "TERM", "TMPDIR", "USER"],
        "{env_out}"
    );

    let (read, _) = result(&session, "read");
    assert!(read.contains("probed"), "{read}");
    for private in ["bob-private-plans", "blob-private-bytes", "SQLite format"] {
        assert!(!read.contains(private), "{private} was read: {read}");
    }
    let listed: Vec<&str> = read.lines().collect();
    for name in ["hub.db", "bobs", "blobs", "cloud-device.db", "secret.key"] {
        assert!(!listed.contains(&name), "{name} is visible: {read}");
    }

    let (write, _) = result(&session, "write");
    assert!(
        write.contains("probed") && !write.contains("wrote"),
        "{write}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("workspaces/alices/mine.txt")).unwrap(),
        "x\n"
    );
    assert!(!data.join("workspaces/bobs/x").exists() && !data.join("x").exists());

    let (linked, _) = result(&session, "links");
    assert!(linked.contains("linked"), "{linked}");
    let (w, w_err) = result(&session, "via-link-write");
    assert!(w_err && !data.join("x").exists(), "{w}");
    let (r, r_err) = result(&session, "via-link-read");
    assert!(r_err && !r.contains("SQLite"), "{r}");

    let (net, _) = result(&session, "net");
    assert!(net.contains("probed") && !net.contains("reached"), "{net}");

    if bomb_contained {
        let (bomb, bomb_err) = result(&session, "bomb");
        assert!(
            bomb_err && (bomb.contains("timed out") || bomb.contains("signal 9")),
            "{bomb}"
        );
        assert!(
            bomb.contains("64 processes"),
            "the limits are reported: {bomb}"
        );
    }
    let (hog, hog_err) = result(&session, "hog");
    assert!(hog_err && hog.contains("memory"), "{hog}");
    let (endless, endless_err) = result(&session, "endless");
    assert!(endless_err && endless.contains("timed out"), "{endless}");
    // The timeouts held: nothing ran to the end of its sleep.
    assert!(started.elapsed() < Duration::from_secs(120));

    // Nothing of the run remains, not even the process that left its session.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with(&marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "survivors: {:?}",
            processes_with(&marker)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The model never saw the server's secrets either.
    for r in fake.requests() {
        let body = String::from_utf8_lossy(&r.raw_body);
        assert!(!body.contains(GITHUB_TOKEN));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_namespaces_commands_are_refused_unless_the_operator_opts_in() {
    let (tmp, data, alice) = hub_with_user("alice");
    let bwrap = broken_bwrap(tmp.path());
    let fake = FakeServer::start(vec![
        bash("refused", "echo should-not-run", 5_000),
        text("Could not run it."),
    ])
    .await
    .unwrap();
    let mut env = server_env(&fake);
    env.push(("JARVIS_BWRAP", bwrap.display().to_string()));
    let log = tmp.path().join("server.log");
    let agent = CloudAgent::start_logged(&data, 0, &env_refs(&env), "warn", &log).unwrap();
    let api = Client::new(&agent);
    let (_, info) = api.call("GET", "/api/server", &alice, None).await;
    assert_eq!(info["sandbox"]["confined"], false, "{info}");
    assert_eq!(info["sandbox"]["refusing"], true, "{info}");
    assert!(
        info["sandbox"]["description"]
            .as_str()
            .unwrap()
            .contains("No permissions"),
        "{info}"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("cannot sandbox commands"), "{said}");

    let (s, v) = api
        .call("POST", "/api/workspaces", &alice, Some(json!({"id": "aw"})))
        .await;
    assert_eq!(s, 200, "{v}");
    // An allow-all cloud session: refused up front, with the reason and the way out.
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "all", "workspace": "aw", "message": "Run it.",
                        "permission_mode": "allow-all", "run": "cloud"})),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("allow-all") && msg.contains("JARVIS_ALLOW_UNSANDBOXED"),
        "{v}"
    );
    // A session whose rules allow bash: the call itself is refused, the session goes on.
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(json!({"id": "ask", "workspace": "aw", "message": "Run it.",
                        "allow": ["bash"], "run": "cloud"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let session = api.finished(&alice, "ask", Duration::from_secs(60)).await;
    let (out, is_error) = result(&session, "refused");
    assert!(is_error && out.contains("refused on this server"), "{out}");
    assert!(!out.contains("should-not-run"));
    assert!(
        session["sandbox"].as_str().unwrap().starts_with("refusing"),
        "{session}"
    );
    drop(agent);

    // The operator accepts the risk: allowed, and said so in the log, the API and the session.
    let marker = format!("jarvis-unconfined-{:08x}", std::process::id());
    fake.push(bash(
        "opted",
        &format!(
            "env; setsid sh -c 'sleep 600; : {marker}' > /dev/null 2>&1 & echo ran-unconfined"
        ),
        5_000,
    ));
    fake.push(text("Ran."));
    env.push(("JARVIS_ALLOW_UNSANDBOXED", "1".into()));
    let agent = CloudAgent::start_logged(&data, 0, &env_refs(&env), "warn", &log).unwrap();
    let api = Client::new(&agent);
    let (_, info) = api.call("GET", "/api/server", &alice, None).await;
    let description = info["sandbox"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("UNCONFINED") && description.contains("other users' workspaces"),
        "{info}"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("RISK: commands of cloud sessions run without a sandbox"),
        "{said}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/sessions",
            &alice,
            Some(
                json!({"id": "opted", "workspace": "aw", "message": "Run it.",
                        "permission_mode": "allow-all", "run": "cloud"}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let session = api.finished(&alice, "opted", Duration::from_secs(60)).await;
    let (out, is_error) = result(&session, "opted");
    assert!(!is_error && out.contains("ran-unconfined"), "{out}");
    // Even unconfined: a clean environment, and where a cgroup holds the command (the
    // description says whether), a process that left its session still dies with the run.
    assert!(
        !out.contains(PROVIDER_KEY) && !out.contains(GITHUB_TOKEN),
        "{out}"
    );
    if !description.contains("setsid survives") {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_with(&marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "survivors: {:?}",
                processes_with(&marker)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        session["sandbox"]
            .as_str()
            .unwrap()
            .starts_with("UNCONFINED"),
        "{session}"
    );
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_reaches_only_the_process_that_names_it() {
    let (tmp, data, alice) = hub_with_user("alice");
    let bob = add_user(&data, "bob").unwrap();
    let secret = format!("s3cr3t-{:016x}", 0x5eed_u64 * std::process::id() as u64);
    let hash = {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(secret.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    };
    let fake = FakeServer::start(vec![
        // Alice's first session writes the workspace's configuration naming the secret…
        tool(
            "config",
            "write",
            json!({"path": ".jarvis/environment.toml", "content": "secrets = [\"DEPLOY_TOKEN\"]\n"}),
        ),
        text("Configured."),
        // …her second uses it, and tries to print it.
        bash(
            "use",
            "printf %s \"$DEPLOY_TOKEN\" | sha256sum; echo \"token=$DEPLOY_TOKEN\"; env | grep -c DEPLOY_TOKEN",
            10_000,
        ),
        text("Used."),
        // Bob's workspace names the same secret; his process gets nothing.
        tool(
            "bconfig",
            "write",
            json!({"path": ".jarvis/environment.toml", "content": "secrets = [\"DEPLOY_TOKEN\"]\n"}),
        ),
        text("Configured."),
        bash("bob", "echo \"bob sees [${DEPLOY_TOKEN:-nothing}]\"", 10_000),
        text("Done."),
    ])
    .await
    .unwrap();
    let env = server_env(&fake);
    let log = tmp.path().join("server.log");
    let agent = CloudAgent::start_logged(&data, 0, &env_refs(&env), "debug", &log).unwrap();
    let api = Client::new(&agent);
    for (who, ws) in [(&alice, "aw"), (&bob, "bw")] {
        let (s, v) = api
            .call("POST", "/api/workspaces", who, Some(json!({"id": ws})))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let put = json!({"value": secret});
    // Only the workspace's owner sets its secrets; only admins the server's.
    let (s, v) = api
        .call(
            "PUT",
            "/api/workspaces/aw/secrets/DEPLOY_TOKEN",
            &bob,
            Some(put.clone()),
        )
        .await;
    assert!(s == 403 || s == 404, "{s} {v}");
    let (s, v) = api
        .call(
            "PUT",
            "/api/secrets/server/DEPLOY_TOKEN",
            &alice,
            Some(put.clone()),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/api/workspaces/aw/secrets/DEPLOY_TOKEN",
            &alice,
            Some(put.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/api/secrets/user/DEPLOY_TOKEN",
            &alice,
            Some(put.clone()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(
            "PUT",
            "/api/workspaces/aw/secrets/PATH",
            &alice,
            Some(json!({"value": "/evil"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = api
        .call("GET", "/api/workspaces/aw/secrets", &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["secrets"][0]["name"], "DEPLOY_TOKEN", "{v}");
    let (s, v) = api
        .call("GET", "/api/workspaces/aw/secrets", &bob, None)
        .await;
    assert!(s == 403 || s == 404, "{s} {v}");

    for (who, id, ws) in [
        (&alice, "a1", "aw"),
        (&alice, "a2", "aw"),
        (&bob, "b1", "bw"),
        (&bob, "b2", "bw"),
    ] {
        let (s, v) = api
            .call(
                "POST",
                "/api/sessions",
                who,
                Some(json!({"id": id, "workspace": ws, "message": "Go.",
                            "permission_mode": "allow-all", "run": "cloud"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let session = api.finished(who, id, Duration::from_secs(60)).await;
        assert_eq!(session["status"], "done", "{session}");
    }
    let (_, a2) = api.call("GET", "/api/sessions/a2", &alice, None).await;
    let (used, is_error) = result(&a2, "use");
    assert!(!is_error, "{used}");
    assert!(used.contains(&hash), "the process got the secret: {used}");
    assert!(
        used.contains("token=[secret DEPLOY_TOKEN]"),
        "printed, it is redacted: {used}"
    );
    let (_, b2) = api.call("GET", "/api/sessions/b2", &bob, None).await;
    let (seen, _) = result(&b2, "bob");
    assert!(seen.contains("bob sees [nothing]"), "{seen}");

    // Audited, without the value.
    let admin_token = jarvis_testkit::create_token(&data, &["*"], false).unwrap();
    let (s, audit) = api.call("GET", "/api/audit", &admin_token, None).await;
    assert_eq!(s, 200, "{audit}");
    let audit_text = audit.to_string();
    assert!(
        audit_text.contains("secret.set") && audit_text.contains("workspace/aw/DEPLOY_TOKEN"),
        "{audit}"
    );
    for id in ["a1", "a2"] {
        api.call("GET", &format!("/api/sessions/{id}"), &alice, None)
            .await;
    }
    api.call("GET", "/api/workspaces/aw", &alice, None).await;
    api.call("GET", "/api/secrets/user", &alice, None).await;
    let (s, v) = api
        .call("DELETE", "/api/secrets/user/DEPLOY_TOKEN", &alice, None)
        .await;
    assert_eq!(s, 200, "{v}");
    agent.terminate(Duration::from_secs(20)).unwrap();

    // Nowhere else: not in any API response, the log, what the model was sent, or any file
    // of the data dir (documents, the hub's store and the cloud device's, workspaces).
    assert!(
        !api.responses().contains(&secret),
        "an API response holds the secret"
    );
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("DEBUG") || said.contains("INFO"),
        "the log was written"
    );
    assert!(!said.contains(&secret), "the log holds the secret");
    for r in fake.requests() {
        assert!(
            !contains(&r.raw_body, &secret),
            "the model was sent the secret"
        );
    }
    let mut files = Vec::new();
    files_under(&data, &mut files);
    assert!(files.iter().any(|(p, _)| p.ends_with("hub.db")));
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, &secret),
            "{} holds the secret",
            path.display()
        );
    }
}
