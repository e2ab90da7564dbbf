//! Where a workspace path may land on disk, and writing it there safely.
//!
//! Index paths come from peers, so every one is checked before anything touches the disk:
//! relative, `/`-separated, no `..`/`.`/empty segments, no NUL or backslash, no reserved device
//! names, no `.git` internals, bounded length; and every existing ancestor inside the root must
//! be a real directory, not a symlink, so a write can never be redirected outside the folder.
//!
//! Writes go to a temporary file in the same directory, are fsynced, then renamed over the
//! target (and the directory fsynced): a process killed mid-write leaves the old file or the new
//! one, never a torn one.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: String,
}

fn refuse(path: &str, reason: impl Into<String>) -> PathError {
    PathError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

const RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks the shape of a workspace-relative path (no disk access).
pub fn check_relative(path: &str) -> Result<(), PathError> {
    if path.is_empty() || path.len() > 4096 {
        return Err(refuse(path, "empty or longer than 4096 bytes"));
    }
    if path.starts_with('/') || path.as_bytes().get(1) == Some(&b':') {
        return Err(refuse(path, "absolute"));
    }
    if path.contains('\0') || path.contains('\\') {
        return Err(refuse(path, "contains NUL or a backslash"));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(refuse(path, "has an empty, '.' or '..' segment"));
        }
        if seg.len() > 255 {
            return Err(refuse(path, "a segment is longer than 255 bytes"));
        }
        let stem = seg.split('.').next().unwrap_or(seg).to_ascii_uppercase();
        if RESERVED.contains(&stem.as_str()) {
            return Err(refuse(path, format!("{seg:?} is a reserved device name")));
        }
        if seg.ends_with(' ') || seg.ends_with('.') {
            return Err(refuse(path, "a segment ends in a space or a dot"));
        }
    }
    if path == ".git" || path.starts_with(".git/") {
        return Err(refuse(path, ".git internals are never synced"));
    }
    Ok(())
}

/// Resolves `path` under `root` for writing: the shape check, then a walk of the existing
/// ancestors refusing any symlink or non-directory on the way.
pub fn resolve_for_write(root: &Path, path: &str) -> Result<PathBuf, PathError> {
    check_relative(path)?;
    let mut current = root.to_path_buf();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        current.push(seg);
        match std::fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refuse(path, format!("{} is a symlink", current.display())));
            }
            Ok(m) if i + 1 < segments.len() && !m.is_dir() => {
                return Err(refuse(
                    path,
                    format!("{} is not a directory", current.display()),
                ));
            }
            Ok(m) if i + 1 == segments.len() && m.is_dir() => {
                return Err(refuse(path, "is a directory on disk"));
            }
            _ => {}
        }
    }
    Ok(current)
}

/// Paths that differ only by case: they cannot coexist on macOS or Windows folders.
pub fn case_collisions<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut out = Vec::new();
    for p in paths {
        let key = p.to_lowercase();
        match seen.get(&key) {
            Some(other) if *other != p => out.push(((*other).to_owned(), p.to_owned())),
            Some(_) => {}
            None => {
                seen.insert(key, p);
            }
        }
    }
    out
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename, directory fsync), with the
/// given Unix mode when set.
pub fn atomic_write(target: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("target has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.jarvis-tmp-{:08x}", rand::random::<u32>()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Whether a file name is one of our temporary files (the watcher ignores them).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".jarvis-tmp-")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn hostile_shapes_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../escape",
            "a/../../b",
            "a//b",
            "./a",
            "a/.",
            "a\0b",
            "a\\b",
            "C:/x",
            "CON",
            "docs/nul.txt",
            "lpt1",
            "a/b ",
            "a.",
            ".git/config",
            ".git",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        for ok in [
            "README.md",
            "src/main.rs",
            ".github/workflows/ci.yml",
            "a/b/c.d.e",
            "console.log",
        ] {
            check_relative(ok).unwrap();
        }
    }

    #[test]
    fn symlinks_on_the_way_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("file-link")).unwrap();
        assert!(
            resolve_for_write(&root, "link/escape.txt")
                .unwrap_err()
                .reason
                .contains("symlink")
        );
        assert!(
            resolve_for_write(&root, "file-link")
                .unwrap_err()
                .reason
                .contains("symlink")
        );
        assert!(
            resolve_for_write(&root, "real")
                .unwrap_err()
                .reason
                .contains("directory")
        );
        assert_eq!(
            resolve_for_write(&root, "real/new.txt").unwrap(),
            root.join("real/new.txt")
        );
        assert_eq!(
            case_collisions(["a/README.md", "a/readme.md", "b.txt"]),
            vec![("a/README.md".to_owned(), "a/readme.md".to_owned())]
        );
    }

    #[test]
    fn atomic_write_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/run.sh");
        atomic_write(&p, b"#!/bin/sh\n", Some(0o755)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1,
            "temp file left"
        );
    }

    const CHILD: &str = "JARVIS_ATOMIC_WRITE_CHILD";

    /// Child half of the kill test: rewrites one file forever, each version one repeated byte.
    #[test]
    fn atomic_write_child() {
        let Ok(path) = std::env::var(CHILD) else {
            return;
        };
        let path = PathBuf::from(path);
        for i in 0u64.. {
            let byte = b'a' + (i % 26) as u8;
            atomic_write(&path, &vec![byte; 4 * 1024 * 1024], None).unwrap();
            println!("{i}");
        }
    }

    #[test]
    fn a_write_killed_midway_leaves_old_or_new_never_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.txt");
        atomic_write(&path, &vec![b'z'; 4 * 1024 * 1024], None).unwrap();
        for round in 0..3 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "paths::tests::atomic_write_child", "--nocapture"])
                .env(CHILD, &path)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            // Let it finish a couple of writes, then kill it in the middle of the next one.
            for _ in 0..(2 + round) {
                lines.next();
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let content = std::fs::read(&path).unwrap();
            assert_eq!(content.len(), 4 * 1024 * 1024, "torn file after kill");
            assert!(
                content.iter().all(|b| *b == content[0]),
                "mixed content after kill"
            );
        }
    }
}
