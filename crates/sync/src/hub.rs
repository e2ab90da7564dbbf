//! The hub: the durable copy of every document and the relay between devices.
//!
//! Transport-free: a server hands each socket's binary messages to a [`HubConnection`] and
//! drains the [`Outbound`] channel it gets back. The hub keeps loaded documents in memory,
//! relays every accepted update to the other subscribers at once, and hands it to a single
//! writer thread that commits batches to the [`Store`] (group commit). The `SyncStatus` that
//! acknowledges an update is sent only after its batch committed, and acknowledgements leave in
//! the order the updates arrived. A hub that dies before committing has acknowledged nothing;
//! clients re-send on reconnect through the sync handshake.
//!
//! Never: acknowledge before commit, panic on a peer's bytes, or let one connection's fault end
//! another's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{OnceCell, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::awareness::{self, AwarenessStates, PresenceLimits};
use crate::protocol::{
    self, AuthMessage, DecodeError, Frame, Limits, Message, SyncMessage, document_name,
};
use crate::store::{AppendItem, Store, StoreError};

/// WebSocket close codes the hub uses (4xxx are application codes, as Hocuspocus uses them).
pub mod close_code {
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const RESET_CONNECTION: u16 = 4205;
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const DOCUMENT_TOO_LARGE: u16 = 4413;
}

/// Why the hub ends a connection: a close code and a reason for the peer and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("closing connection ({code}): {reason}")]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl From<DecodeError> for CloseReason {
    fn from(e: DecodeError) -> Self {
        let code = match e {
            DecodeError::FrameTooLarge { .. } => close_code::MESSAGE_TOO_BIG,
            _ => close_code::BAD_REQUEST,
        };
        CloseReason::new(code, format!("malformed frame: {e}"))
    }
}

/// What a token may do with one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// Decides per document whether a token grants access. Called once per document a connection
/// opens; implementations must be cheap (an in-memory lookup), since they run on the socket task.
pub trait Authorizer: Send + Sync + 'static {
    /// `Err` carries the reason sent to the client in `PermissionDenied`.
    fn authorize(&self, token: &str, document: &str) -> Result<Access, String>;
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub limits: Limits,
    /// Frames queued for one connection before it counts as too slow and is closed.
    pub outbox_capacity: usize,
    /// Updates queued for the writer before senders wait (back-pressure on sockets).
    pub write_queue_capacity: usize,
    /// Largest number of updates committed in one transaction.
    pub max_batch: usize,
    /// A document whose log since its snapshot passes either bound is compacted.
    pub compact_after_entries: u64,
    pub compact_after_bytes: u64,
    /// Refuse updates once a document's stored size would pass this.
    pub max_document_bytes: u64,
    pub max_documents_per_connection: usize,
    /// Messages and bytes a connection may send for documents it has not authenticated yet.
    pub max_unauthenticated_messages: usize,
    pub max_unauthenticated_bytes: usize,
    /// Failed authentications after which the socket is closed.
    pub max_failed_auth: u32,
    /// Documents one connection may bring into existence (its update is the first content a
    /// document gets). Bounds one socket; quotas per user belong to the control plane.
    pub max_new_documents_per_connection: usize,
    pub presence: PresenceLimits,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            outbox_capacity: 4096,
            write_queue_capacity: 16 * 1024,
            max_batch: 4096,
            compact_after_entries: 2000,
            compact_after_bytes: 4 * 1024 * 1024,
            max_document_bytes: 256 * 1024 * 1024,
            max_documents_per_connection: 20_000,
            max_unauthenticated_messages: 1000,
            max_unauthenticated_bytes: 4 * 1024 * 1024,
            max_failed_auth: 16,
            // A first import creates one document per text file: room for a large repository.
            max_new_documents_per_connection: 100_000,
            presence: PresenceLimits::default(),
        }
    }
}

/// Something for a connection's socket to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Frame(Vec<u8>),
    Close(CloseReason),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct HubMetrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub documents_loaded: AtomicU64,
    pub updates_received: AtomicU64,
    pub updates_committed: AtomicU64,
    pub commit_batches: AtomicU64,
    pub frames_relayed: AtomicU64,
    pub auth_denied: AtomicU64,
    pub compactions: AtomicU64,
    pub store_errors: AtomicU64,
    pub slow_consumers_closed: AtomicU64,
    /// In-memory documents dropped because an update failed part-way into them.
    pub documents_poisoned: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("document {doc:?} could not be loaded: {reason}")]
    Load { doc: String, reason: String },
    #[error("the hub is shutting down")]
    ShuttingDown,
}

type ConnId = u64;

/// A connection's send side and the (token, document) pairs it was granted.
/// A connection's authenticated documents: (token, document, access granted).
type Grants = (Peer, Vec<(String, String, Access)>);

/// The send side of a connection, held by subscriptions and pending acknowledgements.
#[derive(Clone)]
struct Peer {
    id: ConnId,
    outbox: mpsc::Sender<Outbound>,
    kill: CancellationToken,
    metrics: Arc<HubMetrics>,
}

impl Peer {
    /// Queues a frame; a connection whose queue is full is too slow to keep up and is closed
    /// (it will reconnect and catch up through the handshake instead of growing our memory).
    fn send(&self, frame: Vec<u8>) {
        if self.outbox.try_send(Outbound::Frame(frame)).is_err() && !self.kill.is_cancelled() {
            self.metrics
                .slow_consumers_closed
                .fetch_add(1, Ordering::Relaxed);
            self.kill.cancel();
        }
    }
}

struct HubDoc {
    name: String,
    loaded: OnceCell<()>,
    /// Connections that hold this document open; guarded by the hub's document map lock.
    refs: AtomicUsize,
    inner: Mutex<DocInner>,
    /// Woken when a poisoned document's last queued write is done (see [`Inner::acquire`]).
    drained: tokio::sync::Notify,
}

struct DocInner {
    doc: Doc,
    /// (connection, address) → peer; the address is echoed in every frame sent to it.
    subscribers: HashMap<(ConnId, String), Peer>,
    awareness: AwarenessStates<ConnId>,
    pending_writes: usize,
    log_entries: u64,
    log_bytes: u64,
    stored_bytes: u64,
    /// An update failed part-way into `doc`: it may hold part of something never stored or
    /// relayed. Nothing reads or writes it any more; the next use reloads from the store.
    poisoned: bool,
}

impl DocInner {
    fn check_usable(&self) -> Result<(), CloseReason> {
        if self.poisoned {
            return Err(CloseReason::new(
                close_code::TRY_AGAIN_LATER,
                "document is being reloaded; reconnect",
            ));
        }
        Ok(())
    }

    /// Marks the document unusable and returns its subscribers, which must reconnect.
    fn poison(&mut self) -> Vec<Peer> {
        self.poisoned = true;
        self.subscribers.values().cloned().collect()
    }
}

