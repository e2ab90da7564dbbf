//! The single writer thread: batches of accepted updates committed to the store together
//! (group commit), acknowledged only once committed, and what happens when a batch fails.

use super::*;

/// One queued write of `doc` is finished (committed, failed, or never queued).
pub(super) fn write_done(doc: &HubDoc, inner: &mut DocInner) {
    inner.pending_writes -= 1;
    if inner.poisoned && inner.pending_writes == 0 {
        doc.drained.notify_waiters();
    }
}

pub(super) fn writer_loop(hub: Arc<Inner>, mut rx: mpsc::Receiver<WriteJob>) {
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

pub(super) fn finish_batch(hub: &Arc<Inner>, batch: &mut Vec<WriteJob>) {
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
pub(super) fn fail_batch(hub: &Arc<Inner>, batch: &mut Vec<WriteJob>, error: &StoreError) {
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
