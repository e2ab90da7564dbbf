//! Documents → disk: index entries and file documents written into the folder, never over a
//! save the watcher has not delivered yet.

use super::*;

/// Renames a file to another name in the same folder, both through the folder as opened
/// now (see [`PinnedDir`]).
pub(super) fn rename_inside(root: &CanonicalRoot, from: &Path, to: &Path) -> std::io::Result<()> {
    let (Some(a), Some(b)) = (from.file_name(), to.file_name()) else {
        return Err(std::io::Error::other("no file name"));
    };
    let (from_dir, to_dir) = (
        PinnedDir::parent_of(root, from)?,
        PinnedDir::parent_of(root, to)?,
    );
    std::fs::rename(from_dir.join(a), to_dir.join(b))
}

impl Inner {
    pub(super) fn forget_seen(&self, path: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }

    /// Writes every live index entry whose document differs from the disk, and removes files
    /// deleted elsewhere (unless edited here since: an edit beats a delete).
    ///
    /// Entries unchanged since the last pass whose document has no new remote change are
    /// skipped, so a pass costs what changed, not the size of the workspace.
    pub(super) async fn to_disk(&self, dirty: &HashSet<String>) {
        for (path, entry) in self.index.list_all() {
            self.entry_to_disk(path, entry, dirty).await;
        }
    }

    /// Only the files whose documents changed remotely, when the index itself did not: a
    /// one-line edit must not cost a walk over every entry of a large workspace.
    pub(super) async fn docs_to_disk(&self, dirty: &HashSet<String>) {
        let (mut paths, unknown) = self
            .doc_paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paths_of(dirty);
        if !unknown.is_empty() {
            // A document no pass has written yet here (say, one this folder created): find
            // its paths in the index rather than leave the edit off the disk.
            let unknown: HashSet<&String> = unknown.into_iter().collect();
            paths.extend(
                self.index
                    .list_all()
                    .into_iter()
                    .filter(|(_, e)| e.doc.as_ref().is_some_and(|d| unknown.contains(d)))
                    .map(|(p, _)| p),
            );
        }
        for path in paths {
            if let Ok(Some(entry)) = self.index.get(&path) {
                self.entry_to_disk(path, entry, dirty).await;
            }
        }
    }

    pub(super) async fn entry_to_disk(
        &self,
        path: String,
        entry: FileEntry,
        dirty: &HashSet<String>,
    ) {
        let unchanged = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
            .is_some_and(|e| *e == entry);
        if unchanged && entry.doc.as_ref().is_none_or(|d| !dirty.contains(d)) {
            return;
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.clone(), entry.clone());
        // A write of this path still waiting for its batch is decided again below, from the
        // entry as it is now (it may have been deleted since).
        self.new_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f.path != path);
        let target = match resolve_for_write(&self.root, &path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "refusing an index entry");
                return;
            }
        };
        if self.relative(&target).is_none() {
            return; // ignored here
        }
        // Only an accepted path: a refused entry naming the same document must not take it
        // away from the file that shows it.
        if let Some(d) = &entry.doc {
            self.doc_paths
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .set(&path, d);
        }
        if entry.kind == EntryKind::Blob && !entry.deleted {
            self.blob_to_disk(&path, &target, &entry).await;
            return;
        }
        let disk = read_inside(&self.root, &target).ok();
        let disk_hash = disk.as_deref().map(blake3::hash);
        let edited_here = disk_hash.is_some() && disk_hash != self.known(&path);
        let mut entry = entry;
        if entry.deleted {
            if edited_here {
                // An edit beats a delete: bring the file back with this device's content.
                self.disk_to_doc(&path).await;
                return;
            }
            // For a blob, this device's synced version is what it would revive; it is already
            // uploaded, so reviving is pointing the entry back at it.
            let kept_blob = match (entry.kind, entry.hash.as_deref(), self.known(&path)) {
                (EntryKind::Blob, Some(tomb), Some(k))
                    if disk_hash == Some(k) && k.to_hex().as_str() != tomb =>
                {
                    Some(k.to_hex().to_string())
                }
                _ => None,
            };
            let edited_elsewhere = match (entry.hash.as_deref(), entry.doc.as_deref()) {
                _ if kept_blob.is_some() => true,
                (Some(tomb), Some(doc_id)) => match self.file_text(doc_id).await {
                    Some(f) => blake3::hash(f.text().as_bytes()).to_hex().as_str() != tomb,
                    None => false,
                },
                _ => false,
            };
            if !edited_elsewhere {
                if disk.is_some()
                    && let Err(e) = PinnedDir::parent_of(&self.root, &target).and_then(|d| {
                        std::fs::remove_file(d.join(target.file_name().unwrap_or_default()))
                    })
                {
                    tracing::warn!(path, error = %e, "cannot delete");
                }
                self.set_known(&path, None);
                return;
            }
            // The content changed after the deleting device last saw it: revive.
            entry.deleted = false;
            entry.base = entry.hash.take();
            entry.hash = kept_blob;
            entry.modified_ms = now_ms();
            if let Err(e) = self.index.upsert(&path, &entry) {
                tracing::warn!(path, error = %e, "cannot revive");
                return;
            }
        }
        if disk.is_none() && self.known(&path).is_some() {
            // Deleted here and the watcher has not said so yet: record the deletion
            // instead of resurrecting the file.
            self.disk_to_doc(&path).await;
            return;
        }
        if edited_here {
            // Merge the local edit first, then write the merged text.
            self.disk_to_doc(&path).await;
        }
        let Some(doc_id) = entry.doc.as_deref() else {
            return;
        };
        let Some(file) = self.file_text(doc_id).await else {
            return;
        };
        // The text and the state it belongs to, read together: that state becomes the base.
        let (text, state, sv) = file.text_with_state(&self.bases.covered(doc_id));
        let hash = blake3::hash(text.as_bytes());
        if disk_hash == Some(hash) && self.known(&path) == Some(hash) {
            self.exec_to_disk(&path, &target, entry.mode);
            return;
        }
        if disk.is_none() {
            // New to this folder (a first download is thousands of them): written with its
            // batch, once the batch's intents are saved (`Inner::write_new_files`).
            self.defer_new_file(state::NewFile {
                doc_id: doc_id.to_owned(),
                state,
                sv,
                mode: mode_for_peer_write(&target, entry.mode),
                exec: is_exec(entry.mode),
                path,
                target,
                text,
                hash,
            });
            return;
        }
        if disk_hash != Some(hash) {
            let mode = mode_for_peer_write(&target, entry.mode);
            // Replaced only if it still holds what was read above: a save made since then must
            // be merged first, not overwritten.
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    write_inside(
                        &self.root,
                        &target,
                        text.as_bytes(),
                        Some(mode),
                        Replace::IfUnchanged(disk_hash),
                    )
                });
            match written {
                Ok(true) => {}
                Ok(false) => {
                    // Saved since it was read above: its watcher event is queued, and the next
                    // pass merges that save first and then writes.
                    self.forget_seen(&path);
                    return;
                }
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot write");
                    self.forget_seen(&path);
                    return;
                }
            }
            self.set_known_exec(&path, Some(is_exec(entry.mode)));
        } else {
            self.exec_to_disk(&path, &target, entry.mode);
        }
        // Saved at once: until then a crash leaves a file newer than its base.
        self.bases.record_state(doc_id, state, sv);
        if let Err(e) = self.bases.flush() {
            tracing::warn!(path, error = %e, "cannot save the sync base");
        }
        self.set_known(&path, Some(hash));
    }
}
