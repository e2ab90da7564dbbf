//! An in-memory [`Store`] for tests and throwaway replicas. Same semantics as the SQLite store
//! (atomic batches, compaction into a snapshot) without durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{AppendItem, CompactStats, LogStats, Store, StoreError, StoredDoc};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    docs: BTreeMap<String, StoredDoc>,
    meta: HashMap<String, Vec<u8>>,
    /// When set, the next append fails (to test how callers handle storage errors).
    fail_next_append: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `append` fail with a database error.
    pub fn fail_next_append(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.fail_next_append = true;
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Poisoned)
    }
}

fn check_name(doc: &str) -> Result<(), StoreError> {
    if doc.is_empty() || doc.len() > 512 || doc.contains('\0') {
        return Err(StoreError::InvalidName(doc.to_owned()));
    }
    Ok(())
}

impl Store for MemoryStore {
    fn append(&self, items: &[AppendItem<'_>]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if std::mem::take(&mut inner.fail_next_append) {
            return Err(StoreError::Db(rusqlite::Error::InvalidQuery));
        }
        for i in items {
            check_name(i.doc)?;
        }
        for i in items {
            inner
                .docs
                .entry(i.doc.to_owned())
                .or_default()
                .updates
                .push(i.update.to_vec());
        }
        Ok(())
    }

    fn load(&self, doc: &str) -> Result<StoredDoc, StoreError> {
        check_name(doc)?;
        Ok(self.lock()?.docs.get(doc).cloned().unwrap_or_default())
    }

    fn compact(&self, doc: &str) -> Result<CompactStats, StoreError> {
        check_name(doc)?;
        let mut inner = self.lock()?;
        let Some(stored) = inner.docs.get_mut(doc) else {
            return Ok(CompactStats::default());
        };
        let snapshot = stored.merged(doc)?;
        let stats = CompactStats {
            merged_entries: stored.updates.len() as u64,
            snapshot_bytes: snapshot.len() as u64,
        };
        stored.snapshot = Some(snapshot);
        stored.updates.clear();
        Ok(stats)
    }

    fn log_stats(&self, doc: &str) -> Result<LogStats, StoreError> {
        check_name(doc)?;
        Ok(self
            .lock()?
            .docs
            .get(doc)
            .map(|d| LogStats {
                entries: d.updates.len() as u64,
                bytes: d.updates.iter().map(|u| u.len() as u64).sum(),
            })
            .unwrap_or_default())
    }

    fn list_docs(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock()?.docs.keys().cloned().collect())
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.lock()?.meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }
}
