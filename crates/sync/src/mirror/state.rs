//! The folder's sync point (hash and executable bit per path, as last imported or written),
//! kept in the device store across restarts, and the uploads still waiting for the hub.

use super::*;

/// Files new to the folder written per batch: their intents are saved first.
const NEW_FILE_BATCH: usize = 256;
/// ... or once their texts and states reach this many bytes (memory stays bounded).
const NEW_FILE_BYTES: usize = 8 << 20;

/// A file new to this folder, waiting for its batch: written once its intent is saved, so a
/// crash before `known` is saved leaves no file the mirror would take for a local edit.
pub(super) struct NewFile {
    pub doc_id: String,
    /// The document state the text belongs to: the file's sync base once written.
    pub state: Vec<u8>,
    pub sv: yrs::StateVector,
    pub path: String,
    pub target: PathBuf,
    pub text: String,
    pub mode: u32,
    pub exec: bool,
    pub hash: blake3::Hash,
}

pub(super) fn load_known(
    store: &Arc<dyn crate::store::Store>,
    key: &str,
) -> HashMap<String, blake3::Hash> {
    let Ok(Some(bytes)) = store.get_meta(key) else {
        return HashMap::new();
    };
    let map: HashMap<String, String> = serde_json::from_slice(&bytes).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, v)| blake3::Hash::from_hex(v).ok().map(|h| (k, h)))
        .collect()
}

pub(super) fn load_exec(store: &Arc<dyn crate::store::Store>, key: &str) -> HashMap<String, bool> {
    match store.get_meta(key) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        _ => HashMap::new(),
    }
}

impl Inner {
    pub(super) fn set_known(&self, rel: &str, hash: Option<blake3::Hash>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match hash {
            Some(h) => known.insert(rel.to_owned(), h) != Some(h),
            None => known.remove(rel).is_some(),
        };
        if changed {
            self.known_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Saves the sync bases, then `known`, to the device store if they changed (once per
    /// pass, not per file). Bases first: a hash saved without its base would later make the
    /// folder's copy look unchanged against a base that was never stored.
    pub(super) async fn save_known(&self) {
        self.write_new_files();
        if let Err(e) = self.bases.flush() {
            tracing::warn!(error = %e, "saving the mirror's sync bases failed; retried after the next change");
            return;
        }
        if self
            .exec_dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let exec: HashMap<String, bool> = self
                .known_exec
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let saved = serde_json::to_vec(&exec)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    self.client
                        .store()
                        .put_meta(&self.exec_key, &b)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = saved {
                tracing::warn!(error = %e, "saving the mirror's file modes failed; retried after the next change");
                self.exec_dirty
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if !self
            .known_dirty
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let map: HashMap<String, String> = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.to_hex().to_string()))
            .collect();
        let store = self.client.store();
        let key = self.known_key.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&map).unwrap_or_default();
            store.put_meta(&key, &bytes)
        })
        .await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!(
                "saving the mirror's sync state failed; it is retried after the next change"
            );
            self.known_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        self.clear_intents();
    }

    pub(super) fn known(&self, rel: &str) -> Option<blake3::Hash> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .copied()
    }

    pub(super) fn known_exec(&self, rel: &str) -> Option<bool> {
        self.known_exec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .copied()
    }

    pub(super) fn set_known_exec(&self, rel: &str, exec: Option<bool>) {
        let mut map = self.known_exec.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match exec {
            Some(x) => map.insert(rel.to_owned(), x) != Some(x),
            None => map.remove(rel).is_some(),
        };
        if changed {
            self.exec_dirty
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Content unchanged here: a `chmod` made here since the sync point goes to the index.
    pub(super) fn exec_to_doc(
        &self,
        rel: &str,
        meta: &std::fs::Metadata,
        entry: Option<&FileEntry>,
    ) {
        let Some(e) = entry.filter(|e| !e.deleted) else {
            return;
        };
        let here = is_exec(mode_of(meta));
        match self.known_exec(rel) {
            Some(base) if base == here => {}
            // No record (a folder synced by an older build): only agreement is certain.
            None if is_exec(e.mode) != here => {}
            _ => {
                if is_exec(e.mode) != here {
                    let mut e = e.clone();
                    e.mode = with_exec(e.mode, here);
                    e.modified_ms = now_ms();
                    if let Err(err) = self.index.upsert(rel, &e) {
                        tracing::warn!(path = rel, error = %err, "cannot index");
                        return;
                    }
                }
                self.set_known_exec(rel, Some(here));
            }
        }
    }

    /// Content already on disk: a `chmod` made elsewhere reaches the file, unless this folder
    /// changed the bit itself since the sync point (its change is on the way to the index).
    pub(super) fn exec_to_disk(&self, rel: &str, target: &Path, mode: u32) {
        let Ok(meta) = std::fs::symlink_metadata(target) else {
            return;
        };
        let want = is_exec(mode);
        let here = is_exec(mode_of(&meta));
        if here == want {
            self.set_known_exec(rel, Some(want));
            return;
        }
        if self.known_exec(rel).is_some_and(|base| base != here) {
            return;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = with_exec(meta.permissions().mode() & 0o777, want);
            // Through a descriptor opened inside the folder: a link planted at the path is
            // never followed to change another file's mode.
            if let Err(e) = open_inside(&self.root, target)
                .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(mode)))
            {
                tracing::warn!(path = rel, error = %e, "cannot change the file mode");
                return;
            }
        }
        self.set_known_exec(rel, Some(want));
    }

    pub(super) fn set_waiting(&self, rel: &str, reason: Option<String>) {
        let changed = {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match reason {
                Some(r) => w.insert(rel.to_owned(), r.clone()) != Some(r),
                None => w.remove(rel).is_some(),
            }
        };
        if changed {
            self.save_waiting();
        }
    }

    /// Publishes this folder's waiting uploads under [`WAITING_KEY`].
    pub(super) fn save_waiting(&self) {
        let _turn = WAITING_SAVE.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.client.store();
        let mut all = waiting_uploads(store.as_ref());
        let mine = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let folder = self.root.display().to_string();
        if mine.is_empty() {
            if all.remove(&folder).is_none() {
                return;
            }
        } else {
            all.insert(folder, mine);
        }
        let saved = serde_json::to_vec(&all)
            .map_err(|e| e.to_string())
            .and_then(|b| store.put_meta(WAITING_KEY, &b).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot record the uploads waiting for the hub");
        }
    }

    /// Retries failed uploads until they succeed: a file whose upload failed must not wait for
    /// its next edit, or the other devices might never get it.
    pub(super) async fn retry_uploads(me: std::sync::Weak<Inner>) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::time::sleep(wait).await;
            let Some(inner) = me.upgrade() else {
                return;
            };
            let paths: Vec<PathBuf> = inner
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .map(|p| inner.root.join(p))
                .collect();
            wait = if paths.is_empty() {
                Duration::from_secs(1)
            } else {
                let _ = inner.work.send(Work::Disk(paths));
                (wait * 2).min(Duration::from_secs(30))
            };
        }
    }
}

