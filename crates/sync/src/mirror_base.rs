//! The file mirror's sync base: for each text file document, the Y state the folder's copy last
//! agreed with (what this device last imported from the file or wrote to it).
//!
//! A change found on disk is applied as an edit *from the base*, never as "make the document
//! equal my file": the document may hold edits from other devices that this folder has not
//! seen yet (they arrived while the mirror was stopped, or a moment before the file was saved),
//! and a diff against the document would delete them. An edit computed on a copy of the base
//! and applied to the live document is an ordinary concurrent CRDT edit, so both sides' work
//! merges.
//!
//! The base of each document is a replica of its own in the device store (document
//! `mirror-base/<workspace>/<folder hash>/<doc id>`), grown by appending what the live document
//! had when the folder agreed with it. It is always a subset of the live document, so its edits
//! always integrate there. Records are saved before the mirror's `known` hashes (so a base
//! may be newer than `known` after a crash, never older): a merged edit together with the
//! document's own log entry in one transaction, a written file's state right after the write,
//! and the records of files new on disk in batches.
//!
//! Never: apply a base's text to the live document as content, or let a missing base choose
//! one side silently (the caller keeps both versions instead).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use yrs::updates::decoder::Decode;
use yrs::{Doc, StateVector, Transact, Update};

use crate::store::{AppendItem, Store, StoreError};

/// Compact a base's log after this many records.
const COMPACT_AFTER: u32 = 64;

pub(crate) struct Bases {
    store: Arc<dyn Store>,
    prefix: String,
    /// Records not yet saved: (doc id, v1 update), oldest first.
    pending: Mutex<Vec<(String, Vec<u8>)>>,
    /// Doc id → a state the stored base is known to include (an underestimate is safe: the
    /// next record carries more than needed, and updates are idempotent).
    covered: Mutex<HashMap<String, StateVector>>,
    /// Doc id → records appended since the base was last compacted.
    appended: Mutex<HashMap<String, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bases {
    pub(crate) fn new(store: Arc<dyn Store>, workspace: &str, folder_hash: &str) -> Self {
        Bases {
            store,
            prefix: format!("mirror-base/{workspace}/{folder_hash}/"),
            pending: Mutex::default(),
            covered: Mutex::default(),
            appended: Mutex::default(),
        }
    }

    /// The store document holding the base of `doc_id`.
    pub(crate) fn name(&self, doc_id: &str) -> String {
        format!("{}{doc_id}", self.prefix)
    }

    /// A state the stored base is known to include; records are made relative to it.
    pub(crate) fn covered(&self, doc_id: &str) -> StateVector {
        lock(&self.covered).get(doc_id).cloned().unwrap_or_default()
    }

    /// The folder now holds the text of the live state `state` (an update from
    /// [`covered`](Self::covered)) whose vector is `sv`: the base becomes that state.
    pub(crate) fn record_state(&self, doc_id: &str, state: Vec<u8>, sv: StateVector) {
        lock(&self.pending).push((doc_id.to_owned(), state));
        lock(&self.covered).insert(doc_id.to_owned(), sv);
    }

    /// The folder's text is the base plus `edit`, an edit made on top of it and applied to the
    /// live document too.
    pub(crate) fn record_edit(&self, doc_id: &str, edit: Vec<u8>) {
        lock(&self.pending).push((doc_id.to_owned(), edit));
    }

    /// The base of `doc_id` as a document of its own (saved records and pending ones), or None
    /// when this folder has never recorded one.
    pub(crate) fn load(&self, doc_id: &str) -> Result<Option<Doc>, String> {
        let name = self.name(doc_id);
        let stored = self.store.load(&name).map_err(|e| e.to_string())?;
        let pending: Vec<Vec<u8>> = lock(&self.pending)
            .iter()
            .filter(|(d, _)| d == doc_id)
            .map(|(_, u)| u.clone())
            .collect();
        if stored.is_empty() && pending.is_empty() {
            return Ok(None);
        }
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            stored.apply_to(&mut txn)?;
            for u in pending {
                let u = Update::decode_v1(&u).map_err(|e| e.to_string())?;
                txn.apply_update(u).map_err(|e| e.to_string())?;
            }
        }
        Ok(Some(doc))
    }

