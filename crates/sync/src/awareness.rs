//! Awareness (presence) state as the hub keeps it: the latest clock and JSON state per Yjs
//! client id, and which connection announced it, so a dropped connection's clients can be
//! announced as gone. The hub never interprets the JSON; it only relays and replays it.

use std::collections::HashMap;

use crate::protocol::write_var_uint;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwarenessEntry {
    pub client_id: u64,
    pub clock: u64,
    /// JSON text; `"null"` means the client left.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed awareness update: {0}")]
pub struct AwarenessError(&'static str);

/// Decodes a y-protocols awareness update: `varUint n, n × (varUint client, varUint clock,
/// varString json)`. Entry count and sizes are bounded by the input length, so no allocation
/// can exceed it.
pub fn decode_update(bytes: &[u8]) -> Result<Vec<AwarenessEntry>, AwarenessError> {
    let mut pos = 0usize;
    let n = read_uint(bytes, &mut pos)?;
    // Each entry takes at least three bytes, which caps a hostile count.
    if n > (bytes.len() / 3 + 1) as u64 {
        return Err(AwarenessError("entry count exceeds payload"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let client_id = read_uint(bytes, &mut pos)?;
        let clock = read_uint(bytes, &mut pos)?;
        // Browsers decode these as JavaScript numbers (lib0 throws past 2^53 - 1): one such
        // entry, relayed and replayed, would break presence for every browser on the document.
        if client_id > MAX_SAFE_INTEGER || clock > MAX_SAFE_INTEGER {
            return Err(AwarenessError("integer beyond 2^53 - 1"));
        }
        let len = read_uint(bytes, &mut pos)?;
        let len = usize::try_from(len).map_err(|_| AwarenessError("state too long"))?;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= bytes.len())
            .ok_or(AwarenessError("truncated state"))?;
        let state = std::str::from_utf8(&bytes[pos..end])
            .map_err(|_| AwarenessError("state is not UTF-8"))?
            .to_owned();
        pos = end;
        out.push(AwarenessEntry {
            client_id,
            clock,
            state,
        });
    }
    Ok(out)
}

pub fn encode_update<'a>(entries: impl IntoIterator<Item = &'a AwarenessEntry>) -> Vec<u8> {
    let entries: Vec<&AwarenessEntry> = entries.into_iter().collect();
    let mut out = Vec::new();
    write_var_uint(&mut out, entries.len() as u64);
    for e in entries {
        write_var_uint(&mut out, e.client_id);
        write_var_uint(&mut out, e.clock);
        write_var_uint(&mut out, e.state.len() as u64);
        out.extend_from_slice(e.state.as_bytes());
    }
    out
}

/// The largest integer a JavaScript number holds exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn read_uint(bytes: &[u8], pos: &mut usize) -> Result<u64, AwarenessError> {
    let mut value = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *bytes.get(*pos).ok_or(AwarenessError("truncated"))?;
        *pos += 1;
        if shift > 63 {
            return Err(AwarenessError("integer overflow"));
        }
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// Bounds on what presence a connection can make the hub hold. Presence is relayed and
/// replayed to everyone on a document, so without bounds one socket (even a read-only one)
/// could grow the hub's memory and every peer's without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceLimits {
    /// Largest JSON state of one client.
    pub max_state_bytes: usize,
    /// Client ids one connection may introduce on one document (a browser tab uses one).
    pub max_clients_per_connection: usize,
    /// Bytes one connection may hold across all its documents (each state counts its JSON
    /// plus [`ENTRY_OVERHEAD`]).
    pub max_bytes_per_connection: usize,
    /// States one document holds; past it, new clients are not recorded or relayed.
    pub max_states_per_document: usize,
    /// Bytes one document holds (same accounting); past it, likewise.
    pub max_bytes_per_document: usize,
}

impl Default for PresenceLimits {
    fn default() -> Self {
        Self {
            max_state_bytes: 16 * 1024,
            max_clients_per_connection: 8,
            max_bytes_per_connection: 256 * 1024,
            max_states_per_document: 512,
            max_bytes_per_document: 1024 * 1024,
        }
    }
}

/// What one state costs in the accounting beyond its JSON: an empty state is not free.
pub const ENTRY_OVERHEAD: usize = 64;

fn cost(e: &AwarenessEntry) -> usize {
    e.state.len() + ENTRY_OVERHEAD
}

/// A connection broke a presence limit that only it could have broken; it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence state of {len} bytes exceeds {max}")]
    StateTooLarge { len: usize, max: usize },
    #[error("more than {max} presence clients on one document from one connection")]
    TooManyClients { max: usize },
    #[error("presence states from one connection exceed {max} bytes")]
    TooManyBytes { max: usize },
}

