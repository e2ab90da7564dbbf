//! No app imports another app (tidy: reads manifests, runs nothing). The apps — the `jarvis`
//! CLI, the `jarvis-cloud` server, the desktop and the benchmarks — share code through library
//! crates (`jarvis-device`, `jarvis-sync`, `jarvis-agent`, `jarvis-wire`), never through each
//! other; the CLI is a binary only. A device feature written into an app's crate and imported
//! from another is how being a device came to exist three times.
#![allow(clippy::unwrap_used)]

use std::path::Path;

const APPS: [&str; 4] = [
    "jarvis-cli",
    "jarvis-cloud",
    "jarvis-desktop",
    "jarvis-bench",
];

fn manifest(rel: &str) -> toml::Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(rel).join("Cargo.toml")).unwrap();
    text.parse().unwrap()
}

#[test]
fn no_app_depends_on_another_app_and_the_cli_is_no_library() {
    let workspace = manifest(".");
    let members: Vec<String> = workspace["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    assert!(members.len() >= 8, "{members:?}");
    let mut seen_apps = Vec::new();
    for member in &members {
        let m = manifest(member);
        let name = m["package"]["name"].as_str().unwrap().to_owned();
        if APPS.contains(&name.as_str()) {
            seen_apps.push(name.clone());
        }
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = m.get(section).and_then(|d| d.as_table()) else {
                continue;
            };
            for dep in deps.keys() {
                assert!(
                    !APPS.contains(&dep.as_str()),
                    "{name} ({member}) has {dep} in [{section}]: share code through a library crate"
                );
            }
        }
    }
    assert_eq!(seen_apps.len(), APPS.len(), "apps found: {seen_apps:?}");
    // The workspace offers no app as a dependency either.
    let shared = workspace["workspace"]["dependencies"].as_table().unwrap();
    for app in APPS {
        assert!(
            !shared.contains_key(app),
            "[workspace.dependencies] offers {app}"
        );
    }
    let cli = manifest("crates/cli");
    assert!(cli.get("lib").is_none(), "crates/cli has a [lib] target");
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/cli/src/lib.rs")
            .exists()
    );
}
