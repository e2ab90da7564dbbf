//! One lease authority, two implementations: [`HttpLeases`] here for devices (the hub's API),
//! and one over the control plane inside the cloud agent for its own runner. Whoever holds a
//! session keeps its lease with the same [`LeaseKeeper`]: it renews at a third of the time the
//! authority actually left (whatever TTL it chose), keeps running while the authority is only
//! unreachable (it decides when the lease expires), and fences the run the moment the
//! authority says the lease is gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jarvis_wire::device::{ExpectedDoc, HandoffRequest, HandoffState, Lease, LeaseOp};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::error::DeviceResult;

/// Who decides which device runs a session. Every operation carries the epoch it acts on; an
/// answer with code `conflict` means the caller no longer holds the lease.
pub trait LeaseAuthority: Send + Sync + 'static {
    /// The device these leases are held for.
    fn holder(&self) -> &str;
    /// Takes a free (or expired) lease, or renews one this holder has.
    fn acquire(&self, session: &str) -> impl Future<Output = DeviceResult<Lease>> + Send;
    /// Extends the lease held at `epoch`.
    fn renew(&self, session: &str, epoch: u64) -> impl Future<Output = DeviceResult<Lease>> + Send;
    /// Gives the session up at `epoch` with the state left behind; the lease moves to a
    /// pending target, if any.
    fn release(
        &self,
        session: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
    ) -> impl Future<Output = DeviceResult<Lease>> + Send;
    /// Asks for the session to move to `to` ("cloud", a device id, or this holder), waiting
    /// up to `wait` for the current holder to yield.
    fn handoff(
        &self,
        session: &str,
        to: &str,
        expect: Vec<ExpectedDoc>,
        wait: Duration,
    ) -> impl Future<Output = DeviceResult<HandoffState>> + Send;
}

/// The hub's lease API, for a device.
#[derive(Debug, Clone)]
pub struct HttpLeases {
    api: Api,
    device: String,
}

impl HttpLeases {
    pub fn new(api: Api, device: &str) -> Self {
        HttpLeases {
            api,
            device: device.to_owned(),
        }
    }
}

impl LeaseAuthority for HttpLeases {
    fn holder(&self) -> &str {
        &self.device
    }

    async fn acquire(&self, session: &str) -> DeviceResult<Lease> {
        self.api.lease(session, &LeaseOp::Acquire).await
    }

    async fn renew(&self, session: &str, epoch: u64) -> DeviceResult<Lease> {
        self.api.lease(session, &LeaseOp::Renew { epoch }).await
    }

    async fn release(
        &self,
        session: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
    ) -> DeviceResult<Lease> {
        self.api
            .lease(session, &LeaseOp::Release { epoch, expect })
            .await
    }

    async fn handoff(
        &self,
        session: &str,
        to: &str,
        expect: Vec<ExpectedDoc>,
        wait: Duration,
    ) -> DeviceResult<HandoffState> {
        // The hub names this device "here".
        let to = if to == self.device { "here" } else { to };
        self.api
            .handoff(
                session,
                &HandoffRequest {
                    to: to.to_owned(),
                    expect,
                    wait_ms: Some(wait.as_millis() as u64),
                },
            )
            .await
    }
}

/// No hub at all: this device is the authority for the sessions only it knows (started while
/// signed out or offline, registered with the hub later). Every operation is granted to this
/// device; nothing can conflict because nobody else knows the session yet.
#[derive(Debug, Clone)]
pub struct OwnLeases {
    device: String,
}

impl OwnLeases {
    pub fn new(device: &str) -> Self {
        OwnLeases {
            device: device.to_owned(),
        }
    }

    fn lease(&self, session: &str, device: Option<&str>) -> Lease {
        Lease {
            session: session.to_owned(),
            device: device.map(str::to_owned),
            epoch: 1,
            expires_ms: 0,
            pending_to: None,
            pending_by: None,
            expect: Vec::new(),
        }
    }
}

impl LeaseAuthority for OwnLeases {
    fn holder(&self) -> &str {
        &self.device
    }

    async fn acquire(&self, session: &str) -> DeviceResult<Lease> {
        Ok(self.lease(session, Some(&self.device)))
    }

    async fn renew(&self, session: &str, _epoch: u64) -> DeviceResult<Lease> {
        Ok(self.lease(session, Some(&self.device)))
    }

    async fn release(
        &self,
        session: &str,
        _epoch: u64,
        _expect: Vec<ExpectedDoc>,
    ) -> DeviceResult<Lease> {
        Ok(self.lease(session, None))
    }

    async fn handoff(
        &self,
        _session: &str,
        to: &str,
        _expect: Vec<ExpectedDoc>,
        _wait: Duration,
    ) -> DeviceResult<HandoffState> {
        Err(crate::DeviceError::Unreachable {
            hub: "(none)".into(),
            reason: format!("moving a session to {to} needs the hub; sign in first"),
        })
    }
}

