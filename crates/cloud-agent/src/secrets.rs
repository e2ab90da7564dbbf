//! What a workspace asks for (the routes are `api/secrets.rs`). The store itself (encryption, the key,
//! scopes, [`SecretStore::for_run`]) is `jarvis_control::secrets`, re-exported here.
//!
//! Through the API a secret is write-only: set, list names, delete — a value never leaves
//! except into a sandboxed process, and only when the workspace's `.jarvis/environment.toml`
//! names it (`secrets = ["NAME"]`). Every set and real delete is audited, without the value.
//!
//! Never: return, log or audit a value.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::Deserialize;

pub use jarvis_control::secrets::*;

/// Where the workspace's configuration names the secrets its processes get.
pub const ENVIRONMENT_FILE: &str = ".jarvis/environment.toml";

/// The secret names `.jarvis/environment.toml` of a workspace folder asks for (none when the
/// file is missing; an error when it is malformed).
///
/// The file is written by sandboxed commands, which can make it a symlink to a file of the
/// data dir (the workspace has the same path inside the sandbox as on the host): it is opened
/// without following a final symlink, its real path must lie inside the workspace, and an
/// error never quotes its content.
pub fn requested_names(workspace_root: &Path) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Environment {
        #[serde(default)]
        secrets: Vec<String>,
    }
    let Some(text) = read_environment_file(workspace_root)? else {
        return Ok(Vec::new());
    };
    toml::from_str::<Environment>(&text)
        .map(|e| e.secrets)
        .map_err(|e| format!("{ENVIRONMENT_FILE}: {}", e.message()))
}

/// The text of `.jarvis/environment.toml` (None when missing), opened as
/// [`requested_names`] explains: never through a symlink, never outside the workspace.
pub fn read_environment_file(workspace_root: &Path) -> Result<Option<String>, String> {
    read_workspace_file(workspace_root, ENVIRONMENT_FILE)
}

/// A configuration file of a workspace folder (`rel`, e.g. `.devcontainer/devcontainer.json`),
/// opened as [`requested_names`] explains.
pub fn read_workspace_file(workspace_root: &Path, rel: &str) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let refuse = |why: &str| Err(format!("{rel}: {why}"));
    let root = workspace_root
        .canonicalize()
        .map_err(|e| format!("the workspace folder: {e}"))?;
    let path = root.join(rel);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return refuse("is a symlink"),
        Err(e) => return refuse(&e.to_string()),
    };
    // Where the opened file really is (a folder on the way may have been a symlink).
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("{rel}: {e}"))?;
    if !real.starts_with(&root) || !file.metadata().is_ok_and(|m| m.is_file()) {
        return refuse("is not a file inside the workspace");
    }
    let mut text = String::new();
    file.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|_| format!("{rel}: not UTF-8 text"))?;
    Ok(Some(text))
}

// ---- HTTP routes (thin: authorize, call the store, audit) -----------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_file_names_secrets_and_is_never_followed_out() {
        let dir = tempfile::tempdir().unwrap();
        assert!(requested_names(dir.path()).unwrap().is_empty());
        std::fs::create_dir_all(dir.path().join(".jarvis")).unwrap();
        std::fs::write(
            dir.path().join(ENVIRONMENT_FILE),
            "secrets = [\"A\", \"B\"]\n",
        )
        .unwrap();
        assert_eq!(requested_names(dir.path()).unwrap(), ["A", "B"]);
        std::fs::write(dir.path().join(ENVIRONMENT_FILE), "secrets = 3").unwrap();
        assert!(requested_names(dir.path()).is_err());
        // A symlink to a file outside (the key, the hub database) is refused without quoting it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(
            outside.path().join("secret.key"),
            "secrets = [\"K\"]\nkey-material-42",
        )
        .unwrap();
        std::fs::remove_file(dir.path().join(ENVIRONMENT_FILE)).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret.key"),
            dir.path().join(ENVIRONMENT_FILE),
        )
        .unwrap();
        let e = requested_names(dir.path()).unwrap_err();
        assert!(e.contains("symlink") && !e.contains("key-material"), "{e}");
        // So is a symlinked folder on the way.
        std::fs::remove_file(dir.path().join(ENVIRONMENT_FILE)).unwrap();
        std::fs::remove_dir(dir.path().join(".jarvis")).unwrap();
        std::fs::write(outside.path().join("environment.toml"), "secrets = [\"K\"]").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(".jarvis")).unwrap();
        let e = requested_names(dir.path()).unwrap_err();
        assert!(e.contains("not a file inside the workspace"), "{e}");
    }
}