    /// Saves pending records now if they have grown large (a first download of a big
    /// workspace is one pass), so memory stays bounded; otherwise they wait for the end of the
    /// pass and go in one transaction.
    pub(crate) fn flush_if_large(&self) {
        if self.is_large()
            && let Err(e) = self.flush()
        {
            tracing::warn!(error = %e, "saving the mirror's sync bases failed; retried after the next change");
        }
    }

    /// Whether the pending records have grown large enough to save now (memory stays bounded).
    pub(crate) fn is_large(&self) -> bool {
        let p = lock(&self.pending);
        p.len() >= 256 || p.iter().map(|(_, u)| u.len()).sum::<usize>() >= 8 << 20
    }

    /// Saves pending records in one transaction; compacts bases whose logs grew long.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.flush_with(&[])
    }

    /// [`flush`](Self::flush), with `extra` items in the same transaction (an edit of the live
    /// document saved together with its base record, so no crash can separate them).
    pub(crate) fn flush_with(&self, extra: &[AppendItem<'_>]) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() && extra.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = pending.iter().map(|(d, _)| self.name(d)).collect();
        let items: Vec<AppendItem<'_>> = pending
            .iter()
            .zip(&names)
            .map(|((_, u), n)| AppendItem { doc: n, update: u })
            .chain(extra.iter().copied())
            .collect();
        if let Err(e) = self.store.append(&items) {
            // Put them back in front of anything recorded meanwhile: the next pass retries.
            let mut p = lock(&self.pending);
            let later = std::mem::take(&mut *p);
            *p = pending;
            p.extend(later);
            return Err(e);
        }
        let mut due = Vec::new();
        {
            let mut appended = lock(&self.appended);
            for (d, _) in &pending {
                let n = appended.entry(d.clone()).or_default();
                *n += 1;
                if *n >= COMPACT_AFTER {
                    *n = 0;
                    due.push(self.name(d));
                }
            }
        }
        due.dedup();
        for name in due {
            if let Err(e) = self.store.compact(&name) {
                tracing::warn!(doc = %name, error = %e, "compacting a sync base failed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::doc::FileText;
    use crate::store::MemoryStore;

    #[test]
    fn an_edit_from_the_base_keeps_what_the_document_gained_since() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let bases = Bases::new(store, "w", "f");
        let live = FileText::new(Doc::new());
        live.apply_text_diff("one\ntwo\nthree\n");
        let (_, state, sv) = live.text_with_state(&bases.covered("d"));
        bases.record_state("d", state, sv);
        bases.flush().unwrap();
        // Another device edits line 3; the folder still holds the base and edits line 1.
        live.apply_text_diff("one\ntwo\nTHREE\n");
        let base = FileText::new(bases.load("d").unwrap().unwrap());
        assert_eq!(base.text(), "one\ntwo\nthree\n");
        let (_, _, edit) =
            base.apply_text_diff_update("ONE\ntwo\nthree\n", &StateVector::default());
        live.doc()
            .transact_mut()
            .apply_update(Update::decode_v1(&edit).unwrap())
            .unwrap();
        assert_eq!(live.text(), "ONE\ntwo\nTHREE\n");
        bases.record_edit("d", edit);
        assert_eq!(
            FileText::new(bases.load("d").unwrap().unwrap()).text(),
            "ONE\ntwo\nthree\n",
            "the base is what the folder holds, not the merged document"
        );
        assert!(bases.load("other").unwrap().is_none());
    }

    #[test]
    fn records_survive_a_reopen_and_compaction() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let live = FileText::new(Doc::new());
        {
            let bases = Bases::new(store.clone(), "w", "f");
            for i in 0..(COMPACT_AFTER + 3) {
                live.apply_text_diff(&format!("line {i}\n"));
                let (_, state, sv) = live.text_with_state(&bases.covered("d"));
                bases.record_state("d", state, sv);
                bases.flush().unwrap();
            }
        }
        let bases = Bases::new(store, "w", "f");
        let text = FileText::new(bases.load("d").unwrap().unwrap()).text();
        assert_eq!(text, live.text());
    }
}