struct WriteJob {
    doc: Arc<HubDoc>,
    update: Option<Vec<u8>>,
    ack: Option<(Peer, String)>,
    /// For server-side edits: told once the update is committed (or failed).
    done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

struct Inner {
    store: Arc<dyn Store>,
    authorizer: Arc<dyn Authorizer>,
    config: HubConfig,
    /// The name of every document an update changed, for whoever follows changes (the API's
    /// session-list stream). Nothing is sent while nobody listens.
    changes: broadcast::Sender<Arc<str>>,
    docs: Mutex<HashMap<String, Arc<HubDoc>>>,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    next_conn: AtomicU64,
    metrics: Arc<HubMetrics>,
    /// Per connection, the (token, document) pairs it was granted, so a revocation or a
    /// membership change can be applied to sockets already open (see [`Hub::revalidate`]).
    grants: Mutex<HashMap<ConnId, Grants>>,
}

/// The hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
    writer_thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks would be a bug in this module; carrying on with
    // the data is better than taking down every other connection with a poisoned lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(store: Arc<dyn Store>, authorizer: Arc<dyn Authorizer>, config: HubConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.write_queue_capacity);
        let inner = Arc::new(Inner {
            store,
            authorizer,
            config,
            changes: broadcast::channel(1024).0,
            docs: Mutex::new(HashMap::new()),
            writer: Mutex::new(Some(tx)),
            next_conn: AtomicU64::new(1),
            metrics: Arc::new(HubMetrics::default()),
            grants: Mutex::new(HashMap::new()),
        });
        let for_writer = inner.clone();
        let handle = std::thread::Builder::new()
            .name("hub-writer".into())
            .spawn(move || writer_loop(for_writer, rx))
            .ok();
        if handle.is_none() {
            tracing::error!(
                "could not start the hub writer thread; updates will not be acknowledged"
            );
        }
        Hub {
            inner,
            writer_thread: Arc::new(Mutex::new(handle)),
        }
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.inner.metrics
    }

    /// Names of documents as updates change them (from any connection or a server-side
    /// edit). A receiver that falls behind gets `Lagged` and should assume anything changed.
    pub fn changes(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.changes.subscribe()
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Documents currently held in memory.
    pub fn loaded_documents(&self) -> usize {
        lock(&self.inner.docs).len()
    }

    /// A new connection, the channel its socket must drain, and a token cancelled when the hub
    /// wants the connection gone (too slow, storage failure).
    pub fn connect(&self) -> (HubConnection, mpsc::Receiver<Outbound>, CancellationToken) {
        let (tx, rx) = mpsc::channel(self.inner.config.outbox_capacity);
        let kill = CancellationToken::new();
        let id = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        self.inner
            .metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        self.inner
            .metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        let peer = Peer {
            id,
            outbox: tx,
            kill: kill.clone(),
            metrics: self.inner.metrics.clone(),
        };
        let conn = HubConnection {
            hub: self.inner.clone(),
            peer,
            docs: HashMap::new(),
            unauth_messages: 0,
            unauth_bytes: 0,
            failed_auth: 0,
            presence_bytes: 0,
            new_documents: 0,
        };
        (conn, rx, kill)
    }

    /// Stops accepting updates, commits and acknowledges everything queued, and waits for the
    /// writer to finish. Connections should be closed by the caller afterwards.
    pub async fn shutdown(&self) {
        drop(lock(&self.inner.writer).take());
        let handle = lock(&self.writer_thread).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }

    /// The current state of a document as one v1 update, loading it if needed (admin, tests).
    pub async fn document_state(&self, name: &str) -> Result<Vec<u8>, HubError> {
        let doc = self.inner.acquire(name).await?;
        let state = {
            let inner = lock(&doc.inner);
            let txn = inner.doc.transact();
            txn.encode_state_as_update_v1(&StateVector::default())
        };
        self.inner.release(&doc);
        Ok(state)
    }

    /// Reads a document in place (loading it if needed) without copying it.
    pub async fn read<R>(&self, name: &str, f: impl FnOnce(&Doc) -> R) -> Result<R, HubError> {
        let doc = self.inner.acquire_usable(name).await?;
        let out = {
            let inner = lock(&doc.inner);
            f(&inner.doc)
        };
        self.inner.release(&doc);
        Ok(out)
    }

    /// The hub's state vector of a document.
    pub async fn state_vector(&self, name: &str) -> Result<StateVector, HubError> {
        self.read(name, |d| d.transact().state_vector()).await
    }

    /// A server-side edit: `f` changes the document (in its own transactions), the change is
    /// relayed to every subscriber and this returns once it is committed. Used by the HTTP API
    /// and the lease authority, which are not sync peers. `f` must not block.
    pub async fn edit<R>(&self, name: &str, f: impl FnOnce(&Doc) -> R) -> Result<R, HubError> {
        let doc = self.inner.acquire_usable(name).await?;
        let (out, update, targets) = {
            let mut inner = lock(&doc.inner);
            if inner.poisoned {
                drop(inner);
                self.inner.release(&doc);
                return Err(HubError::Load {
                    doc: name.to_owned(),
                    reason: "reloading after a failed update; retry".into(),
                });
            }
            let before = inner.doc.transact().state_vector();
            let out = f(&inner.doc);
            let update = inner.doc.transact().encode_diff_v1(&before);
            // An empty update encodes as two zero bytes: nothing to relay or store.
            let changed = inner.doc.transact().state_vector() != before;
            let targets: Vec<((ConnId, String), Peer)> = if changed {
                inner
                    .subscribers
                    .iter()
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            if changed {
                inner.pending_writes += 1;
            }
            (out, changed.then_some(update), targets)
        };
        let Some(update) = update else {
            self.inner.release(&doc);
            return Ok(out);
        };
        relay_update(&self.inner.metrics, targets, &update);
        self.inner.changed(name);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            doc: doc.clone(),
            update: Some(update),
            ack: None,
            done: Some(tx),
        };
        let queued = self.inner.enqueue(job).await;
        if queued.is_err() {
            write_done(&doc, &mut lock(&doc.inner));
        }
        self.inner.release(&doc);
        queued?;
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(reason)) => Err(HubError::Load {
                doc: name.to_owned(),
                reason: format!("commit failed: {reason}"),
            }),
            Err(_) => Err(HubError::ShuttingDown),
        }
    }

    /// Asks the authorizer again about every document every open connection was granted; a
    /// connection holding a grant that no longer holds (token revoked, membership removed) is
    /// closed at once with 4401. Call after any change that can take access away.
    pub fn revalidate(&self) -> usize {
        let grants: Vec<Grants> = lock(&self.inner.grants).values().cloned().collect();
        let mut closed = 0;
        for (peer, pairs) in grants {
            // Withdrawn: refused now, or read-only now where it was granted read-write (a
            // role lowered to viewer, say).
            let denied = pairs.iter().find_map(|(token, doc, granted)| {
                match self.inner.authorizer.authorize(token, doc) {
                    Err(reason) => Some(reason),
                    Ok(Access::ReadOnly) if *granted == Access::ReadWrite => {
                        Some(format!("{doc} is read-only now"))
                    }
                    Ok(_) => None,
                }
            });
            if let Some(reason) = denied {
                tracing::info!(conn = peer.id, %reason, "closing a connection whose access was withdrawn");
                // Queued behind what is already in flight, so the close carries its reason; a
                // full queue cannot take it, and then the connection is cut.
                if peer
                    .outbox
                    .try_send(Outbound::Close(CloseReason::new(
                        close_code::UNAUTHORIZED,
                        format!("access withdrawn: {reason}"),
                    )))
                    .is_err()
                {
                    peer.kill.cancel();
                }
                closed += 1;
            }
        }
        closed
    }
}

