//! The folder's sync point (hash and executable bit per path, as last imported or written),
//! kept in the device store across restarts, and the uploads still waiting for the hub.

use super::*;

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
        }
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
