//! A workspace's environment, declared in `.jarvis/environment.toml` (the file that already
//! names its secrets):
//!
//! ```toml
//! secrets = ["GITHUB_TOKEN"]      # values from the secret store, by name
//! setup = "npm ci"                 # run once in the cloud, again when this file changes
//! cache = ["node_modules"]         # default: node_modules, .venv, target
//!
//! [env]
//! NODE_ENV = "test"
//!
//! [network]
//! policy = "allow"                 # off (default) | allow | full
//! allow = ["registry.npmjs.org"]   # with allow; none listed: the package registries
//! ```
//!
//! Without a `setup`, the lifecycle commands of `.devcontainer/devcontainer.json`
//! (`onCreateCommand`, `updateContentCommand`, `postCreateCommand`) stand in.
//!
//! Anything that widens what the cloud does — a network policy other than off, a setup script
//! the server runs unasked — takes effect only when an owner approved the file's exact content
//! (kind `environment`, see [`crate::approvals`]); an edit waits for a new approval and
//! meanwhile the closed default holds and the setup does not run.

use std::path::Path;

use jarvis_agent::egress::NetworkPolicy;
use serde::Deserialize;

use crate::secrets::ENVIRONMENT_FILE;

pub const DEVCONTAINER_FILE: &str = ".devcontainer/devcontainer.json";

/// Folders kept out of sync, per workspace under the data dir, when the file names none.
pub const DEFAULT_CACHE: &[&str] = &["node_modules", ".venv", "target"];

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    network: Option<Network>,
    #[serde(default)]
    setup: Option<String>,
    #[serde(default)]
    cache: Option<Vec<String>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

/// What a workspace declares beyond its network policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// The setup script and the file it comes from (with that file's content hash).
    pub setup: Option<Setup>,
    pub cache: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub script: String,
    pub path: &'static str,
    pub hash: String,
}

/// The workspace's environment (None when it declares none).
pub fn load(root: &Path) -> Result<Option<Environment>, String> {
    let text = crate::secrets::read_environment_file(root)?;
    let file: File = match &text {
        Some(t) => toml::from_str(t).map_err(|e| format!("{ENVIRONMENT_FILE}: {}", e.message()))?,
        None => File::default(),
    };
    let mut setup = match (&file.setup, &text) {
        (Some(script), Some(t)) if !script.trim().is_empty() => Some(Setup {
            script: script.clone(),
            path: ENVIRONMENT_FILE,
            hash: jarvis_control::approvals::content_hash(t),
        }),
        _ => None,
    };
    if setup.is_none()
        && let Some(json) = crate::secrets::read_workspace_file(root, DEVCONTAINER_FILE)?
    {
        setup = devcontainer_setup(&json)?.map(|script| Setup {
            script,
            path: DEVCONTAINER_FILE,
            hash: jarvis_control::approvals::content_hash(&json),
        });
    }
    if text.is_none() && setup.is_none() {
        return Ok(None);
    }
    let cache = file
        .cache
        .unwrap_or_else(|| DEFAULT_CACHE.iter().map(|s| (*s).to_owned()).collect());
    for c in &cache {
        if !valid_cache_path(c) {
            return Err(format!(
                "{ENVIRONMENT_FILE}: cache entry {c:?} must be a relative folder inside the workspace"
            ));
        }
    }
    for k in file.env.keys() {
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{ENVIRONMENT_FILE}: env name {k:?} is not a variable name"
            ));
        }
    }
    Ok(Some(Environment {
        setup,
        cache,
        env: file.env.into_iter().collect(),
    }))
}

fn valid_cache_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 200
        && !p.starts_with('/')
        && p.split('/').all(|seg| {
            !seg.is_empty() && seg != "." && seg != ".." && !jarvis_sync::paths::is_git_alias(seg)
        })
}

/// The devcontainer's lifecycle commands as one script (strings run by a shell, arrays as
/// argv, objects as parallel commands run one after another).
fn devcontainer_setup(json: &str) -> Result<Option<String>, String> {
    let v: serde_json::Value = serde_json::from_str(&strip_json_comments(json))
        .map_err(|e| format!("{DEVCONTAINER_FILE}: {e}"))?;
    let mut lines = Vec::new();
    for key in [
        "onCreateCommand",
        "updateContentCommand",
        "postCreateCommand",
    ] {
        collect_command(&v[key], &mut lines);
    }
    Ok((!lines.is_empty()).then(|| lines.join("\n")))
}

