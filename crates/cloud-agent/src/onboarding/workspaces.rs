//! A first workspace from the browser: empty, filled with uploaded files, or cloned from a git
//! URL with an optional token. Files land in the cloud runner's copy of the workspace and its
//! mirror imports them, so every device (and the web view) sees them as synced files.
//!
//! A clone never reads a path of this server and never reaches an address inside it: only
//! `https://` URLs (no user info), every address the host resolves to must be public (no
//! loopback, private, link-local, CGNAT, unique-local or multicast range), git is pinned to the
//! addresses checked (`http.curloptResolve`, so a DNS answer that changes in between is not
//! followed), redirects are not followed, only the http(s) transports are allowed, no system or
//! user git configuration applies, symlinks are checked out as plain files, and the clone is
//! killed after [`CLONE_TIMEOUT`]. The token travels in an `Authorization` header through git's
//! environment (not the command line, not the URL) and is never logged.
//!
//! Not yet: the sandbox's per-workspace egress proxy (issue 21) — until it lands, the check
//! above is what limits where a clone goes. `--test-allow-git-host` (tests only) lets named
//! loopback hosts through over plain http.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::Action;
use crate::http::{ApiError, Body, ErrorCode};
use crate::onboarding::{Onboarding, Who};

pub const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Uploads: files and bytes at most (the request itself is limited to a bit more).
pub const MAX_UPLOAD_FILES: usize = 2_000;
pub const MAX_UPLOAD_BYTES: usize = 32 << 20;
/// A clone larger than this is refused (checked after it finished).
pub const MAX_CLONE_BYTES: u64 = 1 << 30;

#[derive(Deserialize)]
pub struct UploadedFile {
    pub path: String,
    /// The content, base64.
    pub content: String,
}

#[derive(Deserialize)]
pub struct GitSource {
    pub url: String,
    #[serde(default)]
    pub token: String,
}

#[derive(Deserialize)]
pub struct NewWorkspace {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// empty, files or git.
    #[serde(default = "empty")]
    pub source: String,
    #[serde(default)]
    pub files: Vec<UploadedFile>,
    pub git: Option<GitSource>,
}

