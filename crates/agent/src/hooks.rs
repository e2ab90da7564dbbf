//! Claude Code's command hooks: `PreToolUse`, `PostToolUse`, `UserPromptSubmit`, `Stop` and
//! `SessionStart`, configured in settings files (`"hooks": {"PreToolUse": [{"matcher": "Bash",
//! "hooks": [{"type": "command", "command": "…", "timeout": 30}]}]}`).
//!
//! A hook gets Claude Code's JSON on stdin (`session_id`, `cwd`, `hook_event_name`,
//! `tool_name` in Claude Code's spelling, `tool_input` with `file_path` as well as our `path`,
//! `tool_response`, `prompt`, `stop_hook_active`, `source`) and answers by exit code — 0 goes
//! on, 2 blocks with stderr as the reason the model (or, for a prompt, the user) is shown,
//! anything else is a notice — or by JSON on stdout (`decision: "block"` with `reason`,
//! `hookSpecificOutput.permissionDecision`, `additionalContext`, `continue: false`,
//! `systemMessage`).
//!
//! Hooks run through the session's `Sandbox` (bubblewrap and limits in the cloud), in their own
//! process group, killed whole at their timeout (default 60 s). Never: run a hook from a
//! configuration nobody approved — loading decides that (`settings.rs`), this module only runs
//! what it is given.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sandbox::{ProcessScope, Sandbox};

/// Claude Code's default hook timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// What is kept of a hook's stdout or stderr.
const OUTPUT_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    PreToolUse,
    PostToolUse,
    UserPromptSubmit,
    Stop,
    SessionStart,
}

impl Event {
    fn parse(s: &str) -> Option<Event> {
        Some(match s {
            "PreToolUse" => Event::PreToolUse,
            "PostToolUse" => Event::PostToolUse,
            "UserPromptSubmit" => Event::UserPromptSubmit,
            "Stop" => Event::Stop,
            "SessionStart" => Event::SessionStart,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Event::PreToolUse => "PreToolUse",
            Event::PostToolUse => "PostToolUse",
            Event::UserPromptSubmit => "UserPromptSubmit",
            Event::Stop => "Stop",
            Event::SessionStart => "SessionStart",
        }
    }
}

/// Our tool names in Claude Code's spelling (what hook matchers and scripts expect).
pub fn claude_tool_name(tool: &str) -> &str {
    match tool {
        "read" => "Read",
        "write" => "Write",
        "edit" => "Edit",
        "bash" => "Bash",
        "glob" => "Glob",
        "grep" => "Grep",
        "todo" => "TodoWrite",
        "skill" => "Skill",
        other => other,
    }
}

#[derive(Debug, Clone)]
struct HookCommand {
    command: String,
    timeout: Duration,
    /// The settings file it came from, for notices.
    source: String,
}

#[derive(Debug, Clone)]
struct Group {
    /// None: every tool (no matcher, "" or "*").
    matcher: Option<regex::Regex>,
    hooks: Vec<HookCommand>,
}

/// The hooks of every settings file that applies, by event.
#[derive(Debug, Clone, Default)]
pub struct HookConfig {
    groups: HashMap<Event, Vec<Group>>,
}

impl HookConfig {
    /// Reads a settings file's `hooks` value. What cannot be used becomes a warning.
    pub fn parse(v: &Value, source: &str) -> (HookConfig, Vec<String>) {
        let mut config = HookConfig::default();
        let mut warnings = Vec::new();
        let Some(events) = v.as_object() else {
            if !v.is_null() {
                warnings.push(format!("{source}: \"hooks\" must be an object"));
            }
            return (config, warnings);
        };
        for (name, groups) in events {
            let Some(event) = Event::parse(name) else {
                warnings.push(format!(
                    "{source}: hook event {name:?} is not supported here (PreToolUse, \
                     PostToolUse, UserPromptSubmit, Stop, SessionStart)"
                ));
                continue;
            };
            for g in groups.as_array().map(Vec::as_slice).unwrap_or_default() {
                let matcher = match g.get("matcher").and_then(Value::as_str) {
                    None | Some("") | Some("*") => None,
                    Some(m) => match regex::Regex::new(&format!("^(?:{m})$")) {
                        Ok(re) => Some(re),
                        Err(_) => {
                            warnings.push(format!(
                                "{source}: {name} matcher {m:?} is not a valid pattern"
                            ));
                            continue;
                        }
                    },
                };
                let mut hooks = Vec::new();
                for h in g
                    .get("hooks")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let kind = h.get("type").and_then(Value::as_str).unwrap_or("command");
                    match (kind, h.get("command").and_then(Value::as_str)) {
                        ("command", Some(c)) if !c.trim().is_empty() => hooks.push(HookCommand {
                            command: c.to_owned(),
                            timeout: h
                                .get("timeout")
                                .and_then(Value::as_f64)
                                .filter(|t| *t > 0.0 && *t < 86_400.0)
                                .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64),
                            source: source.to_owned(),
                        }),
                        ("command", _) => warnings.push(format!("{source}: a {name} hook has no command")),
                        (other, _) => warnings.push(format!(
                            "{source}: {name} hooks of type {other:?} are not supported here (only \"command\")"
                        )),
                    }
                }
                if !hooks.is_empty() {
                    config
                        .groups
                        .entry(event)
                        .or_default()
                        .push(Group { matcher, hooks });
                }
            }
        }
        (config, warnings)
    }

    pub fn extend(&mut self, other: HookConfig) {
        for (event, groups) in other.groups {
            self.groups.entry(event).or_default().extend(groups);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How many hook commands are configured (for the session's summary).
    pub fn count(&self) -> usize {
        self.groups.values().flatten().map(|g| g.hooks.len()).sum()
    }

    fn matching(&self, event: Event, tool: Option<&str>) -> Vec<&HookCommand> {
        let Some(groups) = self.groups.get(&event) else {
            return Vec::new();
        };
        groups
            .iter()
            .filter(|g| match (&g.matcher, tool) {
                (None, _) => true,
                (Some(re), Some(t)) => re.is_match(claude_tool_name(t)) || re.is_match(t),
                (Some(_), None) => true,
            })
            .flat_map(|g| g.hooks.iter())
            .collect()
    }
}

/// A PreToolUse hook's say on a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionDecision {
    Allow,
    Ask,
    Deny,
}

/// What the hooks of one event said, together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookOutcome {
    /// Exit code 2, `decision: "block"` or `continue: false`: the reason.
    pub block: Option<String>,
    pub permission: Option<(PermissionDecision, String)>,
    /// Text for the model (`additionalContext`; stdout of prompt and session-start hooks).
    pub context: Vec<String>,
    /// Non-blocking errors and `systemMessage`s, for the user.
    pub notices: Vec<String>,
}

