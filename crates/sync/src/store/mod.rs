//! Durable storage of documents: per document an append-only log of Yjs v1 updates plus a
//! compacted snapshot. The hub acknowledges an update only after [`Store::append`] returned.
//!
//! This module owns the storage format; it never interprets document contents beyond merging
//! updates during compaction.

mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// One update to append to a document's log.
#[derive(Debug, Clone, Copy)]
pub struct AppendItem<'a> {
    pub doc: &'a str,
    /// A Yjs update in the v1 encoding.
    pub update: &'a [u8],
}

/// What a store holds for one document: the latest snapshot (a v1 update encoding the whole
/// state up to some point) and the log entries appended after it, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    pub snapshot: Option<Vec<u8>>,
    pub updates: Vec<Vec<u8>>,
}

impl StoredDoc {
    /// True when the store has nothing for the document.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.updates.is_empty()
    }

    /// Applies the snapshot and then the log to a document, in the caller's transaction.
    /// `Err` carries why an entry did not decode or apply.
    pub fn apply_to(&self, txn: &mut yrs::TransactionMut<'_>) -> Result<(), String> {
        use yrs::Update;
        use yrs::updates::decoder::Decode;
        for u in self.snapshot.iter().chain(self.updates.iter()) {
            let update =
                Update::decode_v1(u).map_err(|e| format!("stored update does not decode: {e}"))?;
            txn.apply_update(update)
                .map_err(|e| format!("stored update does not apply: {e}"))?;
        }
        Ok(())
    }

    /// Everything folded into one snapshot (a v1 update of the whole state), as compaction
    /// stores it.
    pub fn merged(&self, doc: &str) -> Result<Vec<u8>, StoreError> {
        use yrs::{ReadTxn, StateVector, Transact};
        let ydoc = yrs::Doc::new();
        self.apply_to(&mut ydoc.transact_mut())
            .map_err(|reason| StoreError::Corrupt {
                doc: doc.to_owned(),
                reason,
            })?;
        Ok(ydoc
            .transact()
            .encode_state_as_update_v1(&StateVector::default()))
    }
}

/// Size of a document's log since its last snapshot; used to decide when to compact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub entries: u64,
    pub bytes: u64,
}

/// What one compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub merged_entries: u64,
    pub snapshot_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("document {doc:?} holds an update that cannot be decoded or applied: {reason}")]
    Corrupt { doc: String, reason: String },
    #[error("invalid document name {0:?}")]
    InvalidName(String),
    #[error("store lock poisoned by a panic in another thread")]
    Poisoned,
}

/// Durable document storage. Implementations must make every `append` atomic and durable before
/// returning `Ok`, and `compact` atomic (a crash leaves either the old log or the new snapshot).
pub trait Store: Send + Sync + 'static {
    /// Appends every item in one transaction.
    fn append(&self, items: &[AppendItem<'_>]) -> Result<(), StoreError>;
    /// Everything stored for `doc` (empty when unknown).
    fn load(&self, doc: &str) -> Result<StoredDoc, StoreError>;
    /// Folds the snapshot and the whole log of `doc` into a new snapshot, in one transaction.
    fn compact(&self, doc: &str) -> Result<CompactStats, StoreError>;
    /// Entries and bytes in the log of `doc` since its snapshot.
    fn log_stats(&self, doc: &str) -> Result<LogStats, StoreError>;
    /// Names of every document with a snapshot or a log entry.
    fn list_docs(&self) -> Result<Vec<String>, StoreError>;
    /// Small per-store metadata (a client's acknowledged state vectors, ids).
    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
}

/// Opens `name` from `store` as a document whose every later change is appended to the store
/// before the changing transaction returns: an offline device's documents, without a hub.
pub fn open_persisted(
    store: std::sync::Arc<dyn Store>,
    name: &str,
) -> Result<yrs::Doc, StoreError> {
    let stored = store.load(name)?;
    let doc = yrs::Doc::new();
    stored
        .apply_to(&mut yrs::Transact::transact_mut(&doc))
        .map_err(|reason| StoreError::Corrupt {
            doc: name.to_owned(),
            reason,
        })?;
    let owned = name.to_owned();
    crate::doc::observe_updates_blocking(&doc, "jarvis-sync/persist", move |_, e| {
        if let Err(err) = store.append(&[AppendItem {
            doc: &owned,
            update: &e.update,
        }]) {
            tracing::error!(doc = %owned, error = %err, "persisting a change failed");
        }
    });
    Ok(doc)
}
