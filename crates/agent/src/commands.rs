//! Slash commands and skills in Claude Code's formats.
//!
//! Commands: `.claude/commands/**/*.md` in the workspace (and `~/.claude/commands` on the
//! user's device), named by the file's stem; optional front matter (`description`,
//! `argument-hint`, `allowed-tools`, `model`); the body with `$ARGUMENTS` and `$1`…`$9`
//! replaced is sent as the prompt. `allowed-tools` become allow rules for that run, and like
//! every rule that widens what runs they need the file approved (`settings::ConfigApproval`).
//! Built-ins (`/clear`, `/compact`, `/model`, `/cost`, `/help`) are recognised here and left to
//! the caller to carry out: `expand` is the one dispatch point.
//!
//! Skills: `.claude/skills/<name>/SKILL.md` with `name` and `description` in its front matter.
//! The model is offered each skill's name and description (see `memory::WorkspaceContext`) and
//! loads one by reading its SKILL.md when it decides to use it.

use std::path::{Path, PathBuf};

use crate::approval::{ConfigApproval, content_hash};
use crate::permissions::Rule;

/// A command file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub description: Option<String>,
    pub argument_hint: Option<String>,
    pub allowed_tools: Vec<String>,
    pub model: Option<String>,
    pub body: String,
    /// Where it was read from (`.claude/commands/review.md`).
    pub label: String,
    /// Content hash, for approval of its `allowed-tools`.
    pub hash: String,
    /// Whether its `allowed-tools` may apply: the user's own commands always, a workspace
    /// file when `ConfigApproval` approves its content.
    pub approved: bool,
}

/// A built-in command: carried out by the caller, not sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// Start a new conversation (a new session).
    Clear,
    /// Compact the conversation, with optional instructions (another helper's operation).
    Compact(String),
    /// Switch the model.
    Model(String),
    /// Show what the session has cost.
    Cost,
    /// List the commands.
    Help,
}

pub const BUILTINS: &[(&str, &str)] = &[
    ("clear", "start a new conversation"),
    (
        "compact",
        "summarise the conversation so far to free context",
    ),
    ("model", "switch the model"),
    ("cost", "show what this session has cost"),
    ("help", "list the commands"),
];

/// What a line typed in a composer becomes.
#[derive(Debug, Clone)]
pub enum Expanded {
    /// Not a slash command: send as typed.
    Text(String),
    /// A workspace command, expanded.
    Prompt {
        text: String,
        /// `allowed-tools`, parsed, when the file is approved; otherwise empty.
        allow: Vec<Rule>,
        model: Option<String>,
        warnings: Vec<String>,
    },
    Builtin(Builtin),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command /{name}; available: {available}")]
pub struct UnknownCommand {
    pub name: String,
    pub available: String,
}

/// The commands of the workspace and (on the user's device) the user; the workspace's win
/// on a name clash. Returns warnings for files that cannot be used.
pub fn load_commands(
    root: &Path,
    user_dir: Option<&Path>,
    approval: &dyn ConfigApproval,
) -> (Vec<Command>, Vec<String>) {
    let mut commands: Vec<Command> = Vec::new();
    let mut warnings = Vec::new();
    let mut sources = Vec::new();
    if let Some(u) = user_dir {
        sources.push((u.join("commands"), "~/.claude/commands".to_owned()));
    }
    sources.push((root.join(".claude/commands"), ".claude/commands".to_owned()));
    for (dir, prefix) in sources {
        let user = prefix.starts_with('~');
        if !user && !inside(&dir, root) {
            if dir.exists() {
                warnings.push(format!(
                    "{prefix} is ignored: it resolves outside the workspace"
                ));
            }
            continue;
        }
        let mut files = Vec::new();
        collect_md(&dir, &dir, 0, &mut files);
        files.sort();
        for rel in files {
            let label = format!("{prefix}/{}", rel.to_string_lossy());
            let path = dir.join(&rel);
            let Ok(text) = std::fs::read_to_string(&path) else {
                warnings.push(format!("{label} cannot be read as text"));
                continue;
            };
            let Some(name) = rel.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            if BUILTINS.iter().any(|(b, _)| *b == name) {
                warnings.push(format!(
                    "{label}: /{name} is a built-in command; the file is ignored"
                ));
                continue;
            }
            let (front, body) = front_matter(&text);
            let get = |k: &str| {
                front
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            let cmd = Command {
                name: name.clone(),
                description: get("description"),
                argument_hint: get("argument-hint"),
                allowed_tools: get("allowed-tools").map(|v| list(&v)).unwrap_or_default(),
                model: get("model"),
                body: body.to_owned(),
                approved: user || approval.approved(&label, &content_hash(&text)),
                label,
                hash: content_hash(&text),
            };
            commands.retain(|c| c.name != name);
            commands.push(cmd);
        }
    }
    commands.sort_by(|a, b| a.name.cmp(&b.name));
    (commands, warnings)
}

/// Whether `dir` exists and resolves (through symlinks) inside `root`.
fn inside(dir: &Path, root: &Path) -> bool {
    dir.canonicalize()
        .ok()
        .zip(root.canonicalize().ok())
        .is_some_and(|(d, r)| d.starts_with(r))
}

/// `*.md` files under `dir` (subfolders namespace commands but do not change their names),
/// symlinks not followed, a few levels deep at most.
fn collect_md(base: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_md(base, &path, depth + 1, out),
            Ok(t) if t.is_file() && path.extension().is_some_and(|x| x == "md") => {
                if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.to_path_buf());
                }
            }
            _ => {}
        }
    }
}

