//! Where a workspace path may land on disk, and writing it there safely.
//!
//! Index paths come from peers, so every one is checked before anything touches the disk:
//! relative, `/`-separated, no `..`/`.`/empty segments, no NUL or backslash, no reserved device
//! names, no `.git` in any segment under any spelling a file system treats as `.git`, bounded
//! length; and every existing ancestor inside the root must be a real directory, not a symlink,
//! so a write can never be redirected outside the folder.
//!
//! Peers send content and the executable bit only: [`peer_mode`] and [`mode_for_peer_write`]
//! turn whatever `mode` an index entry carries into 0o644 or 0o755 (never setuid, setgid,
//! sticky, or group/world-writable).
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
    if path.split('/').any(is_git_alias) {
        return Err(refuse(path, ".git internals are never synced"));
    }
    Ok(())
}

/// Whether a path segment names a `.git` folder on some file system: any case (`.GIT`,
/// `.Git`), trailing dots or spaces (Windows drops them), an NTFS stream suffix
/// (`.git::$INDEX_ALLOCATION`), the NTFS short name `git~1`, or code points HFS+ ignores
/// (`.g\u{200c}it`). Git itself refuses the same spellings (`verify_dotfile`), because on macOS
/// and Windows each of them opens the real `.git/hooks`.
pub fn is_git_alias(seg: &str) -> bool {
    // Everything from the first ':' is an NTFS stream name, not part of the file name.
    let seg = seg.split(':').next().unwrap_or(seg);
    let folded: String = seg
        .chars()
        .filter(|c| !is_hfs_ignorable(*c))
        .collect::<String>()
        .trim_end_matches(['.', ' '])
        .to_lowercase();
    folded == ".git" || folded == "git~1"
}

/// Code points HFS+ drops when comparing names (the list git uses in `is_hfs_dotgit`).
fn is_hfs_ignorable(c: char) -> bool {
    matches!(c,
        '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// The mode an index entry stands for: 0o755 when any execute bit is set, else 0o644. A peer's
/// entry carries the executable bit and nothing more, whatever number it holds.
pub fn peer_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// The mode to give `target` when writing a peer's version of it: the entry's executable bit
/// on 0o644 for a new file; for an existing file its own read/write bits (so a file kept
/// private here stays private), never more than 0o644, with execute wherever it is readable.
/// Never setuid, setgid, sticky, or group/world-writable.
pub fn mode_for_peer_write(target: &Path, entry_mode: u32) -> u32 {
    let existing = std::fs::symlink_metadata(target)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| unix_mode(&m));
    let base = existing.map_or(0o644, |m| m & 0o644);
    if entry_mode & 0o111 != 0 {
        base | ((base & 0o444) >> 2)
    } else {
        base
    }
}

fn unix_mode(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode()
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o644
    }
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

/// The name of a temporary file beside `name`: hidden (a leading dot, so editors and file
/// listings pass it by) and recognisable by [`is_temp_name`] (the mirror's watcher skips it and a
/// restarted mirror removes one a crash left behind).
pub fn temp_name(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".jarvis-tmp-{:08x}", rand::random::<u32>()));
    tmp
}

/// Whether a file name is one of our temporary files (see [`temp_name`]).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".jarvis-tmp-")
}

/// Whether a write replaces what is at the target unconditionally, or only if the target still
/// holds what the caller read (`None`: the caller saw no file there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    Always,
    IfUnchanged(Option<blake3::Hash>),
}

/// Writes `bytes` to `target` atomically (temp file, fsync, rename, directory fsync), with the
/// given Unix mode when set. For files of our own (settings, state); a file in a folder others
/// write to goes through [`write_inside`].
pub fn atomic_write(target: &Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    let (dir, name) = dir_and_name(target)?;
    std::fs::create_dir_all(dir)?;
    replace_file(
        &dir.join(temp_name(name)),
        target,
        bytes,
        mode,
        Replace::Always,
        || {
            // The rename is durable only once the directory entry is.
            std::fs::File::open(dir)?.sync_all()
        },
    )
    .map(|_| ())
}

/// [`atomic_write`] of a file under `root` whose folder may be swapped for a link at any moment
/// (a cloud session's bash can): the folder is opened once ([`PinnedDir`]) and the temporary
/// file, the check and the rename all happen in it, so nothing is redirected out of the root.
/// With [`Replace::IfUnchanged`] the target is checked again once the new content is ready
/// (written and synced beside it), just before the rename: if it no longer hashes to what the
/// caller read, someone saved it meanwhile and nothing is written (`Ok(false)`). What is left is
/// the instant between that check and the rename. The folder must exist.
pub fn write_inside(
    root: &CanonicalRoot,
    target: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    replace: Replace,
) -> std::io::Result<bool> {
    let (dir, name) = dir_and_name(target)?;
    let pinned = PinnedDir::open(root, dir)?;
    replace_file(
        &pinned.join(temp_name(name)),
        &pinned.join(name),
        bytes,
        mode,
        replace,
        || pinned.sync(),
    )
}

