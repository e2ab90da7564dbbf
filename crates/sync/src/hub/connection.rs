//! One socket's view of the hub: authentication per document, the sync and awareness
//! messages of that socket, and the relay of what it sends to the other subscribers.

use super::*;

pub(super) enum ConnDoc {
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
    pub(super) hub: Arc<Inner>,
    pub(super) peer: Peer,
    pub(super) docs: HashMap<String, ConnDoc>,
    pub(super) unauth_messages: usize,
    pub(super) unauth_bytes: usize,
    pub(super) failed_auth: u32,
    /// Presence bytes this connection holds across its documents (see [`PresenceLimits`]).
    pub(super) presence_bytes: usize,
    /// Documents whose first content came from this connection.
    pub(super) new_documents: usize,
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
pub(super) fn relay_with(
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

pub(super) fn relay(
    metrics: &HubMetrics,
    targets: Vec<((ConnId, String), Peer)>,
    message: &Message,
) {
    relay_with(metrics, targets, |address| {
        let mut f = Vec::new();
        protocol::encode_doc_message(&mut f, address, message);
        f
    });
}

pub(super) fn relay_update(
    metrics: &HubMetrics,
    targets: Vec<((ConnId, String), Peer)>,
    update: &[u8],
) {
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
pub(super) fn inspect_update(update: &Update, sv: &StateVector) -> Result<bool, &'static str> {
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
pub(super) fn contained<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, CloseReason> {
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
