//! `ws/<workspace>/file/<id>`: Y.Text `content`, one text file. Offsets are UTF-8 byte offsets
//! (yrs' default offset kind) and must fall on character boundaries; an offset that does not is
//! an error, never a split character.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use similar::{ChangeTag, TextDiff};
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, TextRef, Transact, TransactionMut};

use super::DocError;

const CONTENT: &str = "content";

/// The typed view of a file document.
#[derive(Clone)]
pub struct FileText {
    doc: Doc,
    text: TextRef,
    /// The document state at which the text was last known to be pure ASCII (where every
    /// offset is a character boundary). Only insertions can add a non-ASCII character, and
    /// every insertion moves the state vector, so an unchanged state vector proves the text is
    /// still ASCII without reading it: the keystroke path stays O(1).
    ascii_at: Arc<Mutex<Option<StateVector>>>,
}

impl FileText {
    pub fn new(doc: Doc) -> Self {
        let text = doc.get_or_insert_text(CONTENT);
        FileText {
            doc,
            text,
            ascii_at: Arc::default(),
        }
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    pub fn text(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.text.len(&self.doc.transact())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `offset` (and `offset + len`) are inside the text and on character
    /// boundaries. Appending at the end or inserting at 0 needs no read of the text; anything
    /// else reads it once.
    fn check(&self, txn: &TransactionMut, offset: u32, len: u32) -> Result<(), DocError> {
        let total = self.text.len(txn);
        let end = offset
            .checked_add(len)
            .ok_or(DocError::OutOfRange { offset, len: total })?;
        if end > total {
            return Err(DocError::OutOfRange {
                offset: end,
                len: total,
            });
        }
        let interior = |o: u32| o != 0 && o != total;
        if !(interior(offset) || interior(end)) {
            return Ok(());
        }
        let sv = txn.state_vector();
        let mut ascii_at = self.ascii_at.lock().unwrap_or_else(|p| p.into_inner());
        if ascii_at.as_ref() == Some(&sv) {
            return Ok(());
        }
        let s = self.text.get_string(txn);
        for o in [offset, end] {
            if !s.is_char_boundary(o as usize) {
                return Err(DocError::NotCharBoundary(o));
            }
        }
        *ascii_at = s.is_ascii().then_some(sv);
        Ok(())
    }

    /// After an insertion of ASCII text into ASCII text, the text is still ASCII at the new
    /// state; remember that so the next edit need not read the text.
    fn note_insert(&self, txn: &TransactionMut, before: Option<StateVector>, s: &str) {
        let mut ascii_at = self.ascii_at.lock().unwrap_or_else(|p| p.into_inner());
        *ascii_at = match before {
            Some(b) if s.is_ascii() && ascii_at.as_ref() == Some(&b) => Some(txn.state_vector()),
            _ => None,
        };
    }

    pub fn insert(&self, offset: u32, s: &str) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        self.check(&txn, offset, 0)?;
        let before = txn.state_vector();
        self.text.insert(&mut txn, offset, s);
        self.note_insert(&txn, Some(before), s);
        Ok(())
    }

    pub fn delete(&self, offset: u32, len: u32) -> Result<(), DocError> {
        let mut txn = self.doc.transact_mut();
        self.check(&txn, offset, len)?;
        self.text.remove_range(&mut txn, offset, len);
        Ok(())
    }

    /// Replaces the whole text (one delete, one insert). Prefer [`apply_text_diff`]
    /// (Self::apply_text_diff), which keeps concurrent edits elsewhere in the file intact.
    pub fn replace_all(&self, s: &str) {
        let mut txn = self.doc.transact_mut();
        let len = self.text.len(&txn);
        self.text.remove_range(&mut txn, 0, len);
        self.text.insert(&mut txn, 0, s);
    }

    /// Turns the difference between the current text and `new` into minimal Y.Text edits, in
    /// one transaction: a line diff first, each changed run refined by a character diff, so two
    /// devices editing different words of one line both keep their edits. Returns the number of
    /// edit operations applied.
    pub fn apply_text_diff(&self, new: &str) -> usize {
        let mut txn = self.doc.transact_mut();
        self.diff_into(&mut txn, new)
    }

    /// [`apply_text_diff`](Self::apply_text_diff) that also returns, from the same transaction,
    /// the state before the edit (as an update from `covered`), that state's vector, and
    /// exactly the update the edit made (v1): the file mirror records them as its sync base
    /// without picking up a remote change that arrives a moment before or after.
    pub fn apply_text_diff_update(
        &self,
        new: &str,
        covered: &StateVector,
    ) -> (Vec<u8>, StateVector, Vec<u8>) {
        let mut txn = self.doc.transact_mut();
        let before = txn.encode_state_as_update_v1(covered);
        let before_sv = txn.state_vector();
        self.diff_into(&mut txn, new);
        (before, before_sv, txn.encode_update_v1())
    }

    /// The text, with the state it is the text of (as an update from `covered`) and that
    /// state's vector, read in one transaction.
    pub fn text_with_state(&self, covered: &StateVector) -> (String, Vec<u8>, StateVector) {
        let txn = self.doc.transact();
        (
            self.text.get_string(&txn),
            txn.encode_state_as_update_v1(covered),
            txn.state_vector(),
        )
    }

    fn diff_into(&self, txn: &mut TransactionMut<'_>, new: &str) -> usize {
        let old = self.text.get_string(txn);
        if old == new {
            return 0;
        }
        let lines = TextDiff::configure()
            .timeout(Duration::from_millis(200))
            .diff_lines(old.as_str(), new);
        let mut pos: u32 = 0;
        let mut ops = 0;
        let mut deleted = String::new();
        let mut inserted = String::new();
        let changes: Vec<(ChangeTag, &str)> = lines
            .iter_all_changes()
            .map(|c| (c.tag(), c.value()))
            .collect();
        let mut i = 0;
        while i < changes.len() {
            let (tag, value) = changes[i];
            if tag == ChangeTag::Equal {
                pos += value.len() as u32;
                i += 1;
                continue;
            }
            // A run of deletions and insertions: refine it character by character.
            deleted.clear();
            inserted.clear();
            while i < changes.len() && changes[i].0 != ChangeTag::Equal {
                match changes[i].0 {
                    ChangeTag::Delete => deleted.push_str(changes[i].1),
                    _ => inserted.push_str(changes[i].1),
                }
                i += 1;
            }
            // Character diffs report one change per character; apply each run of same-kind
            // changes as one edit (one Y.Text item, one position lookup), or a pasted page
            // would become thousands of items.
            let mut runs: Vec<(ChangeTag, String)> = Vec::new();
            if deleted.is_empty() || inserted.is_empty() {
                let tag = if deleted.is_empty() {
                    ChangeTag::Insert
                } else {
                    ChangeTag::Delete
                };
                runs.push((
                    tag,
                    if deleted.is_empty() {
                        inserted.clone()
                    } else {
                        deleted.clone()
                    },
                ));
            } else {
                let chars = TextDiff::configure()
                    .timeout(Duration::from_millis(50))
                    .diff_chars(deleted.as_str(), inserted.as_str());
                for c in chars.iter_all_changes() {
                    match runs.last_mut() {
                        Some((tag, buf)) if *tag == c.tag() => buf.push_str(c.value()),
                        _ => runs.push((c.tag(), c.value().to_owned())),
                    }
                }
            }
            for (tag, value) in runs {
                let len = value.len() as u32;
                match tag {
                    ChangeTag::Equal => pos += len,
                    ChangeTag::Delete => {
                        self.text.remove_range(txn, pos, len);
                        ops += 1;
                    }
                    ChangeTag::Insert => {
                        self.text.insert(txn, pos, &value);
                        pos += len;
                        ops += 1;
                    }
                }
            }
        }
        ops
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::doc::sync_replicas;

    #[test]
    fn edits_and_offset_errors() {
        let f = FileText::new(Doc::new());
        f.insert(0, "héllo").unwrap();
        f.insert(6, " world").unwrap();
        assert_eq!(f.text(), "héllo world");
        assert_eq!(f.insert(2, "x"), Err(DocError::NotCharBoundary(2)));
        assert!(matches!(
            f.insert(99, "x"),
            Err(DocError::OutOfRange { .. })
        ));
        assert_eq!(f.delete(1, 1), Err(DocError::NotCharBoundary(2)));
        assert!(matches!(f.delete(10, 5), Err(DocError::OutOfRange { .. })));
        f.delete(1, 2).unwrap();
        assert_eq!(f.text(), "hllo world");
        f.replace_all("new");
        assert_eq!(f.text(), "new");
    }

    #[test]
    fn ascii_fast_path_notices_remote_non_ascii() {
        let a = FileText::new(Doc::new());
        a.insert(0, "abcdef").unwrap();
        a.insert(3, "-").unwrap(); // interior: reads once, remembers "ASCII"
        a.insert(2, "+").unwrap(); // fast path
        let b = FileText::new(Doc::new());
        sync_replicas(a.doc(), b.doc());
        b.insert(1, "é").unwrap();
        sync_replicas(a.doc(), b.doc());
        assert_eq!(a.text(), "aéb+c-def");
        // Byte 2 is inside 'é' now; the cached "ASCII" must not be trusted.
        assert_eq!(a.insert(2, "x"), Err(DocError::NotCharBoundary(2)));
        a.delete(1, 2).unwrap();
        assert_eq!(a.text(), "ab+c-def");
    }

    /// Scenario table: base text, then each replica's whole-file rewrite (as an editor saving
    /// the file would produce), and what must be in the merged result.
    #[test]
    fn concurrent_diffs_from_two_replicas_merge() {
        let cases = [
            (
                "fn main() {\n    println!(\"hi\");\n}\n",
                "fn main() {\n    println!(\"hi there\");\n}\n",
                "// entry point\nfn main() {\n    println!(\"hi\");\n}\n",
                vec!["hi there", "// entry point"],
            ),
            (
                "the quick fox\n",
                "the quick brown fox\n",
                "the very quick fox\n",
                vec!["very quick brown fox"],
            ),
            ("a\nb\nc\n", "a\nc\n", "a\nb\nc\nd\n", vec!["a\nc\nd\n"]),
            ("ünïcødé\n", "ünïcødé 🎉\n", "ÜNïcødé\n", vec!["ÜNïcødé 🎉"]),
        ];
        for (base, left, right, must) in cases {
            let a = FileText::new(Doc::new());
            a.replace_all(base);
            let b = FileText::new(Doc::new());
            sync_replicas(a.doc(), b.doc());
            assert!(a.apply_text_diff(left) > 0);
            assert!(b.apply_text_diff(right) > 0);
            assert_eq!(a.text(), left);
            sync_replicas(a.doc(), b.doc());
            assert_eq!(a.text(), b.text());
            for m in must {
                assert!(a.text().contains(m), "{:?} lacks {m:?}", a.text());
            }
        }
        let f = FileText::new(Doc::new());
        assert_eq!(f.apply_text_diff(""), 0);
        // A whole new text is one edit, not one per character.
        let page = "lorem ipsum\n".repeat(1000);
        assert_eq!(f.apply_text_diff(&page), 1);
        assert_eq!(f.text(), page);
    }
}
