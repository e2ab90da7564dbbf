//! Tidy tests (rust-analyzer's habit): they read the tree and run nothing, and fail when an
//! invariant the architecture states stops holding. Each rule is a pure function over
//! (path, text), unit-tested in `rules.rs` on a synthetic violation, so every rule is shown to fail.
//!
//! The rules, precisely:
//! 1. `crates/sync` and `crates/agent` depend on neither axum nor Tauri: no `axum*` or `tauri*`
//!    dependency in any dependency table of their Cargo.toml, nor in the normal dependencies of
//!    the workspace crates they depend on, transitively.
//! 2. Libraries do not print: no `println!`, `eprintln!`, `print!`, `eprint!` or `dbg!` in
//!    `crates/*/src/**/*.rs`, except `src/main.rs`, `src/bin/**`, code under `#[cfg(test)]`, and
//!    the test kit itself (`crates/testkit`, whose soak prints its seed so a failure replays),
//!    and crates that are only a program (no `src/lib.rs`: the CLI).
//!    Line comments do not count.
//! 3. Only the device crate calls the lease endpoints: no string with a `/lease` path segment
//!    in production code (`crates/*/src`, `src-tauri/src`, `ui/src`; not under `#[cfg(test)]`)
//!    outside `crates/device/`; the server's own route table (`.route(` lines in
//!    `crates/cloud-agent/src`) is not a call.
//! 4. Update subscriptions go through `observe_updates`: no raw yrs update observer
//!    (`.observe_update_v1(`, `_v2`, `.observe_after_transaction(`, `.observe_transaction_cleanup(`,
//!    `.observe_subdocs(`, or their `_with` forms) in production code outside the file that
//!    defines `observe_updates`.
//! 5. ARCHITECTURE.md names only files that exist: every path it writes from the repository root
//!    (`crates/…/x.rs`, `src-tauri/…`, `tests/…`; `{a,b}` expanded), and, in its code map, every
//!    file name it lists under a crate's entry (`runner.rs`, `doc/signal.rs`) — found in that
//!    crate.
//! 6. No `.rs` file passes 800 lines without a stated reason: a `- \`path\`: reason` line in
//!    ARCHITECTURE.md's "Files over 800 lines" section, or an entry of [`LONG_FILES`] here.
//!
//! Allow-lists hold today's offenders that other work of this session removes; an entry that no
//! longer offends fails the suite, so the lists only shrink.

mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rules::*;

/// Files over the size limit whose reason is not (yet) in ARCHITECTURE.md's "Files over 800 lines".
const LONG_FILES: &[(&str, &str)] = &[];

/// Libraries that print today, with their reason.
const PRINTS: &[(&str, &str)] = &[
    // `jarvis-cloud serve`'s stdout is its interface to its supervisor and to the test harness
    // (`listening on <addr>`, the first-start admin token), printed once by `serve`.
    (
        "crates/cloud-agent/src/server.rs",
        "the server's stdout contract with its supervisor: listening address, first token",
    ),
    // The one-time setup code and the address to open: for the operator's console only, never
    // the log (a log line would keep the code where others read it).
    (
        "crates/cloud-agent/src/onboarding/mod.rs",
        "the setup code goes to the operator's console, never to the log",
    ),
];

/// Raw update observers today, outside `observe_updates`.
const RAW_OBSERVERS: &[(&str, &str)] = &[];

/// Paths ARCHITECTURE.md names that are not there today.
const MISSING_IN_ARCHITECTURE: &[(&str, &str)] = &[];

// ---------------------------------------------------------------------------------------------
// The tree.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// Every source file of the repository: relative `/` path → text. Build output, dependencies
/// and hidden folders are not the project's.
fn tree() -> &'static BTreeMap<String, String> {
    static TREE: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
    TREE.get_or_init(read_tree)
}

fn read_tree() -> BTreeMap<String, String> {
    let root = root();
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("reading the tree").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                if !(name.starts_with('.')
                    || name == "node_modules"
                    || name.starts_with("target")
                    || name == "dist"
                    || name == "gen")
                {
                    dirs.push(e.path());
                }
            } else if kind.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(&root)
                    .expect("inside the root")
                    .to_string_lossy()
                    .replace('\\', "/");
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.insert(rel, text);
            }
        }
    }
    out
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Fails with every offence not allowed, and every allowance no longer needed.
fn verdict(rule: &str, offences: BTreeMap<String, Vec<usize>>, allowed: &[(&str, &str)]) {
    let allowed: BTreeSet<&str> = allowed.iter().map(|(p, _)| *p).collect();
    let mut problems = Vec::new();
    for (path, lines) in &offences {
        if !allowed.contains(path.as_str()) {
            problems.push(format!("{path}: lines {lines:?}"));
        }
    }
    for path in &allowed {
        if !offences.contains_key(*path) {
            problems.push(format!(
                "{path} is allowed but no longer offends: remove it from the list"
            ));
        }
    }
    assert!(problems.is_empty(), "{rule}:\n{}", problems.join("\n"));
}

