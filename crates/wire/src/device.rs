//! What a device sends the hub and gets back when it holds sessions: leases, run settings and
//! handoffs. The server (`jarvis-cloud`) and every device (`jarvis-device`) use these types, so
//! a field renamed on one side fails to compile on the other instead of reading as absent.

use serde::{Deserialize, Serialize};

/// The device id the cloud runner holds leases under ("Continue in cloud" hands to it).
pub const CLOUD_DEVICE: &str = "cloud";

/// A document's state a holder left (or a new holder must reach) before the session moves:
/// its name and its v1-encoded state vector in hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedDoc {
    pub doc: String,
    pub sv: String,
}

/// Who runs a session: `{device, epoch, expiry}` held by the hub (the authority). Only the
/// holder at the current epoch may advance the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(default)]
    pub session: String,
    pub device: Option<String>,
    pub epoch: u64,
    /// When the hub lets the lease lapse unless renewed (the hub's clock, ms since the Unix
    /// epoch); 0 for a free lease.
    #[serde(default)]
    pub expires_ms: u64,
    /// A handoff waiting for the holder to yield.
    #[serde(default)]
    pub pending_to: Option<String>,
    #[serde(default)]
    pub pending_by: Option<String>,
    /// What the previous holder had when it handed the session over.
    #[serde(default)]
    pub expect: Vec<ExpectedDoc>,
}

/// `POST /api/sessions/{id}/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LeaseOp {
    /// Take a free (or expired) lease, or renew one this device holds.
    Acquire,
    /// Extend the lease held at `epoch`; a conflict means it is lost.
    Renew { epoch: u64 },
    /// Give the session up with the state left behind; it moves to a pending target, if any.
    Release {
        epoch: u64,
        #[serde(default)]
        expect: Vec<ExpectedDoc>,
    },
}

/// How a session runs (`GET /api/sessions/{id}/settings`): authoritative in the hub's control
/// plane, like its lease. The session document carries a copy for display only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub budget_micros: Option<u64>,
    pub model: Option<String>,
}

/// `POST /api/sessions/{id}/handoff`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// "cloud", "here" (the calling device) or a device id.
    pub to: String,
    /// The state the caller has (when it hands over a free session with changes of its own).
    #[serde(default)]
    pub expect: Vec<ExpectedDoc>,
    /// How long to wait for the holder to yield, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// What a handoff request led to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HandoffState {
    /// The target holds the lease now.
    Granted { lease: Lease },
    /// The holder was asked to yield; the lease moves when it does (or when it expires).
    Pending { lease: Lease },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ops_and_handoff_states_have_their_wire_shape() {
        let op = serde_json::to_value(LeaseOp::Renew { epoch: 3 }).expect("serialize");
        assert_eq!(op, serde_json::json!({"op": "renew", "epoch": 3}));
        let acquire: LeaseOp =
            serde_json::from_value(serde_json::json!({"op": "acquire"})).expect("parse");
        assert_eq!(acquire, LeaseOp::Acquire);
        let state: HandoffState = serde_json::from_value(serde_json::json!({
            "state": "granted",
            "lease": {"session": "s", "device": "cloud", "epoch": 2, "expires_ms": 9,
                      "pending_to": null, "pending_by": null, "expect": []}
        }))
        .expect("parse");
        let HandoffState::Granted { lease } = state else {
            panic!("not granted");
        };
        assert_eq!(lease.device.as_deref(), Some("cloud"));
        assert_eq!(lease.expires_ms, 9);
    }
}