fn empty() -> String {
    "empty".into()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

fn failed(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

/// Addresses a clone may not reach: what no sandboxed process may reach
/// ([`jarvis_agent::sandbox::forbidden_destination`]: loopback, private, link-local, shared,
/// unspecified, multicast, broadcast), plus the reserved and translated ranges no public
/// repository lives in.
pub fn is_internal(ip: IpAddr) -> bool {
    // The sandbox's egress rule (the proxy every agent command goes through refuses the same):
    // never loopback, link-local or private ranges, nor this server's own addresses (a public
    // one is still the server itself, with its own ports behind it).
    if jarvis_agent::sandbox::forbidden_destination(ip)
        || jarvis_agent::egress::own_addresses().contains(&ip)
    {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 192 && o[1] == 0 && o[2] == 0) || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] == 0x64 && s[1] == 0xff9b) || (s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
}

/// Where a clone may go: (host, port, addresses to pin, plain http allowed).
pub async fn check_git_url(
    url: &str,
    test_hosts: &[String],
) -> Result<(reqwest::Url, Vec<std::net::SocketAddr>), ApiError> {
    let u = reqwest::Url::parse(url.trim())
        .map_err(|e| invalid(format!("{url:?} is not a URL: {e}")))?;
    let host = u
        .host_str()
        .ok_or_else(|| invalid("the git URL has no host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    let port = u.port_or_known_default().unwrap_or(443);
    let named = test_hosts.iter().any(|h| {
        h.eq_ignore_ascii_case(&host) || h.eq_ignore_ascii_case(&format!("{host}:{port}"))
    });
    match u.scheme() {
        "https" => {}
        "http" if named => {}
        other => {
            return Err(invalid(format!(
                "clone over https only ({other}:// is not accepted): paste the https address \
                 of the repository"
            )));
        }
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(invalid("put the token in the token field, not in the URL"));
    }
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| {
            failed(
                ErrorCode::GitUnreachable,
                format!("cannot resolve {host}: {e}"),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(failed(
            ErrorCode::GitUnreachable,
            format!("{host} resolves to nothing"),
        ));
    }
    if !named && let Some(a) = addrs.iter().find(|a| is_internal(a.ip())) {
        return Err(ApiError::new(
            ErrorCode::GitHostRefused,
            format!(
                "{host} resolves to {}, an address inside a private network or this machine: \
                 workspaces are cloned from public hosts only",
                a.ip()
            ),
        ));
    }
    Ok((u, addrs))
}

/// Clones `url` into `dest` (which must not exist) under the rules of the module doc.
pub async fn clone(
    url: &reqwest::Url,
    addrs: &[std::net::SocketAddr],
    token: &str,
    dest: &Path,
    scratch_home: &Path,
) -> Result<(), ApiError> {
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']');
    let port = url.port_or_known_default().unwrap_or(443);
    let pinned = addrs
        .iter()
        .map(|a| match a.ip() {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut config: Vec<(String, String)> = vec![
        (
            "http.curloptResolve".into(),
            format!("{host}:{port}:{pinned}"),
        ),
        ("http.followRedirects".into(), "false".into()),
        ("protocol.allow".into(), "never".into()),
        ("protocol.https.allow".into(), "always".into()),
        (
            "protocol.http.allow".into(),
            if url.scheme() == "http" {
                "always"
            } else {
                "never"
            }
            .into(),
        ),
        ("core.symlinks".into(), "false".into()),
        ("credential.helper".into(), String::new()),
    ];
    if !token.is_empty() {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("x-access-token:{}", token.trim()));
        config.push((
            "http.extraHeader".into(),
            format!("Authorization: Basic {basic}"),
        ));
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("clone")
        .arg("--single-branch")
        .arg("--no-tags")
        .arg("--quiet")
        .arg("--")
        .arg(url.as_str())
        .arg(dest)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch_home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("GIT_LFS_SKIP_SMUDGE", "1")
        .env("GIT_CONFIG_COUNT", config.len().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (i, (k, v)) in config.iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k);
        cmd.env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    let child = cmd.spawn().map_err(|e| {
        failed(
            ErrorCode::GitMissing,
            format!("cannot run git on this server: {e}"),
        )
    })?;
    let out = match tokio::time::timeout(CLONE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(failed(ErrorCode::GitFailed, format!("git failed: {e}"))),
        Err(_) => {
            return Err(failed(
                ErrorCode::GitTimeout,
                format!("the clone took longer than {} s", CLONE_TIMEOUT.as_secs()),
            ));
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // git's own words, minus anything that could carry the header.
        let said: String = stderr
            .lines()
            .filter(|l| !l.contains("Authorization"))
            .collect::<Vec<_>>()
            .join(" ");
        let plain = if said.contains("401")
            || said.contains("403")
            || said.contains("Authentication failed")
        {
            "The git host refused access: check the token (it needs read access to the repository)."
        } else if said.contains("not found") || said.contains("404") {
            "The repository was not found: check the address (and the token, for a private one)."
        } else if said.contains("Could not resolve")
            || said.contains("Failed to connect")
            || said.contains("Couldn't connect")
        {
            "Could not reach the git host."
        } else {
            "The clone failed."
        };
        return Err(failed(
            ErrorCode::GitFailed,
            format!(
                "{plain} (git: {})",
                said.chars().take(300).collect::<String>()
            ),
        ));
    }
    Ok(())
}

/// Bytes under `dir` (not following links).
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// `POST /api/onboarding/workspace`: creates the workspace (as `POST /api/workspaces`) and
/// fills it. Uploads and clones need a workspace that is new or still has no files.
pub async fn create(
    State(o): State<Onboarding>,
    Who(who): Who,
    Body(b): Body<NewWorkspace, { 48 << 20 }>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Checked before anything is created or fetched.
    match b.source.as_str() {
        "empty" => {}
        "files" => {
            if b.files.is_empty() || b.files.len() > MAX_UPLOAD_FILES {
                return Err(invalid(format!("upload 1 to {MAX_UPLOAD_FILES} files")));
            }
            for f in &b.files {
                jarvis_sync::paths::check_relative(&f.path).map_err(|e| invalid(e.to_string()))?;
            }
        }
        "git" => {
            if b.git.is_none() {
                return Err(invalid("a git source needs {url, token}"));
            }
        }
        other => return Err(invalid(format!("source {other:?}: empty, files or git"))),
    }
    let files = b
        .files
        .iter()
        .map(|f| {
            base64::engine::general_purpose::STANDARD
                .decode(f.content.as_bytes())
                .map(|bytes| (f.path.clone(), bytes))
                .map_err(|e| invalid(format!("{}: not base64: {e}", f.path)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if files.iter().map(|(_, b)| b.len()).sum::<usize>() > MAX_UPLOAD_BYTES {
        return Err(invalid(format!(
            "uploads are limited to {} MiB",
            MAX_UPLOAD_BYTES >> 20
        )));
    }
    let target = match &b.git {
        Some(g) if b.source == "git" => {
            Some(check_git_url(&g.url, &o.inner.args.test_allow_git_hosts).await?)
        }
        _ => None,
    };
    let w = o.control.ensure_workspace(&who, &b.id, &b.name)?;
    o.control.check_workspace_for(&who, &w.id, Action::Write)?;
    o.control
        .audit(Some(&who), "workspace.ensure", &w.id, &w.name);
    if b.source == "empty" {
        return Ok((
            StatusCode::CREATED,
            Json(json!({"workspace": w, "files": 0})),
        ));
    }
    let mirror = o
        .cloud
        .workspace_mirror(&w.id)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("{e:#}")))?;
    if !mirror.index().list().is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("workspace {:?} already has files: pick a new name", w.id),
        ));
    }
    let root = mirror.root().to_owned();
    let count = if let (Some((url, addrs)), Some(g)) = (target, &b.git) {
        let scratch = o
            .inner
            .data_dir
            .join("onboarding-tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let home = scratch.join("home");
        let dest = scratch.join("clone");
        std::fs::create_dir_all(&home)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let result = async {
            clone(&url, &addrs, &g.token, &dest, &home).await?;
            if size_of(&dest) > MAX_CLONE_BYTES {
                return Err(failed(
                    ErrorCode::GitTooLarge,
                    format!(
                        "the repository is larger than {} MiB",
                        MAX_CLONE_BYTES >> 20
                    ),
                ));
            }
            // Same file system: each top-level entry moves in whole.
            let mut n = 0;
            for e in
                std::fs::read_dir(&dest).map_err(|e| failed(ErrorCode::GitFailed, e.to_string()))?
            {
                let e = e.map_err(|e| failed(ErrorCode::GitFailed, e.to_string()))?;
                std::fs::rename(e.path(), root.join(e.file_name()))
                    .map_err(|e| failed(ErrorCode::GitFailed, format!("placing the clone: {e}")))?;
                n += 1;
            }
            Ok::<_, ApiError>(n)
        }
        .await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(error = %e, "removing a clone's scratch folder failed");
        }
        o.control.audit(
            Some(&who),
            "workspace.clone",
            &w.id,
            &format!(
                "{}://{}{}",
                url.scheme(),
                url.host_str().unwrap_or_default(),
                url.path()
            ),
        );
        result?
    } else {
        for (path, bytes) in &files {
            let target = jarvis_sync::paths::resolve_for_write(&root, path)
                .map_err(|e| invalid(e.to_string()))?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            }
            jarvis_sync::paths::atomic_write(&target, bytes, None)
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{path}: {e}")))?;
        }
        o.control.audit(
            Some(&who),
            "workspace.upload",
            &w.id,
            &format!("{} files", files.len()),
        );
        files.len()
    };
    mirror.rescan().await;
    // The answer says the files are in the workspace: the hub has them before it is sent (the
    // runner's copy reaches the hub over its own socket).
    if let Err(e) = o.cloud.flush(std::time::Duration::from_secs(30)).await {
        tracing::warn!(workspace = %w.id, error = %e, "the uploaded files are not acknowledged yet");
    }
    let entries = mirror.index().list();
    // The mirror writes as the server; the documents are the caller's, against their quota
    // (over it, the workspace keeps what arrived and the caller is told).
    for (_, e) in &entries {
        if let Some(doc) = &e.doc {
            o.control
                .charge_document(&who, &format!("ws/{}/file/{doc}", w.id))?;
        }
    }
    let synced = entries.len();
    Ok((
        StatusCode::CREATED,
        Json(json!({"workspace": w, "files": synced, "placed": count})),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_refused() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["140.82.112.3", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn clone_urls_are_checked_before_git_runs() {
        let refused =
            |r: Result<_, ApiError>| r.err().map(|e| e.code.as_str()).unwrap_or("accepted");
        assert_eq!(
            refused(check_git_url("http://127.0.0.1:9/x.git", &[]).await),
            "invalid_request"
        );
        assert_eq!(
            refused(check_git_url("https://127.0.0.1:9/x.git", &[]).await),
            "git_host_refused"
        );
        assert_eq!(
            refused(check_git_url("https://localhost/x.git", &[]).await),
            "git_host_refused"
        );
        assert_eq!(
            refused(check_git_url("file:///etc", &[]).await),
            "invalid_request"
        );
        assert_eq!(
            refused(check_git_url("ssh://git@github.com/x", &[]).await),
            "invalid_request"
        );
        assert_eq!(
            refused(check_git_url("https://u:p@127.0.0.1/x", &[]).await),
            "invalid_request"
        );
        // Only the named test host gets through, over plain http.
        let named = vec!["127.0.0.1".to_owned()];
        assert_eq!(
            refused(check_git_url("http://127.0.0.1:9/x.git", &named).await),
            "accepted"
        );
        assert_eq!(
            refused(check_git_url("http://10.0.0.1:9/x.git", &named).await),
            "invalid_request"
        );
    }
}
