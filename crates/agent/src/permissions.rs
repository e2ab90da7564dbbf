//! Permission modes and rules: what the runner may do without asking.
//!
//! Rules look like Claude Code's: `bash(cargo test:*)` (a command prefix), `bash(git status)`
//! (an exact command), `edit(src/**)` / `write(docs/*.md)` / `read(secrets/**)` (a path glob),
//! or a bare tool name (`grep`). Deny rules win over allow rules, which win over the mode.
//! Pure functions; the runner turns `Ask` into an approval block in the session document.

use serde_json::Value;

use crate::tools::is_read_only;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Read-only tools run; everything else asks.
    Ask,
    /// File edits run too; bash asks.
    AcceptEdits,
    /// Read-only tools only; changes are refused (the model is told to plan instead).
    Plan,
    /// Everything runs. Never a default.
    AllowAll,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ask" => Some(Mode::Ask),
            "accept-edits" => Some(Mode::AcceptEdits),
            "plan" => Some(Mode::Plan),
            "allow-all" => Some(Mode::AllowAll),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Ask,
    Deny(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Any,
    CommandPrefix(String),
    Command(String),
    PathGlob(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    tool: String,
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission rule {rule:?}: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: &'static str,
}

impl Rule {
    pub fn parse(rule: &str) -> Result<Rule, RuleError> {
        let err = |reason| RuleError {
            rule: rule.to_owned(),
            reason,
        };
        let rule_t = rule.trim();
        let (tool, arg) = match rule_t.split_once('(') {
            Some((t, rest)) => {
                let arg = rest.strip_suffix(')').ok_or_else(|| err("missing ')'"))?;
                (t.trim(), Some(arg.trim()))
            }
            None => (rule_t, None),
        };
        if tool.is_empty() || !tool.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err("the tool name must be a plain word"));
        }
        let matcher = match (tool, arg) {
            (_, None) | (_, Some("*")) => Matcher::Any,
            ("bash", Some(a)) => match a.strip_suffix(":*") {
                Some(prefix) if !prefix.is_empty() => Matcher::CommandPrefix(prefix.to_owned()),
                Some(_) => return Err(err("empty command prefix")),
                None => Matcher::Command(a.to_owned()),
            },
            (_, Some(a)) => {
                globset::Glob::new(a).map_err(|_| err("invalid path glob"))?;
                Matcher::PathGlob(a.to_owned())
            }
        };
        Ok(Rule {
            tool: tool.to_owned(),
            matcher,
        })
    }

    fn matches(&self, tool: &str, input: &Value) -> bool {
        if self.tool != tool {
            return false;
        }
        let s = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("");
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Command(c) => s("command").trim() == c,
            Matcher::CommandPrefix(p) => {
                let cmd = s("command").trim();
                // A prefix must not let `cargo test; rm -rf ~` through: refuse commands that
                // chain, pipe or substitute anything after the allowed prefix.
                cmd.starts_with(p.as_str())
                    && !cmd.contains([';', '&', '|', '`', '$', '>', '<', '\n'])
            }
            Matcher::PathGlob(g) => globset::Glob::new(g)
                .map(|g| g.compile_matcher().is_match(s("path")))
                .unwrap_or(false),
        }
    }
}