fn collect_command(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => out.push(
            a.iter()
                .filter_map(|x| x.as_str())
                .map(shell_quote)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_command(x, out)),
        _ => {}
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `//` and `/* */` comments out (devcontainer.json is JSON with comments), strings kept.
fn strip_json_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_str = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct Network {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    allow: Option<Vec<String>>,
}

/// The network policy the file's text declares.
pub fn network_policy(text: &str) -> Result<NetworkPolicy, String> {
    let file: File =
        toml::from_str(text).map_err(|e| format!("{ENVIRONMENT_FILE}: {}", e.message()))?;
    let Some(net) = file.network else {
        return Ok(NetworkPolicy::Off);
    };
    match net.policy.as_deref().unwrap_or("off") {
        "off" => Ok(NetworkPolicy::Off),
        "full" => Ok(NetworkPolicy::Full),
        "allow" => Ok(match net.allow {
            Some(list) if !list.is_empty() => {
                if list.len() > 256 || list.iter().any(|h| h.is_empty() || h.len() > 253) {
                    return Err(format!(
                        "{ENVIRONMENT_FILE}: network.allow holds invalid names"
                    ));
                }
                NetworkPolicy::Allow(list)
            }
            _ => NetworkPolicy::allow_default(),
        }),
        other => Err(format!(
            "{ENVIRONMENT_FILE}: network.policy {other:?}: use off, allow or full"
        )),
    }
}

/// The policy in force for a workspace folder and one line saying why: the declared policy
/// when the file's content is approved, else off.
pub fn effective_policy(root: &Path, approved: &dyn Fn(&str) -> bool) -> (NetworkPolicy, String) {
    let text = match crate::secrets::read_environment_file(root) {
        Ok(Some(t)) => t,
        Ok(None) => return (NetworkPolicy::Off, NetworkPolicy::Off.describe()),
        Err(e) => return (NetworkPolicy::Off, format!("network off ({e})")),
    };
    let declared = match network_policy(&text) {
        Ok(p) => p,
        Err(e) => return (NetworkPolicy::Off, format!("network off ({e})")),
    };
    if declared == NetworkPolicy::Off {
        return (NetworkPolicy::Off, declared.describe());
    }
    if approved(&jarvis_control::approvals::content_hash(&text)) {
        let line = declared.describe();
        (declared, line)
    } else {
        (
            NetworkPolicy::Off,
            format!(
                "network off: {ENVIRONMENT_FILE} asks for {}, waiting for an owner's approval",
                declared.describe()
            ),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn setup_env_and_cache_load_with_a_devcontainer_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(load(root).unwrap(), None);
        std::fs::create_dir_all(root.join(".devcontainer")).unwrap();
        let dc = "{\n  // comment\n  \"postCreateCommand\": \"npm ci\", \"onCreateCommand\": [\"echo\", \"it's\"] /* x */\n}";
        std::fs::write(root.join(DEVCONTAINER_FILE), dc).unwrap();
        let e = load(root).unwrap().unwrap();
        let setup = e.setup.unwrap();
        assert_eq!(setup.script, "'echo' 'it'\\''s'\nnpm ci");
        assert_eq!(setup.path, DEVCONTAINER_FILE);
        assert_eq!(setup.hash, jarvis_control::approvals::content_hash(dc));
        std::fs::create_dir_all(root.join(".jarvis")).unwrap();
        std::fs::write(
            root.join(ENVIRONMENT_FILE),
            "setup = \"make deps\"\ncache = [\"node_modules\", \"py/.venv\"]\n[env]\nA_B = \"1\"\n",
        )
        .unwrap();
        let e = load(root).unwrap().unwrap();
        assert_eq!(e.setup.unwrap().script, "make deps");
        assert_eq!(e.cache, ["node_modules", "py/.venv"]);
        assert_eq!(e.env, [("A_B".to_owned(), "1".to_owned())]);
        for bad in ["../up", "/abs", ".git", "a/.GIT/x", ""] {
            std::fs::write(root.join(ENVIRONMENT_FILE), format!("cache = [{bad:?}]")).unwrap();
            assert!(load(root).is_err(), "{bad}");
        }
        std::fs::write(root.join(ENVIRONMENT_FILE), "").unwrap();
        assert_eq!(load(root).unwrap().unwrap().cache, DEFAULT_CACHE);
    }

    #[test]
    fn policies_parse_and_default_closed() {
        assert_eq!(network_policy("").unwrap(), NetworkPolicy::Off);
        assert_eq!(network_policy("secrets = []").unwrap(), NetworkPolicy::Off);
        assert_eq!(
            network_policy("[network]\npolicy = \"full\"").unwrap(),
            NetworkPolicy::Full
        );
        assert_eq!(
            network_policy("[network]\npolicy = \"allow\"").unwrap(),
            NetworkPolicy::allow_default()
        );
        assert_eq!(
            network_policy("[network]\npolicy = \"allow\"\nallow = [\"a.test\"]").unwrap(),
            NetworkPolicy::Allow(vec!["a.test".into()])
        );
        assert!(network_policy("[network]\npolicy = \"open\"").is_err());
    }

    #[test]
    fn a_policy_waits_for_approval_of_the_exact_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".jarvis")).unwrap();
        let text = "[network]\npolicy = \"full\"\n";
        std::fs::write(dir.path().join(ENVIRONMENT_FILE), text).unwrap();
        let hash = jarvis_control::approvals::content_hash(text);
        let (p, line) = effective_policy(dir.path(), &|h| h == hash);
        assert_eq!(p, NetworkPolicy::Full, "{line}");
        std::fs::write(
            dir.path().join(ENVIRONMENT_FILE),
            format!("{text}# edited\n"),
        )
        .unwrap();
        let (p, line) = effective_policy(dir.path(), &|h| h == hash);
        assert_eq!(p, NetworkPolicy::Off);
        assert!(line.contains("waiting for an owner"), "{line}");
    }
}
