//! Git travels with the session (the cloud's half; the device's is `jarvis_sync::gitstate`).
//!
//! A device about to Continue in cloud uploads a bundle (a blob of the workspace) and records
//! it with `PUT /api/sessions/{id}/git` ([`GitRecord`], kept under `<data>/devenv/sessions`).
//! When the cloud takes the session, [`restore_pending`] rebuilds the repository under the
//! synced working tree: the bundle's refs, HEAD on the agent's branch `jarvis/<session>` at the
//! device's commit, the index from the device's staged tree, `origin` the device's remote
//! (without credentials). On Continue here the device asks for the agent's branch back
//! ([`bundle_back`]).
//!
//! The repository lives in the workspace, which sandboxed commands write: its `.git/config`
//! and hooks are the agent's. So every git command on it runs inside the sandbox too (a script
//! with its inputs in the environment, never spliced into the script; bundles through stdin and
//! stdout) — the server never runs git on a repository a command could have prepared.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jarvis_agent::sandbox::{ProcessScope, Sandbox};
use jarvis_sync::gitstate::GitState;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// The longest a sandboxed git script may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// One session's git state as the device sent it, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitRecord {
    pub workspace: String,
    pub state: GitState,
    /// The bundle's blob hash in the workspace's blob store.
    pub bundle: String,
    pub agent_branch: String,
    /// Whether the cloud copy has been rebuilt from it.
    pub applied: bool,
    /// Why the last rebuild failed (said to the device and in the session).
    #[serde(default)]
    pub error: Option<String>,
}

/// The agent's branch for a session.
pub fn agent_branch(session: &str) -> String {
    format!("jarvis/{session}")
}

fn valid_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A session id as a file name (ids are checked by the control plane; this keeps any other
/// spelling out of the path anyway).
fn record_path(data_dir: &Path, session: &str) -> Option<PathBuf> {
    session
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        .then(|| {
            data_dir
                .join("devenv/sessions")
                .join(format!("{session}.json"))
        })
        .filter(|_| !session.is_empty() && session.len() <= 128)
}

pub fn load(data_dir: &Path, session: &str) -> Result<Option<GitRecord>, String> {
    let Some(path) = record_path(data_dir, session) else {
        return Err(format!("invalid session id {session:?}"));
    };
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn store(data_dir: &Path, session: &str, record: &GitRecord) -> Result<(), String> {
    let Some(path) = record_path(data_dir, session) else {
        return Err(format!("invalid session id {session:?}"));
    };
    let dir = path.parent().unwrap_or(data_dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension(format!("json.{:016x}", rand::random::<u64>()));
    let body = serde_json::to_vec_pretty(record).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn known_path(data_dir: &Path, workspace: &str) -> Option<PathBuf> {
    (!workspace.is_empty()
        && workspace.len() <= 128
        && workspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !workspace.starts_with('.'))
    .then(|| {
        data_dir
            .join("devenv/workspaces")
            .join(format!("{workspace}.known"))
    })
}

/// The commits the workspace's cloud copy holds (one repository per workspace, whichever
/// session brought them): what the next bundle may leave out.
pub fn known(data_dir: &Path, workspace: &str) -> Vec<String> {
    known_path(data_dir, workspace)
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .filter(|l| valid_sha(l))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn store_known(data_dir: &Path, workspace: &str, commits: &[String]) {
    let Some(path) = known_path(data_dir, workspace) else {
        return;
    };
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, commits.join("\n")));
    // Unrecorded, the next bundle is only larger: say so, nothing breaks.
    if let Err(e) = written {
        tracing::warn!(%workspace, error = %e, "recording the cloud copy's commits failed");
    }
}

/// Checks what a device sends before it is recorded.
pub fn validate(state: &GitState, bundle: &str) -> Result<(), String> {
    if !jarvis_sync::blob::valid_hash(bundle) {
        return Err("bundle must be a blob hash".into());
    }
    if !valid_sha(&state.head) || !valid_sha(&state.index) {
        return Err("head and index must be commit ids".into());
    }
    if let Some(b) = &state.branch
        && (b.is_empty() || b.len() > 200 || b.starts_with('-') || b.contains(".."))
    {
        return Err(format!("invalid branch name {b:?}"));
    }
    if state.refs.len() > 64 || state.refs.iter().any(|(_, s)| !valid_sha(s)) {
        return Err("refs must be at most 64 commit ids".into());
    }
    if state
        .remote
        .as_deref()
        .is_some_and(|r| r.len() > 2048 || r.starts_with('-') || r.contains('\n'))
    {
        return Err("invalid remote".into());
    }
    Ok(())
}

/// Runs `script` with `sh` in the sandbox for `workspace`, `stdin` fed in, within `timeout`.
pub async fn run_sandboxed(
    sandbox: &Sandbox,
    workspace: &Path,
    script: &str,
    env: &[(String, String)],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    let mut cmd = sandbox
        .command(workspace, "sh", &["-c".to_owned(), script.to_owned()], env)
        .map_err(|e| e.to_string())?;
    cmd.command
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let scope = ProcessScope::new();
    let mut child = scope.spawn(cmd).map_err(|e| format!("starting sh: {e}"))?;
    let feed = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
            let r = pipe.write_all(&bytes).await;
            drop(pipe);
            r
        })),
        _ => None,
    };
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("timed out after {} s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    scope.kill_all();
    if let Some(feed) = feed {
        // A script that failed early closes its stdin: its own error says more than EPIPE.
        let fed = feed.await.map_err(|e| e.to_string())?;
        if out.status.success() {
            fed.map_err(|e| format!("feeding the script: {e}"))?;
        }
    }
    Ok(out)
}