/// The hub's view of one document's presence. Each client id belongs to the connection that
/// introduced it: only that connection may change or clear it, and it is cleared when that
/// connection leaves.
#[derive(Debug)]
pub struct AwarenessStates<K> {
    states: HashMap<u64, (AwarenessEntry, K)>,
    /// Per owner: (client ids, bytes) held here.
    owned: HashMap<K, (usize, usize)>,
    bytes: usize,
}

impl<K> Default for AwarenessStates<K> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            owned: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K: Copy + Eq + std::hash::Hash> AwarenessStates<K> {
    /// Applies entries announced by `owner` and returns the ones that took effect (the only
    /// ones to relay). Ignored, as y-protocols ignores them: older clocks. Ignored because they
    /// are not `owner`'s to set: client ids another connection introduced. Ignored because the
    /// document is full: new clients past its bounds. An error (the connection breaks its own
    /// bounds) may leave earlier entries of the same update applied; the caller closes the
    /// connection, which clears them.
    ///
    /// `owner_budget` is how many bytes `owner` may hold on this document, given what it holds
    /// on its others.
    pub fn apply(
        &mut self,
        owner: K,
        entries: Vec<AwarenessEntry>,
        limits: &PresenceLimits,
        owner_budget: usize,
    ) -> Result<Vec<AwarenessEntry>, PresenceError> {
        let mut accepted = Vec::new();
        for e in entries {
            if e.state.len() > limits.max_state_bytes {
                return Err(PresenceError::StateTooLarge {
                    len: e.state.len(),
                    max: limits.max_state_bytes,
                });
            }
            let (count, held) = self.owned_by(owner);
            match self.states.get(&e.client_id) {
                Some((_, o)) if *o != owner => continue,
                Some((known, _)) if known.clock > e.clock => continue,
                Some((known, _)) => {
                    let old = cost(known);
                    if e.state == "null" {
                        self.remove(e.client_id);
                    } else {
                        let new = cost(&e);
                        if held - old + new > owner_budget {
                            return Err(PresenceError::TooManyBytes {
                                max: limits.max_bytes_per_connection,
                            });
                        }
                        if self.bytes - old + new > limits.max_bytes_per_document {
                            continue;
                        }
                        self.remove(e.client_id);
                        self.insert(owner, e.clone());
                    }
                }
                None => {
                    if e.state == "null" {
                        continue;
                    }
                    if count >= limits.max_clients_per_connection {
                        return Err(PresenceError::TooManyClients {
                            max: limits.max_clients_per_connection,
                        });
                    }
                    if held + cost(&e) > owner_budget {
                        return Err(PresenceError::TooManyBytes {
                            max: limits.max_bytes_per_connection,
                        });
                    }
                    if self.states.len() >= limits.max_states_per_document
                        || self.bytes + cost(&e) > limits.max_bytes_per_document
                    {
                        continue;
                    }
                    self.insert(owner, e.clone());
                }
            }
            accepted.push(e);
        }
        Ok(accepted)
    }

    fn insert(&mut self, owner: K, e: AwarenessEntry) {
        let c = cost(&e);
        let slot = self.owned.entry(owner).or_default();
        slot.0 += 1;
        slot.1 += c;
        self.bytes += c;
        self.states.insert(e.client_id, (e, owner));
    }

    fn remove(&mut self, client_id: u64) {
        if let Some((e, owner)) = self.states.remove(&client_id) {
            let c = cost(&e);
            self.bytes -= c;
            if let Some(slot) = self.owned.get_mut(&owner) {
                slot.0 -= 1;
                slot.1 -= c;
                if slot.0 == 0 {
                    self.owned.remove(&owner);
                }
            }
        }
    }

    /// (client ids, bytes) `owner` holds on this document.
    pub fn owned_by(&self, owner: K) -> (usize, usize) {
        self.owned.get(&owner).copied().unwrap_or((0, 0))
    }

