//! The state a handoff carries: for each document a session needs (its own, the workspace
//! index, every text file), the state vector the yielding runner left behind. The hub checks it
//! holds at least that state before it moves the lease; the new runner waits until its replicas
//! cover it (and its folder shows it) before it continues. Nothing is ever rolled back: "at
//! least" is what a CRDT can promise, and what the yielding runner wrote is all in it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use crate::client::{ClientError, SyncClient};
use crate::doc::{DocName, EntryKind, WorkspaceIndex};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedDoc {
    pub doc: String,
    /// The v1-encoded state vector, hex.
    pub sv: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("invalid state vector for {0}")]
    BadStateVector(String),
    #[error("timed out waiting for {doc} to reach the handed-off state")]
    Timeout { doc: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

pub fn encode_sv(sv: &StateVector) -> String {
    hex::encode(sv.encode_v1())
}

pub fn decode_sv(doc: &str, hex_sv: &str) -> Result<StateVector, HandoffError> {
    hex::decode(hex_sv)
        .ok()
        .and_then(|b| StateVector::decode_v1(&b).ok())
        .ok_or_else(|| HandoffError::BadStateVector(doc.to_owned()))
}

/// True when `have` includes everything `want` describes.
pub fn covers(have: &StateVector, want: &StateVector) -> bool {
    want.iter()
        .all(|(client, clock)| have.get(client) >= *clock)
}

/// The documents a session's runner depends on: the session, the workspace index, and every
/// live text file of the workspace.
pub fn session_documents(session: &str, workspace: &str, index: &WorkspaceIndex) -> Vec<String> {
    let mut docs = Vec::new();
    if let Ok(n) = DocName::session(session) {
        docs.push(n.to_string());
    }
    if let Ok(n) = DocName::workspace_index(workspace) {
        docs.push(n.to_string());
    }
    for (_, entry) in index.list() {
        if entry.kind == EntryKind::Text
            && let Some(id) = entry.doc
            && let Ok(n) = DocName::workspace_file(workspace, &id)
        {
            docs.push(n.to_string());
        }
    }
    docs
}

/// The local state of each document (opening it if needed).
pub async fn snapshot(
    client: &SyncClient,
    docs: &[String],
) -> Result<Vec<ExpectedDoc>, HandoffError> {
    let mut out = Vec::with_capacity(docs.len());
    for name in docs {
        let doc = client.open(name).await?;
        let sv = doc.transact().state_vector();
        out.push(ExpectedDoc {
            doc: name.clone(),
            sv: encode_sv(&sv),
        });
    }
    Ok(out)
}

/// Waits until every expected document's local replica covers the expected state.
pub async fn reach(
    client: &SyncClient,
    expect: &[ExpectedDoc],
    timeout: Duration,
) -> Result<(), HandoffError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wanted = Vec::with_capacity(expect.len());
    for e in expect {
        let sv = decode_sv(&e.doc, &e.sv)?;
        wanted.push((client.open(&e.doc).await?, e.doc.clone(), sv));
    }
    for (doc, name, want) in wanted {
        loop {
            if covers(&doc.transact().state_vector(), &want) {
                break;
            }
            if let Some(status) = client.document_status(&name)
                && let Some(reason) = status.denied
            {
                return Err(ClientError::Denied { doc: name, reason }.into());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HandoffError::Timeout { doc: name });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text};

    #[test]
    fn covers_is_per_client() {
        let a = Doc::with_client_id(1);
        let t = a.get_or_insert_text("t");
        t.insert(&mut a.transact_mut(), 0, "hello");
        let early = a.transact().state_vector();
        t.insert(&mut a.transact_mut(), 5, "!");
        let late = a.transact().state_vector();
        assert!(covers(&late, &early));
        assert!(!covers(&early, &late));
        let b = Doc::with_client_id(2);
        assert!(!covers(&b.transact().state_vector(), &early));
        assert!(covers(&early, &b.transact().state_vector()));
        let round = decode_sv("d", &encode_sv(&late)).unwrap();
        assert_eq!(round, late);
        assert!(decode_sv("d", "zz").is_err());
        assert_eq!(t.get_string(&a.transact()), "hello!");
    }
}
