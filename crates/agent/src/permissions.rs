//! Permission modes and rules: what the runner may do without asking. The one rule matcher of
//! My Jarvis: rules given on the command line, in the API, and loaded from Claude Code's settings
//! files (`settings.rs`) all end up here.
//!
//! The grammar is Claude Code's: `Tool` or `Tool(specifier)`, tool names case-insensitive and
//! mapped onto ours (`Read`→read, `Edit`/`Write`/`MultiEdit`/`NotebookEdit`→write and edit,
//! `Bash`→bash, `Glob`/`LS`→glob, `Grep`→grep, `TodoWrite`→todo). Bash specifiers
//! are an exact command (`git status`), a legacy prefix (`npm test:*`) or a wildcard pattern
//! (`npm run *`, `git * main`); file specifiers are gitignore-style globs with Claude Code's
//! anchors (`//abs`, `~/home`, `/root-relative`, `./relative`, `anywhere`).
//!
//! Evaluation: deny beats ask beats allow beats the mode. Everything fails closed:
//! - a deny (or ask) bash rule is checked against every simple command of the line — each
//!   segment of a chain or pipe, command substitutions, subshells, `sh -c` / `eval` strings,
//!   wrappers such as `sudo`/`env`/`timeout`, the command's basename — and a line whose command
//!   cannot be read statically (unbalanced quotes, a command name built from a variable) is
//!   denied when any specific bash deny rule exists;
//! - an allow bash rule only matches one plain simple command: no chaining, piping,
//!   substitution, subshell, background job, environment assignment or redirection to a file;
//! - a path rule is checked against the path after normalisation (`./`, `..`, absolute paths
//!   inside the root) and against the path with symlinks resolved: a deny matches if either
//!   does, an allow only if both do.
//!
//! A rule that can never match (unknown tool, bad syntax) is a `RuleError`; callers loading
//! settings turn it into a visible warning. Pure functions apart from resolving symlinks.

use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::tools::is_read_only;

mod shell;
#[cfg(test)]
mod tests;

use shell::ShellLine;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Read-only tools run; everything else asks.
    Ask,
    /// File edits run too; bash asks.
    AcceptEdits,
    /// Read-only tools only; changes are refused (the model is told to plan instead).
    Plan,
    /// Nothing asks: read-only tools and allowed calls run, everything else is refused
    /// (Claude Code's `dontAsk`).
    DontAsk,
    /// Everything runs. Never a default.
    AllowAll,
}

impl Mode {
    /// Our names and Claude Code's `defaultMode` spellings.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ask" | "default" => Some(Mode::Ask),
            "accept-edits" | "acceptEdits" => Some(Mode::AcceptEdits),
            "plan" => Some(Mode::Plan),
            "dont-ask" | "dontAsk" => Some(Mode::DontAsk),
            "allow-all" | "bypassPermissions" => Some(Mode::AllowAll),
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission rule {rule:?} can never match: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub reason: String,
}

/// The tools of ours a rule's tool name covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tools {
    Read,
    /// Claude Code's Edit rules cover every tool that changes files: write and edit here.
    Modify,
    Bash,
    Glob,
    Grep,
    Todo,
    /// Reading a background command's output (Claude Code's BashOutput).
    BashOutput,
    /// Stopping a background command (Claude Code's KillShell, formerly KillBash).
    KillShell,
    /// No tool of ours (the tool of an "always allow" entry that names none).
    Unknown,
}

impl Tools {
    fn parse(name: &str) -> Option<Tools> {
        Some(match name.to_ascii_lowercase().as_str() {
            "read" | "notebookread" => Tools::Read,
            "edit" | "write" | "multiedit" | "notebookedit" => Tools::Modify,
            "bash" => Tools::Bash,
            "glob" | "ls" => Tools::Glob,
            "grep" => Tools::Grep,
            "todo" | "todowrite" => Tools::Todo,
            "bash_output" | "bashoutput" => Tools::BashOutput,
            "kill_shell" | "killshell" | "killbash" => Tools::KillShell,
            // Skills are loaded by reading their SKILL.md here; there is no skill tool.
            _ => return None,
        })
    }

