//! The container image, as far as it can be checked without a Docker engine: the real
//! `deploy/entrypoint.sh` starts the real `jarvis-cloud serve` with the environment the
//! Dockerfile sets, drops to the image's uid when started as root (as on Fly, Railway and
//! Render, whose disks mount root-owned), and `jarvis-cloud healthcheck` — the image's
//! HEALTHCHECK — tells a serving process from a stopped one.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jarvis_testkit::{binary, http_get};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `ENV` assignments of the Dockerfile's last stage, continuation lines joined.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().unwrap();
    let mut env = Vec::new();
    for line in last_stage.lines() {
        if let Some(rest) = line.trim().strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    env
}

fn healthcheck(port: u16) -> std::process::Output {
    Command::new(binary("jarvis-cloud"))
        .arg("healthcheck")
        .env("PORT", port.to_string())
        .output()
        .unwrap()
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn image_entrypoint_serves_with_the_dockerfile_environment_and_passes_its_healthcheck() {
    let env = dockerfile_env();
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("JARVIS_DATA_DIR").as_deref(), Some("/data"));
    assert_eq!(get("JARVIS_HOST").as_deref(), Some("0.0.0.0"));
    let image_port: u16 = get("PORT").unwrap().parse().unwrap();
    assert!(image_port > 0);

    let tmp = tempfile::tempdir().unwrap();
    // The image user must be able to reach the data dir through its parents.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    // Nothing is listening yet: the healthcheck fails.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = probe.local_addr().unwrap().port();
    drop(probe);
    assert!(!healthcheck(free).status.success());

    let bin_dir = binary("jarvis-cloud").parent().unwrap().to_path_buf();
    let mut cmd = Command::new(repo().join("deploy/entrypoint.sh"));
    cmd.env_clear();
    for (k, v) in &env {
        cmd.env(k, v);
    }
    // Where the image has /data and /home/jarvis, this test has temporary folders; the port is
    // 0 so parallel tests never collide. Everything else is the image's environment.
    cmd.env("JARVIS_DATA_DIR", &data)
        .env("HOME", &home)
        .env("PORT", "0")
        .env("JARVIS_UI_DIR", tmp.path().join("no-ui"))
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()),
        )
        .args(["jarvis-cloud", "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    let port: u16 = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let addr: std::net::SocketAddr = addr.parse().unwrap();
                    // The image listens on every interface, not only loopback.
                    assert!(addr.ip().is_unspecified(), "listening on {addr}");
                    break addr.port();
                }
                lines.push(line);
            }
            Err(_) => {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
                        .unwrap();
                    panic!("entrypoint exited with {status}: {lines:?}\n{err}");
                }
                assert!(Instant::now() < deadline, "no listening line: {lines:?}");
            }
        }
    };
    // Logs are JSON in the image (JARVIS_LOG_FORMAT=json): drain stderr and check one line.
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = etx.send(line);
        }
    });
    let log = erx.recv_timeout(Duration::from_secs(10)).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&log).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {log}"));
    assert!(parsed.get("level").is_some(), "{log}");

    let checked = healthcheck(port);
    assert!(
        checked.status.success(),
        "healthcheck failed: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(http_get(port, "/healthz").await.unwrap().0, 200);

    // Started as root, the server runs as the image's jarvis user and owns what it writes.
    let me = uid_of(std::process::id());
    if me == 0 {
        assert_eq!(uid_of(child.id()), 10001, "the server must not run as root");
        let db = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name().to_string_lossy().ends_with(".db"))
            .expect("a database in the data dir");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(db.metadata().unwrap().uid(), 10001);
        assert_eq!(std::fs::metadata(&data).unwrap().uid(), 10001);
    } else {
        assert_eq!(uid_of(child.id()), me);
    }

    // SIGTERM (what every platform sends on deploy) drains and exits cleanly.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(!healthcheck(port).status.success());
}
