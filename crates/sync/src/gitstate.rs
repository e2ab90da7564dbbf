//! Git travels with a session (the device's half). `.git` is never synced as files (see
//! [`crate::paths`]); instead, on Continue in cloud the device packs what the cloud copy lacks
//! into one git bundle — the commits of HEAD and its branch not yet known there, plus a commit
//! of the index's tree so staged changes survive — and the cloud rebuilds the repository under
//! the synced working tree ([`Captured`]). On Continue here the cloud's commits come back as a
//! bundle of the agent's branch (`jarvis/<session>`), fetched into that branch only: the
//! user's own branches are never rewritten ([`bring_back`]).
//!
//! Everything here runs `git` on the user's own machine, in the user's own repository, with
//! the user's configuration: it is the device side, where the user is the only author.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// A ref the device creates for a moment so the index's tree can travel in the bundle.
pub const INDEX_REF: &str = "refs/jarvis/handoff-index";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {args}: {message}")]
    Failed { args: String, message: String },
    #[error("cannot run git: {0}")]
    Spawn(#[from] std::io::Error),
}

/// What the device sends on Continue in cloud (the bundle travels as a blob).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    /// The commit checked out.
    pub head: String,
    /// The branch checked out (None: a detached HEAD).
    pub branch: Option<String>,
    /// A commit whose tree is the device's index (staged changes), parent HEAD.
    pub index: String,
    /// The remote the branch pushes to (or `origin`), without credentials.
    pub remote: Option<String>,
    /// Every ref the bundle carries, `(name, sha)`: what the cloud knows afterwards.
    pub refs: Vec<(String, String)>,
}