impl Inner {
    fn changed(&self, name: &str) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Arc::from(name));
        }
    }

    /// Takes a reference on a document, loading it from the store on first use. A poisoned copy
    /// (an update failed part-way into it) is replaced by a fresh load once everything it
    /// accepted before is committed, so the reload misses nothing.
    async fn acquire(self: &Arc<Self>, name: &str) -> Result<Arc<HubDoc>, HubError> {
        loop {
            let poisoned = {
                let mut docs = lock(&self.docs);
                match docs.get(name).cloned() {
                    Some(d) if lock(&d.inner).poisoned => {
                        if lock(&d.inner).pending_writes == 0 {
                            docs.remove(name);
                            None
                        } else {
                            Some(d)
                        }
                    }
                    _ => None,
                }
            };
            let Some(d) = poisoned else { break };
            let drained = d.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if lock(&d.inner).pending_writes > 0 {
                drained.await;
            }
        }
        let doc = {
            let mut docs = lock(&self.docs);
            let doc = docs
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Arc::new(HubDoc {
                        name: name.to_owned(),
                        loaded: OnceCell::new(),
                        refs: AtomicUsize::new(0),
                        drained: tokio::sync::Notify::new(),
                        inner: Mutex::new(DocInner {
                            doc: Doc::new(),
                            subscribers: HashMap::new(),
                            awareness: AwarenessStates::default(),
                            pending_writes: 0,
                            log_entries: 0,
                            log_bytes: 0,
                            stored_bytes: 0,
                            poisoned: false,
                        }),
                    })
                })
                .clone();
            doc.refs.fetch_add(1, Ordering::SeqCst);
            doc
        };
        let loaded = doc
            .loaded
            .get_or_try_init(|| async {
                let store = self.store.clone();
                let owned = name.to_owned();
                let stored = tokio::task::spawn_blocking(move || store.load(&owned))
                    .await
                    .map_err(|e| HubError::Load {
                        doc: name.to_owned(),
                        reason: e.to_string(),
                    })??;
                let mut inner = lock(&doc.inner);
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    stored.apply_to(&mut inner.doc.transact_mut())
                }))
                .unwrap_or_else(|_| Err("the stored state panicked the CRDT decoder".into()));
                applied.map_err(|reason| HubError::Load {
                    doc: name.to_owned(),
                    reason,
                })?;
                let bytes: u64 = stored
                    .snapshot
                    .iter()
                    .chain(stored.updates.iter())
                    .map(|u| u.len() as u64)
                    .sum();
                inner.log_entries = stored.updates.len() as u64;
                inner.log_bytes = stored.updates.iter().map(|u| u.len() as u64).sum();
                inner.stored_bytes = bytes;
                self.metrics
                    .documents_loaded
                    .fetch_add(1, Ordering::Relaxed);
                Ok::<(), HubError>(())
            })
            .await;
        if let Err(e) = loaded {
            self.release(&doc);
            return Err(e);
        }
        Ok(doc)
    }

    /// [`acquire`](Self::acquire), retried while the copy it finds is poisoned (an update may
    /// fail into it between the two). A server-side read or edit of a poisoned copy could see,
    /// or build on, part of an update that was never stored.
    async fn acquire_usable(self: &Arc<Self>, name: &str) -> Result<Arc<HubDoc>, HubError> {
        loop {
            let doc = self.acquire(name).await?;
            if !lock(&doc.inner).poisoned {
                return Ok(doc);
            }
            self.release(&doc);
        }
    }

    /// Drops a reference; the last one out of a document with nothing left to write unloads it.
    fn release(&self, doc: &Arc<HubDoc>) {
        let mut docs = lock(&self.docs);
        doc.refs.fetch_sub(1, Ordering::SeqCst);
        Self::maybe_unload(&mut docs, doc);
    }

    fn maybe_unload(docs: &mut HashMap<String, Arc<HubDoc>>, doc: &Arc<HubDoc>) {
        if doc.refs.load(Ordering::SeqCst) != 0 {
            return;
        }
        let idle = {
            let inner = lock(&doc.inner);
            inner.pending_writes == 0 && inner.subscribers.is_empty()
        };
        if idle
            && docs
                .get(&doc.name)
                .is_some_and(|current| Arc::ptr_eq(current, doc))
        {
            docs.remove(&doc.name);
        }
    }

    async fn enqueue(&self, job: WriteJob) -> Result<(), HubError> {
        let tx = lock(&self.writer).clone().ok_or(HubError::ShuttingDown)?;
        tx.send(job).await.map_err(|_| HubError::ShuttingDown)
    }
}

/// One queued write of `doc` is finished (committed, failed, or never queued).
fn write_done(doc: &HubDoc, inner: &mut DocInner) {
    inner.pending_writes -= 1;
    if inner.poisoned && inner.pending_writes == 0 {
        doc.drained.notify_waiters();
    }
}

fn writer_loop(hub: Arc<Inner>, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < hub.config.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let items: Vec<AppendItem<'_>> = batch
            .iter()
            .filter_map(|j| {
                j.update.as_deref().map(|u| AppendItem {
                    doc: &j.doc.name,
                    update: u,
                })
            })
            .collect();
        let result = if items.is_empty() {
            Ok(())
        } else {
            hub.store.append(&items)
        };
        let committed = items.len() as u64;
        drop(items);
        match result {
            Ok(()) => {
                hub.metrics
                    .updates_committed
                    .fetch_add(committed, Ordering::Relaxed);
                hub.metrics.commit_batches.fetch_add(1, Ordering::Relaxed);
                finish_batch(&hub, &mut batch);
            }
            Err(e) => {
                hub.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, jobs = batch.len(), "committing updates failed");
                fail_batch(&hub, &mut batch, &e);
            }
        }
    }
}

fn finish_batch(hub: &Arc<Inner>, batch: &mut Vec<WriteJob>) {
    let mut to_compact: Vec<Arc<HubDoc>> = Vec::new();
    for job in batch.iter_mut() {
        if let Some(done) = job.done.take() {
            let _ = done.send(Ok(()));
        }
        if let Some((peer, address)) = &job.ack {
            let mut frame = Vec::with_capacity(address.len() + 4);
            protocol::encode_doc_message(&mut frame, address, &Message::SyncStatus(true));
            peer.send(frame);
        }
        let mut inner = lock(&job.doc.inner);
        write_done(&job.doc, &mut inner);
        if let Some(u) = &job.update {
            inner.log_entries += 1;
            inner.log_bytes += u.len() as u64;
            inner.stored_bytes += u.len() as u64;
            if (inner.log_entries >= hub.config.compact_after_entries
                || inner.log_bytes >= hub.config.compact_after_bytes)
                && !to_compact.iter().any(|d| Arc::ptr_eq(d, &job.doc))
            {
                to_compact.push(job.doc.clone());
            }
        }
    }
    for doc in to_compact {
        match hub.store.compact(&doc.name) {
            Ok(stats) => {
                hub.metrics.compactions.fetch_add(1, Ordering::Relaxed);
                let mut inner = lock(&doc.inner);
                inner.log_entries = 0;
                inner.log_bytes = 0;
                inner.stored_bytes = stats.snapshot_bytes;
            }
            Err(e) => {
                hub.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(doc = %doc.name, error = %e, "compaction failed; the log is kept");
                // Do not retry on every write.
                let mut inner = lock(&doc.inner);
                inner.log_entries = 0;
                inner.log_bytes = 0;
            }
        }
    }
    let mut docs = lock(&hub.docs);
    for job in batch.drain(..) {
        Inner::maybe_unload(&mut docs, &job.doc);
    }
}

