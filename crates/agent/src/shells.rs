//! Background commands (`bash` with `run_in_background`): started through the session's
//! [`Sandbox`](crate::tools::Sandbox) like any bash call, read with `bash_output` (new output
//! since the last read, as Claude Code's BashOutput), stopped with `kill_shell`, and all
//! stopped when the run ends, is interrupted or hands off ([`Shells::stop_all`]).
//!
//! Nothing survives a stop: the shell runs in its own process group, which is killed whole;
//! a descendant that left the group (`setsid`) is found by a marker in its environment that
//! every descendant inherits, and killed too. Under bubblewrap the command also runs in its own
//! PID namespace, which dies with it. This module never lets a process outlive its `Shells`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

/// How long a stop waits for killed processes to be gone from /proc.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// The longest a foreground bash call may run, whatever a workspace configures.
pub const BASH_TIMEOUT_CEILING: Duration = Duration::from_secs(600);

/// A workspace's bash timeouts, Claude Code's way: `env.BASH_DEFAULT_TIMEOUT_MS` and
/// `env.BASH_MAX_TIMEOUT_MS` in `.claude/settings.json` (default 2 and 10 minutes). Both are
/// capped at [`BASH_TIMEOUT_CEILING`], so a checked-out branch cannot make a call run longer.
pub fn workspace_bash_timeouts(root: &std::path::Path) -> (Duration, Duration) {
    let env = std::fs::read_to_string(root.join(".claude/settings.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .map(|v| v["env"].clone())
        .unwrap_or_default();
    let ms = |k: &str| {
        let v = &env[k];
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Duration::from_millis)
            .map(|d| d.min(BASH_TIMEOUT_CEILING))
            .filter(|d| !d.is_zero())
    };
    let max = ms("BASH_MAX_TIMEOUT_MS").unwrap_or(BASH_TIMEOUT_CEILING);
    let default = ms("BASH_DEFAULT_TIMEOUT_MS")
        .unwrap_or(Duration::from_secs(120))
        .min(max);
    (default, max)
}

/// The environment variable that marks every process of one background shell.
pub const MARKER_VAR: &str = "JARVIS_BACKGROUND_SHELL";

/// Output kept per shell; older output is dropped (the reader is told how much).
const KEEP_BYTES: usize = 1 << 20;

struct Shell {
    command: String,
    pgid: Option<i32>,
    marker: String,
    output: Arc<Mutex<Output>>,
    child: Arc<tokio::sync::Mutex<tokio::process::Child>>,
}

#[derive(Default)]
struct Output {
    buf: Vec<u8>,
    /// Bytes dropped from the front of `buf` (over [`KEEP_BYTES`]).
    dropped: usize,
    /// Absolute offset the reader has seen up to.
    read: usize,
    exit: Option<Option<i32>>,
}

/// The background shells of one session's runner. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Shells {
    shells: Arc<Mutex<BTreeMap<String, Shell>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shells {
    /// Starts a command built by `build` (the sandbox's wrapper, given the marker variable
    /// every descendant inherits) in `scope`, so the end of the run kills it whatever happens;
    /// its stdout and stderr are collected in the background.
    pub fn start(
        &self,
        scope: &crate::sandbox::ProcessScope,
        build: impl FnOnce(&[(String, String)]) -> Result<crate::sandbox::SandboxCommand, String>,
        command: &str,
    ) -> Result<String, String> {
        let id = format!("sh-{:08x}", rand::random::<u32>());
        let marker = format!("{id}-{:016x}", rand::random::<u64>());
        let mut cmd = build(&[(MARKER_VAR.to_owned(), marker.clone())])?;
        cmd.command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = scope
            .spawn(cmd)
            .map_err(|e| format!("cannot start sh: {e}"))?;
        let pgid = child.id().and_then(|p| i32::try_from(p).ok());
        let output = Arc::new(Mutex::new(Output::default()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            tokio::spawn(async move {
                let mut pipe = pipe;
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut o = lock(&output);
                    o.buf.extend_from_slice(&buf[..n]);
                    if o.buf.len() > KEEP_BYTES {
                        let cut = o.buf.len() - KEEP_BYTES;
                        o.buf.drain(..cut);
                        o.dropped += cut;
                    }
                }
            });
        }
        let child = Arc::new(tokio::sync::Mutex::new(child));
        {
            let (child, output) = (child.clone(), output.clone());
            tokio::spawn(async move {
                // Polls rather than holding the lock across wait(), so kill can take it.
                loop {
                    let status = child.lock().await.try_wait();
                    match status {
                        Ok(Some(s)) => {
                            lock(&output).exit = Some(s.code());
                            break;
                        }
                        Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                        Err(_) => {
                            lock(&output).exit = Some(None);
                            break;
                        }
                    }
                }
            });
        }
        lock(&self.shells).insert(
            id.clone(),
            Shell {
                command: command.to_owned(),
                pgid,
                marker,
                output,
                child,
            },
        );
        Ok(id)
    }

    /// New output of a shell since the last read, with its state (`bash_output`). Lines not
    /// matching `filter` are left out of what is returned (and are consumed all the same).
    pub fn read(&self, id: &str, filter: Option<&regex::Regex>) -> Result<String, String> {
        let shells = lock(&self.shells);
        let shell = shells
            .get(id)
            .ok_or_else(|| format!("no background shell {id} (see the session's list)"))?;
        let mut o = lock(&shell.output);
        let end = o.dropped + o.buf.len();
        let mut lost = 0;
        if o.read < o.dropped {
            lost = o.dropped - o.read;
            o.read = o.dropped;
        }
        let start = o.read - o.dropped;
        let new = String::from_utf8_lossy(&o.buf[start..]).into_owned();
        o.read = end;
        let new = match filter {
            Some(f) => new
                .lines()
                .filter(|l| f.is_match(l))
                .map(|l| format!("{l}\n"))
                .collect(),
            None => new,
        };
        let state = match o.exit {
            None => "running".to_owned(),
            Some(Some(c)) => format!("exited with code {c}"),
            Some(None) => "ended by a signal".to_owned(),
        };
        let mut text = format!("[{id}: {state}]\n");
        if lost > 0 {
            text.push_str(&format!("[{lost} bytes of older output were dropped]\n"));
        }
        if new.is_empty() {
            text.push_str("(no new output)");
        } else {
            text.push_str(&new);
        }
        Ok(text)
    }

    /// Stops one shell and everything it started (`kill_shell`).
    pub async fn kill(&self, id: &str) -> Result<String, String> {
        let shell = lock(&self.shells)
            .remove(id)
            .ok_or_else(|| format!("no background shell {id}"))?;
        stop(&shell).await;
        Ok(format!("stopped {id} ({})", shell.command))
    }

    /// `(id, command)` of every shell, for the session's list.
    pub fn list(&self) -> Vec<(String, String)> {
        lock(&self.shells)
            .iter()
            .map(|(id, s)| (id.clone(), s.command.clone()))
            .collect()
    }

    /// Stops every shell; returns what was stopped.
    pub async fn stop_all(&self) -> Vec<(String, String)> {
        let all: Vec<(String, Shell)> = std::mem::take(&mut *lock(&self.shells))
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for (id, shell) in all {
            stop(&shell).await;
            out.push((id, shell.command));
        }
        out
    }
}

/// Kills the shell's process group, then every process still carrying its marker (one that
/// called `setsid`), then reaps the shell.
async fn stop(shell: &Shell) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    if let Some(pgid) = shell.pgid {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    // A process can fork while we scan, and a killed one stays readable in /proc until the
    // kernel has torn it down (a loaded machine takes a while): keep killing and scanning until
    // no marked process is left, so the caller can rely on "stopped" meaning gone. A zombie's
    // environment is unreadable, so it no longer counts.
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    loop {
        let found = marked_processes(&shell.marker);
        if found.is_empty() {
            break;
        }
        for pid in found {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(marker = %shell.marker, "background processes still dying after SIGKILL");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut child = shell.child.lock().await;
    let _ = child.kill().await;
}

/// Processes whose environment carries `marker` (Linux `/proc`; elsewhere none are found and
/// the process group kill is all there is).
fn marked_processes(marker: &str) -> Vec<i32> {
    let needle = format!("{MARKER_VAR}={marker}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn workspace_timeouts_are_read_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            workspace_bash_timeouts(dir.path()),
            (Duration::from_secs(120), Duration::from_secs(600))
        );
        std::fs::create_dir_all(dir.path().join(".claude")).unwrap();
        let settings = dir.path().join(".claude/settings.json");
        std::fs::write(
            &settings,
            r#"{"env": {"BASH_DEFAULT_TIMEOUT_MS": "300000", "BASH_MAX_TIMEOUT_MS": 450000}}"#,
        )
        .unwrap();
        assert_eq!(
            workspace_bash_timeouts(dir.path()),
            (Duration::from_secs(300), Duration::from_secs(450))
        );
        // A branch asking for hours gets the ceiling; a default above the max is cut to it.
        std::fs::write(
            &settings,
            r#"{"env": {"BASH_DEFAULT_TIMEOUT_MS": 36000000, "BASH_MAX_TIMEOUT_MS": 36000000}}"#,
        )
        .unwrap();
        assert_eq!(
            workspace_bash_timeouts(dir.path()),
            (BASH_TIMEOUT_CEILING, BASH_TIMEOUT_CEILING)
        );
        std::fs::write(&settings, "not json").unwrap();
        assert_eq!(workspace_bash_timeouts(dir.path()).1, BASH_TIMEOUT_CEILING);
    }
}
