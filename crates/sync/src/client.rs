//! A device's sync client: keeps its documents in its own [`Store`], syncs them with a hub over
//! one WebSocket, and reconnects with backoff.
//!
//! Offline first: [`SyncClient::open`] returns the local document at once; edits made while
//! offline are stored locally (synchronously, before the editing transaction returns) and reach
//! the hub through the sync handshake after reconnect: the hub sends its state vector, the
//! client answers with everything the hub lacks. Acknowledgements (`SyncStatus`) are counted
//! per document so [`SyncClient::flush`] can wait until the hub has committed every local edit.
//!
//! Never: drop a local edit because the socket is down, or let a hub's bytes panic the task.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Origin, ReadTxn, StateVector, Transact, Update};

use crate::protocol::{AuthMessage, Frame, Limits, Message, SyncMessage, document_name};
use crate::store::{AppendItem, Store, StoreError};

/// Transaction origin of updates that came from the hub, so the update observer does not send
/// them back.
pub const REMOTE_ORIGIN: &str = "jarvis-sync/remote";
/// Transaction origin of local edits the caller has already stored itself (the file mirror
/// stores an edit together with its sync base, in one transaction): sent, not stored again.
pub const STORED_ORIGIN: &str = "jarvis-sync/stored";
/// Observer key, so the same document is never observed twice.
const OBSERVER_KEY: &str = "jarvis-sync/client";

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/sync`
    pub url: String,
    pub token: String,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub connect_timeout: Duration,
    pub limits: Limits,
    /// Compact a document's local log after this many entries.
    pub compact_after_entries: u64,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            compact_after_entries: 2000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    #[error("document {doc:?}: stored update is unreadable: {reason}")]
    Corrupt { doc: String, reason: String },
    #[error("document {doc:?}: access denied by the hub: {reason}")]
    Denied { doc: String, reason: String },
    #[error("timed out after {0:?} waiting for the hub")]
    Timeout(Duration),
    #[error("invalid document name {0:?}")]
    InvalidName(String),
    #[error("the sync client has stopped")]
    Stopped,
}

/// Where the socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    Connecting,
    Connected,
    /// Waiting to retry after an error, or kept offline by [`SyncClient::set_online`].
    Offline {
        reason: String,
    },
}

/// Sync state of one document, observable with [`SyncClient::watch_document`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentStatus {
    /// The hub accepted our token for this document on the current connection.
    pub authenticated: bool,
    pub read_only: bool,
    /// We have received the hub's state at least once on the current connection.
    pub synced: bool,
    pub denied: Option<String>,
    /// Local edits made so far, and how many of them the hub has durably committed.
    pub local_edits: u64,
    pub acknowledged_edits: u64,
    /// Messages the hub refused (`SyncStatus(false)`), e.g. edits made with a read-only token.
    pub refused_messages: u64,
}

impl DocumentStatus {
    /// Local edits the hub has not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.local_edits.saturating_sub(self.acknowledged_edits)
    }
}

struct DocEntry {
    doc: Doc,
    status: watch::Sender<DocumentStatus>,
    local_edits: Arc<AtomicU64>,
}

enum Command {
    Open(String),
    /// Authenticate an open document again: the hub refused it earlier (a session opened
    /// before it was registered, a membership granted since).
    Reauth(String),
    Local {
        doc: String,
        update: Vec<u8>,
        edit: u64,
    },
}

struct Shared {
    config: ClientConfig,
    store: Arc<dyn Store>,
    docs: Mutex<HashMap<String, DocEntry>>,
    commands: mpsc::UnboundedSender<Command>,
    online: watch::Sender<bool>,
    status: watch::Sender<ConnectionStatus>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sync client; dropping it stops the connection task.
pub struct SyncClient {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for SyncClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SyncClient {
    /// Starts the connection task on the current Tokio runtime.
    pub fn start(config: ClientConfig, store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            config,
            store,
            docs: Mutex::new(HashMap::new()),
            commands: tx,
            online: watch::channel(true).0,
            status: watch::channel(ConnectionStatus::Connecting).0,
        });
        let task = tokio::spawn(run(shared.clone(), rx));
        SyncClient { shared, task }
    }

    /// Opens a document: loads it from the local store and keeps it in sync from now on. The same
    /// `Doc` is returned for every call with the same name.
    pub async fn open(&self, name: &str) -> Result<Doc, ClientError> {
        if name.is_empty() || name.len() > 256 || name.contains('\0') {
            return Err(ClientError::InvalidName(name.to_owned()));
        }
        if let Some(e) = lock(&self.shared.docs).get(name) {
            if e.status.borrow().denied.is_some() {
                e.status.send_modify(|s| s.denied = None);
                let _ = self.shared.commands.send(Command::Reauth(name.to_owned()));
            }
            return Ok(e.doc.clone());
        }
        let store = self.shared.store.clone();
        let owned = name.to_owned();
        let stored = tokio::task::spawn_blocking(move || store.load(&owned))
            .await
            .map_err(|_| ClientError::Stopped)??;
        let doc = Doc::new();
        stored
            .apply_to(&mut doc.transact_mut_with(REMOTE_ORIGIN))
            .map_err(|reason| ClientError::Corrupt {
                doc: name.to_owned(),
                reason,
            })?;
        let local_edits = Arc::new(AtomicU64::new(0));
        let (status, _) = watch::channel(DocumentStatus::default());
        let observer = LocalEditObserver {
            name: name.to_owned(),
            store: self.shared.store.clone(),
            commands: self.shared.commands.clone(),
            edits: local_edits.clone(),
            status: status.clone(),
        };
        crate::doc::observe_updates(&doc, OBSERVER_KEY, move |txn, event| {
            observer.on_update(txn.origin(), &event.update);
        })
        .await;
        let mut docs = lock(&self.shared.docs);
        // Another caller may have opened it while we were loading; theirs wins.
        if let Some(e) = docs.get(name) {
            return Ok(e.doc.clone());
        }
        docs.insert(
            name.to_owned(),
            DocEntry {
                doc: doc.clone(),
                status,
                local_edits,
            },
        );
        drop(docs);
        let _ = self.shared.commands.send(Command::Open(name.to_owned()));
        Ok(doc)
    }

    pub fn watch_document(&self, name: &str) -> Option<watch::Receiver<DocumentStatus>> {
        lock(&self.shared.docs)
            .get(name)
            .map(|e| e.status.subscribe())
    }

    pub fn document_status(&self, name: &str) -> Option<DocumentStatus> {
        lock(&self.shared.docs)
            .get(name)
            .map(|e| e.status.borrow().clone())
    }

    /// The hub's HTTP base (`http(s)://host:port`), derived from the sync URL.
    pub fn http_base(&self) -> String {
        let url = self.shared.config.url.trim_end_matches('/');
        let url = url.strip_suffix("/sync").unwrap_or(url);
        url.replacen("wss://", "https://", 1)
            .replacen("ws://", "http://", 1)
    }

    /// The device's local store (documents, and small metadata such as a mirror's sync state).
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }

    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    pub fn connection(&self) -> watch::Receiver<ConnectionStatus> {
        self.shared.status.subscribe()
    }

    /// Goes offline (closes the socket and stays closed) or back online.
    pub fn set_online(&self, online: bool) {
        self.shared.online.send_replace(online);
    }

    /// Waits until the hub's state for `name` has been received on the current connection.
    pub async fn wait_synced(&self, name: &str, timeout: Duration) -> Result<(), ClientError> {
        self.wait_for(name, timeout, |s| s.synced).await
    }

    /// Waits until the hub has durably committed every local edit of `name` made before the
    /// call: the step before a handoff.
    pub async fn flush(&self, name: &str, timeout: Duration) -> Result<(), ClientError> {
        let target = lock(&self.shared.docs)
            .get(name)
            .map(|e| e.local_edits.load(Ordering::SeqCst))
            .ok_or_else(|| ClientError::InvalidName(name.to_owned()))?;
        self.wait_for(name, timeout, move |s| s.acknowledged_edits >= target)
            .await
    }

    /// [`flush`](Self::flush) for every open document.
    pub async fn flush_all(&self, timeout: Duration) -> Result<(), ClientError> {
        let names: Vec<String> = lock(&self.shared.docs).keys().cloned().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        for n in names {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.flush(&n, left).await?;
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&DocumentStatus) -> bool,
    ) -> Result<(), ClientError> {
        let mut rx = self
            .watch_document(name)
            .ok_or_else(|| ClientError::InvalidName(name.to_owned()))?;
        let wait = async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if let Some(reason) = &s.denied {
                        return Err(ClientError::Denied {
                            doc: name.to_owned(),
                            reason: reason.clone(),
                        });
                    }
                    if done(&s) {
                        return Ok(());
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(ClientError::Stopped);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
    }
}