    fn covers(self, tool: &str) -> bool {
        match self {
            Tools::Read => tool == "read",
            Tools::Modify => matches!(tool, "write" | "edit"),
            Tools::Bash => tool == "bash",
            Tools::Glob => tool == "glob",
            Tools::Grep => tool == "grep",
            Tools::Todo => tool == "todo",
            Tools::BashOutput => tool == "bash_output",
            Tools::KillShell => tool == "kill_shell",
            Tools::Unknown => false,
        }
    }

    fn takes_paths(self) -> bool {
        matches!(self, Tools::Read | Tools::Modify)
    }
}

#[derive(Debug, Clone)]
enum CommandPattern {
    /// `git status`: the command and nothing else.
    Exact(String),
    /// `npm test:*` (legacy): the prefix, alone or followed by a space and anything.
    Prefix(String),
    /// `npm run *`, `git * main`: `*` matches any text; a trailing ` *` may also match nothing.
    Wildcard(regex::Regex),
    /// What "always allow" records: this exact command line, compound or not.
    Line(String),
}

impl CommandPattern {
    fn parse(spec: &str) -> Result<CommandPattern, &'static str> {
        if spec.is_empty() {
            return Err("empty command");
        }
        if let Some(prefix) = spec.strip_suffix(":*") {
            let prefix = prefix.trim();
            if prefix.is_empty() {
                return Err("empty command prefix");
            }
            if prefix.contains('*') {
                return Err("a ':*' prefix may not contain another '*'");
            }
            return Ok(CommandPattern::Prefix(normalize_spaces(prefix)));
        }
        if !spec.contains('*') {
            return Ok(CommandPattern::Exact(normalize_spaces(spec)));
        }
        let spec = normalize_spaces(spec);
        let (body, optional_tail) = match spec.strip_suffix(" *") {
            // A single trailing ` *` also matches the bare command (`ls *` matches `ls`).
            Some(b) if !b.contains('*') => (b.to_owned(), true),
            _ => (spec.clone(), false),
        };
        let mut re = String::from("^");
        for (i, part) in body.split('*').enumerate() {
            if i > 0 {
                re.push_str(".*");
            }
            re.push_str(&regex::escape(part));
        }
        if optional_tail {
            re.push_str("(?: .*)?");
        }
        re.push('$');
        regex::Regex::new(&re)
            .map(CommandPattern::Wildcard)
            .map_err(|_| "invalid wildcard pattern")
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            CommandPattern::Exact(c) => text == c,
            CommandPattern::Prefix(p) => {
                text == p
                    || text
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with(' '))
            }
            CommandPattern::Wildcard(re) => re.is_match(text),
            CommandPattern::Line(_) => false,
        }
    }
}

fn normalize_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// `//abs/path`: from the filesystem root.
    Absolute,
    /// `~/path`: from the home folder.
    Home,
    /// `/path`, `./path`, `a/b`: from the workspace root.
    Root,
    /// `name`, `*.env`: at any depth of the workspace (gitignore: no slash matches anywhere).
    Anywhere,
}

#[derive(Debug, Clone)]
struct PathPattern {
    anchor: Anchor,
    matcher: globset::GlobMatcher,
}