/// Runs `script` with `sh` in the sandbox for `workspace`, `stdin` fed in, and returns its
/// stdout (an error with its stderr's last lines when it fails).
pub async fn sandboxed(
    sandbox: &Sandbox,
    workspace: &Path,
    script: &str,
    env: &[(String, String)],
    stdin: Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let out = run_sandboxed(sandbox, workspace, script, env, stdin, GIT_TIMEOUT).await?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }
}

/// The rebuild, inside the sandbox. Inputs: the bundle on stdin; HEAD_SHA, INDEX_SHA,
/// AGENT_BRANCH, REMOTE in the environment. Prints every branch's commit.
const RESTORE: &str = r#"set -e
export GIT_CONFIG_NOSYSTEM=1
[ -d .git ] || git init -q
refs=$(mktemp)
git bundle unbundle - > "$refs"
while read -r sha ref; do
  case "$ref" in
    refs/heads/*|refs/jarvis/*) git update-ref "$ref" "$sha" ;;
  esac
done < "$refs"
rm -f "$refs"
git check-ref-format --branch "$AGENT_BRANCH" > /dev/null
if ! git rev-parse -q --verify "refs/heads/$AGENT_BRANCH" > /dev/null \
   || git merge-base --is-ancestor "refs/heads/$AGENT_BRANCH" "$HEAD_SHA"; then
  git update-ref "refs/heads/$AGENT_BRANCH" "$HEAD_SHA"
fi
git symbolic-ref HEAD "refs/heads/$AGENT_BRANCH"
git read-tree "$INDEX_SHA^{tree}"
# The mirror carries contents, not modes: a mode is no difference here.
git config core.fileMode false
git config user.name "Jarvis"
git config user.email "jarvis@localhost"
if [ -n "$REMOTE" ]; then
  git remote remove origin 2> /dev/null || true
  git remote add origin "$REMOTE"
fi
git for-each-ref --format='%(objectname)' refs/heads
"#;

/// The agent's branch as a bundle, leaving out the commits in HAVE (space-separated); empty
/// output when the branch has nothing new.
const BUNDLE_BACK: &str = r#"set -e
export GIT_CONFIG_NOSYSTEM=1
git check-ref-format --branch "$AGENT_BRANCH" > /dev/null
git rev-parse -q --verify "refs/heads/$AGENT_BRANCH" > /dev/null || exit 0
not=""
for sha in $HAVE; do
  if git cat-file -e "$sha^{commit}" 2> /dev/null; then not="$not $sha"; fi
done
if [ -n "$not" ] && [ -z "$(git rev-list -n 1 "refs/heads/$AGENT_BRANCH" --not $not)" ]; then
  exit 0
fi
if [ -n "$not" ]; then
  git bundle create -q - "refs/heads/$AGENT_BRANCH" --not $not
else
  git bundle create -q - "refs/heads/$AGENT_BRANCH"
fi
"#;

/// Rebuilds the repository of a session that has a git state not yet applied, after its
/// working tree arrived. Returns a line for the session (None when there was nothing to do).
pub async fn restore_pending(
    data_dir: &Path,
    sandbox: &Sandbox,
    session: &str,
    workspace_root: &Path,
) -> Option<String> {
    let mut record = match load(data_dir, session) {
        Ok(Some(r)) if !r.applied => r,
        Ok(_) => return None,
        Err(e) => return Some(format!("The git state of this session cannot be read: {e}")),
    };
    let blobs = jarvis_sync::blob::BlobStore::new(data_dir.join("blobs").join(&record.workspace));
    let bundle = match jarvis_sync::blob::read(&blobs, &record.bundle) {
        Ok(b) => b,
        Err(e) => {
            record.error = Some(format!("the bundle is missing: {e}"));
            if let Err(e) = store(data_dir, session, &record) {
                tracing::error!(%session, error = %e, "recording the git state failed");
            }
            return Some(format!(
                "Git: the repository was not rebuilt: the bundle is missing ({e})."
            ));
        }
    };
    let env = vec![
        ("HEAD_SHA".to_owned(), record.state.head.clone()),
        ("INDEX_SHA".to_owned(), record.state.index.clone()),
        ("AGENT_BRANCH".to_owned(), record.agent_branch.clone()),
        (
            "REMOTE".to_owned(),
            record.state.remote.clone().unwrap_or_default(),
        ),
    ];
    let line = match sandboxed(sandbox, workspace_root, RESTORE, &env, Some(bundle)).await {
        Ok(out) => {
            record.applied = true;
            record.error = None;
            let mut known: Vec<String> = String::from_utf8_lossy(&out)
                .lines()
                .map(str::to_owned)
                .filter(|s| valid_sha(s))
                .collect();
            known.extend(record.state.refs.iter().map(|(_, s)| s.clone()));
            known.sort();
            known.dedup();
            store_known(data_dir, &record.workspace, &known);
            format!(
                "Git: the repository came with the session — on branch {} at {}, from {}{}.",
                record.agent_branch,
                &record.state.head[..10],
                record.state.branch.as_deref().unwrap_or("a detached HEAD"),
                record
                    .state
                    .remote
                    .as_deref()
                    .map(|r| format!("; origin is {r}"))
                    .unwrap_or_default()
            )
        }
        Err(e) => {
            // Known commits the copy no longer has make the next bundle incomplete: forget them
            // so the device sends everything.
            store_known(data_dir, &record.workspace, &[]);
            record.error = Some(e.clone());
            tracing::warn!(%session, error = %e, "rebuilding the cloud copy's repository failed");
            format!("Git: the repository was not rebuilt: {e}")
        }
    };
    if let Err(e) = store(data_dir, session, &record) {
        tracing::error!(%session, error = %e, "recording the git state failed");
    }
    Some(line)
}

/// The agent's branch, as a bundle without the commits the device has (`have`): None when
/// there is nothing new.
pub async fn bundle_back(
    sandbox: &Sandbox,
    workspace_root: &Path,
    agent_branch: &str,
    have: &[String],
) -> Result<Option<Vec<u8>>, String> {
    let have: Vec<&str> = have
        .iter()
        .map(String::as_str)
        .filter(|s| valid_sha(s))
        .take(256)
        .collect();
    if !workspace_root.join(".git").is_dir() {
        return Ok(None);
    }
    let env = vec![
        ("AGENT_BRANCH".to_owned(), agent_branch.to_owned()),
        ("HAVE".to_owned(), have.join(" ")),
    ];
    let out = sandboxed(sandbox, workspace_root, BUNDLE_BACK, &env, None).await?;
    Ok((!out.is_empty()).then_some(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state() -> GitState {
        GitState {
            head: "a".repeat(40),
            branch: Some("main".into()),
            index: "b".repeat(40),
            remote: Some("https://example.test/o/r.git".into()),
            refs: vec![("HEAD".into(), "a".repeat(40))],
        }
    }

    #[test]
    fn what_a_device_sends_is_checked() {
        let blob = jarvis_sync::blob::hash_bytes(b"bundle");
        assert!(validate(&state(), &blob).is_ok());
        assert!(validate(&state(), "../../etc/passwd").is_err());
        let mut s = state();
        s.head = "HEAD; rm -rf /".into();
        assert!(validate(&s, &blob).is_err());
        let mut s = state();
        s.branch = Some("--upload-pack=x".into());
        assert!(validate(&s, &blob).is_err());
        let mut s = state();
        s.remote = Some("-c core.sshCommand=x".into());
        assert!(validate(&s, &blob).is_err());
    }

    #[test]
    fn records_and_known_commits_stay_in_their_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(record_path(dir.path(), "../x").is_none());
        assert!(record_path(dir.path(), "a/b").is_none());
        assert!(known_path(dir.path(), "..").is_none());
        assert!(known_path(dir.path(), "../w").is_none());
        store_known(dir.path(), "w", &["c".repeat(40), "not-a-sha".into()]);
        assert_eq!(known(dir.path(), "w"), vec!["c".repeat(40)]);
        let record = GitRecord {
            workspace: "w".into(),
            state: state(),
            bundle: jarvis_sync::blob::hash_bytes(b"x"),
            agent_branch: agent_branch("s1"),
            applied: false,
            error: None,
        };
        store(dir.path(), "s1", &record).unwrap();
        assert_eq!(load(dir.path(), "s1").unwrap(), Some(record));
        assert_eq!(load(dir.path(), "s2").unwrap(), None);
    }
}
