//! Subscribing to a document's updates without losing the subscription.
//!
//! Subscribing to a yrs document takes its lock, which fails while any other thread holds a
//! transaction — a streaming runner holds one many times a second. A failed subscription that is
//! ignored turns an event-driven wait into a poll at whatever fallback interval the waiter has
//! (a handoff once took the lease keeper's 5 s renew period to notice). [`observe_updates`]
//! retries until it holds the subscription; [`UpdateSubscription`] also removes it when
//! dropped; [`UpdateSignal`] is the common case of waking a waiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use yrs::{Doc, TransactionMut, UpdateEvent};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Subscribes `f` to `doc`'s updates under `key` (replacing an earlier one of that key),
/// waiting for a moment when no transaction is open.
pub async fn observe_updates<F>(doc: &Doc, key: &str, f: F)
where
    F: Fn(&TransactionMut, &UpdateEvent) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut pause = Duration::from_micros(50);
    loop {
        let g = f.clone();
        if doc.observe_update_v1(key, move |t, e| g(t, e)).is_ok() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// [`observe_updates`] for code that is not async (a CLI command opening a stored document):
/// the same retries, waiting on this thread.
pub fn observe_updates_blocking<F>(doc: &Doc, key: &str, f: F)
where
    F: Fn(&TransactionMut, &UpdateEvent) + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let mut pause = Duration::from_micros(50);
    loop {
        let g = f.clone();
        if doc.observe_update_v1(key, move |t, e| g(t, e)).is_ok() {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// A subscription to a document's updates that ends when dropped.
pub struct UpdateSubscription {
    doc: Doc,
    key: String,
}

impl UpdateSubscription {
    pub async fn new<F>(doc: &Doc, f: F) -> UpdateSubscription
    where
        F: Fn(&TransactionMut, &UpdateEvent) + Send + Sync + 'static,
    {
        let key = format!(
            "jarvis-subscription-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        observe_updates(doc, &key, f).await;
        UpdateSubscription {
            doc: doc.clone(),
            key,
        }
    }
}

impl Drop for UpdateSubscription {
    fn drop(&mut self) {
        // Transactions are short; a few milliseconds of retries find a gap. If none is found the
        // callback stays registered, and only does what it did before, for nobody.
        for _ in 0..200 {
            if self.doc.unobserve_update_v1(self.key.as_str()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        tracing::debug!(key = %self.key, "update subscription left in place");
    }
}

/// Wakes a waiter on every update of a document.
pub struct UpdateSignal {
    notify: Arc<Notify>,
    _subscription: UpdateSubscription,
}

impl UpdateSignal {
    /// Subscribes to `doc`'s updates, waiting for a moment when no transaction is open.
    pub async fn subscribe(doc: &Doc) -> UpdateSignal {
        let notify = Arc::new(Notify::new());
        let n = notify.clone();
        let subscription = UpdateSubscription::new(doc, move |_, _| n.notify_one()).await;
        UpdateSignal {
            notify,
            _subscription: subscription,
        }
    }

    /// Completes after the next update (or at once if one arrived since the last call).
    pub async fn changed(&self) {
        self.notify.notified().await;
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

    #[tokio::test]
    async fn a_dropped_subscription_no_longer_sees_updates() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let sub = UpdateSubscription::new(&doc, move |_, _| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        text.insert(&mut doc.transact_mut(), 0, "a");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        drop(sub);
        text.insert(&mut doc.transact_mut(), 0, "b");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}
