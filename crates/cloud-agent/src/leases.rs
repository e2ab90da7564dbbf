//! The cloud runner's lease authority: the control plane itself (no HTTP), behind the same
//! [`LeaseAuthority`] trait devices use over the hub's API, so the cloud holds, renews, fences
//! and releases a session with the very code a device does (`jarvis_device::Hold`). A release
//! here is audited and mirrored into the session document like a device's.

use std::sync::Arc;
use std::time::Duration;

use jarvis_device::{DeviceError, DeviceResult, LeaseAuthority};
use jarvis_wire::device::{ExpectedDoc, HandoffState, Lease};

use futures_util::future::BoxFuture;

use crate::control::{CLOUD_DEVICE, Control, ControlError};

/// What the lease authority needs of the cloud runner (a trait, so this module does not
/// import the runner): mirroring a handover into the session document, and the runner's own
/// handoff request (it checks the sandbox can run the session's mode).
pub trait LeaseWatcher: Send + Sync {
    fn changed(&self, lease: crate::control::Lease) -> BoxFuture<'static, ()>;
    fn request_handoff(
        &self,
        session: String,
        to: String,
        expect: Vec<crate::control::ExpectedDoc>,
        wait: Duration,
    ) -> BoxFuture<'static, Result<crate::control::HandoffState, ControlError>>;
}

/// The control plane as the cloud runner's lease authority.
#[derive(Clone)]
pub struct ControlLeases {
    control: Arc<Control>,
    ttl_ms: u64,
    watcher: Arc<dyn LeaseWatcher>,
}

impl ControlLeases {
    pub fn new(control: Arc<Control>, ttl_ms: u64, watcher: Arc<dyn LeaseWatcher>) -> Self {
        ControlLeases {
            control,
            ttl_ms,
            watcher,
        }
    }
}

/// The control plane's refusal with the code the API would send for it.
fn refusal(e: ControlError) -> DeviceError {
    let code = e.error_code();
    DeviceError::hub(code, e.to_string())
}

pub fn wire_doc(e: &crate::control::ExpectedDoc) -> ExpectedDoc {
    ExpectedDoc {
        doc: e.doc.clone(),
        sv: e.sv.clone(),
    }
}

fn control_doc(e: ExpectedDoc) -> crate::control::ExpectedDoc {
    crate::control::ExpectedDoc {
        doc: e.doc,
        sv: e.sv,
    }
}

/// The control plane's lease as it travels.
pub fn wire_lease(l: &crate::control::Lease) -> Lease {
    Lease {
        session: l.session.clone(),
        device: l.device.clone(),
        epoch: l.epoch,
        expires_ms: l.expires_ms,
        pending_to: l.pending_to.clone(),
        pending_by: l.pending_by.clone(),
        expect: l.expect.iter().map(wire_doc).collect(),
    }
}

impl LeaseAuthority for ControlLeases {
    fn holder(&self) -> &str {
        CLOUD_DEVICE
    }

    async fn acquire(&self, session: &str) -> DeviceResult<Lease> {
        let ttl = self.ttl_ms;
        let lease = self
            .control
            .acquire(session, CLOUD_DEVICE, ttl)
            .map_err(refusal)?;
        Ok(wire_lease(&lease))
    }

    async fn renew(&self, session: &str, epoch: u64) -> DeviceResult<Lease> {
        let ttl = self.ttl_ms;
        let lease = self
            .control
            .renew(session, CLOUD_DEVICE, epoch, ttl)
            .map_err(refusal)?;
        Ok(wire_lease(&lease))
    }

    async fn release(
        &self,
        session: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
    ) -> DeviceResult<Lease> {
        let lease = self
            .control
            .release(
                session,
                CLOUD_DEVICE,
                epoch,
                expect.into_iter().map(control_doc).collect(),
                self.ttl_ms,
            )
            .map_err(refusal)?;
        tracing::info!(%session, to = ?lease.device, epoch = lease.epoch, "the cloud handed the session over");
        self.control.audit(
            None,
            "lease.release",
            session,
            &format!("cloud → {}", lease.device.as_deref().unwrap_or("nobody")),
        );
        self.watcher.changed(lease.clone()).await;
        Ok(wire_lease(&lease))
    }

    async fn handoff(
        &self,
        session: &str,
        to: &str,
        expect: Vec<ExpectedDoc>,
        wait: Duration,
    ) -> DeviceResult<HandoffState> {
        let state = self
            .watcher
            .request_handoff(
                session.to_owned(),
                to.to_owned(),
                expect.into_iter().map(control_doc).collect(),
                wait,
            )
            .await
            .map_err(refusal)?;
        Ok(match state {
            crate::control::HandoffState::Granted { lease } => HandoffState::Granted {
                lease: wire_lease(&lease),
            },
            crate::control::HandoffState::Pending { lease } => HandoffState::Pending {
                lease: wire_lease(&lease),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::Control;
    use jarvis_wire::ErrorCode;

    /// The control plane's answers keep the codes the lease keeper acts on: a lease taken by a
    /// device is a `conflict` for the cloud's renewal (it fences its run), like a device's
    /// renewal through the API.
    #[test]
    fn control_plane_refusals_keep_the_codes_the_keeper_acts_on() {
        let tmp = tempfile::tempdir().unwrap();
        let (control, _) = Control::open(&tmp.path().join("control.db")).unwrap();
        let cloud = control.acquire("s1", CLOUD_DEVICE, 60_000).unwrap();
        assert_eq!(wire_lease(&cloud).device.as_deref(), Some(CLOUD_DEVICE));
        assert!(
            control
                .renew("s1", CLOUD_DEVICE, cloud.epoch, 60_000)
                .is_ok()
        );
        // The lease moves on (released, then taken by a device): the old epoch is lost.
        control
            .release("s1", CLOUD_DEVICE, cloud.epoch, vec![], 60_000)
            .unwrap();
        control.acquire("s1", "d-laptop", 60_000).unwrap();
        let lost = refusal(
            control
                .renew("s1", CLOUD_DEVICE, cloud.epoch, 60_000)
                .unwrap_err(),
        );
        assert!(lost.is_conflict(), "{lost}");
        assert!(lost.message().contains("d-laptop"), "{lost}");
        let invalid = refusal(ControlError::Invalid("bad".into()));
        assert_eq!(invalid.code(), Some(ErrorCode::InvalidRequest));
    }
}