/// A captured state and its bundle.
#[derive(Debug, Clone)]
pub struct Captured {
    pub state: GitState,
    pub bundle: Vec<u8>,
}

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // A commit of the index needs an identity even where the user configured none.
        .env("GIT_AUTHOR_NAME", "Jarvis")
        .env("GIT_AUTHOR_EMAIL", "jarvis@localhost")
        .env("GIT_COMMITTER_NAME", "Jarvis")
        .env("GIT_COMMITTER_EMAIL", "jarvis@localhost")
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(GitError::Failed {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn git_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Result<Vec<u8>, GitError> {
    use std::io::Write;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| GitError::Failed {
        args: args.join(" "),
        message: "no stdin".into(),
    })?;
    let input = input.to_vec();
    // Written from a thread: git may answer (and fill its stdout) before reading it all.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let written = writer.join().unwrap_or(Ok(()));
    if out.status.success() {
        written?;
        Ok(out.stdout)
    } else {
        Err(GitError::Failed {
            args: args.join(" "),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn git_line(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    Ok(String::from_utf8_lossy(&git(dir, args)?).trim().to_owned())
}

/// Whether `dir` is the top of a git work tree with at least one commit.
pub fn is_repository(dir: &Path) -> bool {
    let (Ok(top), Ok(here)) = (
        git_line(dir, &["rev-parse", "--show-toplevel"]),
        dir.canonicalize(),
    ) else {
        return false;
    };
    Path::new(&top).canonicalize().ok().as_deref() == Some(here.as_path())
        && git_line(dir, &["rev-parse", "--verify", "-q", "HEAD"]).is_ok()
}

/// A remote URL without the credentials some users keep in it.
pub fn strip_credentials(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
    {
        return format!("{scheme}://{host}");
    }
    url.to_owned()
}

/// Packs the state of the repository at `dir` for a cloud copy that already has the commits
/// `have` (their shas; unknown ones are ignored). None when `dir` is not a repository's top
/// folder with a commit.
pub fn capture(dir: &Path, have: &[String]) -> Result<Option<Captured>, GitError> {
    if !is_repository(dir) {
        return Ok(None);
    }
    let head = git_line(dir, &["rev-parse", "HEAD"])?;
    let branch = git_line(dir, &["symbolic-ref", "-q", "--short", "HEAD"])
        .ok()
        .filter(|b| !b.is_empty());
    // The index as a tree (an unmerged index cannot be written: HEAD's tree stands in).
    let tree =
        git_line(dir, &["write-tree"]).or_else(|_| git_line(dir, &["rev-parse", "HEAD^{tree}"]))?;
    let index = git_line(
        dir,
        &[
            "commit-tree",
            &tree,
            "-p",
            &head,
            "-m",
            "jarvis: the index at handoff",
        ],
    )?;
    let remote_name = branch
        .as_deref()
        .and_then(|b| git_line(dir, &["config", &format!("branch.{b}.remote")]).ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "origin".into());
    let remote = git_line(dir, &["remote", "get-url", &remote_name])
        .ok()
        .filter(|u| !u.is_empty())
        .map(|u| strip_credentials(&u));
    git(dir, &["update-ref", INDEX_REF, &index])?;
    let bundled = bundle_refs(dir, branch.as_deref(), have);
    // The temporary ref goes whatever happened: it is not the user's.
    let removed = git(dir, &["update-ref", "-d", INDEX_REF]);
    let bundle = bundled?;
    removed?;
    let mut refs = vec![("HEAD".to_owned(), head.clone())];
    if let Some(b) = &branch {
        refs.push((format!("refs/heads/{b}"), head.clone()));
    }
    refs.push((INDEX_REF.to_owned(), index.clone()));
    Ok(Some(Captured {
        state: GitState {
            head,
            branch,
            index,
            remote,
            refs,
        },
        bundle,
    }))
}

/// `git bundle create -` of HEAD, the branch and the index ref, without the known commits.
fn bundle_refs(dir: &Path, branch: Option<&str>, have: &[String]) -> Result<Vec<u8>, GitError> {
    let branch = branch.map(str::to_owned);
    let mut args: Vec<String> = vec!["bundle".into(), "create".into(), "-".into(), "HEAD".into()];
    if let Some(b) = &branch {
        args.push(format!("refs/heads/{b}"));
    }
    args.push(INDEX_REF.into());
    let known: Vec<&String> = have
        .iter()
        .filter(|sha| sha.len() >= 40 && sha.chars().all(|c| c.is_ascii_hexdigit()))
        .filter(|sha| git(dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok())
        .collect();
    if !known.is_empty() {
        let mut count: Vec<String> = vec!["rev-list".into(), "--count".into()];
        count.extend(args[3..].iter().cloned());
        count.push("--not".into());
        count.extend(known.iter().map(|s| (*s).clone()));
        let count: Vec<&str> = count.iter().map(String::as_str).collect();
        let nothing_new = git_line(dir, &count).is_ok_and(|n| n.trim() == "0");
        // The cloud has every commit already (a handoff right after another, with the same
        // index commit): git refuses an empty bundle, so the tips themselves travel (a few
        // hundred bytes), their parents left out — the cloud still needs this session's refs.
        let tips: Vec<String> = if nothing_new {
            args[3..]
                .iter()
                .filter_map(|r| git_line(dir, &["rev-parse", "--verify", r]).ok())
                .map(|s| s.trim().to_owned())
                .collect()
        } else {
            Vec::new()
        };
        args.push("--not".into());
        args.extend(known.into_iter().filter(|sha| !tips.contains(sha)).cloned());
        args.extend(tips.iter().map(|t| format!("{t}^@")));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    git(dir, &refs)
}

/// Every ref's commit in the repository at `dir` (what a bundle back may leave out).
pub fn known_commits(dir: &Path) -> Vec<String> {
    git_line(
        dir,
        &["for-each-ref", "--format=%(objectname)", "refs/heads"],
    )
    .map(|s| s.lines().map(str::to_owned).collect())
    .unwrap_or_default()
}

/// What [`bring_back`] did, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroughtBack {
    /// The branch that now has the cloud's commits.
    pub branch: String,
    pub head: String,
    /// Said when the user's branch moved while the session was in the cloud.
    pub note: Option<String>,
}

/// Fetches the cloud's `agent_branch` from `bundle` into the same branch of the repository at
/// `dir`. The user's branches are never touched; when the agent's branch is the one checked
/// out, it lands on `<agent_branch>-cloud` instead (moving a checked-out branch under a working
/// tree is the user's call). `base` is the branch and commit the cloud started from.
pub fn bring_back(
    dir: &Path,
    bundle: &[u8],
    agent_branch: &str,
    base: Option<(&str, &str)>,
) -> Result<BroughtBack, GitError> {
    // Whatever the hub says, only an agent's branch is ever written here.
    if !agent_branch.starts_with("jarvis/") {
        return Err(GitError::Failed {
            args: "bring back".into(),
            message: format!("{agent_branch:?} is not an agent's branch (jarvis/…)"),
        });
    }
    git(dir, &["check-ref-format", "--branch", agent_branch])?;
    // Unbundling checks the bundle's prerequisites and every object it carries.
    let listed = String::from_utf8_lossy(&git_stdin(dir, &["bundle", "unbundle", "-"], bundle)?)
        .into_owned();
    let wanted = format!("refs/heads/{agent_branch}");
    let sha = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == wanted)
        .map(|(s, _)| s.to_owned())
        .ok_or_else(|| GitError::Failed {
            args: "bundle unbundle".into(),
            message: format!("the bundle has no {wanted}"),
        })?;
    git(dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")])?;
    let current = git_line(dir, &["symbolic-ref", "-q", "--short", "HEAD"]).unwrap_or_default();
    let target = if current == agent_branch {
        format!("{agent_branch}-cloud")
    } else {
        agent_branch.to_owned()
    };
    // Moved whatever it held: the branch is the agent's, and the cloud's copy is the newer.
    git(dir, &["update-ref", &format!("refs/heads/{target}"), &sha])?;
    let head = git_line(dir, &["rev-parse", &format!("refs/heads/{target}")])?;
    let mut notes = Vec::new();
    if target != agent_branch {
        notes.push(format!(
            "{agent_branch} is checked out here, so the cloud's commits are on {target}"
        ));
    }
    if let Some((branch, was)) = base {
        match git_line(
            dir,
            &[
                "rev-parse",
                "-q",
                "--verify",
                &format!("refs/heads/{branch}"),
            ],
        ) {
            Ok(now) if now != was => notes.push(format!(
                "your branch {branch} moved while the session was in the cloud ({} → {}): the \
                 cloud's work is on {target}, started from {}; merge or rebase it when ready",
                short(was),
                short(&now),
                short(was)
            )),
            _ => {}
        }
    }
    Ok(BroughtBack {
        branch: target,
        head,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// Sends the repository at `dir` with a session about to Continue in cloud: asks the hub what
/// the cloud copy has, uploads a bundle of the rest as a blob of `workspace`, and records it
/// for the session. Returns the bytes sent for the git state (None: not a repository).
pub async fn send_to_cloud(
    hub: &str,
    token: &str,
    session: &str,
    workspace: &str,
    dir: &Path,
) -> Result<Option<u64>, SendError> {
    let http = reqwest::Client::new();
    let hub = hub.trim_end_matches('/');
    let known: serde_json::Value = http
        .get(format!("{hub}/api/sessions/{session}/git"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let have: Vec<String> = known["known"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let dir = dir.to_owned();
    let captured = tokio::task::spawn_blocking(move || capture(&dir, &have))
        .await
        .map_err(|e| SendError::Hub(e.to_string()))??;
    let Some(captured) = captured else {
        return Ok(None);
    };
    let hash = crate::blob::hash_bytes(&captured.bundle);
    let size = captured.bundle.len() as u64;
    http.put(format!("{hub}/blobs/{hash}"))
        .bearer_auth(token)
        .header("x-jarvis-workspace", workspace)
        .body(captured.bundle)
        .send()
        .await?
        .error_for_status()?;
    let record = serde_json::json!({"state": captured.state, "bundle": hash});
    let body = serde_json::to_vec(&record).map_err(|e| SendError::Hub(e.to_string()))?;
    let sent = size + body.len() as u64;
    http.put(format!("{hub}/api/sessions/{session}/git"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(Some(sent))
}

/// Brings the cloud's commits of a session back into the repository at `dir` (see
/// [`bring_back`]); None when `dir` is no repository or the cloud has nothing new.
pub async fn receive_from_cloud(
    hub: &str,
    token: &str,
    session: &str,
    dir: &Path,
) -> Result<Option<BroughtBack>, SendError> {
    let owned = dir.to_owned();
    let have =
        tokio::task::spawn_blocking(move || is_repository(&owned).then(|| known_commits(&owned)))
            .await
            .map_err(|e| SendError::Hub(e.to_string()))?;
    let Some(have) = have else {
        return Ok(None);
    };
    let hub = hub.trim_end_matches('/');
    let resp = reqwest::Client::new()
        .get(format!("{hub}/api/sessions/{session}/git/back"))
        .query(&[("have", have.join(","))])
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    if resp.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (Some(branch), base_branch, base_head) = (
        header("x-jarvis-agent-branch"),
        header("x-jarvis-base-branch"),
        header("x-jarvis-base-head"),
    ) else {
        return Err(SendError::Hub(
            "the hub did not name the agent's branch".into(),
        ));
    };
    let bundle = resp.bytes().await?.to_vec();
    let dir = dir.to_owned();
    let back = tokio::task::spawn_blocking(move || {
        let base = base_branch.as_deref().zip(base_head.as_deref());
        bring_back(&dir, &bundle, &branch, base)
    })
    .await
    .map_err(|e| SendError::Hub(e.to_string()))??;
    Ok(Some(back))
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the hub: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Hub(String),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(dir: &Path, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn credentials_never_leave_in_a_remote_url() {
        assert_eq!(
            strip_credentials("https://x-access-token:ghp_secret@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            strip_credentials("git@github.com:o/r.git"),
            "git@github.com:o/r.git"
        );
    }

    #[test]
    fn a_capture_carries_only_what_the_other_side_lacks_and_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        run(
            repo,
            "git init -q -b main && git remote add origin https://u:p@example.test/o/r.git && \
             for i in 1 2 3; do echo $i > f$i; git add f$i; git commit -qm c$i; done && \
             echo staged > s && git add s",
        );
        let first = capture(repo, &[]).unwrap().unwrap();
        assert_eq!(first.state.branch.as_deref(), Some("main"));
        assert_eq!(
            first.state.remote.as_deref(),
            Some("https://example.test/o/r.git")
        );
        // The temporary ref is gone, the user's index untouched.
        assert!(
            run(repo, "git for-each-ref")
                .lines()
                .all(|l| !l.contains("jarvis"))
        );
        assert_eq!(run(repo, "git status --porcelain"), "A  s\n");

        // Rebuild elsewhere from the bundle: same log, and the index's tree has the staged file.
        let other = tempfile::tempdir().unwrap();
        let bundle = other.path().join("b");
        std::fs::write(&bundle, &first.bundle).unwrap();
        run(
            other.path(),
            &format!(
                "git init -q && git fetch -q {} 'refs/*:refs/*' HEAD && git update-ref refs/heads/main {}",
                bundle.display(),
                first.state.head
            ),
        );
        assert_eq!(
            run(other.path(), "git log --format=%H main"),
            run(repo, "git log --format=%H main")
        );
        assert!(
            run(
                other.path(),
                &format!("git ls-tree --name-only {}", first.state.index)
            )
            .contains('s')
        );

        // Next time only the new commit travels.
        run(repo, "echo 4 > f4 && git add f4 && git commit -qm c4");
        let have: Vec<String> = first.state.refs.iter().map(|(_, s)| s.clone()).collect();
        let second = capture(repo, &have).unwrap().unwrap();
        assert!(
            second.bundle.len() < first.bundle.len(),
            "{} vs {}",
            second.bundle.len(),
            first.bundle.len()
        );
        let std::process::Output { stdout, .. } = Command::new("git")
            .args(["bundle", "list-heads", "-"])
            .current_dir(other.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&second.bundle)?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(String::from_utf8_lossy(&stdout).contains(&second.state.head));
    }

    /// A handoff right after another, nothing new (the same commits, the same index): git
    /// refuses an empty bundle, yet the cloud needs this session's refs — the tips travel.
    #[test]
    fn a_capture_with_nothing_new_still_carries_the_tips() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        run(
            repo,
            "git init -q -b main && for i in 1 2; do echo $i > f$i; git add f$i; \
             git commit -qm c$i; done",
        );
        let first = capture(repo, &[]).unwrap().unwrap();
        let mut have: Vec<String> = first.state.refs.iter().map(|(_, s)| s.clone()).collect();
        have.push(first.state.head.clone());
        have.push(first.state.index.clone());
        let again = capture(repo, &have).unwrap().unwrap();
        assert_eq!(again.state.head, first.state.head);
        assert!(!again.bundle.is_empty());
        assert!(
            again.bundle.len() < first.bundle.len(),
            "{} vs {}",
            again.bundle.len(),
            first.bundle.len()
        );
    }

    #[test]
    fn bringing_back_never_moves_the_users_branch_and_says_when_it_moved() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("device");
        let cloud = dir.path().join("cloud");
        std::fs::create_dir_all(&repo).unwrap();
        run(
            &repo,
            "git init -q -b main && echo a > a && git add a && git commit -qm base",
        );
        let base = run(&repo, "git rev-parse HEAD").trim().to_owned();
        run(
            dir.path(),
            "git clone -q device cloud && cd cloud && git checkout -q -b jarvis/s1 && echo fix > a && git commit -qam fix",
        );
        let fix = run(&cloud, "git rev-parse HEAD").trim().to_owned();
        // Meanwhile the user commits on main.
        run(&repo, "echo b > b && git add b && git commit -qm mine");
        let mine = run(&repo, "git rev-parse HEAD").trim().to_owned();
        let bundle = Command::new("git")
            .args([
                "bundle",
                "create",
                "-",
                "refs/heads/jarvis/s1",
                "--not",
                &base,
            ])
            .current_dir(&cloud)
            .output()
            .unwrap()
            .stdout;
        let back = bring_back(&repo, &bundle, "jarvis/s1", Some(("main", &base))).unwrap();
        assert_eq!(back.branch, "jarvis/s1");
        assert_eq!(back.head, fix);
        assert_eq!(run(&repo, "git rev-parse main").trim(), mine);
        assert_eq!(run(&repo, "git rev-parse jarvis/s1").trim(), fix);
        assert!(back.note.unwrap().contains("main moved"));
        // The user's own branch is never a target, whatever the hub names.
        assert!(bring_back(&repo, &bundle, "main", None).is_err());
        assert_eq!(run(&repo, "git rev-parse main").trim(), mine);
        // A bundle that is not one is refused, and nothing changes.
        assert!(bring_back(&repo, b"garbage", "jarvis/s1", None).is_err());
        assert_eq!(run(&repo, "git rev-parse jarvis/s1").trim(), fix);
    }
}
