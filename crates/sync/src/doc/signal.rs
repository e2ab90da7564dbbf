//! [`UpdateSignal`]: wakes a waiter on every update of a document.
//!
//! Subscribing to a yrs document takes its lock, which fails while any other thread holds a
//! transaction — a streaming runner holds one many times a second. A failed subscription that is
//! ignored turns an event-driven wait into a poll at whatever fallback interval the waiter has
//! (a handoff once took the lease keeper's 5 s renew period to notice). This type retries until
//! it holds the subscription, and removes it the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use yrs::Doc;

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct UpdateSignal {
    doc: Doc,
    key: String,
    notify: Arc<Notify>,
}

impl UpdateSignal {
    /// Subscribes to `doc`'s updates, waiting for a moment when no transaction is open.
    pub async fn subscribe(doc: &Doc) -> UpdateSignal {
        let key = format!("jarvis-signal-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let notify = Arc::new(Notify::new());
        let mut pause = Duration::from_micros(50);
        loop {
            let n = notify.clone();
            if doc
                .observe_update_v1(key.as_str(), move |_, _| n.notify_one())
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        UpdateSignal {
            doc: doc.clone(),
            key,
            notify,
        }
    }

    /// Completes after the next update (or at once if one arrived since the last call).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for UpdateSignal {
    fn drop(&mut self) {
        // Transactions are short; a few milliseconds of retries find a gap. If none is found the
        // callback stays registered and only wakes a `Notify` nobody waits on.
        for _ in 0..200 {
            if self.doc.unobserve_update_v1(self.key.as_str()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        tracing::debug!(key = %self.key, "update subscription left in place");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use yrs::{Text, Transact};

    #[tokio::test]
    async fn subscribes_while_another_thread_holds_a_transaction_and_wakes_on_updates() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let held = doc.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let txn = held.transact_mut();
            locked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            drop(txn);
        });
        locked_rx.recv().unwrap();
        // The plain subscription fails right now; the signal waits for the lock.
        assert!(doc.observe_update_v1("probe", |_, _| {}).is_err());
        let signal = UpdateSignal::subscribe(&doc).await;
        holder.join().unwrap();
        text.insert(&mut doc.transact_mut(), 0, "x");
        tokio::time::timeout(Duration::from_secs(5), signal.changed())
            .await
            .unwrap();
    }
}