/// Runs a session's hooks.
#[derive(Debug, Clone)]
pub struct Hooks {
    pub config: HookConfig,
    pub root: PathBuf,
    pub sandbox: Sandbox,
    pub session_id: String,
    pub permission_mode: String,
    pub env: Vec<(String, String)>,
}

impl Hooks {
    pub fn new(config: HookConfig, root: PathBuf, sandbox: Sandbox) -> Self {
        Hooks {
            config,
            root,
            sandbox,
            session_id: String::new(),
            permission_mode: "default".into(),
            env: Vec::new(),
        }
    }

    pub fn has(&self, event: Event) -> bool {
        self.config.groups.contains_key(&event)
    }

    /// The stdin JSON of a tool event.
    pub fn tool_payload(tool: &str, input: &Value) -> Value {
        let mut input = input.clone();
        if let Some(obj) = input.as_object_mut()
            && let Some(p) = obj.get("path").cloned()
        {
            obj.entry("file_path").or_insert(p);
        }
        json!({"tool_name": claude_tool_name(tool), "tool_input": input})
    }

    /// Runs every hook of `event` that matches `tool`, one after another, with `fields` added
    /// to the common stdin JSON.
    pub async fn run(&self, event: Event, tool: Option<&str>, fields: Value) -> HookOutcome {
        let mut outcome = HookOutcome::default();
        let hooks = self.config.matching(event, tool);
        if hooks.is_empty() {
            return outcome;
        }
        let mut payload = json!({
            "session_id": self.session_id,
            "transcript_path": "",
            "cwd": self.root.to_string_lossy(),
            "hook_event_name": event.name(),
            "permission_mode": self.permission_mode,
        });
        if let (Some(p), Some(f)) = (payload.as_object_mut(), fields.as_object()) {
            for (k, v) in f {
                p.insert(k.clone(), v.clone());
            }
        }
        let stdin = payload.to_string();
        for hook in hooks {
            match self.exec(hook, &stdin).await {
                Ok((code, stdout, stderr)) => {
                    read_answer(event, hook, code, &stdout, &stderr, &mut outcome)
                }
                Err(e) => outcome.notices.push(format!(
                    "{} hook `{}` ({}): {e}",
                    event.name(),
                    hook.command,
                    hook.source
                )),
            }
        }
        outcome
    }

