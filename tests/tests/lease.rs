//! A device renews its lease at a fraction of the time the hub gives it, whatever the hub's
//! TTL: with a 2 s lease, a `jarvis run` whose tool call takes 6 s keeps its lease and ends
//! normally, and no other device can take the session meanwhile (a device that renewed every
//! fixed 5 s let its lease lapse: another device took the session in the middle of the call).
#![allow(clippy::unwrap_used)]

use jarvis_testkit::cli::{jarvis_with_fake as jarvis, login};
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};
use jarvis_testkit::{CloudAgent, create_token, hub_with_token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_second_lease_survives_a_six_second_tool_call() {
    let (tmp, data, token) = hub_with_token(&["*"]);
    let agent = CloudAgent::start_with_env(&data, 0, &[("JARVIS_LEASE_TTL_MS", "2000")]).unwrap();
    let fake = FakeServer::start(vec![
        FakeResponse::sse(
            &reply(
                "Running the slow step.",
                &[(
                    "t1",
                    "bash",
                    json!({"command": "sleep 6 && echo slow step done"}),
                )],
                (10, 5, 0, 0),
            ),
            &[],
        ),
        FakeResponse::sse(&reply("All done.", &[], (10, 5, 0, 0)), &[]),
    ])
    .await
    .unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    login(&home, &agent.base(), &token);

    let run = jarvis(&home, &fake.url())
        .arg("run")
        .arg("--dir")
        .arg(&dir)
        .args(["--session", "leasetest0000001"])
        .args(["--permission-mode", "allow-all", "do the slow step"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Another device of the same user keeps trying to take the session while the tool runs.
    let other = create_token(&data, &["*"], false).unwrap();
    let http = reqwest::Client::new();
    let url = agent.http_url("/api/sessions/leasetest0000001/lease");
    // From the moment the run holds the lease (before, a free lease is anyone's to take).
    let held = std::time::Instant::now();
    loop {
        let resp = http.get(&url).bearer_auth(&other).send().await.unwrap();
        if resp.status().is_success() {
            let lease: serde_json::Value = resp.json().await.unwrap();
            if lease["device"].is_string() {
                break;
            }
        }
        assert!(
            held.elapsed() < std::time::Duration::from_secs(30),
            "the run never took the lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let start = std::time::Instant::now();
    let mut tries = 0;
    while start.elapsed() < std::time::Duration::from_secs(6) {
        let resp = http
            .post(&url)
            .bearer_auth(&other)
            .json(&json!({"op": "acquire"}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_eq!(
            status,
            409,
            "another device took the lease after {:?}: {}",
            start.elapsed(),
            resp.text().await.unwrap_or_default()
        );
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        tries > 10,
        "only {tries} acquisition attempts reached the session"
    );
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("All done."), "{stdout}");
    assert!(!stderr.contains("lease is lost"), "{stderr}");
    // The tool's result reached the model: the run was not fenced mid-call.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].body.to_string().contains("slow step done"),
        "{}",
        requests[1].body
    );
}