fn dir_and_name(target: &Path) -> std::io::Result<(&Path, &std::ffi::OsStr)> {
    match (target.parent(), target.file_name()) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the target has no parent folder or no file name",
        )),
    }
}

/// The one write path behind [`atomic_write`] and [`write_inside`]: a new temporary file (never
/// an existing one, never through a link), fsynced, checked per `replace`, renamed over
/// `target`, then `sync_dir`. The temporary file is removed whenever it was not renamed.
fn replace_file(
    tmp: &Path,
    target: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    replace: Replace,
    sync_dir: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let result = (|| {
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp)?
        };
        f.write_all(bytes)?;
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        f.sync_all()?;
        if let Replace::IfUnchanged(read) = replace {
            let now = match std::fs::symlink_metadata(target) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(std::io::Error::other("the file is a symlink now"));
                }
                Ok(_) => std::fs::read(target).ok().map(|b| blake3::hash(&b)),
                Err(_) => None,
            };
            if now != read {
                return Ok(false);
            }
        }
        std::fs::rename(tmp, target)?;
        sync_dir()?;
        Ok(true)
    })();
    if !matches!(result, Ok(true)) {
        // Nothing else ever refers to the temporary name (a failed sync_dir after the rename
        // finds nothing to remove).
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// A folder's real path, resolved once (symlinks and `..` gone): what [`open_inside`] and
/// [`PinnedDir`] check an opened file against. Resolving the root again on every call cost a
/// `realpath` per file read or written; a mirror resolves it once when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalRoot(PathBuf);

impl CanonicalRoot {
    pub fn new(path: &Path) -> std::io::Result<CanonicalRoot> {
        Ok(CanonicalRoot(path.canonicalize()?))
    }
}

impl std::ops::Deref for CanonicalRoot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for CanonicalRoot {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Whether an opened file or folder really lies under `root` (canonical): on Linux its real
/// path comes from the descriptor itself; elsewhere the path is resolved again and must lead to
/// the same inode (a swap after the open then shows as a different file).
fn opened_inside(root: &Path, f: &std::fs::File, path: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        let _ = path;
        use std::os::fd::AsRawFd;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
        Ok(real.starts_with(root))
    }
    #[cfg(not(target_os = "linux"))]
    {
        use std::os::unix::fs::MetadataExt;
        let canon = path.canonicalize()?;
        let (a, b) = (f.metadata()?, std::fs::metadata(&canon)?);
        Ok(canon.starts_with(root) && a.dev() == b.dev() && a.ino() == b.ino())
    }
}

fn outside() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "resolves outside the folder",
    )
}

/// Opens a file under `root` for reading without trusting that its path still resolves inside:
/// a command running in the folder at the same time (a cloud session's bash) can swap a folder
/// or the file for a symlink to the data dir between a check and the open. The final component
/// is never followed, and the opened file must really lie under the root.
pub fn open_inside(root: &CanonicalRoot, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !opened_inside(root, &f, path)? {
        return Err(outside());
    }
    Ok(f)
}

