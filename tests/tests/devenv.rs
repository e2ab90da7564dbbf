//! The cloud copy as a dev environment, end to end: the real `jarvis-cloud` (bubblewrap where it
//! works here) and `jarvis` binaries, a fake model scripted with bash calls, a loopback
//! smart-HTTP git server (`git http-backend` behind a token check) and a fake GitHub REST API,
//! both reached by name only through the workspace's egress proxy.
//!
//! A fixture repository with a failing `node --test` and a commit no remote has continues in
//! the cloud: `git log` and `git status` there match the device; the agent fixes the bug, the
//! tests pass, it commits on `jarvis/<session>`, pushes with the user's token from the secret
//! store, opens a pull request whose head is that commit; Continue here brings the branch back
//! and leaves the user's own branch alone (and says it moved meanwhile).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_e2e::{CloudAgent, add_user};
use jarvis_testkit::cli::jarvis_with_fake;
use jarvis_testkit::fake::{FakeResponse, FakeServer, bash, reply, text};
use jarvis_testkit::http::call;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "ghp_test_token_4f1c9e";

fn git(dir: &Path, args: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("git {args}"))
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.test")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request as the loopback server read it.
struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut rest = buf[end..].to_vec();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut req = Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        // Chunked: size line, data, CRLF, … a zero size ends it.
        loop {
            while !rest.windows(2).any(|w| w == b"\r\n") {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            let i = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..i])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            rest.drain(..i + 2);
            while rest.len() < size + 2 {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            if size == 0 {
                break;
            }
            req.body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
    } else {
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while rest.len() < len {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        req.body = rest[..len].to_vec();
    }
    Some(req)
}

async fn respond(
    s: &mut tokio::net::TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body).await;
    let _ = s.shutdown().await;
}

/// What the fake forge saw.
#[derive(Default)]
struct Forge {
    pulls: Vec<Value>,
    git_requests: usize,
    unauthorized: usize,
}

/// A loopback "forge": smart HTTP git for `<root>/o/r.git` behind a token check, and the
/// GitHub REST route that opens a pull request (answered in the real shape, its head SHA read
/// from the repository).
async fn forge(root: PathBuf) -> (u16, Arc<Mutex<Forge>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Forge::default()));
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let (root, state) = (root.clone(), state.clone());
            tokio::spawn(async move {
                let Some(req) = read_request(&mut s).await else {
                    return;
                };
                if req.path.starts_with("/repos/") {
                    api(&mut s, &req, &root, &state).await;
                } else {
                    git_http(&mut s, &req, &root, &state).await;
                }
            });
        }
    });
    (port, seen)
}

async fn api(s: &mut tokio::net::TcpStream, req: &Request, root: &Path, state: &Mutex<Forge>) {
    let json_header = vec![("Content-Type".to_owned(), "application/json".to_owned())];
    if req.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        let body = json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"});
        return respond(
            s,
            "401 Unauthorized",
            &json_header,
            body.to_string().as_bytes(),
        )
        .await;
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let parts: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let (["repos", owner, repo, "pulls"], "POST") = (parts.as_slice(), req.method.as_str()) else {
        return respond(
            s,
            "404 Not Found",
            &json_header,
            br#"{"message":"Not Found"}"#,
        )
        .await;
    };
    let repo_dir = root.join(owner).join(format!("{repo}.git"));
    let sha = |branch: &str| {
        Command::new("git")
            .args([
                "rev-parse",
                "-q",
                "--verify",
                &format!("refs/heads/{branch}"),
            ])
            .current_dir(&repo_dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = body["head"].as_str().unwrap_or_default();
    let base = body["base"].as_str().unwrap_or_default();
    let (Some(head_sha), Some(base_sha)) = (sha(head), sha(base)) else {
        let err = json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]});
        return respond(
            s,
            "422 Unprocessable Entity",
            &json_header,
            err.to_string().as_bytes(),
        )
        .await;
    };
    let number = state.lock().unwrap().pulls.len() + 1;
    let pr = json!({
        "id": 1000 + number, "number": number, "state": "open", "draft": false,
        "title": body["title"], "body": body["body"],
        "url": format!("https://api.github.com/repos/{owner}/{repo}/pulls/{number}"),
        "html_url": format!("https://github.com/{owner}/{repo}/pull/{number}"),
        "head": {"ref": head, "sha": head_sha, "label": format!("{owner}:{head}")},
        "base": {"ref": base, "sha": base_sha, "label": format!("{owner}:{base}")},
        "user": {"login": "x-access-token"},
    });
    state.lock().unwrap().pulls.push(pr.clone());
    respond(s, "201 Created", &json_header, pr.to_string().as_bytes()).await;
}