/// Runs inside the document's commit: stores a local edit before the edit's transaction
/// returns, then hands it to the connection task.
struct LocalEditObserver {
    name: String,
    store: Arc<dyn Store>,
    commands: mpsc::UnboundedSender<Command>,
    edits: Arc<AtomicU64>,
    status: watch::Sender<DocumentStatus>,
}

impl LocalEditObserver {
    fn on_update(&self, origin: Option<&Origin>, update: &[u8]) {
        if origin.is_some_and(|o| o.as_ref() == REMOTE_ORIGIN.as_bytes()) {
            return;
        }
        let stored = origin.is_some_and(|o| o.as_ref() == STORED_ORIGIN.as_bytes());
        if !stored
            && let Err(e) = self.store.append(&[AppendItem {
                doc: &self.name,
                update,
            }])
        {
            // The edit still lives in memory and goes to the hub; only a crash before the hub
            // acknowledges it could lose it. Loud, because the local copy is now incomplete.
            tracing::error!(doc = %self.name, error = %e, "storing a local edit failed");
        }
        let edit = self.edits.fetch_add(1, Ordering::SeqCst) + 1;
        self.status.send_modify(|s| s.local_edits = edit);
        let _ = self.commands.send(Command::Local {
            doc: self.name.clone(),
            update: update.to_vec(),
            edit,
        });
    }
}

