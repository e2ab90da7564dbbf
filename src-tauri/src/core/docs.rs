//! What the window reads and writes through the core: documents (Yjs updates in and out), the
//! hub's API with the device's token (which never leaves the core), and workspace blobs.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jarvis_sync::client::SyncClient;
use jarvis_sync::doc::{SessionDoc, UpdateSubscription};
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::{Origin, ReadTxn, StateVector, Transact, Update};

use super::{CoreError, CoreEvent, CoreResult, DesktopCore, UI_ORIGIN, WindowDoc};

impl DesktopCore {
    /// The hub's HTTP API with this device's token, for the window (the token never leaves
    /// the core). `path` must be under `/api/`.
    pub async fn hub_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> CoreResult<Value> {
        if !path.starts_with("/api/") || path.contains("..") {
            return Err(CoreError::Invalid(format!("{path} is not an API path")));
        }
        let (hub, device) = {
            let inner = self.inner.lock().await;
            (inner.settings.hub.clone(), inner.device.clone())
        };
        if hub.is_none() {
            return Err(CoreError::NotSignedIn);
        }
        let device = device.ok_or(CoreError::Offline)?;
        let method: reqwest::Method = method
            .parse()
            .map_err(|_| CoreError::Invalid(format!("{method} is not an HTTP method")))?;
        Ok(device.api.call(method, path, body.as_ref()).await?)
    }

    /// A workspace blob for the window, as base64 (images in the preview), checked against
    /// its hash before it is handed over.
    pub async fn blob(&self, workspace: &str, hash: &str) -> CoreResult<String> {
        if !jarvis_sync::blob::valid_hash(hash) {
            return Err(CoreError::Invalid("not a blob hash".into()));
        }
        let (hub, token) = {
            let inner = self.inner.lock().await;
            (inner.settings.hub.clone(), inner.token.clone())
        };
        let (Some(hub), Some(token)) = (hub, token) else {
            return Err(CoreError::NotSignedIn);
        };
        let resp = reqwest::Client::new()
            .get(format!("{hub}/blobs/{hash}"))
            .bearer_auth(token)
            .header("x-jarvis-workspace", workspace)
            .send()
            .await
            .map_err(|_| CoreError::Offline)?;
        if !resp.status().is_success() {
            return Err(CoreError::Hub {
                status: resp.status().as_u16(),
                code: "blob".into(),
                message: format!("could not load the file ({})", resp.status()),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CoreError::Internal(e.into()))?;
        if jarvis_sync::blob::hash_bytes(&bytes) != hash {
            return Err(CoreError::Invalid(
                "the file does not match its hash".into(),
            ));
        }
        Ok(B64.encode(bytes))
    }

    /// Opens a document for the window: its whole state now, then every change made by anyone
    /// else as a [`CoreEvent::DocUpdate`]. Works offline from the store.
    pub async fn doc_open(&self, name: &str) -> CoreResult<String> {
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(name)
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let first = {
            let mut inner = self.inner.lock().await;
            let w = inner.docs.entry(name.to_owned()).or_insert(WindowDoc {
                refs: 0,
                updates: None,
            });
            w.refs += 1;
            w.refs == 1
        };
        if first {
            let events = self.events.clone();
            let owned = name.to_owned();
            let sub = UpdateSubscription::new(&doc, move |txn, e| {
                let from_window = txn.origin().is_some_and(|o| o == &Origin::from(UI_ORIGIN));
                if !from_window {
                    events.emit(CoreEvent::DocUpdate {
                        name: owned.clone(),
                        update: B64.encode(&e.update),
                    });
                }
            })
            .await;
            // Closed again meanwhile: dropping the subscription ends it.
            if let Some(w) = self.inner.lock().await.docs.get_mut(name) {
                w.updates = Some(sub);
            }
        }
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Ok(B64.encode(state))
    }

    /// Applies an edit the window made; the sync client stores it and sends it to the hub.
    pub async fn doc_apply(&self, name: &str, update: &str) -> CoreResult<()> {
        let bytes = B64
            .decode(update)
            .map_err(|_| CoreError::Invalid("update is not base64".into()))?;
        let update =
            Update::decode_v1(&bytes).map_err(|e| CoreError::Invalid(format!("update: {e}")))?;
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(name)
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let mut txn = doc.transact_mut_with(Origin::from(UI_ORIGIN));
        txn.apply_update(update)
            .map_err(|e| CoreError::Invalid(format!("update: {e}")))?;
        Ok(())
    }

    pub async fn doc_close(&self, name: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(w) = inner.docs.get_mut(name) {
            w.refs -= 1;
            if w.refs == 0 {
                // Dropping the entry drops its subscription.
                inner.docs.remove(name);
            }
        }
    }

    /// A session document from the device's own copy (tests and the tray).
    pub async fn session_doc(&self, session: &str) -> CoreResult<SessionDoc> {
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(&format!("session/{session}"))
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        Ok(SessionDoc::new(doc))
    }
}

/// Makes the sync client ask for `name` again until the hub takes it: the hub refused the
/// document of a session it did not know yet, and that refusal may still be on its way when the
/// session is registered. Gives up after a while (the next reconnect asks again).
pub(super) async fn resync(client: &SyncClient, name: &str) {
    if let Err(e) = client.open(name).await {
        tracing::warn!(doc = %name, error = %e, "reopening a document");
        return;
    }
    let Some(mut status) = client.watch_document(name) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = status.borrow_and_update().clone();
        if now.synced && now.denied.is_none() {
            return;
        }
        if now.denied.is_some() {
            // Opening a refused document asks the hub again.
            let _ = client.open(name).await;
        }
        match tokio::time::timeout_at(deadline, status.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!(doc = %name, "the hub has not taken the document yet");
                return;
            }
        }
    }
}