impl PathPattern {
    fn parse(spec: &str) -> Result<PathPattern, &'static str> {
        if spec.is_empty() {
            return Err("empty path");
        }
        let (anchor, rest) = if let Some(r) = spec.strip_prefix("//") {
            (Anchor::Absolute, r)
        } else if let Some(r) = spec.strip_prefix("~/") {
            (Anchor::Home, r)
        } else if let Some(r) = spec.strip_prefix("./") {
            (Anchor::Root, r)
        } else if let Some(r) = spec.strip_prefix('/') {
            (Anchor::Root, r)
        } else if spec.trim_end_matches('/').contains('/') {
            (Anchor::Root, spec)
        } else {
            (Anchor::Anywhere, spec)
        };
        // A trailing slash means "this folder": with ancestor matching below, the folder's
        // name alone already covers everything in it.
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            return Err("the path names no file or folder");
        }
        if rest.split('/').any(|c| c == "..") {
            return Err("'..' is not allowed in a path rule");
        }
        let glob = rest.strip_prefix("./").unwrap_or(rest).to_owned();
        let matcher = globset::GlobBuilder::new(&glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|_| "invalid path glob")?
            .compile_matcher();
        Ok(PathPattern { anchor, matcher })
    }

    /// Whether the pattern covers `abs` or a folder containing it (gitignore: a matched folder
    /// takes everything in it along).
    fn matches(&self, abs: &Path, ctx: &PathContext) -> bool {
        let base = match self.anchor {
            Anchor::Absolute => Some(PathBuf::from("/")),
            Anchor::Home => ctx.home.clone(),
            // No root known: paths were made absolute from `/` (see `path_forms`).
            Anchor::Root | Anchor::Anywhere => {
                Some(ctx.root.clone().unwrap_or_else(|| PathBuf::from("/")))
            }
        };
        let Some(base) = base else { return false };
        let Ok(rel) = abs.strip_prefix(&base) else {
            return false;
        };
        let comps: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        // Every ancestor (and the path itself), and for `Anywhere` every suffix of those.
        for end in 1..=comps.len() {
            let starts: Vec<usize> = if self.anchor == Anchor::Anywhere {
                (0..end).collect()
            } else {
                vec![0]
            };
            for start in starts {
                if self.matcher.is_match(comps[start..end].join("/")) {
                    return true;
                }
            }
        }
        false
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Any,
    Command(CommandPattern),
    Path(PathPattern),
    /// What "always allow" records for a call it cannot describe: matches nothing.
    Never,
}

/// One permission rule, as written.
#[derive(Debug, Clone)]
pub struct Rule {
    text: String,
    tools: Tools,
    matcher: Matcher,
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Rule {
    pub fn parse(rule: &str) -> Result<Rule, RuleError> {
        let err = |reason: &str| RuleError {
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        let text = rule.trim();
        let (tool, spec) = match text.split_once('(') {
            Some((t, rest)) => {
                let spec = rest
                    .strip_suffix(')')
                    .ok_or_else(|| err("missing ')' at the end"))?;
                (t.trim(), Some(spec.trim()))
            }
            None => (text, None),
        };
        if tool.is_empty() || !tool.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err("the tool name must be a plain word, like Bash or Read"));
        }
        if tool.starts_with("mcp__") {
            return Err(err("MCP tools are not supported here"));
        }
        let tools = Tools::parse(tool).ok_or_else(|| {
            err(
                "no such tool here (tools: Read, Edit, Write, Bash, BashOutput, KillShell, Glob, \
                 Grep, TodoWrite)",
            )
        })?;
        let matcher = match spec {
            None | Some("*") => Matcher::Any,
            Some("") => return Err(err("empty specifier; write the bare tool name instead")),
            Some(s) if tools == Tools::Bash => {
                Matcher::Command(CommandPattern::parse(s).map_err(err)?)
            }
            Some(s) if tools.takes_paths() => Matcher::Path(PathPattern::parse(s).map_err(err)?),
            Some(_) => {
                return Err(err(
                    "this tool takes no specifier here; use Read(...) rules to hide files from it",
                ));
            }
        };
        Ok(Rule {
            text: text.to_owned(),
            tools,
            matcher,
        })
    }
}

/// Where relative path rules are anchored.
#[derive(Debug, Clone, Default)]
struct PathContext {
    root: Option<PathBuf>,
    home: Option<PathBuf>,
}

/// A session's permission settings.
#[derive(Debug, Clone)]
pub struct Permissions {
    pub mode: Mode,
    pub allow: Vec<Rule>,
    pub ask: Vec<Rule>,
    pub deny: Vec<Rule>,
    ctx: PathContext,
}

/// How one rule list judges one call.
enum Hit<'r> {
    No,
    Rule(&'r Rule),
    /// A bash line that cannot be read statically, checked against a specific rule.
    Unreadable(&'r Rule, &'static str),
}

impl Permissions {
    pub fn new(mode: Mode) -> Self {
        Permissions {
            mode,
            allow: Vec::new(),
            ask: Vec::new(),
            deny: Vec::new(),
            ctx: PathContext {
                root: None,
                home: std::env::var_os("HOME").map(PathBuf::from),
            },
        }
    }

    /// Anchors path rules at the workspace root (resolved through symlinks). Without a root,
    /// relative rules are matched against the lexically normalised path only.
    pub fn with_root(mut self, root: &Path) -> Self {
        self.set_root(root);
        self
    }