    async fn exec(
        &self,
        hook: &HookCommand,
        stdin: &str,
    ) -> Result<(Option<i32>, String, String), String> {
        // The hook runs like a bash call: in the session's sandbox (clean environment, the
        // workspace only, limits), in a scope that kills whatever it leaves behind.
        let mut env = self.env.clone();
        env.push((
            "CLAUDE_PROJECT_DIR".to_owned(),
            self.root.to_string_lossy().into_owned(),
        ));
        let mut cmd = self
            .sandbox
            .command(
                &self.root,
                "sh",
                &["-c".to_owned(), hook.command.clone()],
                &env,
            )
            .map_err(|e| format!("cannot run here: {e}"))?;
        cmd.command
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let scope = ProcessScope::new();
        let mut child = scope.spawn(cmd).map_err(|e| format!("cannot start: {e}"))?;
        let input = stdin.as_bytes().to_vec();
        let mut sink = child.stdin.take();
        // Written while the output is read, so a hook that ignores stdin cannot block us.
        let writer = tokio::spawn(async move {
            if let Some(s) = sink.as_mut() {
                // A hook that exits without reading closes the pipe; that is its right.
                let _ = s.write_all(&input).await;
            }
        });
        let (out, err) = (child.stdout.take(), child.stderr.take());
        async fn drain<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
            let mut kept = Vec::new();
            let Some(mut r) = r else { return kept };
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        }
        let run = async {
            let (o, e) = tokio::join!(drain(out), drain(err));
            (child.wait().await, o, e)
        };
        let result = tokio::time::timeout(hook.timeout, run).await;
        // Whatever the hook left running (its group, its PID namespace, its cgroup) goes with it.
        drop(child);
        scope.kill_all();
        writer.abort();
        match result {
            Ok((status, o, e)) => Ok((
                status.ok().and_then(|s| s.code()),
                String::from_utf8_lossy(&o).into_owned(),
                String::from_utf8_lossy(&e).into_owned(),
            )),
            Err(_) => Err(format!(
                "timed out after {:?}; process group killed",
                hook.timeout
            )),
        }
    }
}

fn read_answer(
    event: Event,
    hook: &HookCommand,
    code: Option<i32>,
    stdout: &str,
    stderr: &str,
    out: &mut HookOutcome,
) {
    let stderr = stderr.trim();
    match code {
        Some(2) => {
            let reason = if stderr.is_empty() {
                format!("blocked by the {} hook `{}`", event.name(), hook.command)
            } else {
                stderr.to_owned()
            };
            push_block(out, reason);
        }
        Some(0) => {
            let json = serde_json::from_str::<Value>(stdout.trim())
                .ok()
                .filter(Value::is_object);
            let Some(v) = json else {
                // Plain stdout is context only where Claude Code says so.
                if matches!(event, Event::UserPromptSubmit | Event::SessionStart)
                    && !stdout.trim().is_empty()
                {
                    out.context.push(stdout.trim().to_owned());
                }
                return;
            };
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            if let Some(m) = s(&v, "systemMessage") {
                out.notices.push(m);
            }
            if v.get("continue").and_then(Value::as_bool) == Some(false) {
                push_block(
                    out,
                    s(&v, "stopReason").unwrap_or_else(|| "stopped by a hook".into()),
                );
            }
            match s(&v, "decision").as_deref() {
                Some("block") => push_block(
                    out,
                    s(&v, "reason").unwrap_or_else(|| "blocked by a hook".into()),
                ),
                Some("approve") if event == Event::PreToolUse => {
                    out.permission = Some((
                        PermissionDecision::Allow,
                        s(&v, "reason").unwrap_or_default(),
                    ))
                }
                _ => {}
            }
            if let Some(specific) = v.get("hookSpecificOutput") {
                if let Some(c) = s(specific, "additionalContext") {
                    out.context.push(c);
                }
                let reason = s(specific, "permissionDecisionReason").unwrap_or_default();
                let decision = match s(specific, "permissionDecision").as_deref() {
                    Some("allow") => Some(PermissionDecision::Allow),
                    Some("ask") => Some(PermissionDecision::Ask),
                    Some("deny") => Some(PermissionDecision::Deny),
                    _ => None,
                };
                if let Some(d) = decision
                    && event == Event::PreToolUse
                {
                    // The strictest answer of all hooks stands.
                    let rank = |d: &PermissionDecision| match d {
                        PermissionDecision::Allow => 0,
                        PermissionDecision::Ask => 1,
                        PermissionDecision::Deny => 2,
                    };
                    if out
                        .permission
                        .as_ref()
                        .is_none_or(|(p, _)| rank(p) < rank(&d))
                    {
                        out.permission = Some((d, reason));
                    }
                }
            }
        }
        other => out.notices.push(format!(
            "{} hook `{}` ({}) failed ({}){}",
            event.name(),
            hook.command,
            hook.source,
            other.map_or("killed by a signal".into(), |c| format!("exit code {c}")),
            if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            }
        )),
    }
}