/// The store refused a batch: nothing in it was acknowledged. Every document touched is
/// evicted so its next use reloads the durable state, and every connection that sent into the
/// batch is closed so its client reconnects and re-sends.
fn fail_batch(hub: &Arc<Inner>, batch: &mut Vec<WriteJob>, error: &StoreError) {
    let mut docs = lock(&hub.docs);
    for mut job in batch.drain(..) {
        if let Some(done) = job.done.take() {
            let _ = done.send(Err(error.to_string()));
        }
        if let Some((peer, _)) = &job.ack {
            let _ = peer.outbox.try_send(Outbound::Close(CloseReason::new(
                close_code::INTERNAL_ERROR,
                format!("storage failure: {error}"),
            )));
            peer.kill.cancel();
        }
        let subscribers: Vec<Peer> = {
            let mut inner = lock(&job.doc.inner);
            write_done(&job.doc, &mut inner);
            inner.subscribers.values().cloned().collect()
        };
        for p in subscribers {
            p.kill.cancel();
        }
        if docs
            .get(&job.doc.name)
            .is_some_and(|d| Arc::ptr_eq(d, &job.doc))
        {
            docs.remove(&job.doc.name);
        }
    }
}

enum ConnDoc {
    /// Frames that arrived before the document's Auth message, replayed once it succeeds.
    Unauthenticated(Vec<Vec<u8>>),
    Open {
        doc: Arc<HubDoc>,
        access: Access,
    },
}

/// One socket's view of the hub. Feed it every binary message with [`handle`](Self::handle);
/// dropping it unsubscribes from everything.
pub struct HubConnection {
    hub: Arc<Inner>,
    peer: Peer,
    docs: HashMap<String, ConnDoc>,
    unauth_messages: usize,
    unauth_bytes: usize,
    failed_auth: u32,
    /// Presence bytes this connection holds across its documents (see [`PresenceLimits`]).
    presence_bytes: usize,
    /// Documents whose first content came from this connection.
    new_documents: usize,
}

impl HubConnection {
    pub fn id(&self) -> u64 {
        self.peer.id
    }

    /// Handles one binary WebSocket message. `Err` means: send this close and end the socket.
    pub async fn handle(&mut self, bytes: &[u8]) -> Result<(), CloseReason> {
        let frame = Frame::decode(bytes, &self.hub.config.limits)?;
        let (address, message) = match frame {
            Frame::Ping => {
                self.peer.send(Frame::Pong.encode());
                return Ok(());
            }
            Frame::Pong => return Ok(()),
            Frame::Doc { address, message } => (address, message),
        };
        if let Message::Auth(AuthMessage::Token { token, .. }) = &message {
            if !self.docs.contains_key(&address)
                || matches!(self.docs.get(&address), Some(ConnDoc::Unauthenticated(_)))
            {
                return self.authenticate(address, token).await;
            }
            // Already open: a provider re-created quickly; nothing to do.
            return Ok(());
        }
        match self.docs.get_mut(&address) {
            Some(ConnDoc::Open { doc, access }) => {
                let (doc, access) = (doc.clone(), *access);
                self.on_message(&doc, access, &address, message).await
            }
            Some(ConnDoc::Unauthenticated(queue)) => Self::queue_unauthenticated(
                &self.hub.config,
                &mut self.unauth_messages,
                &mut self.unauth_bytes,
                queue,
                bytes,
            ),
            None => {
                if self.docs.len() >= self.hub.config.max_documents_per_connection {
                    return Err(CloseReason::new(
                        close_code::RESET_CONNECTION,
                        "too many documents on one connection",
                    ));
                }
                let mut queue = Vec::new();
                Self::queue_unauthenticated(
                    &self.hub.config,
                    &mut self.unauth_messages,
                    &mut self.unauth_bytes,
                    &mut queue,
                    bytes,
                )?;
                self.docs.insert(address, ConnDoc::Unauthenticated(queue));
                Ok(())
            }
        }
    }

    fn queue_unauthenticated(
        config: &HubConfig,
        messages: &mut usize,
        total: &mut usize,
        queue: &mut Vec<Vec<u8>>,
        bytes: &[u8],
    ) -> Result<(), CloseReason> {
        if *messages + 1 > config.max_unauthenticated_messages
            || *total + bytes.len() > config.max_unauthenticated_bytes
        {
            return Err(CloseReason::new(
                close_code::RESET_CONNECTION,
                "too much data before authentication",
            ));
        }
        *messages += 1;
        *total += bytes.len();
        queue.push(bytes.to_vec());
        Ok(())
    }

