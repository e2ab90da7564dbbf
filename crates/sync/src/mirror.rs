//! `FileMirror`: a folder kept identical to a workspace's documents, both ways.
//!
//! Disk → documents: the initial import walks the folder (`.gitignore`, `.jarvisignore` and the
//! defaults `.git`, `node_modules`, `.venv`, `target` apply); afterwards a `notify` watcher
//! reports changes, which are coalesced briefly and imported as a text diff applied to the file's Y.Text
//! (so concurrent edits on another device merge character by character).
//! Documents → disk: remote changes to the index or a file document are written with
//! [`atomic_write`](crate::paths::atomic_write) after the path passed [`resolve_for_write`]; what we wrote is remembered by
//! hash so the watcher's echo is ignored. Before overwriting a file, a local edit the watcher has
//! not delivered yet is imported first, so it merges instead of being lost.
//!
//! Deletions are tombstones in the index; an edit beats a delete (a file edited on one device
//! while deleted on another comes back with the edit).
//!
//! A change found on disk — while running, or at start-up after the mirror was stopped or
//! killed — is applied as an edit from the file's sync base (`mirror_base`), never as "make the
//! document equal my file", so what other devices did meanwhile is kept. Where there is no base
//! to merge from (lost state, a first sync into a non-empty folder) and the contents differ,
//! both are kept: the document's version at the path, this folder's as a conflict copy.
//!
//! Text files (UTF-8, up to 2 MiB) are Y.Text documents. Binary and larger files are
//! content-addressed blobs uploaded to the hub (`PUT /blobs/<hash>`) and fetched by hash; when
//! two devices change one blob concurrently, both versions are kept: the one the index settles on
//! at the path, the other as `name (conflict <device> <date>).ext`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact};

use crate::client::{REMOTE_ORIGIN, SyncClient};
use crate::doc::{DocName, EntryKind, FileEntry, FileText, WorkspaceIndex};
use crate::mirror_base::Bases;
use crate::paths::{
    CanonicalRoot, PinnedDir, Replace, check_relative, is_temp_name, mode_for_peer_write,
    open_inside, read_inside, resolve_for_write, temp_name, write_inside,
};

mod blobs;
mod doc_paths;
mod import;
mod names;
mod state;
mod to_disk;

use blobs::{BlobSource, hash_file};
use names::{conflict_name, device_name};
use state::{load_exec, load_known};
use to_disk::rename_inside;

/// Largest file kept as text.
pub const MAX_TEXT_BYTES: u64 = 2 * 1024 * 1024;
/// Device-store metadata: per mirrored folder, the uploads still waiting for the hub, so
/// `jarvis status` can say so from another process.
pub const WAITING_KEY: &str = "mirror-waiting";
/// Mirrors of one process share [`WAITING_KEY`]; their read-modify-writes take turns.
static WAITING_SAVE: Mutex<()> = Mutex::new(());

/// What [`WAITING_KEY`] holds: folder → (path → why it waits).
pub type WaitingUploads =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>;