/// Per-document state of one connection.
#[derive(Default)]
struct Session {
    /// We answered the hub's step 1, so later local edits go out as updates.
    ready: bool,
    /// Local edit count covered by each message awaiting a `SyncStatus`, oldest first.
    in_flight: VecDeque<u64>,
    remote_updates_stored: u64,
}

async fn run(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut online = shared.online.subscribe();
    let mut backoff = shared.config.min_backoff;
    loop {
        if !*online.borrow_and_update() {
            shared.status.send_replace(ConnectionStatus::Offline {
                reason: "offline by request".into(),
            });
            // Commands still need draining so memory does not grow; their edits are already
            // stored and will be sent by the handshake.
            loop {
                tokio::select! {
                    changed = online.changed() => {
                        if changed.is_err() { return; }
                        if *online.borrow_and_update() { break; }
                    }
                    cmd = commands.recv() => if cmd.is_none() { return; },
                }
            }
        }
        shared.status.send_replace(ConnectionStatus::Connecting);
        let connected = tokio::time::timeout(
            shared.config.connect_timeout,
            // Nagle off: sync frames are small and latency-bound.
            tokio_tungstenite::connect_async_with_config(shared.config.url.as_str(), None, true),
        )
        .await;
        let reason = match connected {
            Ok(Ok((ws, _))) => {
                backoff = shared.config.min_backoff;
                shared.status.send_replace(ConnectionStatus::Connected);
                let reason = connection(&shared, ws, &mut commands, &mut online).await;
                for e in lock(&shared.docs).values() {
                    e.status.send_modify(|s| {
                        s.authenticated = false;
                        s.synced = false;
                    });
                }
                match reason {
                    Some(r) => r,
                    None => return,
                }
            }
            Ok(Err(e)) => format!("connect failed: {e}"),
            Err(_) => "connect timed out".to_owned(),
        };
        tracing::info!(url = %shared.config.url, %reason, "sync connection down");
        shared
            .status
            .send_replace(ConnectionStatus::Offline { reason });
        let jitter = rand::random_range(0..=backoff.as_millis() as u64 / 4 + 1);
        let wait = backoff + Duration::from_millis(jitter);
        backoff = (backoff * 2).min(shared.config.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = online.changed() => if changed.is_err() { return; },
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Serves one socket until it fails (returns the reason) or the client is dropped (None).
async fn connection(
    shared: &Arc<Shared>,
    ws: Ws,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    online: &mut watch::Receiver<bool>,
) -> Option<String> {
    let (mut sink, mut stream) = ws.split();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut out: Vec<Vec<u8>> = Vec::new();
    let names: Vec<String> = lock(&shared.docs).keys().cloned().collect();
    for name in names {
        open_on_socket(shared, &name, &mut sessions, &mut out);
    }
    loop {
        for frame in out.drain(..) {
            if let Err(e) = sink.feed(WsMessage::Binary(frame.into())).await {
                return Some(format!("send failed: {e}"));
            }
        }
        if let Err(e) = sink.flush().await {
            return Some(format!("send failed: {e}"));
        }
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    if let Err(reason) = on_frame(shared, &bytes, &mut sessions, &mut out) {
                        let _ = sink.close().await;
                        return Some(reason);
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    return Some(match frame {
                        Some(f) => format!("closed by hub ({}): {}", u16::from(f.code), f.reason),
                        None => "closed by hub".to_owned(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("receive failed: {e}")),
                None => return Some("connection closed".to_owned()),
            },
            cmd = commands.recv() => match cmd {
                None => return None,
                Some(Command::Open(name)) => open_on_socket(shared, &name, &mut sessions, &mut out),
                Some(Command::Reauth(name)) => {
                    // Only a document the hub never accepted on this connection: nothing of it
                    // is in flight, so starting over loses no acknowledgement.
                    if sessions.get(&name).is_some_and(|s| !s.ready && s.in_flight.is_empty()) {
                        sessions.remove(&name);
                    }
                    open_on_socket(shared, &name, &mut sessions, &mut out);
                }
                Some(Command::Local { doc, update, edit }) => {
                    if let Some(s) = sessions.get_mut(&doc).filter(|s| s.ready) {
                        out.push(Frame::doc(doc, Message::Sync(SyncMessage::Update(update))).encode());
                        s.in_flight.push_back(edit);
                    }
                    // Not ready yet: the answer to the hub's step 1 will carry it.
                }
            },
            changed = online.changed() => {
                if changed.is_err() { return None; }
                if !*online.borrow() {
                    let _ = sink.close().await;
                    return Some("offline by request".to_owned());
                }
            }
        }
    }
}

fn open_on_socket(
    shared: &Shared,
    name: &str,
    sessions: &mut HashMap<String, Session>,
    out: &mut Vec<Vec<u8>>,
) {
    // Opening twice would reset the acknowledgement queue while messages are in flight, and a
    // late acknowledgement would then claim edits the hub has not committed.
    if sessions.contains_key(name) {
        return;
    }
    let sv = match lock(&shared.docs).get(name) {
        Some(e) => e.doc.transact().state_vector().encode_v1(),
        None => return,
    };
    sessions.insert(name.to_owned(), Session::default());
    out.push(
        Frame::doc(
            name,
            Message::Auth(AuthMessage::Token {
                token: shared.config.token.clone(),
                provider_version: Some(concat!("jarvis-sync/", env!("CARGO_PKG_VERSION")).into()),
            }),
        )
        .encode(),
    );
    out.push(Frame::doc(name, Message::Sync(SyncMessage::Step1(sv))).encode());
}

/// Handles one frame from the hub. `Err` ends the connection with that reason.
fn on_frame(
    shared: &Shared,
    bytes: &[u8],
    sessions: &mut HashMap<String, Session>,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), String> {
    let frame = Frame::decode(bytes, &shared.config.limits)
        .map_err(|e| format!("malformed frame from hub: {e}"))?;
    let (address, message) = match frame {
        Frame::Ping => {
            out.push(Frame::Pong.encode());
            return Ok(());
        }
        Frame::Pong => return Ok(()),
        Frame::Doc { address, message } => (address, message),
    };
    let name = document_name(&address).to_owned();
    let (doc, status, edits) = match lock(&shared.docs).get(&name) {
        Some(e) => (e.doc.clone(), e.status.clone(), e.local_edits.clone()),
        None => return Ok(()),
    };
    let Some(session) = sessions.get_mut(&name) else {
        return Ok(());
    };
    match message {
        Message::Auth(AuthMessage::Authenticated { scope }) => {
            status.send_modify(|s| {
                s.authenticated = true;
                s.read_only = scope == "readonly";
                s.denied = None;
            });
        }
        Message::Auth(AuthMessage::PermissionDenied { reason }) => {
            tracing::warn!(doc = %name, %reason, "hub denied access");
            status.send_modify(|s| s.denied = Some(reason));
        }
        Message::Sync(sync) | Message::SyncReply(sync) => match sync {
            SyncMessage::Step1(sv) => {
                let sv = StateVector::decode_v1(&sv)
                    .map_err(|e| format!("hub sent an invalid state vector: {e}"))?;
                // Read the edit count before encoding, so the acknowledgement never claims
                // an edit the diff did not contain.
                let edit = edits.load(Ordering::SeqCst);
                let diff = doc.transact().encode_diff_v1(&sv);
                out.push(Frame::doc(&address, Message::Sync(SyncMessage::Step2(diff))).encode());
                session.in_flight.push_back(edit);
                session.ready = true;
            }
            SyncMessage::Step2(update) => {
                apply_remote(shared, &doc, &name, &update, session)?;
                status.send_modify(|s| s.synced = true);
            }
            SyncMessage::Update(update) => apply_remote(shared, &doc, &name, &update, session)?,
        },
        Message::SyncStatus(ok) => {
            let edit = session.in_flight.pop_front();
            match (ok, edit) {
                (true, Some(edit)) => status.send_modify(|s| {
                    s.acknowledged_edits = s.acknowledged_edits.max(edit);
                }),
                (false, _) => {
                    tracing::warn!(doc = %name, "hub refused an update (read-only access?)");
                    status.send_modify(|s| s.refused_messages += 1);
                }
                (true, None) => {}
            }
        }
        Message::Close { reason } => {
            tracing::info!(doc = %name, %reason, "hub closed the document");
            sessions.remove(&name);
        }
        Message::Awareness(_) | Message::QueryAwareness | Message::Stateless(_) => {}
        Message::BroadcastStateless(_) | Message::Auth(AuthMessage::Token { .. }) => {}
    }
    Ok(())
}

fn apply_remote(
    shared: &Shared,
    doc: &Doc,
    name: &str,
    update: &[u8],
    session: &mut Session,
) -> Result<(), String> {
    let decoded =
        Update::decode_v1(update).map_err(|e| format!("hub sent an invalid update: {e}"))?;
    doc.transact_mut_with(REMOTE_ORIGIN)
        .apply_update(decoded)
        .map_err(|e| format!("hub sent an update that does not apply: {e}"))?;
    store_remote(shared, name, update, session);
    Ok(())
}

/// Keeps what the hub sent in the local store, so the device has it offline and after restart.
fn store_remote(shared: &Shared, name: &str, update: &[u8], session: &mut Session) {
    if let Err(e) = shared.store.append(&[AppendItem { doc: name, update }]) {
        tracing::error!(doc = %name, error = %e, "storing a remote update failed");
        return;
    }
    session.remote_updates_stored += 1;
    if session
        .remote_updates_stored
        .is_multiple_of(shared.config.compact_after_entries.max(1))
    {
        let store = shared.store.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.compact(&name) {
                tracing::warn!(doc = %name, error = %e, "local compaction failed");
            }
        });
    }
}
