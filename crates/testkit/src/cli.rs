//! The `jarvis` CLI as tests run it: a clean environment with its own home.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::binary;

/// `jarvis` with only `PATH` from the environment and `JARVIS_HOME` set to `home`.
pub fn jarvis(home: &Path) -> Command {
    let mut c = Command::new(binary("jarvis"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JARVIS_HOME", home);
    c
}

/// [`jarvis`] talking to a fake model at `fake` (its URL), logging warnings only.
pub fn jarvis_with_fake(home: &Path, fake: &str) -> Command {
    let mut c = jarvis(home);
    c.env("ANTHROPIC_BASE_URL", fake)
        .env("ANTHROPIC_API_KEY", "test-key")
        .env("RUST_LOG", "warn");
    c
}

/// The JSON lines of `--output-format stream-json` on stdout; panics on a line that is not JSON.
pub fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// Runs `cmd` to the end; panics unless it succeeds; answers its stdout.
pub fn run_ok(mut cmd: Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `jarvis login <hub> --token <token>` on `home`; panics unless it succeeds; answers what it
/// printed.
pub fn login(home: &Path, hub: &str, token: &str) -> String {
    run_ok({
        let mut c = jarvis(home);
        c.args(["login", hub, "--token", token]);
        c
    })
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `jarvis sync <dir>` on `home`, output discarded, killed when dropped.
pub fn spawn_sync(home: &Path, dir: &Path) -> Killed {
    let child = jarvis(home)
        .arg("sync")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting jarvis sync: {e}"));
    Killed(child)
}

/// A running process whose stdout is collected as it comes; killed when dropped.
pub struct Proc {
    pub child: Child,
    /// Stdout so far.
    pub out: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` with stdout collected and stderr passed through.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take();
        let o = out.clone();
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut o = o.lock().unwrap_or_else(|p| p.into_inner());
                o.push_str(&line);
                o.push('\n');
            }
        });
        Proc { child, out }
    }

    /// Stdout so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the process to exit; returns its status. Panics at the deadline with the
    /// output so far.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for the process: {e}"))
            {
                // Let the reader thread drain what is left.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit in {timeout:?}; output so far:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// [`Proc::spawn`].
pub fn spawn(cmd: Command) -> Proc {
    Proc::spawn(cmd)
}
