//! Binary and large files: content-addressed blobs uploaded to and fetched from the hub.

use super::*;

pub(super) enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// BLAKE3 of a file under `root`, read in chunks through [`open_inside`] (never through a
/// link out of the folder).
pub(super) fn hash_file(root: &CanonicalRoot, path: &Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut f = open_inside(root, path)?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher.finalize())
}

impl Inner {
    pub(super) fn blob_request(
        &self,
        method: reqwest::Method,
        hash: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/blobs/{hash}", self.client.http_base()))
            .bearer_auth(self.client.token())
            .header("x-jarvis-workspace", &self.workspace)
    }

    /// Uploads a binary or large file and points the index at it. `entry`: the index entry at
    /// `rel` as the caller read it for this pass.
    pub(super) async fn blob_to_doc(
        &self,
        rel: &str,
        entry: Option<&FileEntry>,
        source: BlobSource<'_>,
        hash: blake3::Hash,
        meta: &std::fs::Metadata,
    ) {
        let hex = hash.to_hex().to_string();
        if let Some(e) = entry.filter(|e| !e.deleted) {
            match self.moved_elsewhere(rel, e, hash).await {
                // Changed here and elsewhere since the sync point: keep both.
                Some(true) => {
                    self.set_waiting(rel, None);
                    self.keep_local_as_conflict(rel).await;
                    return;
                }
                Some(false) => {}
                None => {
                    self.set_waiting(rel, None);
                    self.set_known(rel, Some(hash));
                    self.exec_to_doc(rel, meta, Some(e));
                    return;
                }
            }
        }
        let body = match source {
            BlobSource::Bytes(b) => reqwest::Body::from(b.to_vec()),
            BlobSource::File(p) => match open_inside(&self.root, p) {
                Ok(f) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(
                    tokio::fs::File::from_std(f),
                )),
                Err(e) => {
                    tracing::warn!(path = rel, error = %e, "cannot read");
                    return;
                }
            },
        };
        let sent = self
            .blob_request(reqwest::Method::PUT, &hex)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(path = rel, %status, body, "blob upload refused; retrying in the background");
                self.set_waiting(rel, Some(format!("upload refused ({status})")));
                return;
            }
            Err(e) => {
                tracing::warn!(path = rel, error = %e, "blob upload failed; retrying in the background");
                self.set_waiting(rel, Some("upload failed: hub unreachable".into()));
                return;
            }
        }
        self.set_waiting(rel, None);
        let new_entry = FileEntry {
            kind: EntryKind::Blob,
            doc: None,
            hash: Some(hex),
            base: self.known(rel).map(|h| h.to_hex().to_string()),
            size: meta.len(),
            mode: mode_of(meta),
            modified_ms: now_ms(),
            deleted: false,
        };
        if let Err(e) = self.index.upsert(rel, &new_entry) {
            tracing::warn!(path = rel, error = %e, "cannot index");
            return;
        }
        self.set_known(rel, Some(hash));
        self.set_known_exec(rel, Some(is_exec(new_entry.mode)));
    }

    /// Streams a blob to a temporary file beside `target`, checks its hash, and renames it
    /// into place: a wrong or truncated download never replaces the file.
    pub(super) async fn download_to(
        &self,
        hex: &str,
        target: &Path,
        mode: u32,
    ) -> Option<blake3::Hash> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let r = match self.blob_request(reqwest::Method::GET, hex).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(hash = hex, status = %r.status(), "blob download refused");
                return None;
            }
            Err(e) => {
                tracing::warn!(hash = hex, error = %e, "blob download failed");
                return None;
            }
        };
        let dir = target.parent()?;
        if let Err(e) = tokio::fs::create_dir_all(dir).await {
            tracing::warn!(error = %e, "cannot create the folder for a blob");
            return None;
        }
        let name = target.file_name()?;
        // Written and renamed inside the folder as opened now, so a folder swapped for a link
        // meanwhile cannot redirect the download out of the root.
        let pinned = match PinnedDir::open(&self.root, dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "refusing to write a blob outside the folder");
                return None;
            }
        };
        let tmp = pinned.join(temp_name(name));
        let result: std::io::Result<blake3::Hash> = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            let mut hasher = blake3::Hasher::new();
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                hasher.update(&chunk);
                f.write_all(&chunk).await?;
            }
            let hash = hasher.finalize();
            // Never trust the transport: the bytes must be what the name says.
            if hash.to_hex().as_str() != hex {
                return Err(std::io::Error::other(
                    "downloaded blob does not match its hash",
                ));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
                    .await?;
            }
            f.sync_all().await?;
            tokio::fs::rename(&tmp, pinned.join(name)).await?;
            Ok(hash)
        }
        .await;
        match result {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                tracing::warn!(hash = hex, error = %e, "blob download discarded");
                None
            }
        }
    }

    /// Brings one blob entry to disk, keeping a concurrent local version as a conflict copy.
    pub(super) async fn blob_to_disk(&self, path: &str, target: &Path, entry: &FileEntry) {
        let Some(hex) = entry.hash.as_deref() else {
            return;
        };
        let disk_hash = hash_file(&self.root, target).ok();
        if disk_hash.is_some_and(|h| h.to_hex().as_str() == hex) {
            self.set_known(path, disk_hash);
            self.exec_to_disk(path, target, entry.mode);
            return;
        }
        let known = self.known(path);
        let unsynced_here = disk_hash.is_some() && disk_hash != known;
        // The version on disk was synced from here, but the new entry was not made on top of
        // it: two devices changed the file concurrently.
        let concurrent = disk_hash.is_some()
            && disk_hash == known
            && entry.base.as_deref() != known.map(|k| k.to_hex().to_string()).as_deref();
        if unsynced_here || concurrent {
            let copy = conflict_name(path, &self.device, now_ms());
            match resolve_for_write(&self.root, &copy) {
                Ok(copy_path) => {
                    // A rename keeps this device's bytes without reading them into memory.
                    if let Err(e) = rename_inside(&self.root, target, &copy_path) {
                        tracing::warn!(path, error = %e, "cannot keep the conflict copy; leaving the file as is");
                        return;
                    }
                    tracing::info!(
                        path,
                        copy,
                        "concurrent change: kept this device's version as a copy"
                    );
                    Box::pin(self.disk_to_doc(&copy)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot name a conflict copy; leaving the file as is");
                    return;
                }
            }
        }
        match self
            .download_to(hex, target, mode_for_peer_write(target, entry.mode))
            .await
        {
            Some(hash) => {
                self.set_known(path, Some(hash));
                self.set_known_exec(path, Some(is_exec(entry.mode)));
            }
            // Try again on the next pass instead of forgetting the entry.
            None => self.forget_seen(path),
        }
    }
}
