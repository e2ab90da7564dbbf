//! A structural check of Yjs v1 updates and state vectors before yrs decodes them.
//!
//! yrs 0.28 panics in debug builds, and silently wraps or truncates in release builds, on some
//! malformed input (see `docs/upstream-yrs.md`), and its `Any` decoder recurses once per nesting
//! level, so a frame of nested arrays would overflow the stack — an abort no `catch_unwind`
//! contains. This walks the lib0 v1 encoding without building anything and refuses: client ids
//! past 2^53 − 1 (browsers cannot read them; yrs would attribute the blocks to another client),
//! clocks and clock ranges past `u32::MAX`, signed integers longer than 64 bits, `Any` values
//! nested deeper than [`MAX_DEPTH`], unknown content or type references, and truncation.
//!
//! It follows the Yjs wire format (`yjs/src/utils/UpdateDecoder.js`, `structs/*.js`); where yrs
//! reads differently (see the upstream note) yrs' own decoder still has the last word, under the
//! hub's `catch_unwind`. Never allocates in proportion to declared counts: every count is walked
//! against the bytes actually present.

/// Deepest `Any` nesting accepted (Yjs content is shallow JSON; yrs recurses per level).
pub const MAX_DEPTH: usize = 64;

const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Yjs {what}: {reason} at byte {at}")]
pub struct CheckError {
    pub what: &'static str,
    pub reason: &'static str,
    pub at: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

type Result<T> = std::result::Result<T, CheckError>;

impl<'a> Reader<'a> {
    fn fail<T>(&self, reason: &'static str) -> Result<T> {
        Err(CheckError {
            what: self.what,
            reason,
            at: self.pos,
        })
    }

    fn u8(&mut self) -> Result<u8> {
        match self.bytes.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                Ok(*b)
            }
            None => self.fail("truncated"),
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|e| *e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.fail("length runs past the end"),
        }
    }

    /// lib0 varUint, at most 64 bits.
    fn var_u64(&mut self) -> Result<u64> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift >= 64 || (shift == 63 && b & 0x7e != 0) {
                return self.fail("integer longer than 64 bits");
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn var_u32(&mut self) -> Result<u32> {
        let v = self.var_u64()?;
        match u32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => self.fail("clock or length past u32::MAX"),
        }
    }

    fn client(&mut self) -> Result<u64> {
        let v = self.var_u64()?;
        if v > MAX_SAFE_INTEGER {
            return self.fail("client id past 2^53 - 1");
        }
        Ok(v)
    }

    /// lib0 varInt: sign in bit 6 of the first byte, at most 64 bits of magnitude.
    fn var_i64(&mut self) -> Result<()> {
        let mut b = self.u8()?;
        let mut bits = 6u32;
        while b & 0x80 != 0 {
            b = self.u8()?;
            bits += 7;
            if bits > 64 + 6 {
                return self.fail("integer longer than 64 bits");
            }
        }
        Ok(())
    }

    /// A varString; returns its UTF-16 length (what Yjs counts clocks in).
    fn string(&mut self) -> Result<u64> {
        let n = self.var_u64()?;
        let bytes = self.take(n)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.encode_utf16().count() as u64),
            Err(_) => self.fail("string is not UTF-8"),
        }
    }

    fn any(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return self.fail("value nested too deeply");
        }
        match self.u8()? {
            127 | 126 | 121 | 120 => Ok(()),
            125 => self.var_i64(),
            124 => self.take(4).map(drop),
            123 | 122 => self.take(8).map(drop),
            119 => self.string().map(drop),
            118 => {
                let n = self.var_u64()?;
                for _ in 0..n {
                    self.string()?;
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            117 => {
                let n = self.var_u64()?;
                for _ in 0..n {
                    self.any(depth + 1)?;
                }
                Ok(())
            }
            116 => {
                let n = self.var_u64()?;
                self.take(n).map(drop)
            }
            _ => self.fail("unknown value type"),
        }
    }

    /// One struct; returns its length in clock units.
    fn item(&mut self) -> Result<u64> {
        let info = self.u8()?;
        match info & 0x1f {
            // GC and Skip: a length.
            0 | 10 => {
                let len = self.var_u32()?;
                if len == 0 {
                    return self.fail("empty struct");
                }
                return Ok(u64::from(len));
            }
            _ => {}
        }
        let has_origin = info & 0x80 != 0;
        let has_right_origin = info & 0x40 != 0;
        if has_origin {
            self.client()?;
            self.var_u32()?;
        }
        if has_right_origin {
            self.client()?;
            self.var_u32()?;
        }
        if !has_origin && !has_right_origin {
            if self.var_u64()? == 1 {
                self.string()?;
            } else {
                self.client()?;
                self.var_u32()?;
            }
            if info & 0x20 != 0 {
                self.string()?;
            }
        }
        Ok(match info & 0x1f {
            // Deleted: a length.
            1 => u64::from(self.var_u32()?),
            // JSON (legacy): that many JSON strings.
            2 => {
                let n = self.var_u32()?;
                for _ in 0..n {
                    self.string()?;
                }
                u64::from(n)
            }
            // Binary.
            3 => {
                let n = self.var_u64()?;
                self.take(n)?;
                1
            }
            // String: its UTF-16 length.
            4 => self.string()?,
            // Embed: one JSON string.
            5 => {
                self.string()?;
                1
            }
            // Format: key and JSON value.
            6 => {
                self.string()?;
                self.string()?;
                1
            }
            // Type: its reference, and for XML elements and hooks a name.
            7 => {
                match self.u8()? {
                    3 | 5 => {
                        self.string()?;
                    }
                    0..=6 | 9 | 15 => {}
                    _ => return self.fail("unknown type reference"),
                }
                1
            }
            // Any: that many values.
            8 => {
                let n = self.var_u32()?;
                for _ in 0..n {
                    self.any(0)?;
                }
                u64::from(n)
            }
            // Subdocument: guid and options.
            9 => {
                self.string()?;
                self.any(0)?;
                1
            }
            _ => return self.fail("unknown content reference"),
        })
    }
}

