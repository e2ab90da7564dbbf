//! The cloud agent's layout, read from its sources (nothing runs): no import cycle between its
//! files, and files small enough to read.
//!
//! An edge `a -> b` is a path in `a` that names `crate::…` and resolves to the file `b` (the
//! longest prefix of the path that is a module with a file of its own), or a `use` of a child
//! module (`pub use clock::Clock` in `schedule/mod.rs`). Test modules (`#[cfg(test)]` and
//! after) and comments do not count. `super::` outside tests is refused: cross-file references
//! say `crate::…`, so this test sees them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/lib.rs` is the crate root (empty).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("main") if parts.len() == 1 => return None, // the binary: its own crate
        Some("lib") if parts.len() == 1 => parts.clear(),
        Some("mod") => {
            parts.pop();
        }
        _ => {}
    }
    Some(parts.join("::"))
}

/// The text that counts: before the test module (a `mod` under `#[cfg(test)]`), without
/// comments. A `#[cfg(test)]` item elsewhere does not end the code.
fn code_of(text: &str) -> String {
    let mut end = text.len();
    let mut at = 0;
    let mut test_attr = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            test_attr = true;
        } else if t.starts_with("#[") {
            // Further attributes of the same item.
        } else if test_attr && (t.starts_with("mod ") || t.starts_with("pub mod ")) {
            end = at;
            break;
        } else {
            test_attr = false;
        }
        at += line.len();
    }
    let text = &text[..end];
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") {
                ""
            } else if let Some(i) = l.find(" // ") {
                &l[..i]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a `use` tree names, each as segments: `a::{b, c::{d, e}}` is `a::b`, `a::c::d`,
/// `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    // Split at top-level `{`.
    if let Some(open) = tree.find('{') {
        let prefix: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut out = Vec::new();
        let (mut depth, mut start) = (0, 0);
        let bytes: Vec<char> = inner.chars().collect();
        let mut items = Vec::new();
        for (i, c) in bytes.iter().enumerate() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(bytes[start..i].iter().collect::<String>());
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(bytes[start..].iter().collect::<String>());
        for item in items.iter().filter(|s| !s.trim().is_empty()) {
            for rest in expand(item) {
                let mut p = prefix.clone();
                p.extend(rest);
                out.push(p);
            }
        }
        out
    } else {
        let path = tree.split(" as ").next().unwrap_or_default();
        vec![
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty() && *s != "self")
                .map(str::to_owned)
                .collect(),
        ]
    }
}

/// The module a path names: the longest prefix that is a module with a file.
fn resolve(modules: &BTreeSet<String>, segments: &[String]) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Edges of the crate under `src`, and `super::` uses outside tests (refused).
fn graph(src: &Path) -> (Graph, Vec<String>) {
    let files: Vec<(String, String)> = sources(src)
        .into_iter()
        .filter_map(|f| {
            let m = module_of(src, &f)?;
            Some((m, code_of(&std::fs::read_to_string(&f).unwrap())))
        })
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = Graph::new();
    let mut supers = Vec::new();
    for (module, code) in &files {
        let edges = g.entry(module.clone()).or_default();
        let mut add = |segments: &[String]| {
            if let Some(to) = resolve(&modules, segments)
                && &to != module
                && !to.is_empty()
            {
                edges.insert(to);
            }
        };
        // `use` statements: `crate::` trees and children of this module.
        let mut uses = Vec::new();
        let mut at = 0;
        for line in code.split_inclusive('\n') {
            let t = line.trim_start();
            let t = t
                .strip_prefix("pub(crate) ")
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            if let Some(rest) = t.strip_prefix("use ") {
                let start = at + (line.len() - rest.len());
                let end = code[start..].find(';').map_or(code.len(), |e| start + e);
                uses.push(&code[start..end]);
            }
            at += line.len();
        }
        for tree in uses {
            for path in expand(tree) {
                match path.first().map(String::as_str) {
                    Some("crate") => add(&path[1..]),
                    Some("super") => supers.push(format!("{module}: use {}", path.join("::"))),
                    Some(first) => {
                        let child = if module.is_empty() {
                            first.to_owned()
                        } else {
                            format!("{module}::{first}")
                        };
                        if modules.contains(&child) {
                            let mut full: Vec<String> =
                                child.split("::").map(str::to_owned).collect();
                            full.extend(path[1..].iter().cloned());
                            add(&full);
                        }
                    }
                    None => {}
                }
            }
        }
        // Paths written inline: `crate::sessions::summary(…)`.
        let mut rest = code.as_str();
        while let Some(i) = rest.find("crate::") {
            let preceded = rest[..i].chars().next_back().is_some_and(is_ident);
            rest = &rest[i + "crate::".len()..];
            if preceded {
                continue;
            }
            let segments: Vec<String> = rest
                .split("::")
                .map_while(|s| {
                    let id: String = s.chars().take_while(|c| is_ident(*c)).collect();
                    let whole = id.len() == s.len();
                    (!id.is_empty()).then_some((id, whole))
                })
                .scan(true, |go, (id, whole)| {
                    let out = go.then_some(id);
                    *go = whole;
                    out
                })
                .collect();
            add(&segments);
        }
    }
    (g, supers)
}

