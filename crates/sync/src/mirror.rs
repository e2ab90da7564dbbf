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
    PinnedDir, check_relative, is_temp_name, mode_for_peer_write, open_inside, read_inside,
    resolve_for_write,
};

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
    root: PathBuf,
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
    /// File document id → its path, for passes that only touch changed documents.
    doc_paths: Mutex<HashMap<String, String>>,
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
        let root = root
            .canonicalize()
            .map_err(|e| MirrorError::Folder(root.to_path_buf(), e))?;
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
        remove_stale_temps(&root);
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
        inner.import(progress.as_deref()).await;
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
        self.inner.import(None).await;
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

fn load_known(store: &Arc<dyn crate::store::Store>, key: &str) -> HashMap<String, blake3::Hash> {
    let Ok(Some(bytes)) = store.get_meta(key) else {
        return HashMap::new();
    };
    let map: HashMap<String, String> = serde_json::from_slice(&bytes).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, v)| blake3::Hash::from_hex(v).ok().map(|h| (k, h)))
        .collect()
}

fn load_exec(store: &Arc<dyn crate::store::Store>, key: &str) -> HashMap<String, bool> {
    match store.get_meta(key) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        _ => HashMap::new(),
    }
}

/// Removes the temporary files a killed mirror left in the folder (a download or write that
/// never reached its rename): they are never the only copy of anything.
fn remove_stale_temps(root: &Path) {
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(false)
        .ignore(false)
        .parents(false)
        .filter_entry(|e| !DEFAULT_IGNORES.contains(&e.file_name().to_string_lossy().as_ref()))
        .build();
    for entry in walker.flatten() {
        if entry.file_type().is_some_and(|t| t.is_file())
            && is_temp_name(&entry.file_name().to_string_lossy())
        {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a partial write left by a crash")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a partial write")
                }
            }
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

fn device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(32)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".into())
}

/// `YYYY-MM-DD` for a Unix time in milliseconds (UTC).
fn date(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `dir/name (conflict <device> <date>).ext`
fn conflict_name(path: &str, device: &str, ms: u64) -> String {
    let (dir, file) = match path.rsplit_once('/') {
        Some((d, f)) => (format!("{d}/"), f),
        None => (String::new(), path),
    };
    let (stem, ext) = match file.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (file, String::new()),
    };
    format!("{dir}{stem} (conflict {device} {}){ext}", date(ms))
}