    async fn authenticate(&mut self, address: String, token: &str) -> Result<(), CloseReason> {
        let name = document_name(&address).to_owned();
        let queued = match self.docs.remove(&address) {
            Some(ConnDoc::Unauthenticated(q)) => q,
            _ => Vec::new(),
        };
        for q in &queued {
            self.unauth_messages -= 1;
            self.unauth_bytes -= q.len();
        }
        let decision = if valid_document_name(&name) {
            self.hub.authorizer.authorize(token, &name)
        } else {
            Err(format!("invalid document name {name:?}"))
        };
        let access = match decision {
            Ok(a) => a,
            Err(reason) => {
                self.hub.metrics.auth_denied.fetch_add(1, Ordering::Relaxed);
                self.failed_auth += 1;
                tracing::info!(conn = self.peer.id, doc = %name, %reason, "access denied");
                self.send(
                    &address,
                    &Message::Auth(AuthMessage::PermissionDenied { reason }),
                );
                if self.failed_auth >= self.hub.config.max_failed_auth {
                    return Err(CloseReason::new(
                        close_code::UNAUTHORIZED,
                        "too many failed authentications",
                    ));
                }
                return Ok(());
            }
        };
        let doc = match self.hub.acquire(&name).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(doc = %name, error = %e, "document unavailable");
                self.send(
                    &address,
                    &Message::Auth(AuthMessage::PermissionDenied {
                        reason: format!("document unavailable: {e}"),
                    }),
                );
                return Ok(());
            }
        };
        lock(&doc.inner)
            .subscribers
            .insert((self.peer.id, address.clone()), self.peer.clone());
        lock(&self.hub.grants)
            .entry(self.peer.id)
            .or_insert_with(|| (self.peer.clone(), Vec::new()))
            .1
            .push((token.to_owned(), name.clone(), access));
        let scope = match access {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "readonly",
        };
        self.send(
            &address,
            &Message::Auth(AuthMessage::Authenticated {
                scope: scope.into(),
            }),
        );
        self.docs.insert(
            address.clone(),
            ConnDoc::Open {
                doc: doc.clone(),
                access,
            },
        );
        for bytes in queued {
            match Frame::decode(&bytes, &self.hub.config.limits)? {
                Frame::Doc { message, .. } => {
                    Box::pin(self.on_message(&doc, access, &address, message)).await?
                }
                Frame::Ping | Frame::Pong => {}
            }
        }
        Ok(())
    }

    fn send(&self, address: &str, message: &Message) {
        let mut frame = Vec::new();
        protocol::encode_doc_message(&mut frame, address, message);
        self.peer.send(frame);
    }

    async fn on_message(
        &mut self,
        doc: &Arc<HubDoc>,
        access: Access,
        address: &str,
        message: Message,
    ) -> Result<(), CloseReason> {
        match message {
            Message::Sync(sync) | Message::SyncReply(sync) => {
                self.on_sync(doc, access, address, sync).await
            }
            Message::Awareness(update) => {
                let entries = awareness::decode_update(&update)
                    .map_err(|e| CloseReason::new(close_code::BAD_REQUEST, e.to_string()))?;
                let limits = &self.hub.config.presence;
                let (accepted, others) = {
                    let mut inner = lock(&doc.inner);
                    let (_, here) = inner.awareness.owned_by(self.peer.id);
                    let elsewhere = self.presence_bytes.saturating_sub(here);
                    let budget = limits.max_bytes_per_connection.saturating_sub(elsewhere);
                    let applied = inner.awareness.apply(self.peer.id, entries, limits, budget);
                    self.presence_bytes = elsewhere + inner.awareness.owned_by(self.peer.id).1;
                    let accepted = applied.map_err(|e| {
                        CloseReason::new(close_code::RESET_CONNECTION, e.to_string())
                    })?;
                    let others: Vec<((ConnId, String), Peer)> = inner
                        .subscribers
                        .iter()
                        .filter(|((id, _), _)| *id != self.peer.id)
                        .map(|(k, p)| (k.clone(), p.clone()))
                        .collect();
                    (accepted, others)
                };
                // Only what took effect travels on: never another client's state, a stale
                // clock, or a newcomer the document had no room for.
                if !accepted.is_empty() {
                    let update = awareness::encode_update(&accepted);
                    relay(&self.hub.metrics, others, &Message::Awareness(update));
                }
                Ok(())
            }
            Message::QueryAwareness => {
                let states = lock(&doc.inner).awareness.encode_all();
                self.send(address, &Message::Awareness(states));
                Ok(())
            }
            Message::Stateless(payload) => {
                // No stateless handlers yet; logged so a client developer sees it arrive.
                tracing::debug!(doc = %doc.name, len = payload.len(), "stateless message ignored");
                Ok(())
            }
            Message::Close { .. } => {
                self.leave(address);
                Ok(())
            }
            Message::BroadcastStateless(_) => Err(CloseReason::new(
                close_code::BAD_REQUEST,
                "BroadcastStateless is server-internal and cannot be sent by a client",
            )),
            Message::SyncStatus(_) | Message::Auth(_) => Err(CloseReason::new(
                close_code::BAD_REQUEST,
                format!(
                    "message type {} is sent by servers only",
                    message.type_number()
                ),
            )),
        }
    }

    async fn on_sync(
        &mut self,
        doc: &Arc<HubDoc>,
        access: Access,
        address: &str,
        sync: SyncMessage,
    ) -> Result<(), CloseReason> {
        match sync {
            SyncMessage::Step1(sv) => {
                crate::update_check::check_state_vector_v1(&sv).map_err(|e| {
                    CloseReason::new(
                        close_code::BAD_REQUEST,
                        format!("invalid state vector: {e}"),
                    )
                })?;
                let sv =
                    contained("state vector", || StateVector::decode_v1(&sv))?.map_err(|e| {
                        CloseReason::new(
                            close_code::BAD_REQUEST,
                            format!("invalid state vector: {e}"),
                        )
                    })?;
                let (ours, diff) = {
                    let inner = lock(&doc.inner);
                    inner.check_usable()?;
                    // Reading only: a panic here leaves the document as it was.
                    contained("state vector", || {
                        let txn = inner.doc.transact();
                        (
                            yrs::updates::encoder::Encode::encode_v1(&txn.state_vector()),
                            txn.encode_diff_v1(&sv),
                        )
                    })?
                };
                // As Hocuspocus does: our step 1 first, so the client answers with what we
                // lack, then the step 2 with what it lacks.
                self.send(address, &Message::Sync(SyncMessage::Step1(ours)));
                self.send(address, &Message::Sync(SyncMessage::Step2(diff)));
                Ok(())
            }
            SyncMessage::Step2(update) | SyncMessage::Update(update) => {
                self.hub
                    .metrics
                    .updates_received
                    .fetch_add(1, Ordering::Relaxed);
                self.apply_update(doc, access, address, update).await
            }
        }
    }

    async fn apply_update(
        &mut self,
        doc: &Arc<HubDoc>,
        access: Access,
        address: &str,
        bytes: Vec<u8>,
    ) -> Result<(), CloseReason> {
        // Checked before yrs sees it: what yrs panics on, wraps, or recurses into without bound.
        crate::update_check::check_update_v1(&bytes).map_err(|e| {
            CloseReason::new(close_code::BAD_REQUEST, format!("invalid update: {e}"))
        })?;
        let update = contained("update", || Update::decode_v1(&bytes))?.map_err(|e| {
            CloseReason::new(close_code::BAD_REQUEST, format!("invalid update: {e}"))
        })?;
        let ack = (self.peer.clone(), address.to_owned());
        let (adds_something, others) = {
            let mut inner = lock(&doc.inner);
            inner.check_usable()?;
            let sv = inner.doc.transact().state_vector();
            let adds = contained("update", || inspect_update(&update, &sv))?.map_err(|e| {
                CloseReason::new(close_code::BAD_REQUEST, format!("invalid update: {e}"))
            })?;
            if adds && access == Access::ReadOnly {
                drop(inner);
                self.send(address, &Message::SyncStatus(false));
                return Ok(());
            }
            if adds {
                if inner.stored_bytes + bytes.len() as u64 > self.hub.config.max_document_bytes {
                    return Err(CloseReason::new(
                        close_code::DOCUMENT_TOO_LARGE,
                        format!(
                            "document {} would exceed {} bytes",
                            doc.name, self.hub.config.max_document_bytes
                        ),
                    ));
                }
                if sv.is_empty() && inner.stored_bytes == 0 {
                    // This update brings the document into existence.
                    if self.new_documents >= self.hub.config.max_new_documents_per_connection {
                        return Err(CloseReason::new(
                            close_code::RESET_CONNECTION,
                            format!(
                                "more than {} new documents on one connection",
                                self.hub.config.max_new_documents_per_connection
                            ),
                        ));
                    }
                    self.new_documents += 1;
                }
                // yrs integrates an update block by block: an error or a panic part-way leaves
                // part of it in the document. Neither is stored or relayed, but the in-memory
                // copy can no longer be trusted, so it is poisoned and rebuilt from the store.
                let applied = contained("update", || {
                    let mut txn = inner.doc.transact_mut();
                    txn.apply_update(update)
                });
                let failure = match applied {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(CloseReason::new(
                        close_code::BAD_REQUEST,
                        format!("update does not apply: {e}"),
                    )),
                    Err(reason) => Some(reason),
                };
                if let Some(reason) = failure {
                    let subscribers = inner.poison();
                    drop(inner);
                    self.hub
                        .metrics
                        .documents_poisoned
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(doc = %doc.name, conn = self.peer.id, %reason,
                        "an update failed part-way; reloading the document from the store");
                    for p in subscribers.into_iter().filter(|p| p.id != self.peer.id) {
                        p.kill.cancel();
                    }
                    return Err(reason);
                }
            }
            // Counted under the lock so the document cannot unload before the writer is done.
            inner.pending_writes += 1;
            let others: Vec<((ConnId, String), Peer)> = if adds {
                inner
                    .subscribers
                    .iter()
                    .filter(|((id, _), _)| *id != self.peer.id)
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            (adds, others)
        };
        if adds_something {
            relay_update(&self.hub.metrics, others, &bytes);
            self.hub.changed(&doc.name);
        }
        // Even a no-op is acknowledged through the writer, so acknowledgements keep the order of
        // the updates they answer.
        let job = WriteJob {
            doc: doc.clone(),
            update: adds_something.then_some(bytes),
            ack: Some(ack),
            done: None,
        };
        if self.hub.enqueue(job).await.is_err() {
            write_done(doc, &mut lock(&doc.inner));
            return Err(CloseReason::new(
                close_code::GOING_AWAY,
                "the hub is shutting down",
            ));
        }
        Ok(())
    }

    /// Unsubscribes from one address (a client Close message, or the connection ending).
    fn leave(&mut self, address: &str) {
        if let Some(ConnDoc::Open { doc, .. }) = self.docs.remove(address) {
            let (gone, others) = {
                let mut inner = lock(&doc.inner);
                inner
                    .subscribers
                    .remove(&(self.peer.id, address.to_owned()));
                let still_here = inner.subscribers.keys().any(|(id, _)| *id == self.peer.id);
                let gone = if still_here {
                    None
                } else {
                    let (_, held) = inner.awareness.owned_by(self.peer.id);
                    self.presence_bytes = self.presence_bytes.saturating_sub(held);
                    inner.awareness.remove_owner(self.peer.id)
                };
                let others: Vec<((ConnId, String), Peer)> = inner
                    .subscribers
                    .iter()
                    .map(|(k, p)| (k.clone(), p.clone()))
                    .collect();
                (gone, others)
            };
            if let Some(update) = gone {
                relay(&self.hub.metrics, others, &Message::Awareness(update));
            }
            self.hub.release(&doc);
        }
    }
}