fn push_block(out: &mut HookOutcome, reason: String) {
    out.block = Some(match out.block.take() {
        Some(prev) => format!("{prev}\n{reason}"),
        None => reason,
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hooks(dir: &std::path::Path, config: Value) -> Hooks {
        let (config, warnings) = HookConfig::parse(&config, ".claude/settings.json");
        assert!(warnings.is_empty(), "{warnings:?}");
        Hooks::new(config, dir.to_path_buf(), Sandbox::Host)
    }

    #[tokio::test]
    async fn exit_codes_json_matchers_stdin_and_timeouts() {
        let d = tempfile::tempdir().unwrap();
        let h = hooks(
            d.path(),
            json!({
                "PreToolUse": [
                    {"matcher": "Write|Edit", "hooks": [{"type": "command", "command": "cat > pre.json; echo 'no writes to protected files' >&2; exit 2"}]},
                    {"matcher": "Bash", "hooks": [{"type": "command", "command": "echo '{\"hookSpecificOutput\":{\"hookEventName\":\"PreToolUse\",\"permissionDecision\":\"deny\",\"permissionDecisionReason\":\"no bash today\"}}'"}]},
                    {"matcher": "Read", "hooks": [{"command": "exit 1"}]}
                ],
                "PostToolUse": [{"hooks": [{"type": "command", "command": "cat > post.json"}]}],
                "UserPromptSubmit": [{"hooks": [{"type": "command", "command": "echo 'Ticket: JAR-7'"}]}],
                "Stop": [{"hooks": [{"type": "command", "command": "sleep 30", "timeout": 0.3}]}]
            }),
        );
        let input = json!({"path": "a.txt", "content": "x"});
        let o = h
            .run(
                Event::PreToolUse,
                Some("write"),
                Hooks::tool_payload("write", &input),
            )
            .await;
        assert_eq!(o.block.as_deref(), Some("no writes to protected files"));
        let sent: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("pre.json")).unwrap())
                .unwrap();
        assert_eq!(sent["hook_event_name"], "PreToolUse");
        assert_eq!(sent["tool_name"], "Write");
        assert_eq!(sent["tool_input"]["file_path"], "a.txt");
        assert_eq!(sent["cwd"], d.path().to_string_lossy().as_ref());
        let o = h
            .run(
                Event::PreToolUse,
                Some("bash"),
                Hooks::tool_payload("bash", &json!({"command": "ls"})),
            )
            .await;
        assert_eq!(
            o.permission,
            Some((PermissionDecision::Deny, "no bash today".into()))
        );
        assert_eq!(o.block, None);
        let o = h.run(Event::PreToolUse, Some("read"), json!({})).await;
        assert!(
            o.block.is_none() && o.notices[0].contains("exit code 1"),
            "{o:?}"
        );
        let o = h.run(Event::PreToolUse, Some("grep"), json!({})).await;
        assert_eq!(o, HookOutcome::default());
        let o = h
            .run(
                Event::PostToolUse,
                Some("bash"),
                json!({"tool_response": {"content": "hi", "is_error": false}}),
            )
            .await;
        assert_eq!(o, HookOutcome::default());
        let post: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("post.json")).unwrap())
                .unwrap();
        assert_eq!(post["tool_response"]["content"], "hi");
        let o = h
            .run(Event::UserPromptSubmit, None, json!({"prompt": "hi"}))
            .await;
        assert_eq!(o.context, vec!["Ticket: JAR-7".to_owned()]);
        let started = std::time::Instant::now();
        let o = h
            .run(Event::Stop, None, json!({"stop_hook_active": false}))
            .await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(o.notices[0].contains("timed out"), "{o:?}");
    }

    #[test]
    fn config_warnings() {
        let (c, w) = HookConfig::parse(
            &json!({"Notification": [], "PreToolUse": [{"matcher": "(", "hooks": []}, {"hooks": [{"type": "prompt", "prompt": "x"}]}]}),
            "s.json",
        );
        assert!(c.is_empty());
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