    /// Every live state, for answering a QueryAwareness.
    pub fn encode_all(&self) -> Vec<u8> {
        encode_update(self.states.values().map(|(e, _)| e))
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Drops every client `owner` announced and returns the update telling the others they
    /// left (clock + 1, state null), or None when it announced nothing.
    pub fn remove_owner(&mut self, owner: K) -> Option<Vec<u8>> {
        let gone: Vec<AwarenessEntry> = self
            .states
            .iter()
            .filter(|(_, (_, o))| *o == owner)
            .map(|(id, (e, _))| AwarenessEntry {
                client_id: *id,
                clock: e.clock.saturating_add(1),
                state: "null".into(),
            })
            .collect();
        if gone.is_empty() {
            return None;
        }
        for e in &gone {
            self.remove(e.client_id);
        }
        Some(encode_update(&gone))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(client_id: u64, clock: u64, state: &str) -> AwarenessEntry {
        AwarenessEntry {
            client_id,
            clock,
            state: state.into(),
        }
    }

    const BIG: usize = usize::MAX;

    #[test]
    fn round_trip_and_owner_removal() {
        let limits = PresenceLimits::default();
        let a = entry(300, 2, r#"{"user":"a"}"#);
        let bytes = encode_update([&a]);
        assert_eq!(decode_update(&bytes).unwrap(), vec![a.clone()]);

        let mut s = AwarenessStates::default();
        assert_eq!(
            s.apply(1u64, vec![a.clone()], &limits, BIG).unwrap(),
            vec![a.clone()]
        );
        // An older clock does not overwrite a newer state, and is not relayed.
        assert!(
            s.apply(1, vec![entry(300, 1, "{}")], &limits, BIG)
                .unwrap()
                .is_empty()
        );
        assert_eq!(decode_update(&s.encode_all()).unwrap(), vec![a.clone()]);
        assert!(s.remove_owner(2).is_none());
        let gone = decode_update(&s.remove_owner(1).unwrap()).unwrap();
        assert_eq!(gone[0].state, "null");
        assert_eq!(gone[0].clock, 3);
        assert!(s.is_empty());
        assert_eq!(s.owned_by(1), (0, 0));
        // A clock at the top of the range does not overflow when the owner leaves.
        s.apply(1, vec![entry(5, u64::MAX, "{}")], &limits, BIG)
            .unwrap();
        assert!(s.remove_owner(1).is_some());
    }

    #[test]
    fn a_connection_sets_only_its_own_clients() {
        let limits = PresenceLimits::default();
        let mut s = AwarenessStates::default();
        s.apply(1u64, vec![entry(7, 1, r#"{"name":"alice"}"#)], &limits, BIG)
            .unwrap();
        // Another connection cannot overwrite or clear client 7, whatever the clock.
        let taken = s
            .apply(
                2,
                vec![entry(7, 99, r#"{"name":"mallory"}"#), entry(7, 100, "null")],
                &limits,
                BIG,
            )
            .unwrap();
        assert!(taken.is_empty());
        assert_eq!(
            decode_update(&s.encode_all()).unwrap(),
            vec![entry(7, 1, r#"{"name":"alice"}"#)]
        );
        // The owner can; clearing its own client frees it.
        assert_eq!(
            s.apply(1, vec![entry(7, 2, "null")], &limits, BIG)
                .unwrap()
                .len(),
            1
        );
        assert!(s.is_empty());
        // A null for a client nobody introduced is not recorded or relayed.
        assert!(
            s.apply(2, vec![entry(8, 1, "null")], &limits, BIG)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn limits_bound_what_a_connection_and_a_document_hold() {
        let limits = PresenceLimits {
            max_state_bytes: 100,
            max_clients_per_connection: 2,
            max_bytes_per_connection: 1000,
            max_states_per_document: 3,
            max_bytes_per_document: 10_000,
        };
        let mut s = AwarenessStates::default();
        assert_eq!(
            s.apply(1u64, vec![entry(1, 1, &"x".repeat(101))], &limits, BIG),
            Err(PresenceError::StateTooLarge { len: 101, max: 100 })
        );
        s.apply(1, vec![entry(1, 1, "{}"), entry(2, 1, "{}")], &limits, BIG)
            .unwrap();
        assert_eq!(
            s.apply(1, vec![entry(3, 1, "{}")], &limits, BIG),
            Err(PresenceError::TooManyClients { max: 2 })
        );
        // Re-announcing its own clients is always fine.
        s.apply(1, vec![entry(1, 2, "{\"a\":1}")], &limits, BIG)
            .unwrap();
        assert_eq!(s.owned_by(1), (2, 2 * ENTRY_OVERHEAD + 9));
        // The byte budget the caller passes (what is left across documents) holds.
        assert_eq!(
            s.apply(2, vec![entry(10, 1, "{}")], &limits, ENTRY_OVERHEAD),
            Err(PresenceError::TooManyBytes { max: 1000 })
        );
        // A full document drops newcomers without closing them.
        s.apply(2, vec![entry(10, 1, "{}")], &limits, BIG).unwrap();
        assert!(
            s.apply(3, vec![entry(20, 1, "{}")], &limits, BIG)
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.len(), 3);
        s.remove_owner(1);
        assert_eq!(s.len(), 1);
        assert_eq!(s.owned_by(1), (0, 0));
    }

    #[test]
    fn hostile_updates_are_errors() {
        assert!(decode_update(&[]).is_err());
        assert!(decode_update(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_update(&[1, 1, 1, 10, b'x']).is_err());
        assert!(decode_update(&[1, 1, 1, 1, 0xff]).is_err());
        for (id, clock) in [(MAX_SAFE_INTEGER + 1, 1), (1, MAX_SAFE_INTEGER + 1)] {
            let e = AwarenessEntry {
                client_id: id,
                clock,
                state: "{}".into(),
            };
            assert!(decode_update(&encode_update([&e])).is_err());
        }
    }
}
