//! A device as users run it: a `jarvis sync <folder>` process with its own home (login and
//! device store), which tests stop the ways a device stops — `kill -9`, Ctrl-C — and start
//! again on the same home and folder. Also folder snapshots for comparing devices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::binary;

/// How a device's process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: nothing is flushed, saved or cleaned up.
    Kill,
    /// SIGINT, as Ctrl-C: `jarvis sync` flushes and exits by itself.
    Interrupt,
}

/// One device: a home and a folder, and the `jarvis sync` process while it runs.
pub struct SyncDevice {
    pub name: String,
    pub home: PathBuf,
    pub dir: PathBuf,
    pub workspace: String,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl SyncDevice {
    /// Logs `home` in to the hub at `hub` (`http://127.0.0.1:<port>`) with `token`; the folder is
    /// created if missing. Not started yet.
    pub fn new(
        name: &str,
        base: &Path,
        hub: &str,
        token: &str,
        workspace: &str,
    ) -> Result<SyncDevice> {
        let home = base.join(format!("{name}-home"));
        let dir = base.join(format!("{name}-folder"));
        std::fs::create_dir_all(&dir)?;
        let out = Self::command(&home)
            .args(["login", hub, "--token", token])
            .output()
            .context("running jarvis login")?;
        if !out.status.success() {
            bail!("jarvis login: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(SyncDevice {
            name: name.to_owned(),
            log: base.join(format!("{name}.log")),
            home,
            dir: dir.canonicalize()?,
            workspace: workspace.to_owned(),
            child: None,
            starts: 0,
        })
    }

    fn command(home: &Path) -> Command {
        let mut c = Command::new(binary("jarvis"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("JARVIS_HOME", home)
            .env("RUST_LOG", "info");
        c
    }

    /// Starts `jarvis sync` (output appended to `<name>.log` beside the home).
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.name);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Self::command(&self.home)
            .arg("sync")
            .arg(&self.dir)
            .args(["--workspace", &self.workspace])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting jarvis sync")?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Runs another `jarvis` command on this device's home (e.g. `status`) and waits for it.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Self::command(&self.home)
            .args(args)
            .output()
            .context("running jarvis")
    }

    /// How many times the process was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process the given way and waits for it to be gone.
    pub fn stop(&mut self, how: Stop) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match how {
            Stop::Kill => {
                child.kill()?;
                child.wait()?;
            }
            Stop::Interrupt => {
                let ok = Command::new("kill")
                    .arg("-INT")
                    .arg(child.id().to_string())
                    .status()?
                    .success();
                if !ok {
                    bail!("kill -INT failed");
                }
                // Ctrl-C flushes for up to 10 s before giving up; allow for that.
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!(
                            "{}: jarvis sync did not exit within 20 s of SIGINT",
                            self.name
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Ok(())
    }

    /// The process's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> Result<()> {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, content).with_context(|| format!("writing {}", p.display()))
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        snapshot(&self.dir)
    }
}

impl Drop for SyncDevice {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A folder's files: relative path → (content, executable).
pub type Snapshot = BTreeMap<String, (Vec<u8>, bool)>;

/// Every synced file under `dir` (the mirror's own temporary files and ignored folders left out).
pub fn snapshot(dir: &Path) -> Result<Snapshot> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        // A folder not created yet, or an entry renamed or removed while we read: the next
        // poll reads again.
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            let Ok(e) = e else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if [".git", "node_modules", "target"].contains(&name.as_str())
                || (name.starts_with('.') && name.contains(".jarvis-tmp-"))
            {
                continue;
            }
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                dirs.push(e.path());
            } else if kind.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)?
                    .to_string_lossy()
                    .replace('\\', "/");
                let (Ok(bytes), Ok(meta)) = (std::fs::read(e.path()), e.metadata()) else {
                    continue;
                };
                let exec = {
                    use std::os::unix::fs::PermissionsExt;
                    meta.permissions().mode() & 0o111 != 0
                };
                out.insert(rel, (bytes, exec));
            }
        }
    }
    Ok(out)
}

/// Waits until every folder holds the same files (content and executable bit) and `also`
/// holds for that common state; returns it. Fails with the differences at the deadline.
pub async fn converge(
    devices: &[&SyncDevice],
    timeout: Duration,
    also: impl FnMut(&Snapshot) -> bool,
) -> Result<Snapshot> {
    let folders: Vec<(&str, &Path)> = devices
        .iter()
        .map(|d| (d.name.as_str(), d.dir.as_path()))
        .collect();
    converge_folders(&folders, timeout, also).await
}

/// [`converge`] for named folders, whoever keeps them (a desktop core, the cloud runner).
pub async fn converge_folders(
    folders: &[(&str, &Path)],
    timeout: Duration,
    mut also: impl FnMut(&Snapshot) -> bool,
) -> Result<Snapshot> {
    let deadline = Instant::now() + timeout;
    loop {
        let snaps: Vec<Snapshot> = folders
            .iter()
            .map(|(_, d)| snapshot(d))
            .collect::<Result<_>>()?;
        if snaps.windows(2).all(|w| w[0] == w[1]) && also(&snaps[0]) {
            return Ok(snaps.into_iter().next().unwrap_or_default());
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for ((name, dir), s) in folders.iter().zip(&snaps) {
                report.push_str(&format!("--- {name} ({})\n", dir.display()));
                for (p, (bytes, exec)) in s {
                    let shown = String::from_utf8(bytes.clone())
                        .map(|t| format!("{t:?}"))
                        .unwrap_or_else(|_| format!("<{} bytes>", bytes.len()));
                    report.push_str(&format!(
                        "{p}{}: {shown}\n",
                        if *exec { " (x)" } else { "" }
                    ));
                }
            }
            bail!("folders did not converge within {timeout:?}:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