impl Drop for HubConnection {
    fn drop(&mut self) {
        let addresses: Vec<String> = self.docs.keys().cloned().collect();
        for a in addresses {
            self.leave(&a);
        }
        lock(&self.hub.grants).remove(&self.peer.id);
        self.hub
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends a frame to each subscriber, encoding once per distinct address (most subscribers
/// use the plain document name, so this is usually one encoding for the whole fan-out).
fn relay_with(
    metrics: &HubMetrics,
    targets: Vec<((ConnId, String), Peer)>,
    encode: impl Fn(&str) -> Vec<u8>,
) {
    let mut cache: Option<(String, Vec<u8>)> = None;
    for ((_, address), peer) in targets {
        let frame = match &cache {
            Some((a, f)) if *a == address => f.clone(),
            _ => {
                let f = encode(&address);
                cache = Some((address, f.clone()));
                f
            }
        };
        peer.send(frame);
        metrics.frames_relayed.fetch_add(1, Ordering::Relaxed);
    }
}

fn relay(metrics: &HubMetrics, targets: Vec<((ConnId, String), Peer)>, message: &Message) {
    relay_with(metrics, targets, |address| {
        let mut f = Vec::new();
        protocol::encode_doc_message(&mut f, address, message);
        f
    });
}

fn relay_update(metrics: &HubMetrics, targets: Vec<((ConnId, String), Peer)>, update: &[u8]) {
    relay_with(metrics, targets, |address| {
        protocol::encode_update_frame(address, update)
    });
}

/// Whether applying `update` to a document at state `sv` could change it: it inserts something
/// past the document's clocks, or it deletes something. (Deletions are not checked against what
/// is already deleted; storing a redundant one is harmless and compaction drops it.)
/// `Update::state_vector` is no help here: it only counts blocks that start at clock 0.
///
/// Checked first, what a debug build of yrs panics on and a release build silently wraps: a
/// block or deletion whose clock range runs past `u32::MAX` (an empty or reversed range once
/// wrapped).
fn inspect_update(update: &Update, sv: &StateVector) -> Result<bool, &'static str> {
    let insertions = update.insertions(true);
    let wrapped = |set: &yrs::IdSet| {
        set.iter()
            .any(|(_, ranges)| ranges.iter().any(|r| r.start > r.end))
    };
    if wrapped(&insertions) || wrapped(update.delete_set()) {
        return Err("a clock range overflows");
    }
    Ok(!update.delete_set().is_empty()
        || insertions
            .iter()
            .any(|(client, ranges)| ranges.iter().any(|r| r.end > sv.get(client))))
}

/// Runs yrs code over a peer's bytes, turning a panic into the 4400 close for that peer alone.
/// yrs panics on some malformed input (debug assertions, arithmetic overflow in decoding; see
/// `docs/upstream-yrs.md`): it must never take a socket task down with it. Callers only pass
/// closures that decode or read, or whose partial effect they undo (see `poison`).
fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, CloseReason> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        tracing::warn!(what, panic = %msg, "yrs panicked on a peer's input; closing that connection");
        CloseReason::new(
            close_code::BAD_REQUEST,
            format!("malformed {what}: rejected by the CRDT decoder"),
        )
    })
}

