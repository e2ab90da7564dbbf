//! A device rate-limited by the hub waits as the hub says (`429` + `Retry-After`) and goes on:
//! with a hub that allows a token two requests in a burst and two a second, a whole `jarvis
//! run` in connected mode (who am I, workspace, session, lease, settings, rules, release…)
//! still ends normally, and the same token's raw burst shows the hub really was limiting.
#![allow(clippy::unwrap_used)]

use jarvis_e2e::{CloudAgent, create_token};
use jarvis_testkit::cli::jarvis_with_fake;
use jarvis_testkit::fake::{FakeResponse, FakeServer, reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_device_waits_and_its_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let token = create_token(&data, &["*"], false).unwrap();
    let agent = CloudAgent::start_with_env(
        &data,
        0,
        &[("JARVIS_RATE_BURST", "2"), ("JARVIS_RATE_PER_SECOND", "2")],
    )
    .unwrap();
    let fake = FakeServer::start(vec![FakeResponse::sse(
        &reply("Finished within the limit.", &[], (10, 5, 0, 0)),
        &[],
    )])
    .await
    .unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("limited");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.md"), "# notes\n").unwrap();
    let hub = format!("http://127.0.0.1:{}", agent.port);
    let login = jarvis_with_fake(&home, &fake.url())
        .args(["login", &hub, "--token", &token])
        .output()
        .unwrap();
    assert!(login.status.success());

    let run = tokio::task::spawn_blocking({
        let (home, dir, fake) = (home.clone(), dir.clone(), fake.url());
        move || {
            jarvis_with_fake(&home, &fake)
                // The device says at debug level when it waits for the limiter.
                .env("RUST_LOG", "warn,jarvis_device=debug")
                .arg("run")
                .arg("--dir")
                .arg(&dir)
                .args(["--session", "ratelimited00001", "say hello"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Finished within the limit."), "{stdout}");
    assert_eq!(fake.requests().len(), 1);
    // The run made more calls than the limit allows, was refused, waited, and went on.
    assert!(
        stderr.contains("rate-limited by the hub; waiting"),
        "the hub never limited the run:\n{stderr}"
    );

    // The limiter is real: the same token's raw burst is refused with a Retry-After.
    let http = reqwest::Client::new();
    let mut limited = None;
    for _ in 0..10 {
        let r = http
            .get(agent.http_url("/api/me"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = r.headers().get("retry-after").cloned();
            break;
        }
    }
    assert!(limited.is_some(), "ten quick requests were never limited");
}
