//! Content-addressed blobs (binary and large files): stored once under their BLAKE3 hash in a
//! sharded folder, written through a temporary file whose hash is checked before it is renamed
//! into place, so a blob on disk is always exactly the bytes its name promises.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob hash {0:?}: expected 64 lowercase hex digits")]
    InvalidHash(String),
    #[error("content does not match its hash: expected {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("blob exceeds the size limit of {0} bytes")]
    TooLarge(u64),
    #[error("blob storage: {0}")]
    Io(#[from] std::io::Error),
}

pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A folder of blobs: `<root>/<first two hex digits>/<hash>`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    pub max_bytes: u64,
}

/// An upload in progress: feed chunks, then `finish` checks the hash and publishes the blob.
pub struct BlobWriter {
    tmp: PathBuf,
    file: std::fs::File,
    hasher: blake3::Hasher,
    written: u64,
    expected: String,
    target: PathBuf,
    max: u64,
}

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlobStore {
            root: root.into(),
            max_bytes: 1024 * 1024 * 1024,
        }
    }

    pub fn path(&self, hash: &str) -> Result<PathBuf, BlobError> {
        if !valid_hash(hash) {
            return Err(BlobError::InvalidHash(hash.to_owned()));
        }
        Ok(self.root.join(&hash[..2]).join(hash))
    }

    pub fn contains(&self, hash: &str) -> bool {
        self.path(hash).is_ok_and(|p| p.is_file())
    }

    pub fn writer(&self, expected: &str) -> Result<BlobWriter, BlobError> {
        let target = self.path(expected)?;
        let dir = target
            .parent()
            .ok_or_else(|| BlobError::InvalidHash(expected.into()))?;
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{expected}.{:08x}.part", rand::random::<u32>()));
        Ok(BlobWriter {
            file: std::fs::File::create(&tmp)?,
            tmp,
            hasher: blake3::Hasher::new(),
            written: 0,
            expected: expected.to_owned(),
            target,
            max: self.max_bytes,
        })
    }

    /// Stores bytes already in memory (the file mirror's case).
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let hash = hash_bytes(bytes);
        if !self.contains(&hash) {
            let mut w = self.writer(&hash)?;
            w.write(bytes)?;
            w.finish()?;
        }
        Ok(hash)
    }
}

impl BlobWriter {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.written += chunk.len() as u64;
        if self.written > self.max {
            return Err(BlobError::TooLarge(self.max));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk)?;
        Ok(())
    }

    /// Verifies the hash, fsyncs, and renames into place. On any error nothing is published.
    pub fn finish(self) -> Result<u64, BlobError> {
        let actual = self.hasher.finalize().to_hex().to_string();
        if actual != self.expected {
            return Err(BlobError::Mismatch {
                expected: self.expected.clone(),
                actual,
            });
        }
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.target)?;
        Ok(self.written)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful rename the temporary name is gone; otherwise this discards it.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Reads a stored blob back (small helper for tests and the mirror).
pub fn read(store: &BlobStore, hash: &str) -> Result<Vec<u8>, BlobError> {
    Ok(std::fs::read(store.path(hash)?)?)
}

/// True when `path` is a blob store's partial upload (never served, cleaned on restart).
pub fn is_partial(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "part")
}

/// Removes the partial uploads under `root` (every workspace's store): a process killed
/// mid-upload never ran the writer's cleanup. Call at start-up, before any upload begins.
/// Returns the files and bytes removed; a missing `root` is nothing to clean.
pub fn remove_partials(root: &Path) -> std::io::Result<(usize, u64)> {
    let mut removed = (0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            // Symlinks are never followed: cleaning must stay inside the store.
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() && is_partial(&path) {
                let len = entry.metadata().map_or(0, |m| m.len());
                std::fs::remove_file(&path)?;
                removed.0 += 1;
                removed.1 += len;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn put_verify_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let h = store.put(b"\x00\x01binary").unwrap();
        assert!(store.contains(&h));
        assert_eq!(read(&store, &h).unwrap(), b"\x00\x01binary");
        // A body that does not match its claimed hash is never published.
        let wrong = hash_bytes(b"something else");
        let mut w = store.writer(&wrong).unwrap();
        w.write(b"tampered").unwrap();
        assert!(matches!(w.finish(), Err(BlobError::Mismatch { .. })));
        assert!(!store.contains(&wrong));
        for bad in ["", "../../etc/passwd", &"A".repeat(64), &"0".repeat(63)] {
            assert!(
                matches!(store.path(bad), Err(BlobError::InvalidHash(_))),
                "{bad}"
            );
        }
        let mut small = BlobStore::new(dir.path());
        small.max_bytes = 4;
        let mut w = small.writer(&hash_bytes(b"12345")).unwrap();
        assert!(matches!(w.write(b"12345"), Err(BlobError::TooLarge(4))));
        drop(w);
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| is_partial(p))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn partial_uploads_left_by_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path().join("ws1"));
        let kept = store.put(b"whole").unwrap();
        let mut w = store.writer(&hash_bytes(b"never finished")).unwrap();
        w.write(b"never").unwrap();
        // A killed process runs no destructor.
        std::mem::forget(w);
        assert_eq!(walk(dir.path()).iter().filter(|p| is_partial(p)).count(), 1);
        assert_eq!(remove_partials(dir.path()).unwrap(), (1, 5));
        assert!(walk(dir.path()).iter().all(|p| !is_partial(p)));
        assert!(store.contains(&kept), "finished blobs stay");
        assert_eq!(remove_partials(&dir.path().join("absent")).unwrap(), (0, 0));
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
