//! A workspace's environment, declared in `.jarvis/environment.toml` (the file that already
//! names its secrets):
//!
//! ```toml
//! secrets = ["GITHUB_TOKEN"]      # values from the secret store, by name
//!
//! [network]
//! policy = "allow"                 # off (default) | allow | full
//! allow = ["registry.npmjs.org"]   # with allow; none listed: the package registries
//! ```
//!
//! Anything that widens what the cloud does — a network policy other than off — takes effect
//! only when an owner approved the file's exact content (kind `environment`, see
//! [`crate::approvals`]); an edit waits for a new approval and meanwhile the closed default
//! holds.

use std::path::Path;

use jarvis_agent::egress::NetworkPolicy;
use serde::Deserialize;

use crate::secrets::ENVIRONMENT_FILE;

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    network: Option<Network>,
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
    if approved(&crate::approvals::content_hash(&text)) {
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
        let hash = crate::approvals::content_hash(text);
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
