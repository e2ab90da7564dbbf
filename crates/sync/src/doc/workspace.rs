//! `ws/<workspace>/index`: Y.Map `files`, relative path → entry. Directories are derived from
//! paths. Each entry is one flat value replaced whole, so a concurrent change on two devices
//! converges to one consistent entry (last writer by the CRDT's order) instead of mixing one
//! device's kind with another's hash; different paths always merge.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use yrs::{Any, Doc, Map, MapRef, Out, Transact};

use super::DocError;
use super::read::any_u64;

const FILES: &str = "files";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Content in the file document `ws/<ws>/file/<doc>`.
    Text,
    /// Content-addressed bytes, fetched by BLAKE3 hash.
    Blob,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub kind: EntryKind,
    /// File document id, for text entries.
    pub doc: Option<String>,
    /// BLAKE3 hex: the content of a blob entry; on a text tombstone, the content that was
    /// deleted (a device whose copy differs edited it concurrently, and its edit wins).
    pub hash: Option<String>,
    /// For blob entries: the hash this version replaced on the device that wrote it, so a
    /// device holding a different version can tell a concurrent change (keep both) from a later
    /// one (take it).
    pub base: Option<String>,
    pub size: u64,
    pub mode: u32,
    pub modified_ms: u64,
    pub deleted: bool,
}

/// The typed view of a workspace index.
#[derive(Clone)]
pub struct WorkspaceIndex {
    doc: Doc,
    files: MapRef,
}

