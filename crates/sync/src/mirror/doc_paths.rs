//! Which folder paths show which file document, so a remote edit of one document rewrites
//! exactly the files that show it.
//!
//! Several index entries may name one document (a hostile peer can write any index; a
//! tombstone keeps the document of the file it deleted), so this is a map to a set of paths,
//! and a path is only recorded once the mirror has accepted it for writing: a refused entry
//! sharing a document must never take the document away from the file that shows it.

use std::collections::{BTreeSet, HashMap};

#[derive(Default)]
pub(super) struct DocPaths {
    by_doc: HashMap<String, BTreeSet<String>>,
    by_path: HashMap<String, String>,
}

impl DocPaths {
    /// `path` shows `doc` (and no longer whatever document it showed before).
    pub(super) fn set(&mut self, path: &str, doc: &str) {
        if let Some(old) = self.by_path.insert(path.to_owned(), doc.to_owned()) {
            if old == doc {
                return;
            }
            if let Some(paths) = self.by_doc.get_mut(&old) {
                paths.remove(path);
                if paths.is_empty() {
                    self.by_doc.remove(&old);
                }
            }
        }
        self.by_doc
            .entry(doc.to_owned())
            .or_default()
            .insert(path.to_owned());
    }

    /// The paths showing any of `docs`, and the documents no path is known for.
    pub(super) fn paths_of<'a>(
        &self,
        docs: impl IntoIterator<Item = &'a String>,
    ) -> (BTreeSet<String>, Vec<&'a String>) {
        let mut paths = BTreeSet::new();
        let mut unknown = Vec::new();
        for d in docs {
            match self.by_doc.get(d) {
                Some(p) => paths.extend(p.iter().cloned()),
                None => unknown.push(d),
            }
        }
        (paths, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_shown_at_two_paths_reaches_both_and_a_moved_path_leaves_its_old_document() {
        let mut m = DocPaths::default();
        m.set("a.txt", "d1");
        m.set("copy.txt", "d1");
        m.set("b.txt", "d2");
        let d1 = "d1".to_owned();
        let (paths, unknown) = m.paths_of([&d1]);
        assert_eq!(paths, BTreeSet::from(["a.txt".into(), "copy.txt".into()]));
        assert!(unknown.is_empty());
        m.set("copy.txt", "d2");
        let (paths, _) = m.paths_of([&d1]);
        assert_eq!(paths, BTreeSet::from(["a.txt".to_owned()]));
        let d3 = "d3".to_owned();
        let (paths, unknown) = m.paths_of([&d3]);
        assert!(paths.is_empty());
        assert_eq!(unknown, vec![&d3]);
    }
}
