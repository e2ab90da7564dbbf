//! The holder's side of a session moving: everything it wrote reaches the hub
//! ([`flush_state`]), it gives the lease up with the state it left ([`leave`]), and the next
//! holder waits for that state ([`reach`]). `Hold` (session.rs) and `handoff.rs` both use it.

use std::time::Duration;

use jarvis_sync::client::SyncClient;
use jarvis_sync::handoff;
use jarvis_sync::mirror::FileMirror;
use jarvis_wire::device::{ExpectedDoc, Lease};

use crate::error::{DeviceResult, LocalContext};
use crate::lease::LeaseAuthority;

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