/// How soon to retry a renewal that did not reach the authority.
const RENEW_RETRY: Duration = Duration::from_millis(500);

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When to renew a lease that expires at `expires_ms` (the authority's clock): after a third
/// of the time that remains, so two renewals can fail before it lapses, whatever TTL the
/// authority chose. Clock skew only makes this earlier or later within [100 ms, 10 s]; a lease
/// with no expiry (0: one this device is the authority for) is looked at every 5 s.
pub fn renew_after(expires_ms: u64, now_ms: u64) -> Duration {
    if expires_ms == 0 {
        return Duration::from_secs(5);
    }
    Duration::from_millis((expires_ms.saturating_sub(now_ms) / 3).clamp(100, 10_000))
}

/// Keeps a lease alive until it is dropped: renews it on time and cancels `fence` when
/// the authority says it is lost (the run stops at once and writes nothing more).
pub struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
    lost: CancellationToken,
}

impl LeaseKeeper {
    pub fn start<A: LeaseAuthority>(
        authority: Arc<A>,
        session: &str,
        lease: &Lease,
        fence: CancellationToken,
    ) -> LeaseKeeper {
        let lost = fence.clone();
        let task = tokio::spawn(keep(
            authority,
            session.to_owned(),
            lease.epoch,
            lease.expires_ms,
            fence,
        ));
        LeaseKeeper { task, lost }
    }

    /// Whether the authority has said the lease is gone.
    pub fn lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep<A: LeaseAuthority>(
    authority: Arc<A>,
    session: String,
    epoch: u64,
    expires_ms: u64,
    fence: CancellationToken,
) {
    let mut next = renew_after(expires_ms, now_ms());
    loop {
        tokio::select! {
            _ = fence.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        next = match authority.renew(&session, epoch).await {
            Ok(l) => renew_after(l.expires_ms, now_ms()),
            Err(e) if e.is_conflict() => {
                tracing::warn!(%session, epoch, error = %e, "the lease is lost; fencing the run");
                fence.cancel();
                return;
            }
            // Unreachable or failing: keep running; the authority decides when the lease
            // expires, and says so on the next renewal that reaches it.
            Err(e) => {
                tracing::warn!(%session, epoch, error = %e, "renewing the lease failed; retrying");
                RENEW_RETRY
            }
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::DeviceError;
    use jarvis_wire::ErrorCode;
    use std::sync::Mutex;

    #[test]
    fn leases_are_renewed_at_a_third_of_what_remains() {
        assert_eq!(renew_after(2_000, 0), Duration::from_millis(666));
        assert_eq!(renew_after(600_000, 0), Duration::from_secs(10));
        assert_eq!(renew_after(5, 1_000), Duration::from_millis(100));
        assert_eq!(renew_after(0, 0), Duration::from_secs(5));
    }

    /// An authority whose leases last `ttl_ms`, that answers renewals from a script:
    /// `Ok` extends, `Unreachable` fails transiently, `Conflict` says the lease is gone.
    struct Scripted {
        ttl_ms: u64,
        script: Mutex<Vec<&'static str>>,
        renewals: Mutex<Vec<u64>>,
    }

    impl LeaseAuthority for Scripted {
        fn holder(&self) -> &str {
            "d-test"
        }
        async fn acquire(&self, _: &str) -> DeviceResult<Lease> {
            unreachable!()
        }
        async fn renew(&self, session: &str, epoch: u64) -> DeviceResult<Lease> {
            self.renewals.lock().unwrap().push(now_ms());
            let step = {
                let mut s = self.script.lock().unwrap();
                if s.is_empty() { "ok" } else { s.remove(0) }
            };
            match step {
                "ok" => Ok(Lease {
                    session: session.into(),
                    device: Some("d-test".into()),
                    epoch,
                    expires_ms: now_ms() + self.ttl_ms,
                    pending_to: None,
                    pending_by: None,
                    expect: vec![],
                }),
                "unreachable" => Err(DeviceError::Unreachable {
                    hub: "h".into(),
                    reason: "down".into(),
                }),
                _ => Err(DeviceError::hub(ErrorCode::Conflict, "held by d-other")),
            }
        }
        async fn release(&self, _: &str, _: u64, _: Vec<ExpectedDoc>) -> DeviceResult<Lease> {
            unreachable!()
        }
        async fn handoff(
            &self,
            _: &str,
            _: &str,
            _: Vec<ExpectedDoc>,
            _: Duration,
        ) -> DeviceResult<HandoffState> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn a_keeper_renews_within_a_short_ttl_survives_an_outage_and_fences_on_conflict() {
        let authority = Arc::new(Scripted {
            ttl_ms: 600,
            script: Mutex::new(vec!["ok", "ok", "unreachable", "ok", "conflict"]),
            renewals: Mutex::new(vec![]),
        });
        let start = now_ms();
        let lease = Lease {
            session: "s".into(),
            device: Some("d-test".into()),
            epoch: 4,
            expires_ms: start + 600,
            pending_to: None,
            pending_by: None,
            expect: vec![],
        };
        let fence = CancellationToken::new();
        let keeper = LeaseKeeper::start(authority.clone(), "s", &lease, fence.clone());
        tokio::time::timeout(Duration::from_secs(10), fence.cancelled())
            .await
            .expect("the conflict fenced the run");
        assert!(keeper.lost());
        let at = authority.renewals.lock().unwrap().clone();
        assert_eq!(at.len(), 5, "{at:?}");
        // Every renewal came well inside the 600 ms the authority gave (a third: ~200 ms),
        // except the retry after the outage, which is quick.
        let mut prev = start;
        for t in &at {
            assert!(
                t - prev < 600,
                "a renewal came {} ms after the last",
                t - prev
            );
            prev = *t;
        }
    }
}
