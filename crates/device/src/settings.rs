//! Run settings, read in one place: how a session runs (permission mode, allow and deny rules,
//! budget, model) comes from the authority that recorded it — the hub's control plane for a
//! device or the cloud, the device's own copy of the session document when there is no hub —
//! and becomes the runner's permissions and budget here, the same way for every runner.

use jarvis_agent::permissions::{Mode, Permissions, Rule};
use jarvis_sync::doc::SessionDoc;
use jarvis_wire::device::RunSettings;

use crate::error::{DeviceError, DeviceResult};

/// What one run asked for on top of the session's recorded settings (`jarvis run --allow …`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOverrides {
    pub permission_mode: Option<String>,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub budget_usd: Option<f64>,
}

/// Settings resolved for one run.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Mode and rules; the caller adds its workspace root and Claude Code setup.
    pub permissions: Permissions,
    /// Whether the mode was chosen (by the run or the session) rather than defaulted, so a
    /// settings file's `defaultMode` does not override it.
    pub explicit_mode: bool,
    pub budget_micros: Option<u64>,
    pub model: Option<String>,
    /// Allow rules that could not be read (skipped: they only make the run ask more).
    pub warnings: Vec<String>,
}

/// The session's display copy of its settings in the document, for a device with no hub.
/// Allow rules are not taken from there (any member's socket can write the document, and an
/// allow rule widens what runs); the mode, deny rules and budget are.
pub fn from_document(doc: &SessionDoc) -> RunSettings {
    let lines = |key: &str| -> Vec<String> {
        doc.setting(key)
            .map(|v| {
                v.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let model = doc.meta().model;
    RunSettings {
        permission_mode: doc.setting("permission_mode"),
        allow: Vec::new(),
        deny: lines("deny"),
        budget_micros: doc.setting("budget_micros").and_then(|b| b.parse().ok()),
        model: (!model.is_empty()).then_some(model),
    }
}

/// The session's recorded settings with one run's own on top: the run's mode and allow rules
/// replace the session's when given; deny rules add up (a deny set when the session was made
/// is not lifted by moving it to a device); the run's budget replaces the session's. A deny
/// rule that cannot be read fails the run (skipping it would allow what it refuses).
pub fn resolve(recorded: &RunSettings, run: &RunOverrides) -> DeviceResult<Resolved> {
    let mode_name = run
        .permission_mode
        .clone()
        .or_else(|| recorded.permission_mode.clone());
    let mode = match &mode_name {
        Some(m) => Mode::parse(m).ok_or_else(|| {
            DeviceError::Invalid(format!(
                "unknown permission mode {m:?}: ask, accept-edits, plan, dont-ask or allow-all"
            ))
        })?,
        None => Mode::Ask,
    };
    let mut permissions = Permissions::new(mode);
    let mut warnings = Vec::new();
    let allow = if run.allow.is_empty() {
        &recorded.allow
    } else {
        &run.allow
    };
    for r in allow {
        match Rule::parse(r) {
            Ok(rule) => permissions.allow.push(rule),
            Err(e) => warnings.push(format!("allow rule {r:?} skipped: {e}")),
        }
    }
    for r in run.deny.iter().chain(&recorded.deny) {
        let rule =
            Rule::parse(r).map_err(|e| DeviceError::Invalid(format!("deny rule {r:?}: {e}")))?;
        permissions.deny.push(rule);
    }
    Ok(Resolved {
        permissions,
        explicit_mode: mode_name.is_some(),
        budget_micros: run
            .budget_usd
            .map(|d| (d.max(0.0) * 1e6) as u64)
            .or(recorded.budget_micros),
        model: recorded.model.clone().filter(|m| !m.is_empty()),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recorded() -> RunSettings {
        RunSettings {
            permission_mode: Some("accept-edits".into()),
            allow: vec!["Bash(cargo test:*)".into()],
            deny: vec!["Bash(rm:*)".into()],
            budget_micros: Some(250_000),
            model: Some("m".into()),
        }
    }

    #[test]
    fn a_run_with_no_options_keeps_the_sessions_rules_mode_and_budget() {
        let r = resolve(&recorded(), &RunOverrides::default()).unwrap();
        assert_eq!(r.permissions.mode, Mode::AcceptEdits);
        assert!(r.explicit_mode);
        assert_eq!(r.permissions.allow.len(), 1);
        assert_eq!(r.permissions.deny.len(), 1);
        assert_eq!(r.budget_micros, Some(250_000));
    }

    #[test]
    fn a_runs_own_options_replace_allow_and_budget_but_deny_rules_add_up() {
        let run = RunOverrides {
            permission_mode: Some("plan".into()),
            allow: vec!["Read".into(), "Bash(npm test)".into()],
            deny: vec!["Bash(curl:*)".into()],
            budget_usd: Some(1.5),
        };
        let r = resolve(&recorded(), &run).unwrap();
        assert_eq!(r.permissions.mode, Mode::Plan);
        assert_eq!(r.permissions.allow.len(), 2);
        assert_eq!(r.permissions.deny.len(), 2);
        assert_eq!(r.budget_micros, Some(1_500_000));
    }

    #[test]
    fn no_settings_means_ask_and_an_unreadable_deny_rule_fails_closed() {
        let r = resolve(&RunSettings::default(), &RunOverrides::default()).unwrap();
        assert_eq!(r.permissions.mode, Mode::Ask);
        assert!(!r.explicit_mode);
        let bad = RunSettings {
            deny: vec!["Bash(".into()],
            ..RunSettings::default()
        };
        assert!(resolve(&bad, &RunOverrides::default()).is_err());
        let bad_allow = RunSettings {
            allow: vec!["Bash(".into()],
            ..RunSettings::default()
        };
        let r = resolve(&bad_allow, &RunOverrides::default()).unwrap();
        assert!(r.permissions.allow.is_empty());
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn the_document_copy_gives_mode_deny_and_budget_but_never_allow() {
        let doc = SessionDoc::new(yrs::Doc::new());
        doc.set_setting("permission_mode", "plan");
        doc.set_setting("allow", "Bash(*)");
        doc.set_setting("deny", "Bash(rm:*)\nBash(curl:*)");
        doc.set_setting("budget_micros", "5000");
        let s = from_document(&doc);
        assert_eq!(s.permission_mode.as_deref(), Some("plan"));
        assert!(s.allow.is_empty());
        assert_eq!(s.deny.len(), 2);
        assert_eq!(s.budget_micros, Some(5000));
    }
}
