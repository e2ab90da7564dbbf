//! The "device comes back" scenario, shared by every place a mirror runs (the CLI, the desktop
//! core, the cloud runner): a folder is seeded and synced; while one side is stopped, the other
//! side and the stopped side's folder both change the same files; after the restart, both
//! sides' work must be everywhere.

use std::path::Path;

use anyhow::{Result, ensure};

use crate::device::Snapshot;

pub const NOTES: &str = "# Notes\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n";
pub const NOTES_ELSEWHERE: &str =
    "# Notes\nline 2\nline 3\nline 4\nline 5\nline 6 edited elsewhere\nline 7\nline 8\n";
pub const NOTES_OFFLINE: &str =
    "# Notes\nline 2 edited offline\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n";
pub const NOTES_BOTH: &str = "# Notes\nline 2 edited offline\nline 3\nline 4\nline 5\nline 6 edited elsewhere\nline 7\nline 8\n";
/// Files after the scenario: notes, image, its conflict copy, plan, todo, new, run.sh.
pub const FILES_AFTER: usize = 7;

/// A binary file's version `tag` (not UTF-8, so it is synced as a blob).
pub fn binary_version(tag: u8) -> Vec<u8> {
    let mut v = vec![0u8, 159, 146, 150, tag];
    v.extend((0..4096u32).map(|i| (i.wrapping_mul(31) as u8) ^ tag));
    v
}

fn write(dir: &Path, rel: &str, content: impl AsRef<[u8]>) -> Result<()> {
    let p = dir.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(p, content)?;
    Ok(())
}

/// The five files both sides start from.
pub fn seed(dir: &Path) -> Result<()> {
    write(dir, "notes.md", NOTES)?;
    write(dir, "image.bin", binary_version(0))?;
    write(dir, "plan.md", "plan v1\n")?;
    write(dir, "todo.md", "todo v1\n")?;
    write(dir, "bin/run.sh", "#!/bin/sh\necho hi\n")
}

pub fn seeded(s: &Snapshot) -> bool {
    s.len() == 5
}

/// The side that kept running: line 6, its own image, todo.md deleted, plan.md edited.
pub fn edit_elsewhere(dir: &Path) -> Result<()> {
    write(dir, "notes.md", NOTES_ELSEWHERE)?;
    write(dir, "image.bin", binary_version(1))?;
    std::fs::remove_file(dir.join("todo.md"))?;
    write(dir, "plan.md", "plan v2 from elsewhere\n")
}

/// What [`edit_elsewhere`] looks like once it has reached a folder.
pub fn has_elsewhere(s: &Snapshot) -> bool {
    text(s, "notes.md").as_deref() == Some(NOTES_ELSEWHERE)
        && s.get("image.bin").map(|(b, _)| b.clone()) == Some(binary_version(1))
        && !s.contains_key("todo.md")
        && text(s, "plan.md").as_deref() == Some("plan v2 from elsewhere\n")
}

/// The stopped side's folder: line 2, another image, plan.md deleted, todo.md edited, a new
/// file, and the script made executable.
pub fn edit_offline(dir: &Path) -> Result<()> {
    write(dir, "notes.md", NOTES_OFFLINE)?;
    write(dir, "image.bin", binary_version(2))?;
    std::fs::remove_file(dir.join("plan.md"))?;
    write(dir, "todo.md", "todo v2 offline\n")?;
    write(dir, "new.md", "new offline\n")?;
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("bin/run.sh");
    let mut p = std::fs::metadata(&script)?.permissions();
    p.set_mode(p.mode() | 0o111);
    std::fs::set_permissions(&script, p)?;
    Ok(())
}

pub fn text(s: &Snapshot, path: &str) -> Option<String> {
    s.get(path)
        .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
}

/// `stem (conflict …).ext` files.
pub fn conflict_copies<'a>(s: &'a Snapshot, stem: &str, ext: &str) -> Vec<(&'a String, &'a [u8])> {
    s.iter()
        .filter(|(p, _)| p.starts_with(&format!("{stem} (conflict ")) && p.ends_with(ext))
        .map(|(p, (b, _))| (p, b.as_slice()))
        .collect()
}

/// Everything has arrived (the condition to wait for before [`check`]).
pub fn merged(s: &Snapshot) -> bool {
    text(s, "notes.md").as_deref() == Some(NOTES_BOTH)
        && conflict_copies(s, "image", ".bin").len() == 1
        && s.get("bin/run.sh").is_some_and(|(_, x)| *x)
        && s.contains_key("new.md")
        && s.contains_key("todo.md")
        && s.contains_key("plan.md")
}

/// Both sides' work, byte for byte. `image_at_path`: which version the document settled on
/// (the one that reached the hub first), when the test knows; the other must be the copy.
pub fn check(s: &Snapshot, image_at_path: Option<u8>) -> Result<()> {
    ensure!(
        text(s, "notes.md").as_deref() == Some(NOTES_BOTH),
        "notes.md: {:?}",
        text(s, "notes.md")
    );
    let copies = conflict_copies(s, "image", ".bin");
    ensure!(
        copies.len() == 1,
        "one conflict copy of image.bin: {copies:?}"
    );
    let at_path = s.get("image.bin").map(|(b, _)| b.clone());
    let mut both = [at_path.clone(), Some(copies[0].1.to_vec())];
    both.sort();
    let mut want = [Some(binary_version(1)), Some(binary_version(2))];
    want.sort();
    ensure!(
        both == want,
        "both image versions are kept, one at the path and one as the copy"
    );
    if let Some(tag) = image_at_path {
        ensure!(
            at_path == Some(binary_version(tag)),
            "image.bin holds version {tag}"
        );
    }
    // Delete against edit: the edit wins, whichever side deleted.
    ensure!(
        text(s, "plan.md").as_deref() == Some("plan v2 from elsewhere\n"),
        "plan.md: {:?}",
        text(s, "plan.md")
    );
    ensure!(
        text(s, "todo.md").as_deref() == Some("todo v2 offline\n"),
        "todo.md: {:?}",
        text(s, "todo.md")
    );
    ensure!(
        text(s, "new.md").as_deref() == Some("new offline\n"),
        "new.md"
    );
    ensure!(
        s["bin/run.sh"].1,
        "the executable bit set offline reached every folder"
    );
    ensure!(
        s.len() == FILES_AFTER,
        "files: {:?}",
        s.keys().collect::<Vec<_>>()
    );
    Ok(())
}