/// Reads a whole file through [`open_inside`].
pub fn read_inside(root: &CanonicalRoot, path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    open_inside(root, path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A folder under a root, opened without following a final symlink and checked to lie under
/// the root. [`PinnedDir::join`] names an entry of that very folder (on Linux through the
/// descriptor), so a write, rename or delete through it cannot be redirected out of the root
/// by swapping the folder's path for a link afterwards.
pub struct PinnedDir {
    file: std::fs::File,
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    path: PathBuf,
}

impl PinnedDir {
    pub fn open(root: &CanonicalRoot, dir: &Path) -> std::io::Result<PinnedDir> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
            .open(dir)?;
        if !opened_inside(root, &file, dir)? {
            return Err(outside());
        }
        Ok(PinnedDir {
            file,
            path: dir.to_path_buf(),
        })
    }

    /// The pinned folder's parent of `path` under `root`.
    pub fn parent_of(root: &CanonicalRoot, path: &Path) -> std::io::Result<PinnedDir> {
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("the path has no parent folder"))?;
        PinnedDir::open(root, dir)
    }

    /// An entry of this folder, whatever the folder's original path resolves to now.
    pub fn join(&self, name: impl AsRef<std::ffi::OsStr>) -> PathBuf {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd())).join(name.as_ref())
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.path.join(name.as_ref())
        }
    }

    /// fsync of the folder itself (a rename in it is durable once this returns).
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }
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
            ".GIT/hooks/x",
            ".Git/hooks/pre-commit",
            "sub/.git/hooks/post-checkout",
            "sub/.gIt",
            ".git./config",
            ".git /config",
            ".git::$INDEX_ALLOCATION/hooks/x",
            ".git:stream",
            "GIT~1/config",
            ".g\u{200c}it/hooks/x",
            "\u{feff}.git/config",
        ] {
            assert!(check_relative(bad).is_err(), "{bad:?} accepted");
        }
        for ok in [
            "README.md",
            "src/main.rs",
            ".github/workflows/ci.yml",
            "a/b/c.d.e",
            "console.log",
            ".gitignore",
            ".gitmodules",
            "sub/.gitkeep",
            ".git-blame-ignore-revs",
            "git~10/x",
            "notes/git",
        ] {
            check_relative(ok).unwrap();
        }
    }

    #[test]
    fn peers_set_the_executable_bit_and_nothing_else() {
        use std::os::unix::fs::PermissionsExt;
        for (raw, want) in [
            (0o6777, 0o755),
            (0o4755, 0o755),
            (0o1777, 0o755),
            (0o666, 0o644),
            (0o002, 0o644),
            (0o7000, 0o644),
            (0o100, 0o755),
            (0, 0o644),
            (u32::MAX, 0o755),
        ] {
            assert_eq!(peer_mode(raw), want, "{raw:o}");
        }
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        assert_eq!(mode_for_peer_write(&new, 0o6777), 0o755);
        assert_eq!(mode_for_peer_write(&new, 0o666), 0o644);
        // A file kept private here stays private; a world-writable one loses that.
        let private = dir.path().join("private");
        std::fs::write(&private, "x").unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(mode_for_peer_write(&private, 0o644), 0o600);
        assert_eq!(mode_for_peer_write(&private, 0o6777), 0o700);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o4777)).unwrap();
        assert_eq!(mode_for_peer_write(&private, 0o644), 0o644);
        assert_eq!(mode_for_peer_write(&private, 0o755), 0o755);
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

    #[test]
    fn temp_names_are_hidden_and_recognised() {
        let name = temp_name(std::ffi::OsStr::new("notes.txt"));
        let name = name.to_string_lossy();
        assert!(name.starts_with(".notes.txt.jarvis-tmp-"), "{name}");
        assert!(is_temp_name(&name));
        assert!(!is_temp_name("notes.txt") && !is_temp_name("notes.txt.jarvis-tmp-0"));
    }

    #[test]
    fn write_inside_never_replaces_a_save_made_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let root = CanonicalRoot::new(dir.path()).unwrap();
        let path = root.join("a.txt");
        std::fs::write(&path, "read").unwrap();
        let read = Some(blake3::hash(b"read"));
        std::fs::write(&path, "saved meanwhile").unwrap();
        let unless = Replace::IfUnchanged(read);
        assert!(!write_inside(&root, &path, b"ours", None, unless).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"saved meanwhile");
        let now = Replace::IfUnchanged(Some(blake3::hash(b"saved meanwhile")));
        assert!(write_inside(&root, &path, b"ours", Some(0o600), now).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"ours");
        // A file that appeared since the caller saw none is not replaced either.
        let new = root.join("b.txt");
        std::fs::write(&new, "theirs").unwrap();
        assert!(!write_inside(&root, &new, b"ours", None, Replace::IfUnchanged(None)).unwrap());
        assert_eq!(std::fs::read(&new).unwrap(), b"theirs");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "temporary file left"
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

    #[cfg(unix)]
    #[test]
    fn a_folder_swapped_for_a_link_out_is_never_read_or_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let root = CanonicalRoot::new(dir.path()).unwrap();
        std::fs::write(out.path().join("hub.db"), b"secret").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/ok.txt"), b"ok").unwrap();
        assert_eq!(read_inside(&root, &root.join("sub/ok.txt")).unwrap(), b"ok");
        let pinned = PinnedDir::parent_of(&root, &root.join("sub/ok.txt")).unwrap();
        // The folder is swapped for a link to another place after it was pinned.
        std::fs::rename(root.join("sub"), root.join("sub-moved")).unwrap();
        std::os::unix::fs::symlink(out.path(), root.join("sub")).unwrap();
        // Reads through the link are refused.
        assert!(read_inside(&root, &root.join("sub/hub.db")).is_err());
        assert!(PinnedDir::parent_of(&root, &root.join("sub/hub.db")).is_err());
        // A file link is never followed, even to a file inside.
        std::os::unix::fs::symlink(root.join("sub-moved/ok.txt"), root.join("link.txt")).unwrap();
        assert!(read_inside(&root, &root.join("link.txt")).is_err());
        // What was pinned before the swap still names the real folder.
        std::fs::write(pinned.join("new.txt"), b"new").unwrap();
        assert_eq!(
            std::fs::read(root.join("sub-moved/new.txt")).unwrap(),
            b"new"
        );
        assert!(!out.path().join("new.txt").exists());
        assert_eq!(std::fs::read(out.path().join("hub.db")).unwrap(), b"secret");
    }
}
