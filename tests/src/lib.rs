//! Harness for end-to-end tests: starts the real binaries on port 0 and talks to them as a
//! client would. The tests themselves are in `tests/tests/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod comeback;
pub mod device;
pub mod soak;

/// A binary built by this workspace, next to the test executable's `deps/` folder.
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

/// A running `jarvis-cloud serve`; killed when dropped.
pub struct CloudAgent {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl CloudAgent {
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

/// Polls `cond` until it holds or the deadline passes.
pub async fn eventually<F: FnMut() -> bool>(
    what: &str,
    timeout: Duration,
    mut cond: F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("timed out after {timeout:?} waiting for: {what}")
}