async fn git_http(s: &mut tokio::net::TcpStream, req: &Request, root: &Path, state: &Mutex<Forge>) {
    let expected = format!(
        "Basic {}",
        base64(format!("x-access-token:{TOKEN}").as_bytes())
    );
    if req.header("authorization") != Some(expected.as_str()) {
        state.lock().unwrap().unauthorized += 1;
        let h = vec![(
            "WWW-Authenticate".to_owned(),
            "Basic realm=\"forge\"".to_owned(),
        )];
        return respond(s, "401 Unauthorized", &h, b"token required\n").await;
    }
    state.lock().unwrap().git_requests += 1;
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env(
            "CONTENT_TYPE",
            req.header("content-type").unwrap_or_default(),
        );
    if let Some(enc) = req.header("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(p) = req.header("git-protocol") {
        cmd.env("GIT_PROTOCOL", p);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = req.body.clone();
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    // CGI: headers, a blank line, the body.
    let o = out.stdout;
    let (head_len, sep) = o
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| o.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap_or((o.len(), 0));
    let head = String::from_utf8_lossy(&o[..head_len]).into_owned();
    let mut status = "200 OK".to_owned();
    let mut headers = Vec::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                status = v.trim().to_owned();
            } else {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    respond(s, &status, &headers, &o[(head_len + sep).min(o.len())..]).await;
}

fn run(mut cmd: Command) -> (String, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "command failed:\n{e}\n{o}");
    (o, e)
}

