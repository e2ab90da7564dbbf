//! What the hub keeps per user, not per workspace file: "always allow" answers (per user and
//! workspace) and the user's memory text for cloud runs (their `~/.claude/CLAUDE.md` on the
//! hub). Neither is ever written into a synced file, where it would become every member's.
//!
//! An "always allow" answer is recorded where it is given — the API's answer route, for the
//! authenticated caller — never from a session document's `decided_by` (any member's socket can
//! write the document). Runners only read: the cloud this table, devices the HTTP API, each for
//! the session's own user, so another member's session in the same workspace never gets them.

use jarvis_agent::permissions::Permissions;
use jarvis_sync::doc::{Block, SessionDoc};
use serde_json::{Value, json};

use crate::access::Action;
use crate::control::{Control, ControlError, Identity};
pub use jarvis_control::user_rules::*;

/// The command prefix a "prefix" answer allows: the program and, when the next word looks like
/// a subcommand (`npm test`, `git push`, `cargo build`), that word too. None for a compound
/// command (`a && b`, pipes, redirections, substitutions): those are allowed exactly or not at
/// all, so a prefix can never cover a second program hidden behind the first.
pub fn command_prefix(command: &str) -> Option<String> {
    let c = command.trim();
    if c.is_empty()
        || c.contains(['&', '|', ';', '>', '<', '`', '\n', '$', '(', ')'])
        || c.contains("\\")
    {
        return None;
    }
    let mut words = c.split_whitespace();
    let program = words.next()?;
    if program.contains('=') {
        // `FOO=1 cmd`: an environment assignment is not a program.
        return None;
    }
    match words.next() {
        Some(w)
            if w.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                && !w.starts_with('-') =>
        {
            Some(format!("{program} {w}"))
        }
        _ => Some(program.to_owned()),
    }
}

/// The entry an "always allow" answer records for approval `approval` of a session: the exact
/// call (see `Permissions::always_allow_entry`), or with `prefix` a bash command's prefix.
pub fn answer_entry(doc: &SessionDoc, approval: &str, prefix: bool) -> Option<Value> {
    // The call is the one in the approval's own message (as the runner reads it), never a
    // block of the same id elsewhere in the document.
    let messages = doc.messages();
    let message = messages.iter().rev().find(|m| {
        m.blocks
            .iter()
            .any(|b| matches!(b, Block::Approval { id, .. } if id == approval))
    })?;
    let tool_use_id = message.blocks.iter().find_map(|b| match b {
        Block::Approval {
            id, tool_use_id, ..
        } if id == approval => Some(tool_use_id.clone()),
        _ => None,
    })?;
    let (name, input) = message.blocks.iter().find_map(|b| match b {
        Block::ToolUse {
            id, name, input, ..
        } if *id == tool_use_id => Some((name.clone(), input.clone())),
        _ => None,
    })?;
    let input: Value = serde_json::from_str(&input).ok()?;
    // No root here: file paths are recorded relative to the workspace as the tool was given
    // them (an absolute device path then matches nothing elsewhere, which only asks more).
    let entry =
        Permissions::new(jarvis_agent::permissions::Mode::Ask).always_allow_entry(&name, &input);
    if prefix
        && entry["tool"] == "bash"
        && let Some(p) = entry["command"].as_str().and_then(command_prefix)
    {
        return Some(json!({"tool": "bash", "prefix": p}));
    }
    Some(entry)
}

/// Removes one of `who`'s rules in a workspace they may write; audited only when a rule was
/// there (a DELETE of nothing changed nothing and leaves no trace to mislead a reader).
pub fn forget(
    control: &Control,
    rules: &UserRules,
    who: &Identity,
    workspace: &str,
    entry: &Value,
) -> Result<bool, ControlError> {
    control.check_workspace_for(who, workspace, Action::Write)?;
    let removed = rules.remove(&who.user, workspace, entry)?;
    if removed {
        control.audit(
            Some(who),
            "always_allow.remove",
            workspace,
            &entry.to_string(),
        );
    }
    Ok(removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_only_simple_commands() {
        assert_eq!(command_prefix("npm test").as_deref(), Some("npm test"));
        assert_eq!(
            command_prefix("npm test -- --watch").as_deref(),
            Some("npm test")
        );
        assert_eq!(command_prefix("ls -la").as_deref(), Some("ls"));
        assert_eq!(
            command_prefix("git push origin main").as_deref(),
            Some("git push")
        );
        assert_eq!(command_prefix("cat ./x").as_deref(), Some("cat"));
        for c in [
            "npm test && rm -rf /",
            "npm test; curl x",
            "npm test | sh",
            "npm test > /etc/x",
            "echo $(rm x)",
            "FOO=1 npm test",
            "",
        ] {
            assert_eq!(command_prefix(c), None, "{c}");
        }
    }

    #[test]
    fn removing_a_rule_is_audited_only_when_one_was_there() {
        let d = tempfile::tempdir().unwrap();
        let (control, _) = Control::open(&d.path().join("hub.db")).unwrap();
        let rules = UserRules::new(control.store());
        let alice = control.create_user("alice", false).unwrap();
        let who = control
            .identify(
                &control
                    .create_token(&alice.id, None, "a", &["*".into()], false)
                    .unwrap(),
            )
            .unwrap();
        control.ensure_workspace(&who, "w", "").unwrap();
        let e = json!({"tool": "bash", "prefix": "npm test"});
        let removals = || {
            control
                .audit_log(100)
                .unwrap()
                .into_iter()
                .filter(|a| a.action == "always_allow.remove")
                .count()
        };
        assert!(!forget(&control, &rules, &who, "w", &e).unwrap());
        assert_eq!(removals(), 0, "a DELETE of nothing was audited");
        rules.add(&who.user, "w", &e).unwrap();
        assert!(forget(&control, &rules, &who, "w", &e).unwrap());
        assert_eq!(removals(), 1);
        // Not a member: refused before anything is looked at.
        assert!(forget(&control, &rules, &who, "elsewhere", &e).is_err());
    }
}