/// Splits `---\nkey: value\n---\nbody`. Values are plain scalars (quotes removed); lists are
/// `[a, b]`, `a, b` or following `- a` lines, kept as one comma-separated string.
pub fn front_matter(text: &str) -> (Vec<(String, String)>, &str) {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return (Vec::new(), text);
    };
    let Some(end) = rest.find("\n---") else {
        return (Vec::new(), text);
    };
    let header = &rest[..end];
    let body = rest[end + 4..].trim_start_matches(['\r', '\n']);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in header.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(item) = t.strip_prefix("- ")
            && let Some((_, v)) = out.last_mut()
        {
            if !v.is_empty() {
                v.push_str(", ");
            }
            v.push_str(unquote(item.trim()));
            continue;
        }
        if let Some((k, v)) = t.split_once(':') {
            out.push((k.trim().to_owned(), unquote(v.trim()).to_owned()));
        }
    }
    (out, body)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

/// `Bash(git add:*), Read` → the rules; commas inside parentheses stay in their rule.
fn list(v: &str) -> Vec<String> {
    let v = v.trim();
    let v = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in v.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(unquote(cur.trim()).to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(unquote(cur.trim()).to_owned());
    out.retain(|s| !s.is_empty());
    out
}

/// Expands what the user typed: a workspace command, a built-in, or plain text.
pub fn expand(input: &str, commands: &[Command]) -> Result<Expanded, UnknownCommand> {
    let Some(rest) = input.trim_start().strip_prefix('/') else {
        return Ok(Expanded::Text(input.to_owned()));
    };
    let (name, args) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest.trim(), ""),
    };
    // `/` followed by a path (`/etc/hosts says…`) is not a command name.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_:".contains(c))
    {
        return Ok(Expanded::Text(input.to_owned()));
    }
    match name {
        "clear" => return Ok(Expanded::Builtin(Builtin::Clear)),
        "compact" => return Ok(Expanded::Builtin(Builtin::Compact(args.to_owned()))),
        "model" => return Ok(Expanded::Builtin(Builtin::Model(args.to_owned()))),
        "cost" => return Ok(Expanded::Builtin(Builtin::Cost)),
        "help" => return Ok(Expanded::Builtin(Builtin::Help)),
        _ => {}
    }
    let Some(cmd) = commands.iter().find(|c| c.name == name) else {
        return Err(UnknownCommand {
            name: name.to_owned(),
            available: BUILTINS
                .iter()
                .map(|(b, _)| format!("/{b}"))
                .chain(commands.iter().map(|c| format!("/{}", c.name)))
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let positional: Vec<&str> = args.split_whitespace().collect();
    let mut text = cmd.body.replace("$ARGUMENTS", args);
    for i in (1..=9).rev() {
        text = text.replace(
            &format!("${i}"),
            positional.get(i - 1).copied().unwrap_or(""),
        );
    }
    let mut warnings = Vec::new();
    let mut allow = Vec::new();
    if !cmd.allowed_tools.is_empty() {
        if cmd.approved {
            for r in &cmd.allowed_tools {
                match Rule::parse(r) {
                    Ok(rule) => allow.push(rule),
                    Err(e) => warnings.push(format!("{}: allowed-tools: {e}", cmd.label)),
                }
            }
        } else {
            warnings.push(format!(
                "{}: allowed-tools not applied: this file's content has not been approved by a \
                 workspace owner",
                cmd.label
            ));
        }
    }
    Ok(Expanded::Prompt {
        text,
        allow,
        model: cmd.model.clone(),
        warnings,
    })
}

/// A skill the model may load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    pub name: String,
    pub description: String,
    /// Workspace-relative path of its SKILL.md (what the model reads to load it).
    pub path: String,
}

/// The workspace's skills (`.claude/skills/<name>/SKILL.md`), and warnings.
pub fn load_skills(root: &Path) -> (Vec<Skill>, Vec<String>) {
    let mut skills = Vec::new();
    let mut warnings = Vec::new();
    let dir = root.join(".claude/skills");
    if !inside(&dir, root) {
        if dir.exists() {
            warnings.push(".claude/skills is ignored: it resolves outside the workspace".into());
        }
        return (skills, warnings);
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (skills, warnings);
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for folder in names {
        let rel = format!(".claude/skills/{folder}/SKILL.md");
        let Ok(text) = std::fs::read_to_string(root.join(&rel)) else {
            warnings.push(format!(
                "{rel} is missing or not text; the skill is not offered"
            ));
            continue;
        };
        let (front, _) = front_matter(&text);
        let get = |k: &str| {
            front
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        match get("description").filter(|d| !d.is_empty()) {
            Some(description) => skills.push(Skill {
                name: get("name").filter(|n| !n.is_empty()).unwrap_or(folder),
                description,
                path: rel,
            }),
            None => warnings.push(format!(
                "{rel} has no description; the skill is not offered"
            )),
        }
    }
    (skills, warnings)
}

/// The skills section of the context block.
pub fn render_skills(skills: &[Skill]) -> String {
    if skills.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "# Skills\nWhen a task matches one of these skills, read its SKILL.md (with the read \
         tool) before starting, and follow it.\n",
    );
    for s in skills {
        out.push_str(&format!("- {}: {} ({})\n", s.name, s.description, s.path));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::settings::{OwnDevice, Unapproved};

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn commands_expand_with_arguments_and_front_matter() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            ".claude/commands/review.md",
            "---\ndescription: Review a file\nargument-hint: <file>\nallowed-tools: Bash(git diff:*), Read\n---\nReview $ARGUMENTS carefully; start with $1.\n",
        );
        write(
            d.path(),
            ".claude/commands/git/shout.md",
            "SAY: $ARGUMENTS!",
        );
        write(
            d.path(),
            ".claude/commands/clear.md",
            "shadowing a built-in",
        );
        let (cmds, warnings) = load_commands(d.path(), None, &OwnDevice);
        assert_eq!(
            cmds.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["review", "shout"]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(cmds[0].argument_hint.as_deref(), Some("<file>"));
        let Expanded::Prompt { text, allow, .. } = expand("/review src/lib.rs", &cmds).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            text,
            "Review src/lib.rs carefully; start with src/lib.rs.\n"
        );
        assert_eq!(allow.len(), 2);
        let (unapproved, _) = load_commands(d.path(), None, &Unapproved);
        let Expanded::Prompt {
            allow, warnings, ..
        } = expand("/review x", &unapproved).unwrap()
        else {
            panic!()
        };
        assert!(allow.is_empty() && warnings[0].contains("not been approved"));
        let Expanded::Prompt { text, .. } = expand("/shout hello", &cmds).unwrap() else {
            panic!()
        };
        assert_eq!(text, "SAY: hello!");
        assert!(matches!(
            expand("/clear", &cmds).unwrap(),
            Expanded::Builtin(Builtin::Clear)
        ));
        assert!(matches!(
            expand("/compact keep the plan", &cmds).unwrap(),
            Expanded::Builtin(Builtin::Compact(a)) if a == "keep the plan"
        ));
        assert!(matches!(
            expand("hello /review", &cmds).unwrap(),
            Expanded::Text(_)
        ));
        assert!(matches!(
            expand("/etc/hosts says what?", &cmds).unwrap(),
            Expanded::Text(_)
        ));
        let e = expand("/nope x", &cmds).unwrap_err();
        assert!(
            e.to_string().contains("/review") && e.to_string().contains("/clear"),
            "{e}"
        );
    }

    #[test]
    fn skills_are_listed_by_name_and_description() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            ".claude/skills/release/SKILL.md",
            "---\nname: release-notes\ndescription: Write release notes from the git log\n---\nSteps…",
        );
        write(
            d.path(),
            ".claude/skills/broken/SKILL.md",
            "no front matter",
        );
        let (skills, warnings) = load_skills(d.path());
        assert_eq!(
            skills,
            [Skill {
                name: "release-notes".into(),
                description: "Write release notes from the git log".into(),
                path: ".claude/skills/release/SKILL.md".into(),
            }]
        );
        assert_eq!(warnings.len(), 1);
        assert!(render_skills(&skills).contains("- release-notes: Write release notes"));
    }

    #[test]
    fn folders_linked_out_of_the_workspace_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        write(d.path(), "elsewhere/evil.md", "from outside");
        write(
            d.path(),
            "elsewhere/s/SKILL.md",
            "---\nname: s\ndescription: outside\n---\n",
        );
        std::fs::create_dir_all(ws.join(".claude")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), ws.join(".claude/commands"))
            .unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), ws.join(".claude/skills")).unwrap();
        let (cmds, warnings) = load_commands(&ws, None, &OwnDevice);
        assert!(
            cmds.is_empty() && warnings[0].contains("resolves outside"),
            "{warnings:?}"
        );
        let (skills, warnings) = load_skills(&ws);
        assert!(
            skills.is_empty() && warnings[0].contains("resolves outside"),
            "{warnings:?}"
        );
    }

    #[test]
    fn front_matter_lists() {
        let (f, body) =
            front_matter("---\nallowed-tools:\n  - Read\n  - \"Bash(ls:*)\"\nmodel: x\n---\nbody");
        assert_eq!(f[0], ("allowed-tools".into(), "Read, Bash(ls:*)".into()));
        assert_eq!(body, "body");
        assert_eq!(list("[Bash(a, b:*), Read]"), ["Bash(a, b:*)", "Read"]);
    }
}
