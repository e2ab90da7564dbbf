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

mod connection;
#[cfg(test)]
mod tests;
mod writer;

pub use connection::HubConnection;
use connection::relay_update;
use writer::{write_done, writer_loop};

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