/// Checks a v1 update (`structs by client, then the delete set`).
pub fn check_update_v1(bytes: &[u8]) -> Result<()> {
    let mut r = Reader {
        bytes,
        pos: 0,
        what: "update",
    };
    let clients = r.var_u64()?;
    for _ in 0..clients {
        let structs = r.var_u64()?;
        r.client()?;
        let mut clock = u64::from(r.var_u32()?);
        for _ in 0..structs {
            clock += r.item()?;
            if clock > u64::from(u32::MAX) {
                return r.fail("clock past u32::MAX");
            }
        }
    }
    let clients = r.var_u64()?;
    for _ in 0..clients {
        r.client()?;
        let ranges = r.var_u64()?;
        for _ in 0..ranges {
            let clock = r.var_u32()?;
            let len = r.var_u32()?;
            if clock.checked_add(len).is_none() {
                return r.fail("deleted range past u32::MAX");
            }
        }
    }
    Ok(())
}

/// Checks a v1 state vector (`n × (client, clock)`).
pub fn check_state_vector_v1(bytes: &[u8]) -> Result<()> {
    let mut r = Reader {
        bytes,
        pos: 0,
        what: "state vector",
    };
    let n = r.var_u64()?;
    for _ in 0..n {
        r.client()?;
        r.var_u32()?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, ArrayPrelim, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, TextPrelim,
        Transact, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    use super::*;

    fn rich_doc() -> Doc {
        let d = Doc::with_client_id(1);
        let text = d.get_or_insert_text("text");
        let map = d.get_or_insert_map("map");
        let array = d.get_or_insert_array("array");
        let xml = d.get_or_insert_xml_fragment("xml");
        let mut t = d.transact_mut();
        text.insert(&mut t, 0, "héllo 🎉 wörld");
        let bold = yrs::types::Attrs::from([("bold".into(), Any::Bool(true))]);
        text.format(&mut t, 0, 3, bold);
        text.insert_embed(&mut t, 1, Any::from("embed"));
        map.insert(&mut t, "i", -123_456_789_012i64);
        map.insert(&mut t, "f", 0.1f64);
        map.insert(&mut t, "big", i64::MIN);
        map.insert(&mut t, "bin", Any::from(vec![1u8, 2, 3]));
        map.insert(
            &mut t,
            "obj",
            Any::from(std::collections::HashMap::from([(
                "a".to_owned(),
                Any::from(vec![Any::Null, Any::Bool(false), Any::from("s")]),
            )])),
        );
        map.insert(&mut t, "t", TextPrelim::new("inner"));
        map.insert(&mut t, "m", MapPrelim::from([("x", Any::from(1i64))]));
        map.insert(&mut t, "a", ArrayPrelim::from([1i64, 2]));
        array.insert_range(&mut t, 0, [1i64, 2, 3]);
        let el = xml.insert(&mut t, 0, XmlElementPrelim::empty("p"));
        el.insert(&mut t, 0, XmlTextPrelim::new("para"));
        text.remove_range(&mut t, 1, 4);
        array.remove(&mut t, 0);
        drop(t);
        d
    }

    #[test]
    fn what_yrs_writes_passes() {
        let d = rich_doc();
        let txn = d.transact();
        check_update_v1(&txn.encode_state_as_update_v1(&StateVector::default())).unwrap();
        check_state_vector_v1(&txn.state_vector().encode_v1()).unwrap();
        check_state_vector_v1(&StateVector::default().encode_v1()).unwrap();
        // An empty update: no structs, no deletions.
        check_update_v1(&[0, 0]).unwrap();
    }

    #[test]
    fn every_truncation_of_a_valid_update_is_refused_or_harmless() {
        let d = rich_doc();
        let full = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        for cut in 0..full.len() {
            // Never a panic; a cut inside the structs is always refused.
            let _ = check_update_v1(&full[..cut]);
        }
        assert!(check_update_v1(&full[..full.len() / 2]).is_err());
    }

    #[test]
    fn what_yrs_panics_on_is_refused() {
        // A client id past 2^53.
        let mut u = vec![1, 1];
        u.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        u.extend([0, 0, 1]);
        assert!(check_update_v1(&u).unwrap_err().reason.contains("2^53"));
        // A clock run past u32::MAX: a GC struct of length 10 at clock u32::MAX - 5.
        let mut u = vec![1, 1, 5];
        u.extend([0xfa, 0xff, 0xff, 0xff, 0x0f]);
        u.extend([0, 10, 0]);
        assert!(check_update_v1(&u).unwrap_err().reason.contains("u32::MAX"));
        // A deleted range past u32::MAX.
        let mut u = vec![0, 1, 5, 1];
        u.extend([0xfa, 0xff, 0xff, 0xff, 0x0f, 10]);
        assert!(check_update_v1(&u).is_err());
        // A signed integer longer than 64 bits inside an Any, and deep nesting.
        let any_item = |payload: &[u8]| {
            // One client, one struct: Any content (8), parent by name "m", one value.
            let mut u = vec![1, 1, 5, 0, 8, 1, 1, b'm', 1];
            u.extend_from_slice(payload);
            u.push(0);
            u
        };
        let mut long = vec![125];
        long.extend([0xff; 12]);
        long.push(0);
        assert!(check_update_v1(&any_item(&long)).is_err());
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend([117, 1]);
        }
        deep.push(126);
        assert!(
            check_update_v1(&any_item(&deep))
                .unwrap_err()
                .reason
                .contains("deep")
        );
        let mut ok = Vec::new();
        for _ in 0..MAX_DEPTH {
            ok.extend([117, 1]);
        }
        ok.push(126);
        check_update_v1(&any_item(&ok)).unwrap();
        // State vectors: a client past 2^53, a clock past u32::MAX.
        assert!(
            check_state_vector_v1(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0]).is_err()
        );
        assert!(check_state_vector_v1(&[1, 1, 0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
        // A content reference past 15: yrs reads only the low 4 bits (a string), browsers throw.
        let u = hex::decode(
            "0101020c3401020100022800012d01790177017a02010300051ffeffffff0701340102010002",
        )
        .unwrap();
        assert!(
            check_update_v1(&u)
                .unwrap_err()
                .reason
                .contains("content reference")
        );
        // Counts larger than the input never allocate: they run out of bytes.
        assert!(check_update_v1(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
/// A measurement, run by hand (README, "Fuzzing the hub"): the check next to yrs' own decode.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod cost {
    #[test]
    #[ignore = "a measurement; run with --release --ignored"]
    fn update_check_costs_little_next_to_yrs_decode() {
        use yrs::updates::decoder::Decode;
        use yrs::{ReadTxn, StateVector, Text, Transact, Update};
        let d = yrs::Doc::with_client_id(1);
        let t = d.get_or_insert_text("t");
        let mut updates = Vec::new();
        for i in 0..20_000u32 {
            let before = d.transact().state_vector();
            t.insert(&mut d.transact_mut(), (i * 7919) % (i + 1), "ab");
            updates.push(d.transact().encode_diff_v1(&before));
        }
        let full = d
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        // The best of 7 runs each: the machine may be shared.
        let time = |f: &dyn Fn()| {
            (0..7)
                .map(|_| {
                    let s = std::time::Instant::now();
                    f();
                    s.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        let check = time(&|| {
            for u in &updates {
                super::check_update_v1(u).unwrap();
            }
        });
        let decode = time(&|| {
            for u in &updates {
                Update::decode_v1(u).unwrap();
            }
        });
        let check_full = time(&|| super::check_update_v1(&full).unwrap());
        let decode_full = time(&|| {
            Update::decode_v1(&full).unwrap();
        });
        eprintln!(
            "20,000 one-edit updates: check {check:?}, yrs decode {decode:?}; \
             full state of {} bytes: check {check_full:?}, yrs decode {decode_full:?}",
            full.len()
        );
        assert!(check < decode && check_full < decode_full);
    }
}
