//! Disk → documents: the initial import and one path's disk state merged into its document
//! (text as an edit from the sync base; both kept as a conflict copy where that cannot merge).

use super::*;

impl Inner {
    /// Walks the folder and brings every file into the documents. With `sweep_temps` (the first
    /// walk, before anything else writes in the folder) the same walk removes the temporary files
    /// a killed mirror left: a second walk just for them cost as much as the import's own. Folders
    /// this device ignores are not walked, so a leftover under a nested ignore file stays (it is
    /// hidden and never synced).
    pub(super) async fn import(
        &self,
        progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>,
        sweep_temps: bool,
    ) {
        let mut files = Vec::new();
        let walker = ignore::WalkBuilder::new(&self.root)
            .hidden(false)
            .git_ignore(true)
            .git_exclude(false)
            .git_global(false)
            .require_git(false)
            .add_custom_ignore_filename(".jarvisignore")
            .filter_entry(|e| !DEFAULT_IGNORES.contains(&e.file_name().to_string_lossy().as_ref()))
            .build();
        for entry in walker.flatten() {
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            if sweep_temps && is_temp_name(&entry.file_name().to_string_lossy()) {
                remove_stale_temp(entry.path());
            } else if let Some(rel) = self.relative(entry.path()) {
                files.push(rel);
            }
        }
        let total = files.len();
        for (i, rel) in files.iter().enumerate() {
            self.disk_to_doc(rel).await;
            if let Some(p) = progress {
                p(i + 1, total);
            }
        }
        // Files the index lists as live that are gone from disk were deleted while we were
        // not watching.
        let on_disk: HashSet<&String> = files.iter().collect();
        for (path, _) in self.index.list() {
            let known = self
                .known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&path);
            if !on_disk.contains(&path) && known {
                self.disk_to_doc(&path).await;
            }
        }
        self.save_known().await;
    }

    /// Whether a live entry's content moved on since this folder's sync point; None when it
    /// already holds exactly what the folder holds (`disk`).
    pub(super) async fn moved_elsewhere(
        &self,
        rel: &str,
        e: &FileEntry,
        disk: blake3::Hash,
    ) -> Option<bool> {
        let known = self.known(rel);
        let current = match (e.kind, e.hash.as_deref(), e.doc.as_deref()) {
            (EntryKind::Blob, Some(h), _) => blake3::Hash::from_hex(h).ok(),
            (EntryKind::Text, _, Some(d)) => self
                .file_text(d)
                .await
                .map(|f| blake3::hash(f.text().as_bytes())),
            _ => None,
        };
        match current {
            Some(c) if c == disk => None,
            Some(c) => Some(known != Some(c)),
            None => Some(false),
        }
    }

    /// Both changed and there is no way to merge (a blob, or no base): the document's version
    /// stays at the path and this folder's becomes `name (conflict <device> <date>).ext`,
    /// which then syncs like any new file, so every device ends up with both.
    pub(super) async fn keep_local_as_conflict(&self, rel: &str) {
        let ms = now_ms();
        let mut copy = conflict_name(rel, &self.device, ms);
        let mut n = 2;
        while self.root.join(&copy).exists() && n < 100 {
            copy = conflict_name(rel, &format!("{} {n}", self.device), ms);
            n += 1;
        }
        let copy_path = match resolve_for_write(&self.root, &copy) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot name a conflict copy; leaving the file as is");
                return;
            }
        };
        if let Err(e) = rename_inside(&self.root, &self.root.join(rel), &copy_path) {
            tracing::warn!(path = rel, error = %e, "cannot keep the conflict copy; leaving the file as is");
            return;
        }
        tracing::info!(
            path = rel,
            copy,
            "changed here and elsewhere: kept this device's version as a copy"
        );
        Box::pin(self.disk_to_doc(&copy)).await;
        self.set_known(rel, None);
        self.forget_seen(rel);
        let _ = self.work.send(Work::RemotePaths(vec![rel.to_owned()]));
    }

    /// Brings the text on disk into file document `doc_id` as an edit from the folder's sync
    /// base. `entry`: the index entry at this path. When it points at another document, or is
    /// a tombstone this folder already carried out, the file is new here and every line of it
    /// is this device's; a tombstone this folder had not seen is merged like a live entry (an
    /// edit beats a delete, and the document may hold edits made elsewhere before the delete).
    /// False when nothing was imported (kept as a conflict copy, or the document's content has
    /// not arrived yet).
    ///
    /// Crash safety: an edit is saved into the base before it is applied to the document, so
    /// after a crash between the two the base holds exactly the folder's text and is merged
    /// into the document (updates are idempotent) instead of being applied twice.
    pub(super) async fn merge_text(
        &self,
        rel: &str,
        doc_id: &str,
        file: &FileText,
        text: &str,
        entry: Option<&FileEntry>,
    ) -> bool {
        let turn = self.merging.lock().await;
        let known = self.known(rel);
        let fresh = match entry {
            Some(e) if e.doc.as_deref() == Some(doc_id) => e.deleted && known.is_none(),
            _ => true,
        };
        let covered = self.bases.covered(doc_id);
        let (current, state, sv) = file.text_with_state(&covered);
        if current == text {
            self.bases.record_state(doc_id, state, sv);
            return true;
        }
        if fresh {
            self.edit_document(doc_id, file, text, &covered);
            return true;
        }
        let is_base = |t: &str| known == Some(blake3::hash(t.as_bytes()));
        // A stored base is always a state this folder really had: written after the file was,
        // or with an edit before the document got it. It may be newer than `known`, which is
        // saved after it (a crash in between), never older.
        let base = match self.bases.load(doc_id) {
            Ok(b) => b.map(FileText::new),
            Err(e) => {
                tracing::warn!(path = rel, error = %e, "the sync base is unreadable");
                None
            }
        };
        let Some(base) = base else {
            if is_base(&current) {
                // No base recorded (a folder synced by an older build), but nothing arrived
                // since the sync point: an edit on the document itself is exact.
                self.edit_document(doc_id, file, text, &covered);
                return true;
            }
            if known.is_none() && current.is_empty() && entry.is_some_and(|e| e.size > 0) {
                // The hub's copy of the document has not arrived; decide when it has.
                return false;
            }
            // Changed here and in the document, with nothing to merge from.
            drop(turn);
            self.keep_local_as_conflict(rel).await;
            return false;
        };
        let base_text = base.text();
        // An edit saved into the base may not have reached the document (a crash between the
        // two): merging the base in adds whatever is missing, and nothing twice. Edits made on
        // the base below then always find what they were made next to. Once per document and
        // start: within a run every base edit reaches the document right after it is saved.
        let first = self
            .base_merged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(doc_id.to_owned());
        if first {
            let whole = base
                .doc()
                .transact()
                .encode_state_as_update_v1(&yrs::StateVector::default());
            if let Err(e) = self.apply_to_document(file, &whole) {
                tracing::warn!(path = rel, error = %e, "cannot merge the sync base");
                return false;
            }
        }
        if base_text == text {
            return true;
        }
        // Always from the base, even when the folder looks nearer to the document (a crash
        // right after writing a file, before its base was saved): an edit from the document
        // would delete whatever reached the document after that write, while one from the base
        // can at worst insert again what the write had brought.
        let base_sv = base.doc().transact().state_vector();
        let (_, _, edit) = base.apply_text_diff_update(text, &base_sv);
        let Ok(live_name) = DocName::workspace_file(&self.workspace, doc_id) else {
            return false;
        };
        let live_name = live_name.to_string();
        // The edit into the base and into the document's stored log in one transaction: a
        // crash keeps both or neither. The client then only sends it.
        let base_name = self.bases.name(doc_id);
        if let Err(e) = self.bases.flush_with(&[
            crate::store::AppendItem {
                doc: &base_name,
                update: &edit,
            },
            crate::store::AppendItem {
                doc: &live_name,
                update: &edit,
            },
        ]) {
            tracing::warn!(path = rel, error = %e, "cannot save the change; it waits");
            return false;
        }
        let applied = yrs::Update::decode_v1(&edit)
            .map_err(|e| e.to_string())
            .and_then(|u| {
                file.doc()
                    .transact_mut_with(crate::client::STORED_ORIGIN)
                    .apply_update(u)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = applied {
            tracing::warn!(path = rel, error = %e, "cannot merge the file's change");
            return false;
        }
        if !is_base(&current) {
            tracing::info!(
                path = rel,
                "merged this folder's change with edits made elsewhere since"
            );
            // The merged text differs from the file: write it back on the next pass.
            self.forget_seen(rel);
            let _ = self.work.send(Work::Remote(Some(doc_id.to_owned())));
        }
        true
    }

    /// An edit computed on the document itself (nothing to merge it with); the base becomes
    /// the state before it plus the edit.
    pub(super) fn edit_document(
        &self,
        doc_id: &str,
        file: &FileText,
        text: &str,
        covered: &yrs::StateVector,
    ) {
        let (before, before_sv, edit) = file.apply_text_diff_update(text, covered);
        self.bases.record_state(doc_id, before, before_sv);
        self.bases.record_edit(doc_id, edit);
        self.bases.flush_if_large();
    }

    /// Applies an update as this device's own edit (stored and sent by the client).
    pub(super) fn apply_to_document(&self, file: &FileText, update: &[u8]) -> Result<(), String> {
        let u = yrs::Update::decode_v1(update).map_err(|e| e.to_string())?;
        file.doc()
            .transact_mut()
            .apply_update(u)
            .map_err(|e| e.to_string())
    }

    /// Brings one path's disk state into the documents.
    pub(super) async fn disk_to_doc(&self, rel: &str) {
        let abs = self.root.join(rel);
        let entry = match self.index.get(rel) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = rel, error = %e, "malformed index entry replaced");
                None
            }
        };
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return, // directories and symlinks are not synced
            Err(_) => {
                self.set_waiting(rel, None);
                // Gone from disk: a deletion, if we had it.
                if let Some(mut e) = entry.filter(|e| !e.deleted)
                    && let Some(last) = self.known(rel)
                {
                    if self.moved_elsewhere(rel, &e, last).await == Some(true) {
                        // Deleted here, edited elsewhere since: the edit wins, and comes back
                        // on the next pass.
                        tracing::info!(
                            path = rel,
                            "deleted here but edited elsewhere: keeping the edit"
                        );
                        self.set_known(rel, None);
                        self.forget_seen(rel);
                        let _ = self.work.send(Work::RemotePaths(vec![rel.to_owned()]));
                        return;
                    }
                    // The tombstone remembers the content that was deleted: a device whose
                    // copy differs edited it concurrently, and its edit wins.
                    e.deleted = true;
                    e.hash = Some(last.to_hex().to_string());
                    e.modified_ms = now_ms();
                    if let Err(err) = self.index.upsert(rel, &e) {
                        // Keep the sync point: the next pass sees the file still missing and
                        // records the deletion again, instead of forgetting it.
                        tracing::warn!(path = rel, error = %err, "cannot record a deletion");
                        return;
                    }
                    self.set_known(rel, None);
                }
                return;
            }
        };
        if meta.len() > MAX_TEXT_BYTES {
            // Large files are hashed and uploaded as streams, never held in memory whole.
            let hash = match hash_file(&self.root, &abs) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(path = rel, error = %e, "cannot read");
                    return;
                }
            };
            if self.known(rel) != Some(hash) {
                self.blob_to_doc(rel, entry.as_ref(), BlobSource::File(&abs), hash, &meta)
                    .await;
            } else {
                self.exec_to_doc(rel, &meta, entry.as_ref());
            }
            return;
        }
        let bytes = match read_inside(&self.root, &abs) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = rel, error = %e, "cannot read");
                return;
            }
        };
        let hash = blake3::hash(&bytes);
        if self.known(rel) == Some(hash) {
            // Our own write, or nothing new since the last sync point. (Even when the entry
            // was deleted elsewhere meanwhile: unchanged content must not revive it.)
            self.exec_to_doc(rel, &meta, entry.as_ref());
            return;
        }
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                self.blob_to_doc(
                    rel,
                    entry.as_ref(),
                    BlobSource::Bytes(e.as_bytes()),
                    hash,
                    &meta,
                )
                .await;
                return;
            }
        };
        if let Some(e) = entry
            .as_ref()
            .filter(|e| !e.deleted && e.kind == EntryKind::Blob)
        {
            // A blob in the workspace, text here.
            match self.moved_elsewhere(rel, e, hash).await {
                Some(true) => {
                    self.keep_local_as_conflict(rel).await;
                    return;
                }
                Some(false) => {}
                None => {
                    self.set_known(rel, Some(hash));
                    return;
                }
            }
        }
        let doc_id = match &entry {
            Some(FileEntry {
                kind: EntryKind::Text,
                doc: Some(d),
                ..
            }) => d.clone(),
            _ => format!("{:016x}", rand::random::<u64>()),
        };
        let Some(file) = self.file_text(&doc_id).await else {
            return;
        };
        if !self
            .merge_text(rel, &doc_id, &file, &text, entry.as_ref())
            .await
        {
            return;
        }
        let new_entry = FileEntry {
            kind: EntryKind::Text,
            doc: Some(doc_id.clone()),
            hash: None,
            base: None,
            size: meta.len(),
            mode: mode_of(&meta),
            modified_ms: now_ms(),
            deleted: false,
        };
        let changed = entry.as_ref().is_none_or(|e| {
            e.deleted
                || e.size != new_entry.size
                || e.mode != new_entry.mode
                || e.doc != new_entry.doc
        });
        if changed && let Err(e) = self.index.upsert(rel, &new_entry) {
            tracing::warn!(path = rel, error = %e, "cannot index");
        }
        self.doc_paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(rel, &doc_id);
        self.set_known(rel, Some(hash));
        self.set_known_exec(rel, Some(is_exec(new_entry.mode)));
    }
}
