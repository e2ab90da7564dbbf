//! The workspace's setup script: run in the cloud copy once, and again whenever the file it
//! comes from changes — only content an owner approved, never in an untrusted workspace.
//! What ran is recorded per workspace under `<data>/devenv/setup` (the hash of the approved
//! file), so a server restart does not run it again; its dependency folders live in the
//! workspace's cache ([`cache_dir`]) and survive restarts too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jarvis_agent::sandbox::Sandbox;

use crate::devenv::environment::{self, Setup};

/// Where a workspace's cached dependency folders live on the host.
pub fn cache_dir(data_dir: &Path, workspace: &str) -> PathBuf {
    data_dir.join("devenv/cache").join(workspace)
}

/// A cache folder's host path (`node_modules` → `<cache>/node_modules`; nested names flattened).
pub fn cache_folder(data_dir: &Path, workspace: &str, rel: &str) -> PathBuf {
    cache_dir(data_dir, workspace).join(rel.replace('/', "%2F"))
}

fn marker(data_dir: &Path, workspace: &str) -> PathBuf {
    data_dir
        .join("devenv/setup")
        .join(format!("{workspace}.done"))
}

/// Runs the setup when it is approved and not yet run for this content. Returns a line for
/// the session (None when there is nothing to say).
pub async fn ensure(
    data_dir: &Path,
    approvals: &crate::approvals::Approvals,
    sandbox: &Sandbox,
    workspace: &str,
    root: &Path,
    env: &[(String, String)],
) -> Option<String> {
    let setup = match environment::load(root) {
        Ok(Some(environment::Environment { setup: Some(s), .. })) => s,
        Ok(_) => return None,
        Err(e) => return Some(format!("Setup: not run: {e}")),
    };
    let Setup { script, path, hash } = setup;
    // One setup at a time: two sessions of a workspace starting together run it once.
    static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = RUNNING.lock().await;
    let done = std::fs::read_to_string(marker(data_dir, workspace)).unwrap_or_default();
    if done.trim() == hash {
        return None;
    }
    let approved = !approvals.untrusted(workspace).unwrap_or(true)
        && approvals
            .is_approved(workspace, "environment", path, &hash)
            .unwrap_or(false);
    if !approved {
        return Some(format!(
            "Setup: {path} changed; its setup script waits for an owner's approval (content {}).",
            &hash[..12]
        ));
    }
    let timeout = sandbox
        .limits()
        .map_or(Duration::from_secs(600), |l| l.wall);
    let mut env = env.to_vec();
    env.push(("JARVIS_SETUP".to_owned(), script));
    let started = Instant::now();
    // The script travels in the environment, never spliced into a command line.
    let out = super::git::run_sandboxed(
        sandbox,
        root,
        "exec 2>&1; eval \"$JARVIS_SETUP\"",
        &env,
        None,
        timeout,
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    match out {
        Ok(o) if o.status.success() => {
            let m = marker(data_dir, workspace);
            let written = m
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&m, &hash));
            if let Err(e) = written {
                tracing::error!(%workspace, error = %e, "recording the setup run failed");
            }
            Some(format!(
                "Setup: ran the setup of {path} ({took:.1} s).{}",
                tail(&o.stdout)
            ))
        }
        Ok(o) => Some(format!(
            "Setup: the setup of {path} failed ({}); it runs again next time.{}",
            o.status,
            tail(&o.stdout)
        )),
        Err(e) => Some(format!("Setup: the setup of {path} did not run: {e}")),
    }
}

fn tail(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n{}",
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}
