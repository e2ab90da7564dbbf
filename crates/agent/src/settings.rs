//! Claude Code's settings files: the user's `~/.claude/settings.json` (on their own device
//! only), the workspace's `.claude/settings.json` and `.claude/settings.local.json` —
//! `permissions` (`allow` / `ask` / `deny`, `defaultMode`), `env` and `hooks` — loaded into the
//! one rule matcher (`permissions.rs`) and the hook runner (`hooks.rs`).
//!
//! Whatever narrows what runs (deny and ask rules, `plan` or `default` mode) applies at once.
//! Whatever widens it from a workspace file — allow rules, a wider `defaultMode`, `env`,
//! hooks — applies only if `ConfigApproval` says that file's exact content is approved: on the
//! user's own device that is `OwnDevice` (the files apply as Claude Code applies them); in the
//! cloud it defaults to `Unapproved` until the hub's owner approvals (by content hash) answer.
//!
//! Every rule that can never match, every unsupported key and every file that does not parse
//! is a warning the session shows. "Always allow" answers are kept by an `AllowStore`, never in
//! a synced settings file where they would become everyone's.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::hooks::HookConfig;
use crate::permissions::{Mode, Permissions, Rule};

pub use crate::approval::{ConfigApproval, OwnDevice, Unapproved, content_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Project,
    Local,
}

/// Everything the settings files say, merged.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub allow: Vec<Rule>,
    pub ask: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub default_mode: Option<Mode>,
    pub env: Vec<(String, String)>,
    pub hooks: HookConfig,
    /// The files read, as the session shows them.
    pub loaded: Vec<String>,
    pub warnings: Vec<String>,
}

impl Settings {
    /// Reads the settings files that apply: the user's (when `user_dir`, their `~/.claude`,
    /// is given), then the workspace's shared and local files; later files take precedence
    /// for `defaultMode` and `env`, rules and hooks add up.
    pub fn load(root: &Path, user_dir: Option<&Path>, approval: &dyn ConfigApproval) -> Settings {
        let mut s = Settings::default();
        let mut files: Vec<(Scope, PathBuf, String)> = Vec::new();
        if let Some(u) = user_dir {
            files.push((
                Scope::User,
                u.join("settings.json"),
                "~/.claude/settings.json".into(),
            ));
        }
        files.push((
            Scope::Project,
            root.join(".claude/settings.json"),
            ".claude/settings.json".into(),
        ));
        files.push((
            Scope::Local,
            root.join(".claude/settings.local.json"),
            ".claude/settings.local.json".into(),
        ));
        for (scope, path, label) in files {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    s.warnings.push(format!("{label} cannot be read: {e}"));
                    continue;
                }
            };
            if scope != Scope::User {
                // A workspace file must be the workspace's own, not a link to elsewhere.
                let inside = path
                    .canonicalize()
                    .ok()
                    .zip(root.canonicalize().ok())
                    .is_some_and(|(p, r)| p.starts_with(r));
                if !inside {
                    s.warnings.push(format!(
                        "{label} is ignored: it resolves outside the workspace"
                    ));
                    continue;
                }
            }
            let value: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    s.warnings.push(format!(
                        "{label} is not valid JSON ({e}); none of it applies"
                    ));
                    continue;
                }
            };
            let trusted = scope == Scope::User || approval.approved(&label, &content_hash(&text));
            s.add(&label, &value, trusted);
            s.loaded.push(label);
        }
        s
    }

    fn add(&mut self, label: &str, v: &Value, trusted: bool) {
        let Some(obj) = v.as_object() else {
            self.warnings
                .push(format!("{label} must hold a JSON object"));
            return;
        };
        let mut withheld: Vec<&str> = Vec::new();
        if let Some(p) = obj.get("permissions") {
            let list = |k: &str| -> Vec<String> {
                p.get(k)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for (kind, rules) in [
                ("deny", list("deny")),
                ("ask", list("ask")),
                ("allow", list("allow")),
            ] {
                if kind == "allow" && !trusted && !rules.is_empty() {
                    withheld.push("allow rules");
                    continue;
                }
                for r in rules {
                    match Rule::parse(&r) {
                        Ok(rule) => match kind {
                            "deny" => self.deny.push(rule),
                            "ask" => self.ask.push(rule),
                            _ => self.allow.push(rule),
                        },
                        Err(e) => self.warnings.push(format!("{label}: {e}")),
                    }
                }
            }
            if let Some(m) = p.get("defaultMode").and_then(Value::as_str) {
                match Mode::parse(m) {
                    Some(mode @ (Mode::Ask | Mode::Plan)) => self.default_mode = Some(mode),
                    Some(mode) if trusted => self.default_mode = Some(mode),
                    Some(_) => withheld.push("defaultMode"),
                    None => self.warnings.push(format!(
                        "{label}: defaultMode {m:?} is not supported here (default, acceptEdits, \
                         plan, dontAsk, bypassPermissions)"
                    )),
                }
            }
            if p.get("additionalDirectories")
                .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
            {
                self.warnings.push(format!(
                    "{label}: additionalDirectories is not supported here; the agent works in the workspace only"
                ));
            }
        }
        if let Some(env) = obj.get("env").and_then(Value::as_object) {
            if trusted {
                for (k, v) in env {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    self.env.retain(|(name, _)| name != k);
                    self.env.push((k.clone(), value));
                }
            } else if !env.is_empty() {
                withheld.push("env");
            }
        }
        if let Some(h) = obj.get("hooks") {
            let (hooks, warnings) = HookConfig::parse(h, label);
            self.warnings.extend(warnings);
            if trusted {
                self.hooks.extend(hooks);
            } else if !hooks.is_empty() {
                withheld.push("hooks");
            }
        }
        if !withheld.is_empty() {
            self.warnings.push(format!(
                "{label}: {} not applied: this file's content has not been approved by a \
                 workspace owner",
                withheld.join(", ")
            ));
        }
    }

    /// Adds the rules to `p`; the mode only if the caller did not choose one.
    pub fn apply(&self, p: &mut Permissions, explicit_mode: bool) {
        p.allow.extend(self.allow.iter().cloned());
        p.ask.extend(self.ask.iter().cloned());
        p.deny.extend(self.deny.iter().cloned());
        if !explicit_mode && let Some(m) = self.default_mode {
            p.mode = m;
        }
    }
}