/// A session's permission settings.
#[derive(Debug, Clone)]
pub struct Permissions {
    pub mode: Mode,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Permissions {
    pub fn new(mode: Mode) -> Self {
        Permissions {
            mode,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    pub fn check(&self, tool: &str, input: &Value) -> Verdict {
        if let Some(r) = self.deny.iter().find(|r| r.matches(tool, input)) {
            return Verdict::Deny(format!("denied by rule {}", describe(r)));
        }
        if self.allow.iter().any(|r| r.matches(tool, input)) {
            return Verdict::Allow;
        }
        match self.mode {
            Mode::AllowAll => Verdict::Allow,
            Mode::Plan if is_read_only(tool) => Verdict::Allow,
            Mode::Plan => Verdict::Deny("plan mode: no changes; describe the plan instead".into()),
            Mode::AcceptEdits if matches!(tool, "write" | "edit") || is_read_only(tool) => {
                Verdict::Allow
            }
            Mode::Ask if is_read_only(tool) => Verdict::Allow,
            Mode::AcceptEdits | Mode::Ask => Verdict::Ask,
        }
    }

    /// The rule an "always allow" answer adds for this call: the exact command for bash, the
    /// exact path for file tools.
    pub fn always_allow_rule(tool: &str, input: &Value) -> Rule {
        let s = |k: &str| {
            input
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let matcher = match tool {
            "bash" => Matcher::Command(s("command").trim().to_owned()),
            "write" | "edit" | "read" => Matcher::PathGlob(globset::escape(&s("path"))),
            _ => Matcher::Any,
        };
        Rule {
            tool: tool.to_owned(),
            matcher,
        }
    }
}

fn describe(r: &Rule) -> String {
    match &r.matcher {
        Matcher::Any => r.tool.clone(),
        Matcher::Command(c) => format!("{}({c})", r.tool),
        Matcher::CommandPrefix(p) => format!("{}({p}:*)", r.tool),
        Matcher::PathGlob(g) => format!("{}({g})", r.tool),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn table() {
        let p = Permissions {
            mode: Mode::Ask,
            allow: vec![
                Rule::parse("bash(cargo test:*)").unwrap(),
                Rule::parse("bash(git status)").unwrap(),
                Rule::parse("edit(src/**)").unwrap(),
            ],
            deny: vec![
                Rule::parse("read(secrets/**)").unwrap(),
                Rule::parse("write(*.lock)").unwrap(),
            ],
        };
        let cases = [
            ("read", json!({"path": "src/main.rs"}), Verdict::Allow),
            (
                "read",
                json!({"path": "secrets/key"}),
                Verdict::Deny("denied by rule read(secrets/**)".into()),
            ),
            (
                "bash",
                json!({"command": "cargo test -p x"}),
                Verdict::Allow,
            ),
            (
                "bash",
                json!({"command": "cargo test; rm -rf ~"}),
                Verdict::Ask,
            ),
            (
                "bash",
                json!({"command": "cargo test $(curl evil)"}),
                Verdict::Ask,
            ),
            ("bash", json!({"command": "git status"}), Verdict::Allow),
            (
                "bash",
                json!({"command": "git status --porcelain"}),
                Verdict::Ask,
            ),
            ("bash", json!({"command": "rm -rf /"}), Verdict::Ask),
            ("edit", json!({"path": "src/a/b.rs"}), Verdict::Allow),
            ("edit", json!({"path": "README.md"}), Verdict::Ask),
            (
                "write",
                json!({"path": "Cargo.lock"}),
                Verdict::Deny("denied by rule write(*.lock)".into()),
            ),
            ("glob", json!({"pattern": "**"}), Verdict::Allow),
        ];
        for (tool, input, want) in cases {
            assert_eq!(p.check(tool, &input), want, "{tool} {input}");
        }
    }

    #[test]
    fn modes() {
        let input = json!({"path": "a.txt", "command": "ls"});
        let verdict = |m: Mode, tool: &str| Permissions::new(m).check(tool, &input);
        assert_eq!(verdict(Mode::Ask, "write"), Verdict::Ask);
        assert_eq!(verdict(Mode::AcceptEdits, "write"), Verdict::Allow);
        assert_eq!(verdict(Mode::AcceptEdits, "bash"), Verdict::Ask);
        assert!(matches!(verdict(Mode::Plan, "edit"), Verdict::Deny(_)));
        assert_eq!(verdict(Mode::Plan, "grep"), Verdict::Allow);
        assert_eq!(verdict(Mode::AllowAll, "bash"), Verdict::Allow);
        assert_eq!(Mode::parse("accept-edits"), Some(Mode::AcceptEdits));
        assert_eq!(Mode::parse("yolo"), None);
    }

    #[test]
    fn rule_parsing_and_always_allow() {
        for bad in ["", "bash(", "bash(:*)", "b a(x)", "edit([)"] {
            assert!(Rule::parse(bad).is_err(), "{bad:?}");
        }
        let mut p = Permissions::new(Mode::Ask);
        let input = json!({"command": "npm run build"});
        assert_eq!(p.check("bash", &input), Verdict::Ask);
        p.allow.push(Permissions::always_allow_rule("bash", &input));
        assert_eq!(p.check("bash", &input), Verdict::Allow);
        assert_eq!(
            p.check("bash", &json!({"command": "npm run build && rm x"})),
            Verdict::Ask
        );
        let w = json!({"path": "docs/[draft].md"});
        p.allow.push(Permissions::always_allow_rule("write", &w));
        assert_eq!(p.check("write", &w), Verdict::Allow);
        assert_eq!(
            p.check("write", &json!({"path": "docs/d.md"})),
            Verdict::Ask
        );
    }
}