impl Inner {
    /// Queues a file new to this folder; a full batch is written. (`entry_to_disk` has dropped
    /// any earlier queued write of the same path.)
    pub(super) fn defer_new_file(&self, file: NewFile) {
        let full = {
            let mut q = self.new_files.lock().unwrap_or_else(|p| p.into_inner());
            q.push(file);
            q.len() >= NEW_FILE_BATCH
                || q.iter()
                    .map(|f| f.text.len() + f.state.len())
                    .sum::<usize>()
                    >= NEW_FILE_BYTES
        };
        if full {
            self.write_new_files();
        }
    }

    /// Saves the queued files' intents (path, hash), then writes them and records their bases.
    ///
    /// `known` is saved at the end of a pass, so a crash in a long first download used to
    /// leave files this folder could not tell from local edits (a later edit elsewhere became a
    /// conflict copy). Now the next start takes a file for the hub's copy when it holds exactly
    /// the intended bytes (`adopt_intents`); a file someone made or changed there meanwhile
    /// does not match, and is handled as a local file, as before.
    pub(super) fn write_new_files(&self) {
        let files = std::mem::take(&mut *self.new_files.lock().unwrap_or_else(|p| p.into_inner()));
        if files.is_empty() {
            return;
        }
        let bytes = {
            let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
            for f in &files {
                intents.insert(f.path.clone(), (f.hash.to_hex().to_string(), f.exec));
            }
            serde_json::to_vec(&*intents).unwrap_or_default()
        };
        if let Err(e) = self.client.store().put_meta(&self.intent_key, &bytes) {
            tracing::warn!(error = %e, "saving the mirror's write intents failed; writing anyway");
        }
        for f in files {
            let written = f
                .target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    write_inside(
                        &self.root,
                        &f.target,
                        f.text.as_bytes(),
                        Some(f.mode),
                        Replace::IfUnchanged(None),
                    )
                });
            match written {
                Ok(true) => {
                    self.bases.record_state(&f.doc_id, f.state, f.sv);
                    self.set_known_exec(&f.path, Some(f.exec));
                    self.set_known(&f.path, Some(f.hash));
                }
                // Made here meanwhile: its watcher event merges it on the next pass.
                Ok(false) => self.forget_seen(&f.path),
                Err(e) => {
                    tracing::warn!(path = f.path, error = %e, "cannot write");
                    self.forget_seen(&f.path);
                }
            }
        }
        self.bases.flush_if_large();
    }

    /// At start: a file a killed pass wrote (its intent saved, `known` not) that still holds
    /// exactly the intended bytes is this folder's synced copy.
    pub(super) fn adopt_intents(&self) {
        let stored: HashMap<String, (String, bool)> =
            match self.client.store().get_meta(&self.intent_key) {
                Ok(Some(b)) => serde_json::from_slice(&b).unwrap_or_default(),
                _ => return,
            };
        if stored.is_empty() {
            return;
        }
        let mut adopted = 0usize;
        for (path, (hash, exec)) in &stored {
            if self.known(path).is_some() {
                continue;
            }
            let (Ok(want), Ok(target)) = (
                blake3::Hash::from_hex(hash),
                resolve_for_write(&self.root, path),
            ) else {
                continue;
            };
            if read_inside(&self.root, &target).is_ok_and(|b| blake3::hash(&b) == want) {
                self.set_known(path, Some(want));
                self.set_known_exec(path, Some(*exec));
                adopted += 1;
            }
        }
        tracing::info!(
            adopted,
            intents = stored.len(),
            "files a stopped pass wrote, taken as synced"
        );
        // Cleared once `known` holds them (the next save).
        *self.intents.lock().unwrap_or_else(|p| p.into_inner()) = stored;
    }

    /// After `known` is saved: the intents it now covers are dropped.
    pub(super) fn clear_intents(&self) {
        let mut intents = self.intents.lock().unwrap_or_else(|p| p.into_inner());
        if intents.is_empty() {
            return;
        }
        match self.client.store().put_meta(&self.intent_key, b"{}") {
            Ok(()) => intents.clear(),
            Err(e) => tracing::warn!(error = %e, "clearing the mirror's write intents failed"),
        }
    }
}