/// A workspace's whole Claude Code setup, read once when a run starts: settings, memory and
/// skills (re-read per request by the runner), commands. The one place every runner (the CLI,
/// the desktop, the cloud) loads it from.
pub struct ClaudeSetup {
    pub settings: Settings,
    pub context: crate::memory::WorkspaceContext,
    pub commands: Vec<crate::commands::Command>,
    /// Warnings from settings and commands, for the session to show.
    pub warnings: Vec<String>,
}

impl ClaudeSetup {
    /// `user_dir` is the user's `~/.claude`, given only when the run is on their own device.
    pub fn load(
        root: &Path,
        user_dir: Option<&Path>,
        location: crate::memory::Location,
        approval: &dyn ConfigApproval,
    ) -> ClaudeSetup {
        let settings = Settings::load(root, user_dir, approval);
        let (commands, command_warnings) = crate::commands::load_commands(root, user_dir, approval);
        let mut warnings = settings.warnings.clone();
        warnings.extend(command_warnings);
        let context = crate::memory::WorkspaceContext::new(
            crate::memory::MemorySources {
                root: root.to_path_buf(),
                user_dir: user_dir.map(Path::to_path_buf),
            },
            location,
        );
        ClaudeSetup {
            settings,
            context,
            commands,
            warnings,
        }
    }

    /// The user's `~/.claude` folder, if `$HOME` names one.
    pub fn user_dir() -> Option<PathBuf> {
        let dir = PathBuf::from(std::env::var_os("HOME")?).join(".claude");
        dir.is_dir().then_some(dir)
    }

