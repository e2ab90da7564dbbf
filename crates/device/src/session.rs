//! Holding a session: the one way every runner — `jarvis run`, the desktop (online or not) and
//! the cloud — holds what it runs. A [`Hold`] has the lease (taken, or granted by a handoff),
//! keeps it with a [`LeaseKeeper`], turns a handoff request addressed elsewhere into `stop` (the
//! run yields at a safe point) and a lost lease into `fence` (the run stops at once), and ends
//! by flushing and releasing with the state left behind. The authority is a parameter:
//! [`HttpLeases`] for a device, the control plane for the cloud, [`OwnLeases`] with no hub.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::doc::{SessionDoc, UpdateSignal};
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::Store;
use jarvis_wire::device::Lease;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::error::{DeviceError, DeviceResult, LocalContext};
use crate::lease::{HttpLeases, LeaseAuthority, LeaseKeeper};

/// A device logged in to a hub: its API, its one sync socket, and its id there.
pub struct Device {
    pub api: Api,
    pub client: Arc<SyncClient>,
    /// This device's id as the hub knows it (leases are held under it).
    pub id: String,
}

impl Device {
    /// Asks the hub who this device is and starts the sync client.
    pub async fn connect(hub: &str, token: &str, store: Arc<dyn Store>) -> DeviceResult<Device> {
        let api = Api::new(hub, token);
        let id = api
            .me()
            .await?
            .device
            .ok_or_else(|| DeviceError::Protocol {
                what: "/api/me".into(),
                detail: "the hub did not say which device this is".into(),
            })?;
        let client = Arc::new(SyncClient::start(
            ClientConfig::new(api.ws_url(), token),
            store,
        ));
        Ok(Device { api, client, id })
    }

    /// The hub's lease API for this device.
    pub fn leases(&self) -> HttpLeases {
        HttpLeases::new(self.api.clone(), &self.id)
    }

    /// A session's document, synced with the hub.
    pub async fn session(&self, id: &str) -> DeviceResult<SessionDoc> {
        let name = format!("session/{id}");
        let doc = self
            .client
            .open(&name)
            .await
            .local(|| format!("opening session {id}"))?;
        self.client
            .wait_synced(&name, Duration::from_secs(20))
            .await
            .local(|| format!("syncing session {id}"))?;
        Ok(SessionDoc::new(doc))
    }

    /// Registers the workspace and mirrors `dir` as it.
    pub async fn mirror(&self, dir: &Path, workspace: &str) -> DeviceResult<FileMirror> {
        self.api.register_workspace(workspace).await?;
        FileMirror::start(dir, workspace, self.client.clone(), None)
            .await
            .local(|| format!("mirroring {}", dir.display()))
    }
}

/// A session held under a lease, until [`Hold::release`] or until dropped (a dropped hold
/// stops renewing; the authority lets the lease expire).
pub struct Hold<A: LeaseAuthority> {
    authority: Arc<A>,
    session: String,
    lease: Lease,
    /// Cancelled when someone asks for the session elsewhere: the run yields at a safe point.
    pub stop: CancellationToken,
    /// Cancelled when the lease is lost: the run stops at once and writes nothing more.
    pub fence: CancellationToken,
    keeper: LeaseKeeper,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl<A: LeaseAuthority> Hold<A> {
    /// Takes the session's lease (or uses one already granted by a handoff) and keeps it; a
    /// handoff request addressed elsewhere in `doc` (the hub writes it there for the holder)
    /// stops the run. A lease held elsewhere is a [`DeviceError::Hub`] with code `conflict`.
    pub async fn take(
        authority: Arc<A>,
        doc: &SessionDoc,
        session: &str,
        granted: Option<Lease>,
    ) -> DeviceResult<Hold<A>> {
        let lease = match granted {
            Some(l) => l,
            None => authority.acquire(session).await?,
        };
        let mut hold = Self::keep(
            authority,
            session,
            lease,
            CancellationToken::new(),
            CancellationToken::new(),
        );
        hold.watch_handoffs(doc).await;
        Ok(hold)
    }

    /// Holds a lease the caller already has, with the caller's stop and fence tokens. The
    /// cloud uses this: it is told to yield directly (its replica of the document may lag
    /// behind the lease), so it watches no document.
    pub fn keep(
        authority: Arc<A>,
        session: &str,
        lease: Lease,
        stop: CancellationToken,
        fence: CancellationToken,
    ) -> Hold<A> {
        let keeper = LeaseKeeper::start(authority.clone(), session, &lease, fence.clone());
        Hold {
            authority,
            session: session.to_owned(),
            lease,
            stop,
            fence,
            keeper,
            watcher: None,
        }
    }

    /// Stops the run when `doc` carries a handoff request addressed to anyone but this holder.
    pub async fn watch_handoffs(&mut self, doc: &SessionDoc) {
        let signal = UpdateSignal::subscribe(doc.doc()).await;
        if let Some(old) = self.watcher.replace(tokio::spawn(watch_handoffs(
            doc.clone(),
            self.authority.holder().to_owned(),
            self.stop.clone(),
            signal,
        ))) {
            old.abort();
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn authority(&self) -> &Arc<A> {
        &self.authority
    }

    /// Whether the lease is lost (the run was fenced).
    pub fn lost(&self) -> bool {
        self.keeper.lost() || self.fence.is_cancelled()
    }

    /// Waits for the state the previous holder left.
    pub async fn reach(&self, client: &SyncClient, timeout: Duration) -> DeviceResult<()> {
        crate::leaving::reach(client, &self.lease.expect, timeout).await
    }

    /// Flushes what this holder wrote and gives the lease up with the state left behind (to a
    /// pending target, if any); returns the lease as the authority left it.
    pub async fn release(
        self,
        client: &SyncClient,
        workspace: &str,
        mirror: &FileMirror,
        flush_timeout: Duration,
    ) -> DeviceResult<Lease> {
        // The lease keeps being renewed while the flush runs (it can take a while).
        crate::leaving::leave(
            self.authority.as_ref(),
            client,
            &self.session,
            workspace,
            self.lease.epoch,
            mirror,
            flush_timeout,
        )
        .await
    }
}

impl<A: LeaseAuthority> Drop for Hold<A> {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
    }
}

/// Turns a handoff request addressed to anyone but `me` (written into the session by the
/// authority) into `stop`.
async fn watch_handoffs(
    doc: SessionDoc,
    me: String,
    stop: CancellationToken,
    changed: UpdateSignal,
) {
    loop {
        if let Some(h) = doc.handoff()
            && h.to != me
        {
            tracing::info!(to = %h.to, "the session is asked for elsewhere; yielding");
            stop.cancel();
            return;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = stop.cancelled() => return,
        }
    }
}