/// [`atomic_write`](crate::paths::atomic_write), except that the file is checked again once the new content is ready
/// (written and synced beside it), just before the rename: if it no longer hashes to `read`
/// (what it held when the caller decided to write), someone saved it meanwhile and nothing is
/// written (`Ok(false)`). What is left is the instant between that check and the rename.
fn write_unless_saved_meanwhile(
    root: &Path,
    target: &Path,
    bytes: &[u8],
    mode: Option<u32>,
    read: Option<blake3::Hash>,
) -> std::io::Result<bool> {
    use std::io::Write;
    let dir = target
        .parent()
        .ok_or_else(|| std::io::Error::other("target has no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    // Everything below happens in the folder as opened now: swapping it for a link to the
    // data dir meanwhile (a cloud session's bash can) redirects nothing.
    let pinned = PinnedDir::open(root, dir)?;
    let name = target.file_name().unwrap_or_default().to_os_string();
    let target = pinned.join(&name);
    let tmp = pinned.join(format!(
        ".{}.jarvis-tmp-{:08x}",
        name.to_string_lossy(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
        };
        f.write_all(bytes)?;
        #[cfg(unix)]
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
        }
        f.sync_all()?;
        let now = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(std::io::Error::other("the file is a symlink now"));
            }
            Ok(_) => std::fs::read(&target).ok().map(|b| blake3::hash(&b)),
            Err(_) => None,
        };
        if now != read {
            return Ok(false);
        }
        std::fs::rename(&tmp, &target)?;
        // The rename is durable only once the directory entry is.
        pinned.sync()?;
        Ok(true)
    })();
    if !matches!(result, Ok(true)) {
        // Nothing else ever refers to the temporary name.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Renames a file to another name in the same folder, both through the folder as opened
/// now (see [`PinnedDir`]).
fn rename_inside(root: &Path, from: &Path, to: &Path) -> std::io::Result<()> {
    let (Some(a), Some(b)) = (from.file_name(), to.file_name()) else {
        return Err(std::io::Error::other("no file name"));
    };
    let (from_dir, to_dir) = (
        PinnedDir::parent_of(root, from)?,
        PinnedDir::parent_of(root, to)?,
    );
    std::fs::rename(from_dir.join(a), to_dir.join(b))
}

enum BlobSource<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// BLAKE3 of a file under `root`, read in chunks through [`open_inside`] (never through a
/// link out of the folder).
fn hash_file(root: &Path, path: &Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    let mut f = open_inside(root, path)?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher.finalize())
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

    async fn import(&self, progress: Option<&(dyn Fn(usize, usize) + Send + Sync)>) {
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
            if entry.file_type().is_some_and(|t| t.is_file())
                && let Some(rel) = self.relative(entry.path())
            {
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

    fn set_known(&self, rel: &str, hash: Option<blake3::Hash>) {
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
    async fn save_known(&self) {
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

    fn known(&self, rel: &str) -> Option<blake3::Hash> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .copied()
    }

    fn known_exec(&self, rel: &str) -> Option<bool> {
        self.known_exec
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
            .copied()
    }

    fn set_known_exec(&self, rel: &str, exec: Option<bool>) {
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
    fn exec_to_doc(&self, rel: &str, meta: &std::fs::Metadata, entry: Option<&FileEntry>) {
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
    fn exec_to_disk(&self, rel: &str, target: &Path, mode: u32) {
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

    fn set_waiting(&self, rel: &str, reason: Option<String>) {
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
    fn save_waiting(&self) {
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
    async fn retry_uploads(me: std::sync::Weak<Inner>) {
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

    /// Whether a live entry's content moved on since this folder's sync point; None when it
    /// already holds exactly what the folder holds (`disk`).
    async fn moved_elsewhere(&self, rel: &str, e: &FileEntry, disk: blake3::Hash) -> Option<bool> {
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
    async fn keep_local_as_conflict(&self, rel: &str) {
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
    async fn merge_text(
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
    fn edit_document(&self, doc_id: &str, file: &FileText, text: &str, covered: &yrs::StateVector) {
        let (before, before_sv, edit) = file.apply_text_diff_update(text, covered);
        self.bases.record_state(doc_id, before, before_sv);
        self.bases.record_edit(doc_id, edit);
        self.bases.flush_if_large();
    }

    /// Applies an update as this device's own edit (stored and sent by the client).
    fn apply_to_document(&self, file: &FileText, update: &[u8]) -> Result<(), String> {
        let u = yrs::Update::decode_v1(update).map_err(|e| e.to_string())?;
        file.doc()
            .transact_mut()
            .apply_update(u)
            .map_err(|e| e.to_string())
    }

    /// Brings one path's disk state into the documents.
    async fn disk_to_doc(&self, rel: &str) {
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
                    let _ = self.index.upsert(rel, &e);
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
                self.blob_to_doc(rel, BlobSource::File(&abs), hash, &meta)
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
                self.blob_to_doc(rel, BlobSource::Bytes(e.as_bytes()), hash, &meta)
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
            doc: Some(doc_id),
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
        self.set_known(rel, Some(hash));
        self.set_known_exec(rel, Some(is_exec(new_entry.mode)));
    }

    fn blob_request(&self, method: reqwest::Method, hash: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/blobs/{hash}", self.client.http_base()))
            .bearer_auth(self.client.token())
            .header("x-jarvis-workspace", &self.workspace)
    }

    /// Uploads a binary or large file and points the index at it.
    async fn blob_to_doc(
        &self,
        rel: &str,
        source: BlobSource<'_>,
        hash: blake3::Hash,
        meta: &std::fs::Metadata,
    ) {
        let hex = hash.to_hex().to_string();
        if let Some(e) = self.index.get(rel).ok().flatten().filter(|e| !e.deleted) {
            match self.moved_elsewhere(rel, &e, hash).await {
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
                    self.exec_to_doc(rel, meta, Some(&e));
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
    async fn download_to(&self, hex: &str, target: &Path, mode: u32) -> Option<blake3::Hash> {
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
        let name = target.file_name()?.to_string_lossy().into_owned();
        // Written and renamed inside the folder as opened now, so a folder swapped for a link
        // meanwhile cannot redirect the download out of the root.
        let pinned = match PinnedDir::open(&self.root, dir) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "refusing to write a blob outside the folder");
                return None;
            }
        };
        let tmp = pinned.join(format!(".{name}.jarvis-tmp-{:08x}", rand::random::<u32>()));
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
            tokio::fs::rename(&tmp, pinned.join(&name)).await?;
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
    async fn blob_to_disk(&self, path: &str, target: &Path, entry: &FileEntry) {
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

    fn forget_seen(&self, path: &str) {
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
    async fn to_disk(&self, dirty: &HashSet<String>) {
        for (path, entry) in self.index.list_all() {
            self.entry_to_disk(path, entry, dirty).await;
        }
    }

    /// Only the files whose documents changed remotely, when the index itself did not: a
    /// one-line edit must not cost a walk over every entry of a large workspace.
    async fn docs_to_disk(&self, dirty: &HashSet<String>) {
        let paths: Vec<String> = {
            let by_doc = self.doc_paths.lock().unwrap_or_else(|p| p.into_inner());
            dirty
                .iter()
                .filter_map(|d| by_doc.get(d).cloned())
                .collect()
        };
        for path in paths {
            if let Ok(Some(entry)) = self.index.get(&path) {
                self.entry_to_disk(path, entry, dirty).await;
            }
        }
    }

    async fn entry_to_disk(&self, path: String, entry: FileEntry, dirty: &HashSet<String>) {
        if let Some(d) = &entry.doc {
            self.doc_paths
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d.clone(), path.clone());
        }
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
        if disk_hash != Some(hash) {
            match write_unless_saved_meanwhile(
                &self.root,
                &target,
                text.as_bytes(),
                Some(mode_for_peer_write(&target, entry.mode)),
                disk_hash,
            ) {
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
        // Saved at once when the file existed: until then a crash leaves a file newer than its
        // base. A file new here (a first download is thousands of them) is saved in batches:
        // after a crash its content is the document's, which the next start sees as no change.
        self.bases.record_state(doc_id, state, sv);
        if disk.is_none() {
            self.bases.flush_if_large();
        } else if let Err(e) = self.bases.flush() {
            tracing::warn!(path, error = %e, "cannot save the sync base");
        }
        self.set_known(&path, Some(hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names() {
        // 2026-11-24 00:00 UTC
        let ms = 1_795_478_400_000;
        assert_eq!(date(ms), "2026-11-24");
        assert_eq!(
            conflict_name("img/logo.png", "laptop", ms),
            "img/logo (conflict laptop 2026-11-24).png"
        );
        assert_eq!(
            conflict_name("Makefile", "pc", ms),
            "Makefile (conflict pc 2026-11-24)"
        );
        assert_eq!(
            conflict_name(".env", "pc", ms),
            ".env (conflict pc 2026-11-24)"
        );
        check_relative(&conflict_name("a/b.tar.gz", "x", ms))
            .expect("conflict names are valid paths");
    }
}