/// A cycle in `g` (its files in order, the first repeated at the end), if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        g: &Graph,
        n: &str,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_owned(), Mark::Open);
        stack.push(n.to_owned());
        for m in g.get(n).into_iter().flatten() {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(g, m, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in g.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(g, n, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_import_cycle_between_files() {
    let (g, supers) = graph(&src());
    assert!(
        supers.is_empty(),
        "cross-file paths must say crate::… (so this test sees them): {supers:#?}"
    );
    // The layout this crate promises (ARCHITECTURE.md): the leaf HTTP layer names no feature.
    for (from, to) in &g {
        if from == "http" || from.starts_with("http::") {
            let bad: Vec<_> = to
                .iter()
                .filter(|t| {
                    !(t.starts_with("http")
                        || ["control", "limits", "access"].contains(&t.as_str()))
                })
                .collect();
            assert!(
                bad.is_empty(),
                "{from} (the leaf HTTP layer) imports {bad:?}"
            );
        }
    }
    if let Some(c) = cycle(&g) {
        panic!("import cycle between files: {}", c.join(" -> "));
    }
    // The graph is really read: the app puts the features together.
    assert!(
        g["app"].contains("gateway") && g["app"].contains("schedule"),
        "{:?}",
        g["app"]
    );
}

#[test]
fn the_cycle_check_finds_a_cycle_and_passes_a_tree() {
    let g = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
            g.entry((*b).to_owned()).or_default();
        }
        g
    };
    // The cycle this crate had: api held the features' routers, and they imported api back.
    let c = cycle(&g(&[
        ("api", "gateway"),
        ("gateway", "control"),
        ("schedule", "api"),
        ("api", "schedule"),
    ]))
    .expect("api <-> schedule is a cycle");
    assert_eq!(c.first(), c.last());
    assert!(
        c.contains(&"api".to_owned()) && c.contains(&"schedule".to_owned()),
        "{c:?}"
    );
    assert!(cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).is_some());
    assert!(
        cycle(&g(&[
            ("app", "api"),
            ("app", "schedule"),
            ("schedule", "services"),
            ("api", "services")
        ]))
        .is_none()
    );
}

#[test]
fn use_trees_and_inline_paths_are_read() {
    let p = expand("crate::{http::{ApiError, Caller}, services::Services as S}");
    assert_eq!(
        p,
        vec![
            vec!["crate", "http", "ApiError"],
            vec!["crate", "http", "Caller"],
            vec!["crate", "services", "Services"],
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path();
    std::fs::create_dir_all(s.join("a")).unwrap();
    std::fs::write(s.join("lib.rs"), "pub mod a; pub mod b;").unwrap();
    std::fs::write(s.join("a/mod.rs"), "pub mod c;\npub use c::X;\n").unwrap();
    std::fs::write(
        s.join("a/c.rs"),
        "fn f() { crate::b::g(); } // crate::a::x\n",
    )
    .unwrap();
    std::fs::write(
        s.join("b.rs"),
        "use crate::a::{self, c::X};\n#[cfg(test)]\nmod tests { use super::*; use crate::a::c; }\n",
    )
    .unwrap();
    let (g, supers) = graph(s);
    assert!(supers.is_empty());
    assert_eq!(g["a"], BTreeSet::from(["a::c".to_owned()]));
    assert_eq!(g["a::c"], BTreeSet::from(["b".to_owned()]));
    assert_eq!(g["b"], BTreeSet::from(["a".to_owned(), "a::c".to_owned()]));
    let c = cycle(&g).expect("b -> a::c -> b through a real source tree");
    assert!(
        c.contains(&"b".to_owned()) && c.contains(&"a::c".to_owned()),
        "{c:?}"
    );
}

/// Files past this are split by job; the two listed are moving out of this crate this round
/// (the control plane to `crates/control`, the cloud runner's device half to `crates/device`).
#[test]
fn files_stay_readable() {
    const MAX_LINES: usize = 800;
    const MOVING: &[&str] = &["control.rs", "runner.rs"];
    let src = src();
    let long: Vec<_> = sources(&src)
        .into_iter()
        .filter(|f| !MOVING.contains(&f.strip_prefix(&src).unwrap().to_string_lossy().as_ref()))
        .filter_map(|f| {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these by job: {long:#?}");
}

/// The other libraries hold no import cycle between their files either (their `super::`
/// paths inside a folder module are allowed; the `crate::` edges are what could go round).
#[test]
fn no_import_cycle_in_the_other_libraries() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut read = 0;
    for name in ["sync", "agent", "device", "control", "wire"] {
        let src = crates.join(name).join("src");
        let (g, _) = graph(&src);
        read += g.len();
        if let Some(c) = cycle(&g) {
            panic!(
                "import cycle between files of crates/{name}: {}",
                c.join(" -> ")
            );
        }
    }
    assert!(read > 50, "only {read} modules read");
}
