//! The cloud process harness: starts the real `jarvis-cloud` on port 0, makes users and tokens
//! with its CLI, and talks to it as a client would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::fake::FakeServer;

/// A binary built by this workspace, next to the test executable's `deps/` folder. Every test
/// executable of the workspace (any crate's `tests/`, the bench) sits in `target/<profile>/deps/`,
/// so this finds `target/<profile>/<name>` from whichever crate calls it; `JARVIS_BIN_DIR`
/// overrides it.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("JARVIS_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join(name)
}

/// `jarvis-cloud token create` for the admin, returning the token.
pub fn create_token(data_dir: &Path, scopes: &[&str], read_only: bool) -> Result<String> {
    create_user_token(data_dir, None, scopes, read_only)
}

/// `jarvis-cloud token create`, for `user` (name or id) or the admin; returns the token.
pub fn create_user_token(
    data_dir: &Path,
    user: Option<&str>,
    scopes: &[&str],
    read_only: bool,
) -> Result<String> {
    let mut cmd = Command::new(binary("jarvis-cloud"));
    cmd.arg("token")
        .arg("create")
        .arg("--data-dir")
        .arg(data_dir);
    for s in scopes {
        cmd.arg("--scope").arg(s);
    }
    if read_only {
        cmd.arg("--read-only");
    }
    if let Some(u) = user {
        cmd.arg("--user").arg(u).arg("--label").arg("second");
    }
    let out = cmd.output().context("running jarvis-cloud token create")?;
    if !out.status.success() {
        bail!(
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    stdout
        .lines()
        .last()
        .map(str::to_owned)
        .context("token create printed nothing")
}

/// How to start a [`CloudAgent`]: its environment (a fake model, the sandbox mode, limits) and
/// log. From [`CloudAgent::options`].
#[derive(Clone)]
pub struct CloudOptions {
    data_dir: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    log: Option<(String, PathBuf)>,
}

impl CloudOptions {
    /// The Anthropic provider pointed at `fake`, with a dummy key.
    pub fn fake_model(self, fake: &FakeServer) -> Self {
        self.env("ANTHROPIC_BASE_URL", &fake.url())
            .env("ANTHROPIC_API_KEY", "test-key")
    }

    /// Commands run unconfined (`JARVIS_SANDBOX=limits` and the operator's opt-in): for tests
    /// about something other than containment, on machines without bubblewrap (see
    /// `tests/tests/sandbox.rs` for containment itself).
    pub fn unconfined(self) -> Self {
        self.env("JARVIS_SANDBOX", "limits")
            .env("JARVIS_ALLOW_UNSANDBOXED", "1")
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The server's log at `level` appended to `path` (for tests that search it).
    pub fn log(mut self, level: &str, path: &Path) -> Self {
        self.log = Some((level.to_owned(), path.to_path_buf()));
        self
    }

    pub fn start(self) -> Result<CloudAgent> {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut agent = match &self.log {
            Some((level, path)) => {
                CloudAgent::start_logged(&self.data_dir, self.port, &env, level, path)
            }
            None => CloudAgent::start_with_env(&self.data_dir, self.port, &env),
        }?;
        agent.options = Some(self.port(agent.port));
        Ok(agent)
    }
}

/// A running `jarvis-cloud serve`; killed when dropped.
pub struct CloudAgent {
    child: Child,
    /// How it was started, when through [`CloudOptions`] (see [`CloudAgent::again`]).
    options: Option<CloudOptions>,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl CloudAgent {
    /// Options for starting the server on `data_dir`, on a free port unless set.
    pub fn options(data_dir: &Path) -> CloudOptions {
        CloudOptions {
            data_dir: data_dir.to_path_buf(),
            port: 0,
            env: Vec::new(),
            log: None,
        }
    }

    /// Starts the server with its model at `fake` (the common case of [`options`](Self::options)).
    pub fn with_fake(data_dir: &Path, fake: &FakeServer) -> Result<Self> {
        Self::options(data_dir).fake_model(fake).start()
    }

    /// [`with_fake`](Self::with_fake), commands run unconfined ([`CloudOptions::unconfined`]).
    pub fn unconfined_with_fake(data_dir: &Path, fake: &FakeServer) -> Result<Self> {
        Self::options(data_dir)
            .fake_model(fake)
            .unconfined()
            .start()
    }

    /// The options this server was started with, on the port it got: after a kill or a
    /// SIGTERM, `.start()` brings the same server back on the same address (devices and
    /// sessions keep their URLs). Only for servers started through [`CloudOptions`].
    pub fn again(&self) -> CloudOptions {
        self.options.clone().unwrap_or_else(|| {
            panic!("again(): start the server with CloudAgent::options to restart it")
        })
    }

    /// An HTTP API client of this server.
    pub fn api(&self) -> crate::http::Api {
        crate::http::Api::of(self)
    }

    /// Starts the server on a free port (0) or the given one, and waits until it listens.
    pub fn start(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with_env(data_dir, port, &[])
    }

    /// As [`start`](Self::start), with extra environment (provider settings, limits).
    pub fn start_with_env(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn(data_dir, port, env, "warn", Stdio::inherit())
    }

    /// As [`start_with_env`](Self::start_with_env), with the log at `level` written to `log`
    /// (for tests that search the log).
    pub fn start_logged(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        level: &str,
        log: &Path,
    ) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        Self::spawn(data_dir, port, env, level, Stdio::from(file))
    }

    fn spawn(
        data_dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        level: &str,
        stderr: Stdio,
    ) -> Result<Self> {
        let mut child = Command::new(binary("jarvis-cloud"))
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .arg("serve")
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary("jarvis-cloud").display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                bail!("jarvis-cloud did not report a listening address within 30 s");
            }
        };
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("bad listening address")?;
        Ok(Self {
            child,
            options: None,
            port,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn sync_url(&self) -> String {
        format!("ws://127.0.0.1:{}/sync", self.port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `http://127.0.0.1:<port>`, the base the HTTP helpers and `jarvis login` take.
    pub fn base(&self) -> String {
        self.http_url("")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("jarvis-cloud did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for CloudAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback; returns (status, body). Enough for health and metrics
/// checks without pulling an HTTP client into the tests.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    http_get_as(port, path, None).await
}

/// [`http_get`] with `Authorization: Bearer <token>` (`/metrics` needs an admin user's token
/// whose scopes cover `metrics`).
pub async fn http_get_as(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A fresh temporary folder, the hub's data dir in it (`<tmp>/hub`, not started), and user
/// `name` made there: (folder, data dir, the user's token). Panics on failure.
pub fn hub_with_user(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let data = tmp.path().join("hub");
    let token = add_user(&data, name).unwrap_or_else(|e| panic!("adding {name}: {e:#}"));
    (tmp, data, token)
}

/// [`hub_with_user`] with an admin token of `scopes` instead of a user: (folder, data dir,
/// token).
pub fn hub_with_token(scopes: &[&str]) -> (tempfile::TempDir, PathBuf, String) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let data = tmp.path().join("hub");
    let token = create_token(&data, scopes, false)
        .unwrap_or_else(|e| panic!("creating a token for {scopes:?}: {e:#}"));
    (tmp, data, token)
}

/// Creates a user with `jarvis-cloud user add`; returns its first token.
pub fn add_user(data_dir: &Path, name: &str) -> Result<String> {
    let out = Command::new(binary("jarvis-cloud"))
        .args(["user", "add", "--data-dir"])
        .arg(data_dir)
        .arg(name)
        .output()
        .context("running jarvis-cloud user add")?;
    if !out.status.success() {
        bail!("user add failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout)?
        .lines()
        .last()
        .map(str::to_owned)
        .context("user add printed nothing")
}
