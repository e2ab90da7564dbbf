//! [`Control`]'s leases: which device runs each session. One holder at a time, an epoch that
//! grows with every change of holder (a device fences its writes with it), and handoffs that
//! wait for the holder to yield at a safe point. Each change is one serialised
//! read-modify-write of the store ([`crate::store::Leases::update_lease`]), so two devices
//! racing for a session see one winner.

use crate::control::Control;
use crate::error::{ControlError, Result};
use crate::model::{ExpectedDoc, HandoffState, Lease, now_ms};

fn lost(session: &str, l: &Lease) -> ControlError {
    ControlError::Conflict(format!(
        "lease lost: session {session} is now held by {} at epoch {}",
        l.device.as_deref().unwrap_or("nobody"),
        l.epoch
    ))
}

impl Control {
    pub fn lease(&self, session: &str) -> Result<Lease> {
        self.store.lease(session)
    }

    /// Takes a free (or expired) lease, or renews one this device holds.
    pub fn acquire(&self, session: &str, device: &str, ttl_ms: u64) -> Result<Lease> {
        let now = now_ms();
        self.store.update_lease(session, &mut |l| {
            let mine = l.device.as_deref() == Some(device);
            if l.live(now) && !mine {
                return Err(ControlError::Conflict(format!(
                    "session {session} is running on {} (epoch {}); hand it off first",
                    l.device.as_deref().unwrap_or("?"),
                    l.epoch
                )));
            }
            if let Some(to) = &l.pending_to
                && to != device
            {
                return Err(ControlError::Conflict(format!(
                    "session {session} is being handed to {to}"
                )));
            }
            if !mine || !l.live(now) {
                l.epoch += 1;
                l.expect.clear();
            }
            l.device = Some(device.to_owned());
            l.expires_ms = now + ttl_ms;
            if l.pending_to.as_deref() == Some(device) {
                l.pending_to = None;
                l.pending_by = None;
            }
            Ok(true)
        })
    }

    /// Extends a lease the device holds at `epoch`; anything else means it is lost.
    pub fn renew(&self, session: &str, device: &str, epoch: u64, ttl_ms: u64) -> Result<Lease> {
        let now = now_ms();
        self.store.update_lease(session, &mut |l| {
            if l.device.as_deref() != Some(device) || l.epoch != epoch {
                return Err(lost(session, l));
            }
            l.expires_ms = now + ttl_ms;
            Ok(true)
        })
    }

    /// Asks for the session to move to `to`. A free or expired lease moves at once (with
    /// `expect` as the state to reach); a live holder is asked to yield.
    pub fn request_handoff(
        &self,
        session: &str,
        to: &str,
        by: &str,
        expect: Vec<ExpectedDoc>,
        ttl_ms: u64,
    ) -> Result<HandoffState> {
        let now = now_ms();
        let mut expect = Some(expect);
        let mut granted = false;
        let lease = self.store.update_lease(session, &mut |l| {
            granted = false;
            if l.live(now) && l.device.as_deref() == Some(to) {
                granted = true;
                return Ok(false);
            }
            if let Some(p) = &l.pending_to {
                if p == to {
                    return Ok(false);
                }
                if l.live(now) {
                    return Err(ControlError::Conflict(format!(
                        "session {session} is already being handed to {p}"
                    )));
                }
            }
            if l.live(now) {
                l.pending_to = Some(to.to_owned());
                l.pending_by = Some(by.to_owned());
                return Ok(true);
            }
            l.device = Some(to.to_owned());
            l.epoch += 1;
            l.expires_ms = now + ttl_ms;
            l.pending_to = None;
            l.pending_by = None;
            l.expect = expect.take().unwrap_or_default();
            granted = true;
            Ok(true)
        })?;
        Ok(if granted {
            HandoffState::Granted { lease }
        } else {
            HandoffState::Pending { lease }
        })
    }

    /// The holder gives the session up at a safe point, with the state it leaves behind.
    /// The lease moves to the pending target, if any; otherwise it becomes free.
    pub fn release(
        &self,
        session: &str,
        device: &str,
        epoch: u64,
        expect: Vec<ExpectedDoc>,
        ttl_ms: u64,
    ) -> Result<Lease> {
        let now = now_ms();
        let mut expect = Some(expect);
        self.store.update_lease(session, &mut |l| {
            if l.device.as_deref() != Some(device) || l.epoch != epoch {
                return Err(lost(session, l));
            }
            l.epoch += 1;
            l.expect = expect.take().unwrap_or_default();
            match l.pending_to.take() {
                Some(to) => {
                    l.device = Some(to);
                    l.expires_ms = now + ttl_ms;
                }
                None => {
                    l.device = None;
                    l.expires_ms = 0;
                }
            }
            l.pending_by = None;
            Ok(true)
        })
    }

    /// Pending handoffs whose holder let its lease expire: they complete now (the holder is
    /// gone; what it did not flush is not in the hub and cannot be waited for).
    pub fn complete_expired_handoffs(&self, ttl_ms: u64) -> Result<Vec<Lease>> {
        let now = now_ms();
        let mut moved = Vec::new();
        for s in self.store.stuck_handoffs(now)? {
            let mut done = false;
            let l = self.store.update_lease(&s, &mut |l| {
                if l.live(now) {
                    return Ok(false);
                }
                let Some(to) = l.pending_to.take() else {
                    return Ok(false);
                };
                l.device = Some(to);
                l.epoch += 1;
                l.expires_ms = now + ttl_ms;
                l.pending_by = None;
                l.expect.clear();
                done = true;
                Ok(true)
            })?;
            if done {
                moved.push(l);
            }
        }
        Ok(moved)
    }

    /// Sessions whose lease this device holds (the cloud resumes these after a restart).
    pub fn leases_of(&self, device: &str) -> Result<Vec<Lease>> {
        self.store.leases_of(device)
    }
}