/// A first, cheap check of an index path: relative, `/`-separated, no empty, `.` or `..`
/// segments, no NUL or backslash. The file mirror checks again against the real folder
/// (symlinks, reserved names) before writing anything.
pub fn check_path(path: &str) -> Result<(), DocError> {
    let bad = |reason| {
        Err(DocError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() || path.len() > 4096 {
        return bad("empty or longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("contains NUL or a backslash");
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("has an empty, '.' or '..' segment");
    }
    Ok(())
}

fn to_any(e: &FileEntry) -> Any {
    let mut m: HashMap<String, Any> = HashMap::from([
        (
            "kind".to_owned(),
            Any::from(match e.kind {
                EntryKind::Text => "text",
                EntryKind::Blob => "blob",
            }),
        ),
        ("size".to_owned(), Any::from(e.size as i64)),
        ("mode".to_owned(), Any::from(i64::from(e.mode))),
        ("modified".to_owned(), Any::from(e.modified_ms as i64)),
        ("deleted".to_owned(), Any::Bool(e.deleted)),
    ]);
    if let Some(d) = &e.doc {
        m.insert("doc".to_owned(), Any::from(d.as_str()));
    }
    if let Some(h) = &e.hash {
        m.insert("hash".to_owned(), Any::from(h.as_str()));
    }
    if let Some(b) = &e.base {
        m.insert("base".to_owned(), Any::from(b.as_str()));
    }
    Any::from(m)
}

fn from_any(path: &str, value: &Out) -> Result<FileEntry, DocError> {
    let malformed = || DocError::Malformed(format!("index entry {path:?}"));
    let Out::Any(Any::Map(m)) = value else {
        return Err(malformed());
    };
    let string = |k: &str| match m.get(k) {
        Some(Any::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let kind = match string("kind").as_deref() {
        Some("text") => EntryKind::Text,
        Some("blob") => EntryKind::Blob,
        _ => return Err(malformed()),
    };
    let entry = FileEntry {
        kind,
        doc: string("doc"),
        hash: string("hash"),
        base: string("base"),
        size: m.get("size").and_then(any_u64).unwrap_or(0),
        // A peer sends the executable bit, never setuid/setgid/sticky or group/world write.
        mode: crate::paths::peer_mode(
            m.get("mode")
                .and_then(any_u64)
                .map_or(0, |v| u32::try_from(v & 0o777).unwrap_or(0)),
        ),
        modified_ms: m.get("modified").and_then(any_u64).unwrap_or(0),
        deleted: matches!(m.get("deleted"), Some(Any::Bool(true))),
    };
    match (entry.kind, &entry.doc, &entry.hash) {
        (EntryKind::Text, Some(_), _) | (EntryKind::Blob, _, Some(_)) => Ok(entry),
        _ => Err(malformed()),
    }
}

impl WorkspaceIndex {
    pub fn new(doc: Doc) -> Self {
        let files = doc.get_or_insert_map(FILES);
        WorkspaceIndex { doc, files }
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// Calls `f` after each transaction that changes entries, with the transaction (for its
    /// origin) and the changed paths. Runs inside the commit: `f` must not read the document.
    pub fn observe_paths<F>(&self, key: &str, f: F)
    where
        F: Fn(&yrs::TransactionMut, Vec<String>) + Send + Sync + 'static,
    {
        use yrs::Observable;
        self.files.observe(key, move |txn, e| {
            let paths = e.keys(txn).keys().map(|k| k.to_string()).collect();
            f(txn, paths);
        });
    }

    pub fn upsert(&self, path: &str, entry: &FileEntry) -> Result<(), DocError> {
        check_path(path)?;
        let mut txn = self.doc.transact_mut();
        self.files.insert(&mut txn, path, to_any(entry));
        Ok(())
    }

    /// Marks a path deleted, keeping its entry (a tombstone) so a concurrent edit on another
    /// device can still win: the mirror treats an edit newer than the deletion as a revival.
    pub fn mark_deleted(&self, path: &str, at_ms: u64) -> Result<bool, DocError> {
        check_path(path)?;
        let Some(mut entry) = self.get(path)? else {
            return Ok(false);
        };
        entry.deleted = true;
        entry.modified_ms = at_ms;
        self.upsert(path, &entry)?;
        Ok(true)
    }

    /// The entry at `path`, deleted or not. A malformed entry is an error, not a panic.
    pub fn get(&self, path: &str) -> Result<Option<FileEntry>, DocError> {
        let txn = self.doc.transact();
        match self.files.get(&txn, path) {
            Some(v) => from_any(path, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Live entries sorted by path; malformed or hostile entries are left out (and logged).
    pub fn list(&self) -> Vec<(String, FileEntry)> {
        self.list_all()
            .into_iter()
            .filter(|(_, e)| !e.deleted)
            .collect()
    }

    /// Every well-formed entry, tombstones included, sorted by path.
    pub fn list_all(&self) -> Vec<(String, FileEntry)> {
        let txn = self.doc.transact();
        let mut out: Vec<(String, FileEntry)> = self
            .files
            .iter(&txn)
            .filter_map(|(path, v)| {
                if let Err(e) = check_path(path) {
                    tracing::warn!(error = %e, "ignoring index entry");
                    return None;
                }
                match from_any(path, &v) {
                    Ok(e) => Some((path.to_owned(), e)),
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring index entry");
                        None
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::doc::sync_replicas;

    fn text(doc: &str) -> FileEntry {
        FileEntry {
            kind: EntryKind::Text,
            doc: Some(doc.into()),
            hash: None,
            base: None,
            size: 3,
            mode: 0o644,
            modified_ms: 1,
            deleted: false,
        }
    }

    #[test]
    fn concurrent_upserts_merge_and_same_path_converges() {
        let a = WorkspaceIndex::new(Doc::new());
        let b = WorkspaceIndex::new(Doc::new());
        a.upsert("src/main.rs", &text("f1")).unwrap();
        b.upsert("README.md", &text("f2")).unwrap();
        let mut blob = text("x");
        blob.kind = EntryKind::Blob;
        blob.doc = None;
        blob.hash = Some("ab".repeat(32));
        a.upsert("logo.png", &blob).unwrap();
        b.upsert("logo.png", &text("f3")).unwrap();
        sync_replicas(a.doc(), b.doc());
        assert_eq!(a.list(), b.list());
        let paths: Vec<String> = a.list().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, vec!["README.md", "logo.png", "src/main.rs"]);
        // Whichever won, the entry is whole: never a blob kind with a text doc id.
        let logo = a.get("logo.png").unwrap().unwrap();
        assert!(logo == blob || logo == text("f3"));

        assert!(a.mark_deleted("README.md", 5).unwrap());
        assert!(!a.mark_deleted("missing.txt", 5).unwrap());
        assert_eq!(a.list().len(), 2);
        assert_eq!(a.list_all().len(), 3);
        assert!(a.get("README.md").unwrap().unwrap().deleted);
    }

    #[test]
    fn hostile_paths_and_values() {
        let idx = WorkspaceIndex::new(Doc::new());
        for bad in [
            "../escape",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "",
            "a\0b",
            "a\\b",
            "./x",
        ] {
            assert!(idx.upsert(bad, &text("f")).is_err(), "{bad:?} accepted");
        }
        {
            // A hostile peer writes raw values.
            let files = idx.doc().get_or_insert_map("files");
            let mut txn = idx.doc().transact_mut();
            files.insert(&mut txn, "../escape", to_any(&text("f")));
            files.insert(&mut txn, "weird", "not a map");
            files.insert(
                &mut txn,
                "nokind",
                Any::from(HashMap::from([("size".to_owned(), Any::from(1.0))])),
            );
            files.insert(&mut txn, "ok.txt", to_any(&text("f")));
        }
        let listed: Vec<String> = idx.list().into_iter().map(|(p, _)| p).collect();
        assert_eq!(listed, vec!["ok.txt"]);
        assert!(idx.get("weird").is_err());
    }

    #[test]
    fn a_peers_mode_is_read_as_the_executable_bit_only() {
        let idx = WorkspaceIndex::new(Doc::new());
        let cases: [(&str, Any); 7] = [
            ("suid", Any::from(0o6777i64)),
            ("world", Any::from(0o666i64)),
            ("sticky", Any::from(0o1644i64)),
            ("exec", Any::from(0o700i64)),
            ("huge", Any::from(i64::MAX)),
            ("negative", Any::from(-1i64)),
            ("float", Any::from(4095.0)),
        ];
        {
            let files = idx.doc().get_or_insert_map("files");
            let mut txn = idx.doc().transact_mut();
            for (path, mode) in &cases {
                let mut entry = match to_any(&text("f")) {
                    Any::Map(m) => (*m).clone(),
                    _ => unreachable!(),
                };
                entry.insert("mode".to_owned(), mode.clone());
                files.insert(&mut txn, *path, Any::from(entry));
            }
        }
        let modes: HashMap<String, u32> =
            idx.list().into_iter().map(|(p, e)| (p, e.mode)).collect();
        let want = [
            ("suid", 0o755),
            ("world", 0o644),
            ("sticky", 0o644),
            ("exec", 0o755),
            ("huge", 0o755),
            ("negative", 0o644),
            ("float", 0o755),
        ];
        for (path, mode) in want {
            assert_eq!(modes[path], mode, "{path}");
        }
    }
}