    /// Settings rules (and the mode, unless the caller chose one) and remembered
    /// "always allow" answers, added to `p`.
    pub fn permissions(
        &self,
        mut p: Permissions,
        explicit_mode: bool,
        store: Option<&dyn AllowStore>,
    ) -> Permissions {
        self.settings.apply(&mut p, explicit_mode);
        if let Some(store) = store {
            for e in store.entries() {
                p.allow.push(Permissions::entry_rule(&e));
            }
        }
        p
    }

    /// The hooks, to run the way bash commands run.
    pub fn hooks(
        &self,
        root: &Path,
        sandbox: crate::tools::Sandbox,
        session: &str,
        mode: Mode,
    ) -> crate::hooks::Hooks {
        let mut h =
            crate::hooks::Hooks::new(self.settings.hooks.clone(), root.to_path_buf(), sandbox);
        h.session_id = session.to_owned();
        h.permission_mode = match mode {
            Mode::Ask => "default",
            Mode::AcceptEdits => "acceptEdits",
            Mode::Plan => "plan",
            Mode::DontAsk => "dontAsk",
            Mode::AllowAll => "bypassPermissions",
        }
        .into();
        h.env = self.settings.env.clone();
        h
    }

    /// The notes a runner shows when it starts: what was loaded, then every warning.
    pub fn notes(&self) -> Vec<String> {
        self.summary()
            .into_iter()
            .chain(self.warnings.iter().map(|w| format!("Warning: {w}")))
            .collect()
    }

