//! Continue in cloud / Continue here from a device: a session moves by asking the lease
//! authority; the holder flushes what it wrote and gives the lease up with the state it left
//! ([`leave`]), and the new holder waits for that state before it continues.

use std::path::Path;
use std::time::Duration;

use jarvis_sync::client::SyncClient;
use jarvis_sync::handoff;
use jarvis_sync::mirror::FileMirror;
use jarvis_wire::device::{ExpectedDoc, HandoffState, Lease};

use crate::error::{DeviceResult, LocalContext};
use crate::lease::LeaseAuthority;
use crate::session::Device;

/// How long a device waits for the holder to yield when it asks for a session.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(120);

pub(crate) fn to_wire(e: handoff::ExpectedDoc) -> ExpectedDoc {
    ExpectedDoc {
        doc: e.doc,
        sv: e.sv,
    }
}

pub(crate) fn from_wire(e: &ExpectedDoc) -> handoff::ExpectedDoc {
    handoff::ExpectedDoc {
        doc: e.doc.clone(),
        sv: e.sv.clone(),
    }
}

/// Everything this holder wrote reaches the hub (the folder rescanned, every document
/// acknowledged), and the state it leaves is what the next holder must reach.
pub async fn flush_state(
    client: &SyncClient,
    session: &str,
    workspace: &str,
    mirror: &FileMirror,
    timeout: Duration,
) -> DeviceResult<Vec<ExpectedDoc>> {
    mirror.rescan().await;
    mirror.settle(false).await;
    client
        .flush_all(timeout)
        .await
        .local(|| "the hub did not acknowledge this device's changes".into())?;
    let docs = handoff::session_documents(session, workspace, mirror.index());
    let expect = handoff::snapshot(client, &docs)
        .await
        .local(|| format!("reading the state of session {session}"))?;
    Ok(expect.into_iter().map(to_wire).collect())
}

/// Flushes, then gives the lease held at `epoch` up with the state left behind; it moves to
/// the pending target, if any. Returns the lease as the authority left it.
pub async fn leave<A: LeaseAuthority>(
    authority: &A,
    client: &SyncClient,
    session: &str,
    workspace: &str,
    epoch: u64,
    mirror: &FileMirror,
    timeout: Duration,
) -> DeviceResult<Lease> {
    let expect = flush_state(client, session, workspace, mirror, timeout).await?;
    authority.release(session, epoch, expect).await
}

/// Waits until the local replicas have the state the previous holder left.
pub async fn reach(
    client: &SyncClient,
    expect: &[ExpectedDoc],
    timeout: Duration,
) -> DeviceResult<()> {
    let expect: Vec<handoff::ExpectedDoc> = expect.iter().map(from_wire).collect();
    handoff::reach(client, &expect, timeout)
        .await
        .local(|| "waiting for the handed-off state".into())
}

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