/// Waits (bounded) until the session satisfies `done`; returns it.
async fn session_until(
    base: &str,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (s, v) = call(base, "GET", &format!("/api/sessions/{id}"), token, None).await;
        if s == 200 && done(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for {what}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(session: &Value, role: &str) -> Vec<String> {
    session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == role)
        .flat_map(|m| m["blocks"].as_array().unwrap().clone())
        .filter_map(|b| {
            b["text"]
                .as_str()
                .or(b["content"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

fn tool_results(session: &Value) -> Vec<String> {
    session["messages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["blocks"].as_array().unwrap().clone())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| b["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repository_continues_in_the_cloud_is_fixed_pushed_and_comes_back() {
    if jarvis_agent::sandbox::Sandbox::probe_bubblewrap(&Default::default()).is_err() {
        eprintln!(
            "skipping: bubblewrap cannot create namespaces here (the egress proxy needs them)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // The forge: a bare repository the device's `main` is pushed to.
    let forge_root = tmp.path().join("forge");
    std::fs::create_dir_all(forge_root.join("o")).unwrap();
    git(&forge_root.join("o"), "init -q --bare -b main r.git");
    let (forge_port, seen) = forge(forge_root.clone()).await;

    // The device's repository: pushed once, then a local commit no remote has, a staged file
    // and an untracked one.
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(dev.join(".jarvis")).unwrap();
    std::fs::write(dev.join("math.js"), "exports.add = (a, b) => a - b;\n").unwrap();
    std::fs::write(
        dev.join("math.test.js"),
        "const test = require('node:test');\nconst assert = require('node:assert');\nconst { add } = require('./math.js');\ntest('adds', () => assert.strictEqual(add(2, 3), 5));\n",
    )
    .unwrap();
    let environment = "secrets = [\"GITHUB_TOKEN\"]\n\n[network]\npolicy = \"allow\"\nallow = [\"git.test\", \"api.github.test\"]\n";
    std::fs::write(dev.join(".jarvis/environment.toml"), environment).unwrap();
    git(
        &dev,
        "init -q -b main && git add -A && git commit -qm 'Add math'",
    );
    git(
        &dev,
        &format!("push -q {} main", forge_root.join("o/r.git").display()),
    );
    git(&dev, "remote add origin http://git.test/o/r.git");
    std::fs::write(dev.join("README.md"), "# math\n").unwrap();
    git(
        &dev,
        "add README.md && git commit -qm 'Local only: a README'",
    );
    std::fs::write(dev.join("docs.md"), "staged\n").unwrap();
    git(&dev, "add docs.md");
    std::fs::write(dev.join("scratch.txt"), "untracked\n").unwrap();
    let local_main = git(&dev, "rev-parse main").trim().to_owned();

    let fake = FakeServer::start(vec![
        // On the device: nothing to do yet.
        text("I will continue in the cloud."),
        // In the cloud.
        bash("c1", "node --test 2>&1 | grep -E '^# (pass|fail)'"),
        bash("c2", "sed -i 's/a - b/a + b/' math.js && node --test 2>&1 | grep -E '^# (pass|fail)'"),
        bash("c3", "git commit -qam 'Fix add' && git rev-parse HEAD && git branch --show-current"),
        bash("c4", "GIT_TERMINAL_PROMPT=0 git push -q origin HEAD:refs/heads/nobody 2>&1; echo without-token=$?"),
        bash(
            "c5",
            "GIT_TERMINAL_PROMPT=0 git -c http.extraHeader=\"Authorization: Basic $(printf 'x-access-token:%s' \"$GITHUB_TOKEN\" | base64 -w0)\" push -q origin \"HEAD:refs/heads/$JARVIS_GIT_BRANCH\" 2>&1; echo pushed=$?",
        ),
        bash(
            "c6",
            "curl -sS -X POST -H \"Authorization: Bearer $GITHUB_TOKEN\" -H 'Accept: application/vnd.github+json' \"$GITHUB_API_URL/repos/o/r/pulls\" -d \"{\\\"title\\\":\\\"Fix add\\\",\\\"head\\\":\\\"$JARVIS_GIT_BRANCH\\\",\\\"base\\\":\\\"$JARVIS_GIT_BASE\\\"}\"",
        ),
        // A name the allow-list does not hold (pinned to the same loopback forge).
        bash("c7", "curl -sS http://other.test/repos/o/r/pulls; echo"),
        text("Fixed, pushed, and opened a pull request."),
    ])
    .await
    .unwrap();

    let data = tmp.path().join("hub");
    let alice = add_user(&data, "alice").unwrap();
    let pins = format!(
        "git.test=127.0.0.1:{forge_port},api.github.test=127.0.0.1:{forge_port},other.test=127.0.0.1:{forge_port}"
    );
    let env = [
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "bwrap".to_owned()),
        ("JARVIS_EGRESS_TEST", "1".to_owned()),
        ("JARVIS_EGRESS_RESOLVE", pins),
        ("JARVIS_GITHUB_API", "http://api.github.test".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = CloudAgent::start_with_env(&data, 0, &env).unwrap();
    let base = format!("http://127.0.0.1:{}", agent.port);
    let home = tmp.path().join("home");
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["login", &base, "--token", &alice]);
        c
    });
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "g1",
            "--workspace",
            "mathws",
            "--permission-mode",
            "allow-all",
            "--dir",
        ])
        .arg(&dev)
        .arg("Fix the failing test, then push and open a pull request.");
        c
    });
    // The owner's token in the secret store; the environment file approved by its owner.
    let (s, v) = call(
        &base,
        "PUT",
        "/api/secrets/user/GITHUB_TOKEN",
        &alice,
        Some(json!({"value": TOKEN})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let hash = {
        use sha2_hash::hex_sha256;
        hex_sha256(environment)
    };
    let (s, v) = call(
        &base,
        "POST",
        "/api/workspaces/mathws/config/approve",
        &alice,
        Some(json!({"kind": "environment", "path": ".jarvis/environment.toml", "hash": hash})),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Continue in cloud: the repository is rebuilt there.
    let (out, _) = run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["handoff", "g1", "--to", "cloud", "--dir"])
            .arg(&dev);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    let v = session_until(&base, &alice, "g1", "the repository note", |v| {
        texts(v, "system").iter().any(|t| t.starts_with("Git:"))
    })
    .await;
    let note = texts(&v, "system")
        .into_iter()
        .find(|t| t.starts_with("Git:"))
        .unwrap();
    assert!(note.contains("came with the session"), "{note}");
    let cloud = data.join("workspaces/mathws");
    assert_eq!(
        git(&cloud, "log --format='%H %s'"),
        git(&dev, "log --format='%H %s'")
    );
    assert_eq!(
        git(&cloud, "status --porcelain"),
        git(&dev, "status --porcelain")
    );
    assert_eq!(git(&cloud, "branch --show-current").trim(), "jarvis/g1");
    assert!(git(&cloud, "status --porcelain").contains("A  docs.md"));

    // The user commits on main meanwhile (a file of its own).
    std::fs::write(dev.join("later.txt"), "later\n").unwrap();
    git(&dev, "add later.txt && git commit -qm 'Meanwhile on main'");
    let moved_main = git(&dev, "rev-parse main").trim().to_owned();

    let (s, v) = call(
        &base,
        "POST",
        "/api/sessions/g1/messages",
        &alice,
        Some(json!({"text": "Go ahead."})),
    )
    .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    let done = session_until(&base, &alice, "g1", "the cloud run", |v| {
        v["status"] == "done"
            && texts(v, "assistant")
                .iter()
                .any(|t| t.contains("pull request"))
    })
    .await;
    let results = tool_results(&done);
    assert_eq!(results.len(), 7, "{results:#?}");
    assert!(
        results[6].contains("not allowed") && !results[6].contains("credentials"),
        "a host off the allow-list answered: {}",
        results[6]
    );
    assert!(
        texts(&done, "system")
            .iter()
            .any(|t| t.starts_with("Network: network allow-list: git.test, api.github.test")),
        "the policy is not shown in the session"
    );
    assert!(
        results[0].contains("# fail 1"),
        "the test did not fail first: {}",
        results[0]
    );
    assert!(
        results[1].contains("# pass 1") && results[1].contains("# fail 0"),
        "{}",
        results[1]
    );
    let commit = results[2].lines().next().unwrap().trim().to_owned();
    assert_eq!(
        results[2].lines().nth(1).map(str::trim),
        Some("jarvis/g1"),
        "{}",
        results[2]
    );
    assert!(
        !results[3].contains("without-token=0"),
        "pushed without the token: {}",
        results[3]
    );
    assert!(results[4].contains("pushed=0"), "{}", results[4]);
    assert!(
        !results.iter().any(|r| r.contains(TOKEN)),
        "the token leaked into the transcript"
    );

    // The forge has the commit on the agent's branch and the pull request names it.
    assert_eq!(
        git(
            &forge_root.join("o/r.git"),
            "rev-parse refs/heads/jarvis/g1"
        )
        .trim(),
        commit
    );
    {
        let f = seen.lock().unwrap();
        assert!(f.unauthorized > 0, "the forge never asked for the token");
        assert_eq!(f.pulls.len(), 1, "{:?}", f.pulls);
        assert_eq!(f.pulls[0]["head"]["ref"], "jarvis/g1");
        assert_eq!(f.pulls[0]["head"]["sha"], commit.as_str());
        assert_eq!(f.pulls[0]["base"]["ref"], "main");
    }
    assert!(
        results[5].contains("\"number\":1") || results[5].contains("\"number\": 1"),
        "{}",
        results[5]
    );

    // Continue here: the branch comes back; the user's main is untouched, and said to have moved.
    let (_, err) = run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["handoff", "g1", "--to", "here", "--dir"]).arg(&dev);
        c
    });
    assert!(err.contains("on branch jarvis/g1"), "{err}");
    assert!(err.contains("main moved"), "{err}");
    assert_eq!(git(&dev, "rev-parse jarvis/g1").trim(), commit);
    assert_eq!(git(&dev, "rev-parse main").trim(), moved_main);
    assert_ne!(moved_main, local_main);
    assert_eq!(git(&dev, "branch --show-current").trim(), "main");
    assert_eq!(
        git(&dev, "log --format=%s -2 jarvis/g1"),
        "Fix add\nLocal only: a README\n"
    );
}

/// SHA-256 hex, as the approvals API keys a file's content (computed with the system tool so
/// the test does not share the server's code for it).
mod sha2_hash {
    pub fn hex_sha256(text: &str) -> String {
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
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

/// Approves the current content of a workspace file once the hub has it (the cloud's copy
/// reaches the hub through its mirror: polled with a deadline).
async fn approve(base: &str, token: &str, workspace: &str, path: &str, text: &str) {
    let hash = sha2_hash::hex_sha256(text);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = call(
            base,
            "POST",
            &format!("/api/workspaces/{workspace}/config/approve"),
            token,
            Some(json!({"kind": "environment", "path": path, "hash": hash})),
        )
        .await;
        if s == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "approving {path}: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a message and waits until the cloud answered it with `expect`.
async fn turn(base: &str, token: &str, id: &str, message: &str, expect: &str) -> Value {
    let (s, v) = call(
        base,
        "POST",
        &format!("/api/sessions/{id}/messages"),
        token,
        Some(json!({"text": message})),
    )
    .await;
    assert!(s == 200 || s == 202, "{s} {v}");
    session_until(base, token, id, expect, |v| {
        v["status"] == "done" && texts(v, "assistant").last().is_some_and(|t| t == expect)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_setup_runs_once_survives_a_restart_and_an_edit_waits_for_an_owner() {
    if jarvis_agent::sandbox::Sandbox::probe_bubblewrap(&Default::default()).is_err() {
        eprintln!("skipping: bubblewrap cannot create namespaces here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(dev.join(".jarvis")).unwrap();
    let environment = "setup = \"mkdir -p node_modules/dep && echo ran >> node_modules/.runs && echo v1 > node_modules/dep/index.js\"\ncache = [\"node_modules\"]\n\n[env]\nGREETING = \"hello from the environment\"\n";
    std::fs::write(dev.join(".jarvis/environment.toml"), environment).unwrap();
    std::fs::write(dev.join("app.js"), "console.log('app')\n").unwrap();
    let count = "wc -l < node_modules/.runs; cat node_modules/dep/index.js";
    let fake = FakeServer::start(vec![
        text("On the device."),
        // The file has no [network]: off, even for a name the proxy would pin to a live server.
        bash(
            "t1",
            &format!(
                "{count}; echo \"$GREETING\"; curl -sS --max-time 5 http://pkg.test/ > /dev/null 2>&1 && echo reached || echo unreachable"
            ),
        ),
        text("one"),
        bash("t2", count),
        text("two"),
        // An editor (here the agent itself) changes the setup.
        bash(
            "t3",
            "sed -i 's/echo v1/echo v2/' .jarvis/environment.toml && echo edited",
        ),
        text("three"),
        bash("t4", count),
        text("four"),
        bash("t5", count),
        text("five"),
    ])
    .await
    .unwrap();
    let data = tmp.path().join("hub");
    let alice = add_user(&data, "alice").unwrap();
    // A live loopback server (the forge answers anything) the policy must keep out of reach.
    let (live, _) = forge(tmp.path().join("none")).await;
    let env = [
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "bwrap".to_owned()),
        ("JARVIS_EGRESS_TEST", "1".to_owned()),
        (
            "JARVIS_EGRESS_RESOLVE",
            format!("pkg.test=127.0.0.1:{live}"),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = CloudAgent::start_with_env(&data, 0, &env).unwrap();
    let port = agent.port;
    let base = format!("http://127.0.0.1:{port}");
    let home = tmp.path().join("home");
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["login", &base, "--token", &alice]);
        c
    });
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "e1",
            "--workspace",
            "envws",
            "--permission-mode",
            "allow-all",
            "--dir",
        ])
        .arg(&dev)
        .arg("Set up.");
        c
    });
    approve(
        &base,
        &alice,
        "envws",
        ".jarvis/environment.toml",
        environment,
    )
    .await;
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["handoff", "e1", "--to", "cloud", "--dir"])
            .arg(&dev);
        c
    });

    let v = turn(&base, &alice, "e1", "Check the setup.", "one").await;
    let results = tool_results(&v);
    assert_eq!(
        results.last().unwrap().trim(),
        "1\nv1\nhello from the environment\nunreachable",
        "{results:?}"
    );
    assert!(
        texts(&v, "system")
            .iter()
            .any(|t| t.starts_with("Setup: ran the setup"))
    );
    // The dependency folder lives in the server's cache, not in the synced workspace.
    let ws = data.join("workspaces/envws");
    assert!(!ws.join("node_modules/.runs").exists());
    assert!(data.join("devenv/cache/envws/node_modules/.runs").exists());

    // A restart: the folder is reused, the setup does not run again.
    agent.terminate(Duration::from_secs(10)).unwrap();
    let agent = CloudAgent::start_with_env(&data, port, &env).unwrap();
    let v = turn(&base, &alice, "e1", "Again.", "two").await;
    assert_eq!(tool_results(&v).last().unwrap().trim(), "1\nv1");

    // The file changes: nothing runs until an owner approves the new content.
    turn(&base, &alice, "e1", "Change the setup.", "three").await;
    let v = turn(&base, &alice, "e1", "And now?", "four").await;
    assert_eq!(tool_results(&v).last().unwrap().trim(), "1\nv1");
    assert!(
        texts(&v, "system")
            .iter()
            .any(|t| t.contains("waits for an owner's approval")),
        "{:?}",
        texts(&v, "system")
    );
    let edited = environment.replace("echo v1", "echo v2");
    assert_eq!(
        std::fs::read_to_string(ws.join(".jarvis/environment.toml")).unwrap(),
        edited
    );
    approve(&base, &alice, "envws", ".jarvis/environment.toml", &edited).await;
    let v = turn(&base, &alice, "e1", "Approved.", "five").await;
    assert_eq!(tool_results(&v).last().unwrap().trim(), "2\nv2");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_device_that_yields_to_the_cloud_sends_its_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("a.txt"), "a\n").unwrap();
    git(&dev, "init -q -b work && git add -A && git commit -qm one");
    std::fs::write(dev.join("b.txt"), "b\n").unwrap();
    git(
        &dev,
        "add b.txt && git commit -qm two && echo c > c.txt && git add c.txt",
    );
    let fake = FakeServer::start(vec![
        // Streams for seconds on the device: the handoff cuts it.
        FakeResponse::sse(
            &reply(&"working on it ".repeat(80), &[], (10, 5, 0, 0)),
            &[24],
        )
        .with_delay(Duration::from_millis(50)),
        text("Done in the cloud."),
    ])
    .await
    .unwrap();
    let data = tmp.path().join("hub");
    let alice = add_user(&data, "alice").unwrap();
    let env = [
        ("ANTHROPIC_BASE_URL", fake.url()),
        ("ANTHROPIC_API_KEY", "test-key".to_owned()),
        ("JARVIS_SANDBOX", "limits".to_owned()),
        // Unconfined by choice: this test is about git, not containment (see sandbox.rs).
        ("JARVIS_ALLOW_UNSANDBOXED", "1".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let agent = CloudAgent::start_with_env(&data, 0, &env).unwrap();
    let base = format!("http://127.0.0.1:{}", agent.port);
    let home = tmp.path().join("home");
    run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["login", &base, "--token", &alice]);
        c
    });
    let mut device = {
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args([
            "run",
            "--session",
            "y1",
            "--workspace",
            "yws",
            "--permission-mode",
            "allow-all",
            "--dir",
        ])
        .arg(&dev)
        .arg("Work.")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c.spawn().unwrap()
    };
    session_until(&base, &alice, "y1", "the device streaming", |v| {
        texts(v, "assistant")
            .iter()
            .any(|t| t.contains("working on it"))
    })
    .await;
    // No --dir: the running device yields, and sends its repository as it does.
    let (out, _) = run({
        let mut c = jarvis_with_fake(&home, &fake.url());
        c.args(["handoff", "y1", "--to", "cloud"]);
        c
    });
    assert!(out.contains("now runs on cloud"), "{out}");
    let v = session_until(&base, &alice, "y1", "the repository note", |v| {
        texts(v, "system").iter().any(|t| t.starts_with("Git:"))
    })
    .await;
    let note = texts(&v, "system")
        .into_iter()
        .find(|t| t.starts_with("Git:"))
        .unwrap();
    assert!(
        note.contains("came with the session") && note.contains("from work"),
        "{note}"
    );
    let cloud = data.join("workspaces/yws");
    assert_eq!(git(&cloud, "log --format=%H"), git(&dev, "log --format=%H"));
    assert_eq!(
        git(&cloud, "status --porcelain"),
        git(&dev, "status --porcelain")
    );
    assert_eq!(git(&cloud, "branch --show-current").trim(), "jarvis/y1");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while device.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the device did not yield"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(agent);
}