    pub fn set_root(&mut self, root: &Path) {
        self.ctx.root = Some(root.canonicalize().unwrap_or_else(|_| lexical(root)));
    }

    pub fn root(&self) -> Option<&Path> {
        self.ctx.root.as_deref()
    }

    /// Where `~/` rules point (default: `$HOME`).
    pub fn set_home(&mut self, home: Option<PathBuf>) {
        self.ctx.home = home;
    }

    pub fn check(&self, tool: &str, input: &Value) -> Verdict {
        match self.find(&self.deny, tool, input, false) {
            Hit::Rule(r) => return Verdict::Deny(format!("denied by rule {r}")),
            Hit::Unreadable(r, why) => {
                return Verdict::Deny(format!(
                    "this command cannot be checked against the deny rule {r} ({why}); \
                     write it as plain commands"
                ));
            }
            Hit::No => {}
        }
        if !matches!(self.find(&self.ask, tool, input, false), Hit::No) {
            return Verdict::Ask;
        }
        if matches!(self.find(&self.allow, tool, input, true), Hit::Rule(_)) {
            return Verdict::Allow;
        }
        let edits = matches!(tool, "write" | "edit");
        match self.mode {
            Mode::AllowAll => Verdict::Allow,
            _ if is_read_only(tool) => Verdict::Allow,
            Mode::Plan => Verdict::Deny("plan mode: no changes; describe the plan instead".into()),
            Mode::DontAsk => Verdict::Deny(format!(
                "not pre-approved: {tool} needs an allow rule in this permission mode"
            )),
            Mode::AcceptEdits if edits => Verdict::Allow,
            Mode::AcceptEdits | Mode::Ask => Verdict::Ask,
        }
    }

    /// Whether deny rules hide this workspace file from tools that search many files (grep,
    /// glob): Claude Code applies Read rules to them as far as it can; so do we.
    pub fn read_denied(&self, abs: &Path) -> bool {
        let mut rules = self
            .deny
            .iter()
            .filter(|r| r.tools == Tools::Read)
            .peekable();
        if rules.peek().is_none() {
            return false;
        }
        let forms = self.path_forms(&abs.to_string_lossy());
        rules.any(|r| match &r.matcher {
            Matcher::Any => true,
            Matcher::Path(p) => forms.iter().any(|f| p.matches(f, &self.ctx)),
            Matcher::Command(_) | Matcher::Never => false,
        })
    }

