//! Continue in cloud / Continue here from a device: a session moves by asking the lease
//! authority; the holder flushes what it wrote and gives the lease up with the state it left
//! ([`leave`]), and the new holder waits for that state before it continues.

use std::path::Path;
use std::time::Duration;

use jarvis_wire::device::{HandoffState, Lease};

use crate::error::DeviceResult;
use crate::lease::LeaseAuthority;
/// The holder's side of a move (flush, leave, reach), used by `Hold` too.
pub use crate::leaving::{flush_state, leave, reach};
use crate::session::Device;

/// How long a device waits for the holder to yield when it asks for a session.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(120);

/// `jarvis handoff <session> --to cloud|here|<device>`: asks the hub to move the session.
/// A device handing a session to someone else with its folder at hand first makes sure the
/// folder is in. `Some(lease)`: the target holds it now; None: the holder has not yielded yet.
pub async fn request_handoff(
    device: &Device,
    session: &str,
    to: &str,
    dir: Option<&Path>,
) -> DeviceResult<Option<Lease>> {
    let mut expect = Vec::new();
    if to != "here"
        && let Some(dir) = dir
    {
        let workspace = device
            .api
            .session_workspace(session)
            .await?
            .unwrap_or_default();
        let mirror = device.mirror(dir, &workspace).await?;
        device.session(session).await?;
        expect = flush_state(
            &device.client,
            session,
            &workspace,
            &mirror,
            Duration::from_secs(60),
        )
        .await?;
        // The repository travels too (`.git` is never synced as files).
        if to == jarvis_wire::device::CLOUD_DEVICE {
            device.api.send_git_state(session, &workspace, dir).await?;
        }
    }
    let to = if to == "here" { device.id.as_str() } else { to };
    match device
        .leases()
        .handoff(session, to, expect, HANDOFF_WAIT)
        .await?
    {
        HandoffState::Granted { lease } => Ok(Some(lease)),
        HandoffState::Pending { .. } => Ok(None),
    }
}