fn by_file(check: impl Fn(&str, &str) -> Vec<usize>) -> BTreeMap<String, Vec<usize>> {
    tree()
        .iter()
        .map(|(p, t)| (p.clone(), check(p, t)))
        .filter(|(_, lines)| !lines.is_empty())
        .collect()
}

#[test]
fn sync_and_agent_depend_on_neither_axum_nor_tauri() {
    // Package name → folder, for following workspace dependencies.
    let packages: BTreeMap<String, String> = tree()
        .iter()
        .filter(|(p, _)| p.ends_with("/Cargo.toml") || p.as_str() == "Cargo.toml")
        .filter_map(|(p, t)| {
            let name = t
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))?
                .trim_matches('"')
                .to_owned();
            Some((
                name,
                p.trim_end_matches("Cargo.toml")
                    .trim_end_matches('/')
                    .to_owned(),
            ))
        })
        .collect();
    for start in ["crates/sync", "crates/agent"] {
        let mut seen = BTreeSet::new();
        let mut todo = vec![(start.to_owned(), true)];
        while let Some((dir, direct)) = todo.pop() {
            if !seen.insert(dir.clone()) {
                continue;
            }
            let toml = read(&format!("{dir}/Cargo.toml"));
            let web = web_dependencies(&toml, direct);
            assert!(web.is_empty(), "{start} depends on {web:?} (through {dir})");
            for d in dependencies(&toml, false) {
                if let Some(next) = packages.get(&d) {
                    todo.push((next.clone(), false));
                }
            }
        }
        assert!(
            seen.contains("crates/sync"),
            "{start}: the walk reached jarvis-sync"
        );
    }
}

#[test]
fn libraries_do_not_print() {
    // A crate without a library target (the CLI) is a program: its modules may print.
    let binary_only = |path: &str| {
        path.strip_prefix("crates/")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(krate, _)| {
                tree().contains_key(&format!("crates/{krate}/src/main.rs"))
                    && !tree().contains_key(&format!("crates/{krate}/src/lib.rs"))
            })
    };
    verdict(
        "a library prints",
        by_file(|p, t| prints(p, t, binary_only(p))),
        PRINTS,
    );
}

#[test]
fn only_the_device_crate_calls_the_lease_endpoints() {
    verdict(
        "lease endpoint called outside the device crate",
        by_file(lease_calls),
        &[],
    );
}

#[test]
fn update_subscriptions_go_through_observe_updates() {
    let definers: Vec<&String> = tree()
        .iter()
        .filter(|(p, t)| p.starts_with("crates/sync/src/") && defines_observe_updates(t))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        definers.len(),
        1,
        "observe_updates is defined once in crates/sync: {definers:?}"
    );
    verdict("raw update observer", by_file(raw_observers), RAW_OBSERVERS);
}

#[test]
fn architecture_names_only_files_that_exist() {
    let files: BTreeSet<String> = tree().keys().cloned().collect();
    let mut missing: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (line, named) in architecture_paths(&read("ARCHITECTURE.md")) {
        if !exists(&named, &files) {
            let shown = match named {
                Named::Root(p) => p,
                Named::InCrate(k, n) => format!("{n} (under {k})"),
            };
            missing.entry(shown).or_default().push(line);
        }
    }
    verdict(
        "ARCHITECTURE.md names a file that is not there",
        missing,
        MISSING_IN_ARCHITECTURE,
    );
}

#[test]
fn long_files_have_a_stated_reason() {
    let stated = stated_long_files(&read("ARCHITECTURE.md"));
    let long: BTreeMap<String, Vec<usize>> = tree()
        .iter()
        .filter(|(p, t)| too_long(p, t) && !stated.contains(p.as_str()))
        .map(|(p, t)| (p.clone(), vec![t.lines().count()]))
        .collect();
    verdict(
        &format!("a file over {SIZE_LIMIT} lines without a reason"),
        long,
        LONG_FILES,
    );
}

#[test]
fn verdict_fails_on_an_offence_and_on_a_stale_allowance() {
    let offences: BTreeMap<String, Vec<usize>> = [("a.rs".to_owned(), vec![3])].into();
    let unallowed = std::panic::catch_unwind(|| verdict("r", offences.clone(), &[]));
    assert!(unallowed.is_err());
    let stale = std::panic::catch_unwind(|| {
        verdict("r", offences.clone(), &[("a.rs", "x"), ("b.rs", "y")])
    });
    assert!(stale.is_err());
    verdict("r", offences, &[("a.rs", "x")]);
}