/// Names the hub accepts: non-empty, bounded, printable, no `..` segments. Finer rules (which
/// kinds of documents exist) belong to the authorizer.
pub fn valid_document_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && !name.chars().any(|c| c.is_control())
        && !name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use yrs::updates::encoder::Encode;
    use yrs::{GetString, Text};

    use super::*;
    use crate::store::MemoryStore;

    struct Tokens;
    impl Authorizer for Tokens {
        fn authorize(&self, token: &str, _doc: &str) -> Result<Access, String> {
            match token {
                "rw" => Ok(Access::ReadWrite),
                "ro" => Ok(Access::ReadOnly),
                _ => Err("unknown token".into()),
            }
        }
    }

    fn hub() -> (Hub, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        (
            Hub::new(store.clone(), Arc::new(Tokens), HubConfig::default()),
            store,
        )
    }

    fn frame(doc: &str, m: Message) -> Vec<u8> {
        Frame::doc(doc, m).encode()
    }

    fn token(doc: &str, t: &str) -> Vec<u8> {
        frame(
            doc,
            Message::Auth(AuthMessage::Token {
                token: t.into(),
                provider_version: None,
            }),
        )
    }

    async fn recv(rx: &mut mpsc::Receiver<Outbound>) -> Message {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Outbound::Frame(f) => match Frame::decode(&f, &Limits::default()).unwrap() {
                Frame::Doc { message, .. } => message,
                other => panic!("unexpected {other:?}"),
            },
            Outbound::Close(c) => panic!("unexpected close {c:?}"),
        }
    }

    fn edit(text: &str) -> (Doc, Vec<u8>) {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, text);
        let u = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        (doc, u)
    }

    async fn open(
        hub: &Hub,
        doc: &str,
        tok: &str,
    ) -> (HubConnection, mpsc::Receiver<Outbound>, CancellationToken) {
        let (mut c, mut rx, kill) = hub.connect();
        c.handle(&token(doc, tok)).await.unwrap();
        assert!(matches!(
            recv(&mut rx).await,
            Message::Auth(AuthMessage::Authenticated { .. })
        ));
        (c, rx, kill)
    }

    #[tokio::test]
    async fn handshake_relay_and_ack_after_commit() {
        let (hub, store) = hub();
        let (mut a, mut arx, _) = open(&hub, "session/s", "rw").await;
        let (mut b, mut brx, _) = open(&hub, "session/s", "rw").await;
        let empty = StateVector::default().encode_v1();
        a.handle(&frame(
            "session/s",
            Message::Sync(SyncMessage::Step1(empty)),
        ))
        .await
        .unwrap();
        assert!(matches!(
            recv(&mut arx).await,
            Message::Sync(SyncMessage::Step1(_))
        ));
        assert!(matches!(
            recv(&mut arx).await,
            Message::Sync(SyncMessage::Step2(_))
        ));

        let (_, u) = edit("hello");
        a.handle(&frame(
            "session/s",
            Message::Sync(SyncMessage::Update(u.clone())),
        ))
        .await
        .unwrap();
        // B gets the relay; A gets the acknowledgement, and by then the store has it.
        assert_eq!(
            recv(&mut brx).await,
            Message::Sync(SyncMessage::Update(u.clone()))
        );
        assert_eq!(recv(&mut arx).await, Message::SyncStatus(true));
        assert_eq!(store.load("session/s").unwrap().updates, vec![u.clone()]);

        // A duplicate adds nothing: acknowledged, not stored again, not relayed.
        b.handle(&frame("session/s", Message::Sync(SyncMessage::Step2(u))))
            .await
            .unwrap();
        assert_eq!(recv(&mut brx).await, Message::SyncStatus(true));
        assert_eq!(store.load("session/s").unwrap().updates.len(), 1);
        assert!(arx.try_recv().is_err());
    }

    #[test]
    fn incremental_updates_count_as_new() {
        let doc = Doc::new();
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "a");
        let sv1 = doc.transact().state_vector();
        t.insert(&mut doc.transact_mut(), 1, "b");
        let incremental = Update::decode_v1(&doc.transact().encode_diff_v1(&sv1)).unwrap();
        assert!(inspect_update(&incremental, &sv1).unwrap());
        let now = doc.transact().state_vector();
        assert!(!inspect_update(&incremental, &now).unwrap());
        t.remove_range(&mut doc.transact_mut(), 0, 1);
        let delete = Update::decode_v1(&doc.transact().encode_diff_v1(&now)).unwrap();
        assert!(inspect_update(&delete, &doc.transact().state_vector()).unwrap());
    }

    #[tokio::test]
    async fn frames_before_auth_are_replayed_and_denials_are_clear() {
        let (hub, _) = hub();
        let (mut c, mut rx, _) = hub.connect();
        let (_, u) = edit("early");
        c.handle(&frame("session/q", Message::Sync(SyncMessage::Update(u))))
            .await
            .unwrap();
        c.handle(&token("session/q", "rw")).await.unwrap();
        assert!(matches!(
            recv(&mut rx).await,
            Message::Auth(AuthMessage::Authenticated { .. })
        ));
        assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
        let state = hub.document_state("session/q").await.unwrap();
        let d = Doc::new();
        d.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        assert_eq!(d.get_or_insert_text("t").get_string(&d.transact()), "early");

        c.handle(&token("session/z", "nope")).await.unwrap();
        assert_eq!(
            recv(&mut rx).await,
            Message::Auth(AuthMessage::PermissionDenied {
                reason: "unknown token".into()
            })
        );
    }

    #[tokio::test]
    async fn read_only_updates_are_refused() {
        let (hub, store) = hub();
        let (mut c, mut rx, _) = open(&hub, "session/r", "ro").await;
        let (_, u) = edit("nope");
        c.handle(&frame("session/r", Message::Sync(SyncMessage::Update(u))))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx).await, Message::SyncStatus(false));
        assert!(store.load("session/r").unwrap().is_empty());
    }

    #[tokio::test]
    async fn storage_failure_acknowledges_nothing_and_recovers() {
        let (hub, store) = hub();
        let (mut c, mut rx, kill) = open(&hub, "session/f", "rw").await;
        store.fail_next_append();
        let (_, u) = edit("lost?");
        c.handle(&frame(
            "session/f",
            Message::Sync(SyncMessage::Update(u.clone())),
        ))
        .await
        .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Outbound::Close(r) => assert_eq!(r.code, close_code::INTERNAL_ERROR),
            other => panic!("expected a close, got {other:?}"),
        }
        // The writer queues the close, then cancels: the close can arrive first.
        tokio::time::timeout(Duration::from_secs(5), kill.cancelled())
            .await
            .unwrap();
        drop(c);
        // The client reconnects and re-sends; the document was evicted, so the update is new
        // to the reloaded copy and gets stored this time.
        let (mut c, mut rx, _) = open(&hub, "session/f", "rw").await;
        c.handle(&frame(
            "session/f",
            Message::Sync(SyncMessage::Step2(u.clone())),
        ))
        .await
        .unwrap();
        assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
        assert_eq!(store.load("session/f").unwrap().updates, vec![u]);
    }

    #[tokio::test]
    async fn awareness_is_relayed_replayed_and_cleared() {
        let (hub, _) = hub();
        let (mut a, _arx, _) = open(&hub, "session/p", "rw").await;
        let (mut b, mut brx, _) = open(&hub, "session/p", "rw").await;
        let entry = awareness::AwarenessEntry {
            client_id: 7,
            clock: 1,
            state: r#"{"name":"a"}"#.into(),
        };
        let update = awareness::encode_update([&entry]);
        a.handle(&frame("session/p", Message::Awareness(update.clone())))
            .await
            .unwrap();
        assert_eq!(recv(&mut brx).await, Message::Awareness(update.clone()));
        b.handle(&frame("session/p", Message::QueryAwareness))
            .await
            .unwrap();
        assert_eq!(recv(&mut brx).await, Message::Awareness(update));
        drop(a);
        match recv(&mut brx).await {
            Message::Awareness(u) => {
                let gone = awareness::decode_update(&u).unwrap();
                assert_eq!(gone[0].client_id, 7);
                assert_eq!(gone[0].state, "null");
            }
            other => panic!("expected awareness removal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_update_that_fails_part_way_leaves_nothing_behind() {
        use yrs::{Map, MapPrelim};
        // The hub holds client 1's map entry "x" as a string; client 2's update (made against
        // a replica where client 1's "x" is a map) first inserts text, then writes into "x" as
        // if it were a map. yrs integrates the text, then fails on the parent.
        let (hub, _) = hub();
        let c = Doc::with_client_id(1);
        c.get_or_insert_map("m")
            .insert(&mut c.transact_mut(), "x", "a string");
        let hub_state = c
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let a = Doc::with_client_id(1);
        a.get_or_insert_map("m")
            .insert(&mut a.transact_mut(), "x", MapPrelim::default());
        let b = Doc::with_client_id(2);
        b.transact_mut()
            .apply_update(
                Update::decode_v1(
                    &a.transact()
                        .encode_state_as_update_v1(&StateVector::default()),
                )
                .unwrap(),
            )
            .unwrap();
        let before = b.transact().state_vector();
        b.get_or_insert_text("t")
            .insert(&mut b.transact_mut(), 0, "smuggled");
        {
            let m = b.get_or_insert_map("m");
            let mut txn = b.transact_mut();
            let Some(yrs::Out::YMap(inner)) = m.get(&txn, "x") else {
                panic!("no nested map")
            };
            inner.insert(&mut txn, "k", "v");
        }
        let hostile = b.transact().encode_diff_v1(&before);
        // The premise: plain yrs applies this update part-way and then fails.
        {
            let plain = Doc::new();
            let mut txn = plain.transact_mut();
            txn.apply_update(Update::decode_v1(&hub_state).unwrap())
                .unwrap();
            assert!(
                txn.apply_update(Update::decode_v1(&hostile).unwrap())
                    .is_err()
            );
            drop(txn);
            assert_eq!(
                plain.get_or_insert_text("t").get_string(&plain.transact()),
                "smuggled"
            );
        }

        let (mut w, mut wrx, _) = open(&hub, "session/poison", "rw").await;
        w.handle(&frame(
            "session/poison",
            Message::Sync(SyncMessage::Update(hub_state.clone())),
        ))
        .await
        .unwrap();
        assert_eq!(recv(&mut wrx).await, Message::SyncStatus(true));
        let (_watcher, _, watcher_kill) = open(&hub, "session/poison", "ro").await;
        let (mut h, _hrx, _) = open(&hub, "session/poison", "rw").await;
        let err = h
            .handle(&frame(
                "session/poison",
                Message::Sync(SyncMessage::Update(hostile)),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code, close_code::BAD_REQUEST, "{err:?}");
        // The others on the document are told to reconnect; the copy they would reconnect to
        // is the stored one, without the smuggled text.
        assert!(watcher_kill.is_cancelled());
        drop((w, h, _watcher));
        let state = hub.document_state("session/poison").await.unwrap();
        let d = Doc::new();
        d.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        assert_eq!(d.get_or_insert_text("t").get_string(&d.transact()), "");
        assert_eq!(
            d.transact().state_vector(),
            c.transact().state_vector(),
            "the reloaded document is exactly the stored one"
        );
        // And it serves again.
        let (mut again, mut arx, _) = open(&hub, "session/poison", "rw").await;
        let (_, u) = edit("fine");
        again
            .handle(&frame(
                "session/poison",
                Message::Sync(SyncMessage::Update(u)),
            ))
            .await
            .unwrap();
        assert_eq!(recv(&mut arx).await, Message::SyncStatus(true));
    }

    fn presence(client_id: u64, clock: u64, state: &str) -> Vec<u8> {
        awareness::encode_update([&awareness::AwarenessEntry {
            client_id,
            clock,
            state: state.into(),
        }])
    }

    #[tokio::test]
    async fn presence_is_bounded_and_only_its_owner_changes_it() {
        let (hub, _) = hub();
        let (mut alice, _arx, _) = open(&hub, "session/pr", "rw").await;
        let (mut bob, mut brx, _) = open(&hub, "session/pr", "rw").await;
        alice
            .handle(&frame(
                "session/pr",
                Message::Awareness(presence(7, 1, r#"{"name":"alice"}"#)),
            ))
            .await
            .unwrap();
        assert!(matches!(recv(&mut brx).await, Message::Awareness(_)));
        // A read-only socket tries to overwrite and clear Alice's presence: neither takes,
        // and neither is relayed.
        let (mut mallory, _mrx, _) = open(&hub, "session/pr", "ro").await;
        for forged in [
            presence(7, 50, r#"{"name":"mallory"}"#),
            presence(7, 51, "null"),
        ] {
            mallory
                .handle(&frame("session/pr", Message::Awareness(forged)))
                .await
                .unwrap();
        }
        bob.handle(&frame("session/pr", Message::QueryAwareness))
            .await
            .unwrap();
        match recv(&mut brx).await {
            Message::Awareness(u) => assert_eq!(
                awareness::decode_update(&u).unwrap(),
                vec![awareness::AwarenessEntry {
                    client_id: 7,
                    clock: 1,
                    state: r#"{"name":"alice"}"#.into()
                }]
            ),
            other => panic!("expected the states, got {other:?}"),
        }
        // Too many client ids from one connection, or an oversized state, closes it.
        let cap = hub.config().presence.max_clients_per_connection as u64;
        let many: Vec<awareness::AwarenessEntry> = (100..100 + cap + 1)
            .map(|id| awareness::AwarenessEntry {
                client_id: id,
                clock: 1,
                state: "{}".into(),
            })
            .collect();
        let err = mallory
            .handle(&frame(
                "session/pr",
                Message::Awareness(awareness::encode_update(&many)),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code, close_code::RESET_CONNECTION);
        drop(mallory);
        let big = "x".repeat(hub.config().presence.max_state_bytes + 1);
        let (mut m2, _, _) = open(&hub, "session/pr", "ro").await;
        let err = m2
            .handle(&frame(
                "session/pr",
                Message::Awareness(presence(200, 1, &format!("\"{big}\""))),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code, close_code::RESET_CONNECTION);
        drop(m2);
        // What the closed connections announced is gone; Alice's state stays.
        let doc = lock(&hub.inner.docs).get("session/pr").cloned().unwrap();
        assert_eq!(lock(&doc.inner).awareness.len(), 1);
    }

    #[tokio::test]
    async fn presence_across_documents_is_bounded_per_connection() {
        let store = Arc::new(MemoryStore::new());
        let mut config = HubConfig::default();
        config.presence.max_bytes_per_connection = 4 * (awareness::ENTRY_OVERHEAD + 100);
        let hub = Hub::new(store, Arc::new(Tokens), config);
        let (mut c, _rx, _) = hub.connect();
        let state = format!("\"{}\"", "y".repeat(98));
        let mut closed = None;
        for i in 0..10u64 {
            let doc = format!("session/many{i}");
            c.handle(&token(&doc, "ro")).await.unwrap();
            if let Err(e) = c
                .handle(&frame(&doc, Message::Awareness(presence(i + 1, 1, &state))))
                .await
            {
                closed = Some((i, e));
                break;
            }
        }
        let (i, e) = closed.expect("the connection was never stopped");
        assert_eq!(i, 4, "{e:?}");
        assert_eq!(e.code, close_code::RESET_CONNECTION);
        // Leaving a document gives its share back.
        let mut c2 = hub.connect().0;
        for i in 0..8u64 {
            let doc = format!("session/cycle{i}");
            c2.handle(&token(&doc, "ro")).await.unwrap();
            c2.handle(&frame(&doc, Message::Awareness(presence(i + 1, 1, &state))))
                .await
                .unwrap();
            c2.handle(&frame(
                &doc,
                Message::Close {
                    reason: String::new(),
                },
            ))
            .await
            .unwrap();
        }
    }

    #[tokio::test]
    async fn new_documents_per_connection_are_capped() {
        let store = Arc::new(MemoryStore::new());
        let config = HubConfig {
            max_new_documents_per_connection: 3,
            ..HubConfig::default()
        };
        let hub = Hub::new(store, Arc::new(Tokens), config);
        let (mut c, _rx, _) = hub.connect();
        let mut result = Ok(());
        for i in 0..4 {
            let doc = format!("session/new{i}");
            c.handle(&token(&doc, "rw")).await.unwrap();
            let (_, u) = edit("x");
            result = c
                .handle(&frame(&doc, Message::Sync(SyncMessage::Update(u))))
                .await;
            if i < 3 {
                result.clone().unwrap();
            }
        }
        assert_eq!(result.unwrap_err().code, close_code::RESET_CONNECTION);
        // Writing to documents that exist is not creating.
        let (mut c, mut rx, _) = open(&hub, "session/new0", "rw").await;
        for text in ["a", "b", "c", "d"] {
            let (_, u) = edit(text);
            c.handle(&frame(
                "session/new0",
                Message::Sync(SyncMessage::Update(u)),
            ))
            .await
            .unwrap();
            assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
        }
    }

    #[tokio::test]
    async fn idle_documents_unload_after_their_writes() {
        let (hub, _) = hub();
        let (mut c, mut rx, _) = open(&hub, "session/u", "rw").await;
        let (_, u) = edit("x");
        c.handle(&frame("session/u", Message::Sync(SyncMessage::Update(u))))
            .await
            .unwrap();
        assert_eq!(recv(&mut rx).await, Message::SyncStatus(true));
        assert_eq!(hub.loaded_documents(), 1);
        drop(c);
        // The writer may still be finishing the batch; whichever of it and the leaving
        // connection comes last unloads the document.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while hub.loaded_documents() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "document never unloaded"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        hub.shutdown().await;
    }
}