    /// What the session shows about the setup when the run starts.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.settings.loaded.is_empty() {
            parts.push(format!("settings: {}", self.settings.loaded.join(", ")));
        }
        let hooks = self.settings.hooks.count();
        if hooks > 0 {
            parts.push(format!("{hooks} hook(s)"));
        }
        if !self.commands.is_empty() {
            parts.push(format!(
                "commands: {}",
                self.commands
                    .iter()
                    .map(|c| format!("/{}", c.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        (!parts.is_empty()).then(|| format!("Claude Code setup loaded: {}", parts.join("; ")))
    }
}

/// Where "always allow" answers are kept: per user and workspace, outside the workspace.
pub trait AllowStore: Send + Sync {
    /// The entries recorded so far (see `Permissions::always_allow_entry`).
    fn entries(&self) -> Vec<Value>;
    fn add(&self, entry: &Value) -> Result<(), String>;
}

/// A connected or cloud session's answers, as the hub keeps them for the session's user and
/// workspace (read when the run starts: the cloud from its control DB, a device through
/// `GET /api/workspaces/{id}/always-allow`). `add` records nothing here: the hub records an
/// "always" answer where it is given, for the authenticated person who gave it — a runner
/// writing it again would have to trust the document's `decided_by`, which any member's socket
/// can write.
#[derive(Debug, Default, Clone)]
pub struct HubAllowStore {
    entries: Vec<Value>,
}

impl HubAllowStore {
    pub fn new(entries: Vec<Value>) -> Self {
        HubAllowStore { entries }
    }
}

impl AllowStore for HubAllowStore {
    fn entries(&self) -> Vec<Value> {
        self.entries.clone()
    }

    fn add(&self, _: &Value) -> Result<(), String> {
        Ok(())
    }
}

/// One JSON file per (user, workspace) on this device, e.g.
/// `$JARVIS_HOME/always-allow/<user>/<workspace hash>.json`, for local `jarvis run` sessions
/// the hub never sees (connected ones use `HubAllowStore`).
pub struct FileAllowStore {
    pub path: PathBuf,
}

impl FileAllowStore {
    pub fn new(home: &Path, user: &str, workspace: &str) -> Self {
        let user: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        FileAllowStore {
            path: home
                .join("always-allow")
                .join(if user.is_empty() {
                    "local".into()
                } else {
                    user
                })
                .join(format!("{}.json", &content_hash(workspace)[..32])),
        }
    }
}

impl AllowStore for FileAllowStore {
    fn entries(&self) -> Vec<Value> {
        std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Value>>(&b).ok())
            .unwrap_or_default()
    }

    fn add(&self, entry: &Value) -> Result<(), String> {
        let mut all = self.entries();
        if all.contains(entry) {
            return Ok(());
        }
        all.push(entry.clone());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let bytes = serde_json::to_vec_pretty(&json!(all)).map_err(|e| e.to_string())?;
        jarvis_sync::paths::atomic_write(&self.path, &bytes, Some(0o600))
            .map_err(|e| format!("writing {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn layers_warnings_and_approval() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        write(
            &ws,
            ".claude/settings.json",
            r#"{"permissions": {"allow": ["Bash(npm test:*)", "WebFetch(domain:x.com)"],
                "deny": ["Read(./.env)", "Bash(rm:*)", "Frobnicate(x)"], "defaultMode": "acceptEdits"},
               "env": {"FOO": "bar"},
               "hooks": {"PreToolUse": [{"matcher": "Write", "hooks": [{"type": "command", "command": "exit 2"}]}]}}"#,
        );
        write(
            &ws,
            ".claude/settings.local.json",
            r#"{"permissions": {"ask": ["Bash(git push:*)"]}}"#,
        );
        write(
            d.path(),
            "home/.claude/settings.json",
            r#"{"permissions": {"deny": ["Read(~/.ssh/**)"]}}"#,
        );
        let s = Settings::load(&ws, Some(&d.path().join("home/.claude")), &OwnDevice);
        assert_eq!(
            s.loaded,
            [
                "~/.claude/settings.json",
                ".claude/settings.json",
                ".claude/settings.local.json"
            ]
        );
        assert_eq!(s.allow.len(), 1);
        assert_eq!(s.deny.len(), 3);
        assert_eq!(s.ask.len(), 1);
        assert_eq!(s.default_mode, Some(Mode::AcceptEdits));
        assert_eq!(s.env, [("FOO".to_owned(), "bar".to_owned())]);
        assert_eq!(s.hooks.count(), 1);
        let w = s.warnings.join("\n");
        assert!(
            w.contains("\"WebFetch(domain:x.com)\" can never match"),
            "{w}"
        );
        assert!(w.contains("\"Frobnicate(x)\" can never match"), "{w}");

        // Not approved (the cloud): deny and ask still apply, nothing that widens does.
        let s = Settings::load(&ws, None, &Unapproved);
        assert!(s.allow.is_empty() && s.hooks.is_empty() && s.env.is_empty());
        assert_eq!(s.default_mode, None);
        assert_eq!(s.deny.len(), 2);
        assert_eq!(s.ask.len(), 1);
        assert!(s.warnings.join("\n").contains(
            ".claude/settings.json: allow rules, defaultMode, env, hooks not applied: this file's content has not been approved"
        ), "{:?}", s.warnings);

        // Approval is by exact content: an edit needs a new one.
        struct Approved(String);
        impl ConfigApproval for Approved {
            fn approved(&self, path: &str, hash: &str) -> bool {
                path == ".claude/settings.json" && hash == self.0
            }
        }
        let text = std::fs::read_to_string(ws.join(".claude/settings.json")).unwrap();
        let approval = Approved(content_hash(&text));
        assert_eq!(Settings::load(&ws, None, &approval).allow.len(), 1);
        write(
            &ws,
            ".claude/settings.json",
            &text.replace("npm test", "npm"),
        );
        assert!(Settings::load(&ws, None, &approval).allow.is_empty());

        write(&ws, ".claude/settings.local.json", "{not json");
        assert!(
            Settings::load(&ws, None, &OwnDevice)
                .warnings
                .iter()
                .any(|w| w.contains("not valid JSON"))
        );
    }

    #[test]
    fn always_allow_store_survives_and_is_per_user() {
        let d = tempfile::tempdir().unwrap();
        let a = FileAllowStore::new(d.path(), "alice", "/w/one");
        let b = FileAllowStore::new(d.path(), "bob", "/w/one");
        let e = json!({"tool": "bash", "command": "npm run build"});
        a.add(&e).unwrap();
        a.add(&e).unwrap();
        assert_eq!(
            FileAllowStore::new(d.path(), "alice", "/w/one").entries(),
            vec![e]
        );
        assert!(b.entries().is_empty());
        assert!(
            FileAllowStore::new(d.path(), "alice", "/w/two")
                .entries()
                .is_empty()
        );
    }
}
