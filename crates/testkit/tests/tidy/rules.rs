//! The tidy rules, each a pure function over (path, text) or a document's text, and each shown
//! to fail on a deliberate violation (the tests at the end).

use std::collections::BTreeSet;

/// Who may call the lease endpoints: the device crate, and the CLI's device code until it moves
/// into `crates/device` (issue 17, this session).
pub const LEASE_CLIENTS: &[&str] = &["crates/device/"];

pub const SIZE_LIMIT: usize = 800;

/// Per line: whether it is inside an item marked `#[cfg(test)]` (the attribute, the item, its
/// body). Relies on rustfmt's layout: a block item ends at the first later line that is its
/// indentation followed by `}`.
pub fn test_lines(text: &str) -> Vec<bool> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = vec![false; lines.len()];
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("#[cfg(test)]") {
            let start = i;
            let mut item = i + 1;
            while item < lines.len() && lines[item].trim_start().starts_with("#[") {
                item += 1;
            }
            let Some(line) = lines.get(item) else { break };
            let indent = line.len() - line.trim_start().len();
            let mut end = item;
            if !line.trim_end().ends_with(';') {
                let close = format!("{}}}", &line[..indent]);
                end = (item + 1..lines.len())
                    .find(|&j| {
                        lines[j].trim_end().starts_with(&close)
                            && lines[j].len() - lines[j].trim_start().len() == indent
                    })
                    .unwrap_or(lines.len() - 1);
            }
            for flag in &mut out[start..=end] {
                *flag = true;
            }
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// `text` of a line without its `//` comment (a `//` inside a string literal is kept).
pub fn code_of(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_str = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b'/' if !in_str && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

pub fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `code` calls the macro or method `name` (`name` preceded by a non-identifier byte).
pub fn has_token(code: &str, name: &str) -> bool {
    code.match_indices(name)
        .any(|(i, _)| i == 0 || !is_ident(code.as_bytes()[i - 1]))
}

/// Lines (1-based) outside test code with a live line matching `hit`.
pub fn offending_lines(text: &str, hit: impl Fn(&str) -> bool) -> Vec<usize> {
    let tests = test_lines(text);
    text.lines()
        .enumerate()
        .filter(|(i, l)| !tests[*i] && hit(code_of(l)))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Rule 1: the axum and Tauri dependencies a Cargo.toml declares (`dev`: also dev-dependencies).
pub fn web_dependencies(cargo_toml: &str, dev: bool) -> Vec<String> {
    dependencies(cargo_toml, dev)
        .into_iter()
        .filter(|d| {
            d == "axum" || d.starts_with("axum-") || d == "tauri" || d.starts_with("tauri-")
        })
        .collect()
}

/// The names of the dependencies a Cargo.toml declares, in `[dependencies]`,
/// `[build-dependencies]`, `[target.….dependencies]` (and `[dev-dependencies]` if `dev`),
/// written as `name = …`, `name.workspace = true` or `[dependencies.name]`.
pub fn dependencies(cargo_toml: &str, dev: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_deps = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let header = header.trim_matches(['[', ']']);
            let table = header.rsplit('.').next().unwrap_or_default();
            let is_deps = |t: &str| {
                t == "dependencies" || t == "build-dependencies" || (dev && t == "dev-dependencies")
            };
            if is_deps(table) {
                in_deps = true;
            } else if let Some((parent, name)) = header.rsplit_once('.')
                && is_deps(parent.rsplit('.').next().unwrap_or_default())
            {
                // `[dependencies.name]`
                out.push(name.trim_matches('"').to_owned());
                in_deps = false;
            } else {
                in_deps = false;
            }
            continue;
        }
        if in_deps
            && !line.starts_with('#')
            && let Some((key, _)) = line.split_once('=')
        {
            let name = key.trim().split('.').next().unwrap_or_default();
            if !name.is_empty() {
                out.push(name.trim_matches('"').to_owned());
            }
        }
    }
    out
}

/// Whether rule 2 applies to the file at `path` (relative, `/`-separated).
pub fn is_printing_library(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("crates/") else {
        return false;
    };
    let Some((krate, in_crate)) = rest.split_once('/') else {
        return false;
    };
    krate != "testkit"
        && path.ends_with(".rs")
        && in_crate.starts_with("src/")
        && in_crate != "src/main.rs"
        && !in_crate.starts_with("src/bin/")
}

/// Rule 2: the lines of a library file that print. `binary_only`: the file's crate has no
/// library target (no `src/lib.rs`), so all of it is the program and may print.
pub fn prints(path: &str, text: &str, binary_only: bool) -> Vec<usize> {
    if binary_only || !is_printing_library(path) {
        return Vec::new();
    }
    offending_lines(text, |code| {
        ["println!", "eprintln!", "print!", "eprint!", "dbg!"]
            .iter()
            .any(|m| has_token(code, m))
    })
}

/// Production code: what rules 3 and 4 read.
pub fn is_production(path: &str) -> bool {
    let rust_src = ((path.starts_with("crates/") && path.contains("/src/"))
        || path.starts_with("src-tauri/src/"))
        && path.ends_with(".rs")
        && !path.starts_with("crates/testkit/");
    let ui_src = path.starts_with("ui/src/")
        && (path.ends_with(".ts") || path.ends_with(".tsx"))
        && !path.contains(".test.");
    rust_src || ui_src
}

/// Rule 3: the lines that name a lease endpoint, in a file that may not.
pub fn lease_calls(path: &str, text: &str) -> Vec<usize> {
    if !is_production(path) || LEASE_CLIENTS.iter().any(|c| path.starts_with(c)) {
        return Vec::new();
    }
    let server = path.starts_with("crates/cloud-agent/src/");
    offending_lines(text, |code| {
        let names_lease = code.match_indices("/lease").any(|(i, _)| {
            code.as_bytes()
                .get(i + "/lease".len())
                .is_none_or(|&b| !is_ident(b))
        });
        let quoted = code.contains('"') || code.contains('`') || code.contains('\'');
        names_lease && quoted && !(server && code.contains(".route("))
    })
}

/// Rule 4: the lines that subscribe to a document's updates without `observe_updates`.
pub fn raw_observers(path: &str, text: &str) -> Vec<usize> {
    if !is_production(path) || !path.ends_with(".rs") || defines_observe_updates(text) {
        return Vec::new();
    }
    const RAW: &[&str] = &[
        "observe_update_v1",
        "observe_update_v2",
        "observe_after_transaction",
        "observe_transaction_cleanup",
        "observe_subdocs",
    ];
    offending_lines(text, |code| {
        RAW.iter()
            .any(|m| code.contains(&format!(".{m}(")) || code.contains(&format!(".{m}_with(")))
    })
}

pub fn defines_observe_updates(text: &str) -> bool {
    text.lines()
        .any(|l| code_of(l).contains("fn observe_updates"))
}

/// Expands `a/{b,c}.rs` into `a/b.rs`, `a/c.rs`.
pub fn expand_braces(p: &str) -> Vec<String> {
    match (p.find('{'), p.find('}')) {
        (Some(a), Some(b)) if a < b => p[a + 1..b]
            .split(',')
            .flat_map(|alt| expand_braces(&format!("{}{}{}", &p[..a], alt.trim(), &p[b + 1..])))
            .collect(),
        _ => vec![p.to_owned()],
    }
}

const ROOTS: &[&str] = &[
    "crates/",
    "src-tauri/",
    "tests/",
    "bench/",
    "ui/",
    "scripts/",
    "deploy/",
    "docs/",
];
const EXTENSIONS: &[&str] = &[
    ".rs", ".ts", ".tsx", ".mjs", ".js", ".toml", ".sh", ".py", ".md", ".json",
];

pub fn looks_like_file(token: &str) -> bool {
    EXTENSIONS.iter().any(|e| token.ends_with(e))
        && !token.contains(['<', '>', '*', ' '])
        && !token.starts_with('.')
}

/// Rule 5: the files ARCHITECTURE.md names, as (line, path from the root). Root paths anywhere;
/// in the code map (`## Code map` up to the next `## `), bare file names under a crate's entry
/// (`- \`crates/x\`` or a first path naming a crate) are resolved in that crate: the caller
/// checks `<crate>/src/<name>`, `<crate>/<name>`.
pub fn architecture_paths(text: &str) -> Vec<(usize, Named)> {
    let mut out = Vec::new();
    let mut in_map = false;
    let mut krate: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("## ") {
            in_map = line.trim() == "## Code map";
            krate = None;
            continue;
        }
        let tokens: Vec<&str> = line
            .split(['`', ' ', '(', ')', ',', ';', '"'])
            .map(|t| t.trim_end_matches(['.', ':']))
            .collect();
        if in_map && line.starts_with("- ") {
            krate = tokens
                .iter()
                .find(|t| ROOTS.iter().any(|r| t.starts_with(r)) || **t == "src-tauri")
                .map(|t| crate_of(t));
        }
        // `{a,b}` lists contain commas: read them from the raw backticked spans first.
        for span in line.split('`').skip(1).step_by(2) {
            if span.contains('{')
                && looks_like_file(span)
                && ROOTS.iter().any(|r| span.starts_with(r))
            {
                for p in expand_braces(span) {
                    out.push((n + 1, Named::Root(p)));
                }
            }
        }
        for t in tokens {
            if t.contains(['{', '}']) || !looks_like_file(t) {
                continue;
            }
            if ROOTS.iter().any(|r| t.starts_with(r)) {
                out.push((n + 1, Named::Root(t.to_owned())));
            } else if in_map
                && t.ends_with(".rs")
                && let Some(k) = &krate
            {
                out.push((n + 1, Named::InCrate(k.clone(), t.to_owned())));
            }
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// A path from the repository root.
    Root(String),
    /// A file named under a crate's code-map entry: (crate folder, name).
    InCrate(String, String),
}

/// `crates/sync/src/x.rs` → `crates/sync`; `src-tauri/…` → `src-tauri`.
pub fn crate_of(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    if parts[0] == "crates" && parts.len() > 1 {
        format!("crates/{}", parts[1])
    } else {
        parts[0].to_owned()
    }
}

/// Rule 5: whether `named` exists, given the set of files (relative paths) in the tree.
pub fn exists(named: &Named, files: &BTreeSet<String>) -> bool {
    let dir_or_file = |p: &str| {
        let p = p.trim_end_matches('/');
        files.contains(p)
            || files
                .range(format!("{p}/")..)
                .next()
                .is_some_and(|f| f.starts_with(&format!("{p}/")))
    };
    match named {
        Named::Root(p) => dir_or_file(p),
        Named::InCrate(k, name) => {
            dir_or_file(&format!("{k}/src/{name}")) || dir_or_file(&format!("{k}/{name}"))
        }
    }
}

/// Rule 6: the files ARCHITECTURE.md states a reason for, in its "Files over 800 lines" section
/// (`- \`path\`: reason`).
pub fn stated_long_files(architecture: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in architecture.lines() {
        if line.starts_with('#') {
            inside = line.trim_start_matches('#').trim() == "Files over 800 lines";
            continue;
        }
        if inside
            && let Some(rest) = line.strip_prefix("- `")
            && let Some((path, reason)) = rest.split_once('`')
            && reason.trim_start_matches(':').trim().len() > 3
        {
            out.insert(path.to_owned());
        }
    }
    out
}

/// Rule 6: whether a `.rs` file is over the limit.
pub fn too_long(path: &str, text: &str) -> bool {
    path.ends_with(".rs") && text.lines().count() > SIZE_LIMIT
}

// ---------------------------------------------------------------------------------------------
// Each rule, shown to fail on a deliberate violation.

#[test]
fn rule_web_dependencies_fails_on_axum_and_tauri() {
    let toml = "[package]\nname = \"x\"\n\n[dependencies]\nserde.workspace = true\naxum = { version = \"0.8\" }\n\n[target.'cfg(unix)'.dependencies]\ntauri-plugin-dialog = \"2\"\n\n[dev-dependencies]\ntauri = \"2\"\n\n[dependencies.axum-extra]\nversion = \"1\"\n";
    assert_eq!(
        web_dependencies(toml, false),
        ["axum", "tauri-plugin-dialog", "axum-extra"]
    );
    assert_eq!(
        web_dependencies(toml, true),
        ["axum", "tauri-plugin-dialog", "tauri", "axum-extra"]
    );
    assert!(web_dependencies("[dependencies]\nserde = \"1\"\naxumish = \"1\"\n", true).is_empty());
}

#[test]
fn rule_prints_fails_on_a_print_in_a_library_only() {
    let text = "fn a() {\n    println!(\"x\");\n}\n// println!(\"in a comment\")\nfn b() { dbg!(1); }\nfn c() { my_println!(\"not std\"); }\n\n#[cfg(test)]\nmod tests {\n    fn t() {\n        eprintln!(\"in a test\");\n    }\n}\nfn d() { eprint!(\"after the tests\"); }\n";
    assert_eq!(prints("crates/sync/src/lib.rs", text, false), [2, 5, 14]);
    assert_eq!(
        prints("crates/sync/src/doc/deep.rs", text, false),
        [2, 5, 14]
    );
    // A module of a crate that is only a program (the CLI) is the program.
    assert!(prints("crates/cli/src/run.rs", text, true).is_empty());
    assert!(prints("crates/cli/src/main.rs", text, false).is_empty());
    assert!(prints("crates/cli/src/bin/tool.rs", text, false).is_empty());
    assert!(prints("crates/sync/tests/t.rs", text, false).is_empty());
    assert!(prints("crates/testkit/src/soak.rs", text, false).is_empty());
}

#[test]
fn rule_test_lines_covers_test_items_only() {
    let text = "fn a() {}\n#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests {\n    fn t() {\n    }\n}\nfn b() {}\n    #[cfg(test)]\n    fn helper() {\n    }\n    fn c() {}\n#[cfg(test)]\nmod more;\nfn d() {}\n";
    let flags = test_lines(text);
    let inside: Vec<usize> = (0..flags.len())
        .filter(|&i| flags[i])
        .map(|i| i + 1)
        .collect();
    assert_eq!(inside, [2, 3, 4, 5, 6, 7, 9, 10, 11, 13, 14]);
}

#[test]
fn rule_lease_calls_fails_outside_the_device_crate() {
    let text = "async fn take(c: &Api, s: &str) {\n    c.post(&format!(\"/api/sessions/{s}/lease\"), op).await;\n}\nconst LEASES: &str = \"/leases-are-fine\";\n";
    assert_eq!(lease_calls("crates/cloud-agent/src/runner.rs", text), [2]);
    assert_eq!(lease_calls("src-tauri/src/core.rs", text), [2]);
    let ts = "export const lease = (id: string) => api(`/api/sessions/${id}/lease`);\n";
    assert_eq!(lease_calls("ui/src/api.ts", ts), [1]);
    assert!(lease_calls("crates/device/src/lease.rs", text).is_empty());
    assert_eq!(lease_calls("crates/cli/src/connected.rs", text), [2]);
    assert!(lease_calls("tests/tests/lease.rs", text).is_empty());
    let route = "        .route(\"/api/sessions/{id}/lease\", get(get_lease))\n";
    assert!(lease_calls("crates/cloud-agent/src/api.rs", route).is_empty());
    assert_eq!(lease_calls("crates/sync/src/client.rs", route), [1]);
}

#[test]
fn rule_raw_observers_fails_outside_observe_updates() {
    let text = "fn f(doc: &Doc) {\n    let s = doc.observe_update_v1(\"k\", |_, _| {});\n    doc\n        .observe_after_transaction_with(\"k\", |_| {});\n    doc.unobserve_update_v1(\"k\");\n}\n";
    assert_eq!(raw_observers("crates/sync/src/client.rs", text), [2, 4]);
    assert_eq!(raw_observers("src-tauri/src/core.rs", text), [2, 4]);
    let definer = format!("pub async fn observe_updates() {{}}\n{text}");
    assert!(raw_observers("crates/sync/src/doc/signal.rs", &definer).is_empty());
    assert!(raw_observers("crates/sync/benches/b.rs", text).is_empty());
}

#[test]
fn rule_architecture_paths_fails_on_a_missing_or_misplaced_file() {
    let doc = "# A\nSee `crates/sync/src/gone.rs` and crates/agent/src/{runner,tools}.rs.\n\n## Code map\n\n- `crates/agent` (`jarvis-agent`): the agent.\n  - `doc/signal.rs`: misplaced, it is in sync.\n  - `runner.rs`: the loop.\n- `crates/sync` (`jarvis-sync`):\n  - `doc/signal.rs`: here.\n\n## Later\n  - `runner.rs` outside the code map is not resolved.\n";
    let files: BTreeSet<String> = [
        "crates/agent/src/runner.rs",
        "crates/agent/src/tools.rs",
        "crates/sync/src/doc/signal.rs",
    ]
    .map(str::to_owned)
    .into();
    let named = architecture_paths(doc);
    let missing: Vec<(usize, Named)> = named
        .into_iter()
        .filter(|(_, n)| !exists(n, &files))
        .collect();
    assert_eq!(
        missing,
        [
            (2, Named::Root("crates/sync/src/gone.rs".into())),
            (
                7,
                Named::InCrate("crates/agent".into(), "doc/signal.rs".into())
            ),
        ]
    );
    assert_eq!(
        architecture_paths("see `crates/agent/src/{a,b}.rs`\n")
            .into_iter()
            .map(|(_, n)| n)
            .collect::<Vec<_>>(),
        [
            Named::Root("crates/agent/src/a.rs".into()),
            Named::Root("crates/agent/src/b.rs".into())
        ]
    );
}

#[test]
fn rule_long_files_fails_without_a_reason() {
    let long = "fn f() {}\n".repeat(SIZE_LIMIT + 1);
    assert!(too_long("crates/x/src/big.rs", &long));
    assert!(!too_long(
        "crates/x/src/ok.rs",
        &"fn f() {}\n".repeat(SIZE_LIMIT)
    ));
    assert!(!too_long("docs/big.md", &long));
    let doc = "## Files over 800 lines\n\n- `crates/x/src/big.rs`: one state machine, read whole.\n- `crates/x/src/bare.rs`\n\n## Next\n- `crates/x/src/other.rs`: not in the section.\n";
    assert_eq!(
        stated_long_files(doc).into_iter().collect::<Vec<_>>(),
        ["crates/x/src/big.rs"]
    );
}