    fn find<'r>(&self, rules: &'r [Rule], tool: &str, input: &Value, allow: bool) -> Hit<'r> {
        let s = |k: &str| input.get(k).and_then(Value::as_str);
        // A bare Read deny also keeps the searching tools away (Claude Code: best effort).
        let applies = |r: &Rule| {
            r.tools.covers(tool)
                || (!allow
                    && r.tools == Tools::Read
                    && matches!(r.matcher, Matcher::Any)
                    && matches!(tool, "grep" | "glob"))
        };
        let mut parsed: Option<ShellLine> = None;
        let mut forms: Option<Vec<PathBuf>> = None;
        for r in rules.iter().filter(|r| applies(r)) {
            let hit = match &r.matcher {
                Matcher::Any => true,
                Matcher::Never => false,
                Matcher::Command(CommandPattern::Line(line)) => {
                    allow && s("command").map(str::trim) == Some(line.as_str())
                }
                Matcher::Command(p) => {
                    let line =
                        parsed.get_or_insert_with(|| ShellLine::parse(s("command").unwrap_or("")));
                    if allow {
                        line.plain().is_some_and(|c| p.matches(&c))
                    } else {
                        if let Some(why) = line.unreadable() {
                            return Hit::Unreadable(r, why);
                        }
                        line.deny_candidates().iter().any(|c| p.matches(c))
                    }
                }
                Matcher::Path(p) => {
                    let forms = forms.get_or_insert_with(|| {
                        let mut f = Vec::new();
                        for key in ["path", "file_path"] {
                            if let Some(v) = s(key) {
                                f.extend(self.path_forms(v));
                            }
                        }
                        f
                    });
                    if allow {
                        !forms.is_empty() && forms.iter().all(|f| p.matches(f, &self.ctx))
                    } else {
                        forms.iter().any(|f| p.matches(f, &self.ctx))
                    }
                }
            };
            if hit {
                return Hit::Rule(r);
            }
        }
        Hit::No
    }

    /// The absolute forms of a tool's path: normalised lexically, and with symlinks resolved.
    fn path_forms(&self, path: &str) -> Vec<PathBuf> {
        let p = Path::new(path);
        let joined = match (&self.ctx.root, p.is_absolute()) {
            (_, true) => p.to_path_buf(),
            (Some(root), false) => root.join(p),
            // No root known: treat the workspace as `/` so relative rules still see the path.
            (None, false) => Path::new("/").join(p),
        };
        let lexical = lexical(&joined);
        let resolved = resolve(&lexical);
        if resolved == lexical {
            vec![lexical]
        } else {
            vec![lexical, resolved]
        }
    }

    /// What an "always allow" answer records for this call: the exact command line for bash,
    /// the exact file (relative to the workspace, so it holds after a handoff) for file tools,
    /// the tool otherwise. Kept by an `AllowStore`; turned back into a rule by `entry_rule`.
    pub fn always_allow_entry(&self, tool: &str, input: &Value) -> Value {
        let s = |k: &str| input.get(k).and_then(Value::as_str).unwrap_or("").trim();
        match Tools::parse(tool) {
            Some(Tools::Bash) => serde_json::json!({"tool": tool, "command": s("command")}),
            Some(t) if t.takes_paths() => {
                let lexical = self.path_forms(s("path")).swap_remove(0);
                let base = self.ctx.root.clone().unwrap_or_else(|| PathBuf::from("/"));
                match lexical.strip_prefix(&base) {
                    Ok(rel) => serde_json::json!({"tool": tool, "path": rel.to_string_lossy()}),
                    Err(_) => serde_json::json!({"tool": tool, "never": true}),
                }
            }
            _ => serde_json::json!({"tool": tool}),
        }
    }

    /// The allow rule for a recorded "always allow" entry (`{"tool": "bash", "prefix": "npm
    /// test"}`, an answer's prefix option, becomes `Bash(npm test:*)`).
    pub fn entry_rule(entry: &Value) -> Rule {
        let s = |k: &str| entry.get(k).and_then(Value::as_str);
        let tool = s("tool").unwrap_or("");
        let never = |t| Rule {
            text: format!("{tool}(<nothing>)"),
            tools: t,
            matcher: Matcher::Never,
        };
        let Some(t) = Tools::parse(tool) else {
            return never(Tools::Unknown);
        };
        if entry.get("never").is_some() {
            return never(t);
        }
        match (t, s("command"), s("path")) {
            // A "prefix" answer (kept on the hub): `Bash(npm test:*)`.
            (Tools::Bash, None, _) if s("prefix").is_some() => {
                let p = s("prefix").unwrap_or_default();
                match CommandPattern::parse(&format!("{p}:*")) {
                    Ok(pat) => Rule {
                        text: format!("{tool}({p}:*)"),
                        tools: t,
                        matcher: Matcher::Command(pat),
                    },
                    Err(_) => never(t),
                }
            }
            (Tools::Bash, Some(c), _) => Rule {
                text: format!("{tool}({c})"),
                tools: t,
                matcher: Matcher::Command(CommandPattern::Line(c.to_owned())),
            },
            (Tools::Bash, None, _) => never(t),
            (t, _, Some(p)) if t.takes_paths() => {
                let glob = globset::escape(p);
                match PathPattern::parse(&format!("/{glob}")) {
                    Ok(pat) => Rule {
                        text: format!("{tool}(/{glob})"),
                        tools: t,
                        matcher: Matcher::Path(pat),
                    },
                    Err(_) => never(t),
                }
            }
            (t, _, _) if t.takes_paths() => never(t),
            (t, _, _) => Rule {
                text: tool.to_owned(),
                tools: t,
                matcher: Matcher::Any,
            },
        }
    }

    /// The rule an "always allow" answer adds for this call (see `always_allow_entry`).
    pub fn always_allow_rule(&self, tool: &str, input: &Value) -> Rule {
        Self::entry_rule(&self.always_allow_entry(tool, input))
    }
}

/// Resolves `.` and `..` without touching the file system (`..` at the root stays at the root).
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The path with symlinks resolved: the deepest existing ancestor canonicalised, the rest
/// appended (what does not exist cannot be a link).
fn resolve(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
}
