//! Typed wrappers over the Yjs documents of DESIGN.md §3, so callers never touch raw Y types
//! for common operations: [`SessionDoc`] (a conversation and its metadata), [`WorkspaceIndex`]
//! (a workspace's file list), [`FileText`] (one text file), and [`DocName`] (their names).
//!
//! Everything a peer wrote is read defensively: a value of the wrong type decodes to an error or
//! a stated fallback, never a panic, because any device (or a hostile one) can write any shape.

mod file;
mod names;
mod session;
mod signal;
mod workspace;

pub use file::FileText;
pub use names::DocName;
pub use session::{
    Block, BlockRef, Decision, HandoffRequest, Message, NewMessage, Role, Runner, SessionDoc,
    SessionMeta, SessionStatus, Usage,
};
pub use signal::{UpdateSignal, UpdateSubscription, observe_updates, observe_updates_blocking};
pub use workspace::{EntryKind, FileEntry, WorkspaceIndex, check_path};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("invalid document name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("no message with id {0:?}")]
    UnknownMessage(String),
    #[error("a message with id {0:?} already exists")]
    DuplicateMessage(String),
    #[error("message {message:?} has no block {index}")]
    NoSuchBlock { message: String, index: u32 },
    #[error("block {index} of message {message:?} has no text")]
    NotText { message: String, index: u32 },
    #[error("no approval with id {0:?}")]
    UnknownApproval(String),
    #[error("approval {id:?} was already answered ({decision}) by {by}")]
    AlreadyAnswered {
        id: String,
        decision: String,
        by: String,
    },
    #[error("offset {offset} is out of range (length {len})")]
    OutOfRange { offset: u32, len: u32 },
    #[error("offset {0} is not on a character boundary")]
    NotCharBoundary(u32),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("malformed value at {0}")]
    Malformed(String),
}

/// Helpers for reading peer-written values.
pub(crate) mod read {
    use yrs::{Any, MapRef, Out, ReadTxn};

    pub fn string<T: ReadTxn>(map: &MapRef, txn: &T, key: &str) -> Option<String> {
        use yrs::{GetString, Map};
        match map.get(txn, key)? {
            Out::Any(Any::String(s)) => Some(s.to_string()),
            Out::YText(t) => Some(t.get_string(txn)),
            _ => None,
        }
    }

    pub fn u64<T: ReadTxn>(map: &MapRef, txn: &T, key: &str) -> Option<u64> {
        use yrs::Map;
        match map.get(txn, key)? {
            Out::Any(a) => any_u64(&a),
            _ => None,
        }
    }

    pub fn bool<T: ReadTxn>(map: &MapRef, txn: &T, key: &str) -> Option<bool> {
        use yrs::Map;
        match map.get(txn, key)? {
            Out::Any(Any::Bool(b)) => Some(b),
            _ => None,
        }
    }

    /// JS peers write numbers as doubles, Rust peers may write 64-bit integers.
    pub fn any_u64(a: &Any) -> Option<u64> {
        use yrs::any::Number;
        match a {
            Any::Number(Number::Int(i)) => u64::try_from(*i).ok(),
            Any::Number(Number::Float(n)) if *n >= 0.0 && n.fract() == 0.0 && *n < 1.8e19 => {
                Some(*n as u64)
            }
            _ => None,
        }
    }
}

/// Test helper: exchanges full states between two replicas, both ways.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn sync_replicas(a: &yrs::Doc, b: &yrs::Doc) {
    use yrs::updates::decoder::Decode;
    use yrs::{ReadTxn, StateVector, Transact, Update};
    for (from, to) in [(a, b), (b, a)] {
        let u = from
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        to.transact_mut()
            .apply_update(Update::decode_v1(&u).unwrap())
            .unwrap();
    }
}
