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

/// The hub's view of one document's presence.
#[derive(Debug, Default)]
pub struct AwarenessStates<K> {
    states: HashMap<u64, (AwarenessEntry, K)>,
}

impl<K: Copy + PartialEq> AwarenessStates<K> {
    /// Applies entries announced by `owner`; older clocks are ignored like y-protocols does.
    pub fn apply(&mut self, owner: K, entries: Vec<AwarenessEntry>) {
        for e in entries {
            match self.states.get(&e.client_id) {
                Some((known, _)) if known.clock > e.clock => {}
                _ => {
                    if e.state == "null" {
                        self.states.remove(&e.client_id);
                    } else {
                        self.states.insert(e.client_id, (e, owner));
                    }
                }
            }
        }
    }

    /// Every live state, for answering a QueryAwareness.
    pub fn encode_all(&self) -> Vec<u8> {
        encode_update(self.states.values().map(|(e, _)| e))
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
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
                clock: e.clock + 1,
                state: "null".into(),
            })
            .collect();
        if gone.is_empty() {
            return None;
        }
        for e in &gone {
            self.states.remove(&e.client_id);
        }
        Some(encode_update(&gone))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_owner_removal() {
        let a = AwarenessEntry {
            client_id: 300,
            clock: 2,
            state: r#"{"user":"a"}"#.into(),
        };
        let bytes = encode_update([&a]);
        assert_eq!(decode_update(&bytes).unwrap(), vec![a.clone()]);

        let mut s = AwarenessStates::default();
        s.apply(1u64, vec![a.clone()]);
        // An older clock does not overwrite a newer state.
        s.apply(
            1,
            vec![AwarenessEntry {
                clock: 1,
                state: "{}".into(),
                ..a.clone()
            }],
        );
        assert_eq!(decode_update(&s.encode_all()).unwrap(), vec![a.clone()]);
        assert!(s.remove_owner(2).is_none());
        let gone = decode_update(&s.remove_owner(1).unwrap()).unwrap();
        assert_eq!(gone[0].state, "null");
        assert_eq!(gone[0].clock, 3);
        assert!(s.is_empty());
    }

    #[test]
    fn hostile_updates_are_errors() {
        assert!(decode_update(&[]).is_err());
        assert!(decode_update(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_update(&[1, 1, 1, 10, b'x']).is_err());
        assert!(decode_update(&[1, 1, 1, 1, 0xff]).is_err());
    }
}