/// The uploads waiting for the hub, per folder, as the mirrors using `store` last saved them.
pub fn waiting_uploads(store: &dyn crate::store::Store) -> WaitingUploads {
    match store.get_meta(WAITING_KEY) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        _ => WaitingUploads::new(),
    }
}
// The dependency folders a cloud copy caches per workspace (see the cloud's devenv) never sync.
const DEFAULT_IGNORES: &[&str] = &[".git", "node_modules", ".venv", "target"];

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("folder {0} is not accessible: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error("invalid workspace id: {0}")]
    Workspace(#[from] crate::doc::DocError),
    #[error("sync: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("watching the folder: {0}")]
    Watch(#[from] notify::Error),
}

/// Progress of the initial import: (files done, files total).
pub type Progress = Box<dyn Fn(usize, usize) + Send + Sync>;

enum Work {
    Disk(Vec<PathBuf>),
    /// Remote changes to these index paths.
    RemotePaths(Vec<String>),
    /// A remote change to one file document.
    Remote(Option<String>),
    /// Answered once everything queued before it is on disk (and, if `full`, after a pass
    /// over the whole index).
    Barrier {
        full: bool,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

struct Inner {
    root: CanonicalRoot,
    workspace: String,
    client: Arc<SyncClient>,
    index: WorkspaceIndex,
    /// Relative path → BLAKE3 of the content last imported or written: the sync point.
    known: Mutex<HashMap<String, blake3::Hash>>,
    /// `known` changed since it was last saved to the device store.
    known_dirty: std::sync::atomic::AtomicBool,
    /// Store metadata key of `known`: per workspace and folder.
    known_key: String,
    /// Index entries as the last doc → disk pass saw them.
    seen: Mutex<HashMap<String, FileEntry>>,
    /// File document id → the paths showing it, for passes that only touch changed documents.
    doc_paths: Mutex<doc_paths::DocPaths>,
    /// File document id → its open document (observed for remote changes).
    docs: Mutex<HashMap<String, FileText>>,
    ignore: ignore::gitignore::Gitignore,
    work: mpsc::UnboundedSender<Work>,
    http: reqwest::Client,
    /// Names conflict copies.
    device: String,
    /// Per text document, the state the folder's copy last agreed with.
    bases: Bases,
    /// Path → whether the file was executable at the sync point, so a local `chmod` is told
    /// from a remote one.
    known_exec: Mutex<HashMap<String, bool>>,
    exec_dirty: std::sync::atomic::AtomicBool,
    exec_key: String,
    /// Documents whose stored base was merged into them since this mirror started (needed
    /// once: later edits reach the document right after their base is saved).
    base_merged: Mutex<HashSet<String>>,
    /// One merge at a time: `rescan` and the watcher can import the same save at once, and two
    /// edits computed on the same base would both insert it.
    merging: tokio::sync::Mutex<()>,
    /// Path → why its upload has not reached the hub yet; retried in the background.
    waiting: Mutex<std::collections::BTreeMap<String, String>>,
    /// Files new to this folder waiting for their batch: written a batch at a time, after the
    /// batch's intents are saved (see `state::NewFile`).
    new_files: Mutex<Vec<state::NewFile>>,
    /// Path → (hash, executable) of files written since `known` was last saved, saved before
    /// they are written: after a crash, a file still holding exactly that is the hub's copy.
    intents: Mutex<HashMap<String, (String, bool)>>,
    intent_key: String,
}

/// A running mirror; dropping it stops watching.
pub struct FileMirror {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    retry: tokio::task::JoinHandle<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Drop for FileMirror {
    fn drop(&mut self) {
        self.task.abort();
        self.retry.abort();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // What we tell peers: the executable bit only (see `paths::peer_mode`).
        crate::paths::peer_mode(meta.permissions().mode())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o644
    }
}

impl FileMirror {
    /// Imports `root` into workspace `workspace` (documents `ws/<workspace>/…` through
    /// `client`), writes what the workspace has that the folder lacks, and keeps both in sync.
    pub async fn start(
        root: &Path,
        workspace: &str,
        client: Arc<SyncClient>,
        progress: Option<Progress>,
    ) -> Result<FileMirror, MirrorError> {
        // Resolved once: every confined read and write of this mirror checks against it.
        let root =
            CanonicalRoot::new(root).map_err(|e| MirrorError::Folder(root.to_path_buf(), e))?;
        let index_name = DocName::workspace_index(workspace)?.to_string();
        let index_doc = client.open(&index_name).await?;
        // Offline is fine: the mirror works locally and syncs when the hub is back. A hub that
        // refuses the workspace is not: say so instead of mirroring into a void.
        if let Err(e @ crate::client::ClientError::Denied { .. }) = client
            .wait_synced(&index_name, Duration::from_secs(10))
            .await
        {
            return Err(e.into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut builder = ignore::gitignore::GitignoreBuilder::new(&root);
        for f in [".gitignore", ".jarvisignore"] {
            let p = root.join(f);
            if p.exists()
                && let Some(e) = builder.add(&p)
            {
                tracing::warn!(file = %p.display(), error = %e, "ignoring a malformed ignore file");
            }
        }
        let ignore = builder
            .build()
            .unwrap_or_else(|_| ignore::gitignore::Gitignore::empty());
        // What this folder held at its last sync point survives restarts: without it, a
        // restarted mirror would take a stale file for a local edit and undo remote changes
        // made while it was stopped.
        let client_store = client.store();
        let folder_hash = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
        let known_key = format!("mirror-known:{workspace}:{folder_hash}");
        let exec_key = format!("mirror-exec:{workspace}:{folder_hash}");
        let intent_key = format!("mirror-intent:{workspace}:{folder_hash}");
        let inner = Arc::new(Inner {
            root: root.clone(),
            workspace: workspace.to_owned(),
            client,
            index: WorkspaceIndex::new(index_doc.clone()),
            known: Mutex::new(load_known(&client_store, &known_key)),
            known_dirty: std::sync::atomic::AtomicBool::new(false),
            known_key,
            seen: Mutex::default(),
            doc_paths: Mutex::default(),
            docs: Mutex::default(),
            ignore,
            work: tx.clone(),
            http: reqwest::Client::new(),
            device: device_name(),
            bases: Bases::new(client_store.clone(), workspace, &folder_hash[..16]),
            known_exec: Mutex::new(load_exec(&client_store, &exec_key)),
            exec_dirty: std::sync::atomic::AtomicBool::new(false),
            exec_key,
            base_merged: Mutex::default(),
            merging: tokio::sync::Mutex::new(()),
            waiting: Mutex::default(),
            new_files: Mutex::default(),
            intents: Mutex::default(),
            intent_key,
        });
        let paths_tx = tx.clone();
        inner
            .index
            .observe_paths("jarvis-mirror/index", move |txn, paths| {
                if txn
                    .origin()
                    .is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes())
                {
                    let _ = paths_tx.send(Work::RemotePaths(paths));
                }
            });
        // Watch before the first pass: a change made while it runs is queued, not missed.
        let watch_tx = tx.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                // Reads (ours included) raise access events; reacting to them would make every
                // read trigger another read.
                Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => {}
                Ok(ev) => {
                    let _ = watch_tx.send(Work::Disk(ev.paths));
                }
                Err(e) => tracing::warn!(error = %e, "file watcher error"),
            })?;
        notify::Watcher::watch(&mut watcher, &root, notify::RecursiveMode::Recursive)?;
        // Files a killed pass wrote after saving their intents, before saving `known`.
        inner.adopt_intents();
        // Nothing else writes in the folder yet: the first walk also sweeps leftover temporary files.
        inner.import(progress.as_deref(), true).await;
        inner.to_disk(&HashSet::new()).await;
        inner.save_known().await;
        // What a previous run left waiting was looked at again by this start's pass.
        inner.save_waiting();
        let task = tokio::spawn(Inner::run(inner.clone(), rx));
        let retry = tokio::spawn(Inner::retry_uploads(Arc::downgrade(&inner)));
        Ok(FileMirror {
            inner,
            task,
            retry,
            _watcher: watcher,
        })
    }

    /// Files whose upload has not reached the hub yet, with the last reason; each is retried
    /// in the background until it succeeds.
    pub fn waiting_uploads(&self) -> Vec<(String, String)> {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, r)| (p.clone(), r.clone()))
            .collect()
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The workspace index this mirror keeps.
    pub fn index(&self) -> &WorkspaceIndex {
        &self.inner.index
    }

    /// Imports the whole folder now (what the watcher would do, without waiting for it).
    pub async fn rescan(&self) {
        self.inner.import(None, false).await;
    }

    /// Waits until every change queued so far (from disk or from the documents) is applied;
    /// with `full`, also makes one pass over the whole index so the folder matches the
    /// documents as they are now. A handoff calls this before the new runner starts.
    pub async fn settle(&self, full: bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .inner
            .work
            .send(Work::Barrier { full, done: tx })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// Removes a temporary file a killed mirror left in the folder (a download or write that never
/// reached its rename): it is never the only copy of anything.
fn remove_stale_temp(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a partial write left by a crash"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial write")
        }
    }
}

fn is_exec(mode: u32) -> bool {
    mode & 0o111 != 0
}

/// `mode` with the executable bits set where it is readable, or cleared.
fn with_exec(mode: u32, exec: bool) -> u32 {
    if exec {
        mode | ((mode & 0o444) >> 2)
    } else {
        mode & !0o111
    }
}

async fn observe_remote(
    doc: &Doc,
    key: &str,
    file_doc: Option<String>,
    tx: mpsc::UnboundedSender<Work>,
) {
    // The callback runs inside the commit: it may not read the document, only signal. A
    // subscription refused because another thread held a transaction would have left this
    // file deaf to remote changes; `observe_updates` waits for the lock instead.
    crate::doc::observe_updates(doc, key, move |txn, e| {
        // An empty update (the hub's answer when it has nothing new) changes nothing.
        if e.update.len() > 2
            && txn
                .origin()
                .is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes())
        {
            let _ = tx.send(Work::Remote(file_doc.clone()));
        }
    })
    .await;
}

impl Inner {
    async fn run(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Work>) {
        while let Some(first) = rx.recv().await {
            // Coalesce a burst (an editor's save is several events) into one pass.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let mut paths: HashSet<PathBuf> = HashSet::new();
            let mut index_changed = false;
            let mut dirty: HashSet<String> = HashSet::new();
            let mut changed_paths: HashSet<String> = HashSet::new();
            let mut barriers = Vec::new();
            let mut full = false;
            let mut take = |w: Work| match w {
                Work::Barrier { full: f, done } => {
                    full |= f;
                    barriers.push(done);
                }
                Work::Disk(p) => paths.extend(p),
                Work::RemotePaths(p) => changed_paths.extend(p),
                Work::Remote(None) => index_changed = true,
                Work::Remote(Some(doc)) => {
                    dirty.insert(doc);
                }
            };
            take(first);
            while let Ok(w) = rx.try_recv() {
                take(w);
            }
            for p in paths {
                if let Some(rel) = self.relative(&p) {
                    self.disk_to_doc(&rel).await;
                }
            }
            if index_changed || full {
                self.to_disk(&dirty).await;
            } else {
                // Only what changed: the index paths named by the change, and the files whose
                // documents changed.
                for path in changed_paths {
                    if let Ok(Some(entry)) = self.index.get(&path) {
                        self.entry_to_disk(path, entry, &dirty).await;
                    }
                }
                if !dirty.is_empty() {
                    self.docs_to_disk(&dirty).await;
                }
            }
            self.save_known().await;
            for done in barriers {
                let _ = done.send(());
            }
        }
    }

    /// The workspace path of an absolute path, or None when outside, ignored or ours.
    fn relative(&self, abs: &Path) -> Option<String> {
        let rel = abs.strip_prefix(&self.root).ok()?;
        let rel_str = rel.to_str()?.replace('\\', "/");
        if rel_str.is_empty() || check_relative(&rel_str).is_err() {
            return None;
        }
        if rel
            .components()
            .any(|c| DEFAULT_IGNORES.contains(&c.as_os_str().to_string_lossy().as_ref()))
        {
            return None;
        }
        let name = rel.file_name()?.to_string_lossy();
        if is_temp_name(&name) {
            return None;
        }
        if self
            .ignore
            .matched_path_or_any_parents(rel, abs.is_dir())
            .is_ignore()
        {
            return None;
        }
        Some(rel_str)
    }

    async fn file_text(&self, doc_id: &str) -> Option<FileText> {
        if let Some(f) = self
            .docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(doc_id)
        {
            return Some(f.clone());
        }
        let name = DocName::workspace_file(&self.workspace, doc_id)
            .ok()?
            .to_string();
        let doc = match self.client.open(&name).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(doc = %name, error = %e, "cannot open a file document");
                return None;
            }
        };
        observe_remote(
            &doc,
            "jarvis-mirror/file",
            Some(doc_id.to_owned()),
            self.work.clone(),
        )
        .await;
        // A document just opened is empty until the hub's copy arrives; writing it out now
        // would flash an empty file. Offline there is nothing to wait for.
        if matches!(
            *self.client.connection().borrow(),
            crate::client::ConnectionStatus::Connected
        ) {
            let _ = self.client.wait_synced(&name, Duration::from_secs(5)).await;
        }
        let f = FileText::new(doc);
        self.docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(doc_id.to_owned(), f.clone());
        Some(f)
    }
}
