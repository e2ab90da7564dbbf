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

/// One simple command of a shell line, as the shell would run it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SimpleCommand {
    /// Unquoted words, keywords and leading assignments included.
    raw: Vec<String>,
    /// The same without leading keywords (`if`, `do`, `!`, `{` …) and assignments.
    words: Vec<String>,
    /// The command word contains an expansion or substitution: which program runs is unknown.
    dynamic: bool,
}

/// A bash command line read statically: every simple command in it, wherever it is nested.
#[derive(Debug, Default)]
struct ShellLine {
    commands: Vec<SimpleCommand>,
    /// Chaining, piping, background jobs, substitutions, subshells, here-documents or
    /// redirections to files: anything that makes this more than one plain command.
    compound: bool,
    /// Unbalanced quotes or brackets, or nesting too deep: the reading may miss commands.
    incomplete: bool,
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "for", "case", "esac",
    "in", "!", "{", "}", "function", "select", "coproc", "time", "[[", "]]",
];

/// Programs that run their arguments as a command.
const WRAPPERS: &[&str] = &[
    "sudo", "doas", "env", "nohup", "nice", "ionice", "timeout", "time", "command", "exec",
    "builtin", "xargs", "stdbuf", "setsid", "chrt", "taskset", "unbuffer", "watch", "strace",
    "ltrace", "nsenter", "chroot", "runuser", "su", "flock", "parallel",
    // `find … -exec rm {} ;` runs its arguments too.
    "find",
];

/// Shells and builtins that run a string as a command line.
const EVALUATORS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish", "busybox", "eval", "su", "sudo",
    "runuser",
];

impl ShellLine {
    fn parse(src: &str) -> ShellLine {
        let mut line = ShellLine::default();
        let chars: Vec<char> = src.chars().collect();
        let mut pos = 0;
        parse_list(&chars, &mut pos, None, &mut line, 0);
        // Strings given to `sh -c` or `eval` are command lines too.
        let mut i = 0;
        while i < line.commands.len() {
            let words = line.commands[i].words.clone();
            if let Some(first) = words.first()
                && EVALUATORS.contains(&basename(first))
                && words.len() > 1
            {
                let mut nested = Vec::new();
                for w in &words[1..] {
                    if w.contains(|c: char| c.is_whitespace() || ";&|`$()".contains(c)) {
                        nested.push(w.clone());
                    }
                }
                nested.push(words[1..].join(" "));
                for n in nested {
                    if i > 64 || line.commands.len() > 512 {
                        line.incomplete = true;
                        break;
                    }
                    let chars: Vec<char> = n.chars().collect();
                    let mut pos = 0;
                    let mut inner = ShellLine::default();
                    parse_list(&chars, &mut pos, None, &mut inner, 1);
                    line.incomplete |= inner.incomplete;
                    line.commands.extend(inner.commands);
                }
            }
            i += 1;
        }
        line
    }

    fn unreadable(&self) -> Option<&'static str> {
        if self.incomplete {
            Some("unbalanced quotes or brackets")
        } else if self.commands.iter().any(|c| c.dynamic) {
            Some("the command name comes from a variable, substitution or expansion")
        } else {
            None
        }
    }

    /// The one plain command this line is, as text an allow rule is matched against.
    fn plain(&self) -> Option<String> {
        match self.commands.as_slice() {
            [c] if !self.compound && !self.incomplete && !c.dynamic && c.raw == c.words => {
                Some(c.words.join(" "))
            }
            _ => None,
        }
    }

    /// Every text a deny rule is matched against: each simple command, with the program's
    /// basename, and every tail after a wrapper word (`sudo -u x rm …` yields `rm …`).
    fn deny_candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.commands {
            for start in 0..c.words.len() {
                if start > 0 && !WRAPPERS.contains(&basename(&c.words[0])) {
                    break;
                }
                let tail = &c.words[start..];
                if tail.is_empty() {
                    continue;
                }
                out.push(tail.join(" "));
                let base = basename(&tail[0]);
                if base != tail[0] {
                    let mut w = tail.to_vec();
                    w[0] = base.to_owned();
                    out.push(w.join(" "));
                }
            }
        }
        out
    }
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// A word being read: its unquoted text, and whether an expansion went into it.
#[derive(Default)]
struct Word {
    text: String,
    started: bool,
    dynamic: bool,
    /// Unquoted glob or brace-expansion characters: the shell may turn it into other words
    /// (`/bin/r?` is `/bin/rm`, `{rm,x}` is `rm x`).
    expands: bool,
}

/// The simple command being read.
#[derive(Default)]
struct Current {
    raw: Vec<String>,
    /// Per word of `raw`: whether an expansion went into it.
    dynamic: Vec<bool>,
    /// Per word of `raw`: whether the shell may expand it into other words.
    expands: Vec<bool>,
    /// The next finished word is a redirection target, not an argument.
    redirect: Option<String>,
}

impl Current {
    fn push_word(&mut self, w: &mut Word, line: &mut ShellLine) {
        if !w.started {
            return;
        }
        let word = std::mem::take(w);
        if let Some(op) = self.redirect.take() {
            let o = op.trim_start_matches(|c: char| c.is_ascii_digit());
            // Duplicating descriptors, discarding output and reading input write no file.
            let harmless = (o.ends_with('&')
                && (word.text == "-" || word.text.chars().all(|c| c.is_ascii_digit())))
                || (o.starts_with('>') && word.text == "/dev/null")
                || o == "<";
            if !harmless || word.dynamic {
                line.compound = true;
            }
            return;
        }
        self.raw.push(word.text);
        self.dynamic.push(word.dynamic);
        self.expands.push(word.expands);
    }

    fn finish(&mut self, line: &mut ShellLine) {
        let cur = std::mem::take(self);
        if cur.redirect.is_some() {
            // An operator with no target: a syntax error the shell would refuse.
            line.incomplete = true;
        }
        if cur.raw.is_empty() {
            return;
        }
        let skip = cur
            .raw
            .iter()
            .take_while(|w| KEYWORDS.contains(&w.as_str()) || is_assignment(w))
            .count();
        let words = cur.raw[skip..].to_vec();
        let Some(first) = words.first() else { return };
        // Which program runs is unknown when its name is computed, or when a wrapper's
        // arguments (its command) are.
        let program = basename(first);
        let runs_arguments = WRAPPERS.contains(&program) || EVALUATORS.contains(&program);
        let unknown = |i: usize| cur.dynamic[i] || cur.expands[i];
        let dynamic = unknown(skip) || (runs_arguments && (skip..cur.raw.len()).any(unknown));
        line.commands.push(SimpleCommand {
            raw: cur.raw,
            words,
            dynamic,
        });
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit())
        }
        None => false,
    }
}

const MAX_DEPTH: usize = 16;

/// Reads commands until `close` (or the end), collecting them into `line`.
fn parse_list(
    s: &[char],
    pos: &mut usize,
    close: Option<char>,
    line: &mut ShellLine,
    depth: usize,
) {
    if depth > MAX_DEPTH {
        line.incomplete = true;
        *pos = s.len();
        return;
    }
    let mut cur = Current::default();
    let mut w = Word::default();
    while *pos < s.len() {
        let c = s[*pos];
        match c {
            _ if Some(c) == close => {
                *pos += 1;
                cur.push_word(&mut w, line);
                cur.finish(line);
                return;
            }
            ' ' | '\t' | '\r' => {
                cur.push_word(&mut w, line);
                *pos += 1;
            }
            '\n' | ';' | '&' | '|' => {
                if c == '&' && s.get(*pos + 1) == Some(&'>') {
                    // `&>file`: both streams to a file.
                    cur.push_word(&mut w, line);
                    *pos += 2;
                    if s.get(*pos) == Some(&'>') {
                        *pos += 1;
                    }
                    cur.redirect = Some(">".into());
                    continue;
                }
                cur.push_word(&mut w, line);
                cur.finish(line);
                if !(c == '\n'
                    && close.is_none()
                    && s[*pos + 1..].iter().all(|c| c.is_whitespace()))
                {
                    line.compound = true;
                }
                *pos += 1;
            }
            '#' if !w.started => {
                while *pos < s.len() && s[*pos] != '\n' {
                    *pos += 1;
                }
            }
            '\'' => {
                w.started = true;
                *pos += 1;
                loop {
                    match s.get(*pos) {
                        None => {
                            line.incomplete = true;
                            break;
                        }
                        Some('\'') => {
                            *pos += 1;
                            break;
                        }
                        Some(&ch) => {
                            w.text.push(ch);
                            *pos += 1;
                        }
                    }
                }
            }
            '"' => {
                w.started = true;
                *pos += 1;
                loop {
                    match s.get(*pos) {
                        None => {
                            line.incomplete = true;
                            break;
                        }
                        Some('"') => {
                            *pos += 1;
                            break;
                        }
                        Some('\\') => {
                            match s.get(*pos + 1) {
                                Some(&n @ ('$' | '`' | '"' | '\\')) => w.text.push(n),
                                Some('\n') => {}
                                Some(&n) => {
                                    w.text.push('\\');
                                    w.text.push(n);
                                }
                                None => line.incomplete = true,
                            }
                            *pos += 2;
                        }
                        Some('$') | Some('`') => dollar_or_backtick(s, pos, &mut w, line, depth),
                        Some(&ch) => {
                            w.text.push(ch);
                            *pos += 1;
                        }
                    }
                }
            }
            '\\' => {
                match s.get(*pos + 1) {
                    Some('\n') => {}
                    Some(&n) => {
                        w.started = true;
                        w.text.push(n);
                    }
                    None => line.incomplete = true,
                }
                *pos += 2;
            }
            '$' | '`' => {
                w.started = true;
                dollar_or_backtick(s, pos, &mut w, line, depth);
            }
            '(' => {
                if w.started
                    || (!cur.raw.is_empty()
                        && !cur.raw.iter().all(|r| KEYWORDS.contains(&r.as_str())))
                {
                    // `f() { … }` or `a(b`: nothing a plain command contains.
                    line.incomplete = true;
                }
                cur.push_word(&mut w, line);
                cur.finish(line);
                line.compound = true;
                *pos += 1;
                parse_list(s, pos, Some(')'), line, depth + 1);
            }
            ')' => {
                // A `)` nobody opened (a `case` pattern, or a syntax error).
                line.incomplete = true;
                *pos += 1;
            }
            '<' | '>' => {
                // `2>`: the digits were a descriptor, not a word.
                let fd = if w.started && !w.dynamic && w.text.chars().all(|c| c.is_ascii_digit()) {
                    std::mem::take(&mut w).text
                } else {
                    cur.push_word(&mut w, line);
                    String::new()
                };
                let mut op = format!("{fd}{c}");
                *pos += 1;
                if s.get(*pos) == Some(&'(') {
                    // Process substitution.
                    line.compound = true;
                    *pos += 1;
                    parse_list(s, pos, Some(')'), line, depth + 1);
                    w.started = true;
                    w.dynamic = true;
                    continue;
                }
                while let Some(&n @ ('<' | '>' | '&' | '|')) = s.get(*pos) {
                    op.push(n);
                    *pos += 1;
                }
                if op.contains("<<") {
                    // A here-document: its body follows on later lines, which are read as
                    // commands too (a deny rule then sees more, never less).
                    line.compound = true;
                }
                cur.redirect = Some(op);
            }
            _ => {
                w.started = true;
                if matches!(c, '*' | '?' | '[') || (c == '{' && brace_expansion(&s[*pos..])) {
                    w.expands = true;
                }
                w.text.push(c);
                *pos += 1;
            }
        }
    }
    if close.is_some() {
        line.incomplete = true;
    }
    cur.push_word(&mut w, line);
    cur.finish(line);
}

/// Whether the `{` starting `s` opens a brace expansion (`{a,b}`, `{1..3}`) in this word.
fn brace_expansion(s: &[char]) -> bool {
    let word: String = s
        .iter()
        .take_while(|c| !c.is_whitespace() && !";&|<>()\"'`".contains(**c))
        .collect();
    match word.find('}') {
        Some(end) => word[..end].contains(',') || word[..end].contains(".."),
        None => false,
    }
}

/// `$(…)`, `$((…))`, `${…}`, `$name` or `` `…` `` at `pos`: substitutions are read as nested
/// command lines; every expansion makes the word dynamic.
fn dollar_or_backtick(
    s: &[char],
    pos: &mut usize,
    w: &mut Word,
    line: &mut ShellLine,
    depth: usize,
) {
    if s[*pos] == '`' {
        *pos += 1;
        let mut inner = String::new();
        loop {
            match s.get(*pos) {
                None => {
                    line.incomplete = true;
                    break;
                }
                Some('`') => {
                    *pos += 1;
                    break;
                }
                Some('\\') if matches!(s.get(*pos + 1), Some('`' | '\\' | '$')) => {
                    inner.push(s[*pos + 1]);
                    *pos += 2;
                }
                Some(&ch) => {
                    inner.push(ch);
                    *pos += 1;
                }
            }
        }
        let chars: Vec<char> = inner.chars().collect();
        let mut p = 0;
        parse_list(&chars, &mut p, None, line, depth + 1);
        line.compound = true;
        w.dynamic = true;
        w.text.push('`');
        return;
    }
    // s[pos] == '$'
    match s.get(*pos + 1) {
        Some('(') => {
            *pos += 2;
            line.compound = true;
            // `$((…))` is arithmetic, but reading it as commands only ever finds more.
            parse_list(s, pos, Some(')'), line, depth + 1);
            w.dynamic = true;
            w.text.push('$');
        }
        Some('{') => {
            *pos += 2;
            let mut nest = 1;
            while let Some(&ch) = s.get(*pos) {
                *pos += 1;
                match ch {
                    '{' => nest += 1,
                    '}' => {
                        nest -= 1;
                        if nest == 0 {
                            break;
                        }
                    }
                    '$' | '`' if s.get(*pos) == Some(&'(') || ch == '`' => {
                        // A substitution inside `${…:-$(…)}`.
                        line.compound = true;
                        *pos -= 1;
                        let mut scratch = Word::default();
                        dollar_or_backtick(s, pos, &mut scratch, line, depth + 1);
                    }
                    _ => {}
                }
            }
            if nest != 0 {
                line.incomplete = true;
            }
            w.dynamic = true;
            w.text.push('$');
        }
        Some(&n) if n.is_ascii_alphanumeric() || "_?@*#!$-".contains(n) => {
            *pos += 2;
            if n.is_ascii_alphabetic() || n == '_' {
                while s
                    .get(*pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    *pos += 1;
                }
            }
            w.dynamic = true;
            w.text.push('$');
        }
        Some('\'') => {
            // $'…' (ANSI-C quoting): the escapes could spell anything.
            *pos += 1;
            w.dynamic = true;
            w.text.push('$');
        }
        _ => {
            w.text.push('$');
            *pos += 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn perms(root: &Path, allow: &[&str], ask: &[&str], deny: &[&str]) -> Permissions {
        let mut p = Permissions::new(Mode::Ask).with_root(root);
        p.set_home(Some(PathBuf::from("/home/u")));
        let parse = |v: &[&str]| v.iter().map(|r| Rule::parse(r).unwrap()).collect();
        p.allow = parse(allow);
        p.ask = parse(ask);
        p.deny = parse(deny);
        p
    }

    fn workspace() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "secrets/key",
            "protected/b.txt",
            "src/lib.rs",
            ".env",
            "sub/.env",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        std::os::unix::fs::symlink(d.path().join("secrets"), d.path().join("innocent")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secrets/key"), d.path().join("src/key.rs"))
            .unwrap();
        d
    }

    const A: &str = "allow";
    const Q: &str = "ask";
    const D: &str = "deny";

    /// (rule list, rule, tool, input, expected) — one rule at a time, in Ask mode.
    #[test]
    fn rule_table() {
        let d = workspace();
        let root = d.path().canonicalize().unwrap();
        let abs = |p: &str| root.join(p).to_string_lossy().into_owned();
        let bash = |c: &str| json!({ "command": c });
        let path = |p: &str| json!({ "path": p });
        let cases: Vec<(&str, &str, &str, Value, Verdict)> = vec![
            // Bash deny: every segment, every spelling.
            (D, "Bash(rm:*)", "bash", bash("rm -rf x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("rm"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "bash(rm:*)", "bash", bash("rm x; true"), Verdict::Deny("denied by rule bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("true && rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("false || rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("ls | rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("sleep 1 & rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("echo $(rm x)"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("echo \"$(rm x)\""), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("echo `rm x`"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("(rm x)"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("{ rm x; }"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("true\nrm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("cat <(rm x)"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("if true; then rm x; fi"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("for f in a; do rm $f; done"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("/bin/rm -rf x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("\\rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("'r'\"m\" x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("FOO=1 rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("sudo -u root rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("timeout 5 rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("find . | xargs rm"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("find . -name '*.o' -exec rm {} \\;"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("sh -c 'rm -rf x'"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("bash -c \"true; rm x\""), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm:*)", "bash", bash("eval rm x"), Verdict::Deny("denied by rule Bash(rm:*)".into())),
            (D, "Bash(rm *)", "bash", bash("ls; rm -rf /"), Verdict::Deny("denied by rule Bash(rm *)".into())),
            (D, "Bash(rm:*)", "bash", bash("rmdir x"), Verdict::Ask),
            (D, "Bash(rm:*)", "bash", bash("echo rm"), Verdict::Ask),
            (D, "Bash(rm:*)", "bash", bash("echo 'a; rm x'"), Verdict::Ask),
            (D, "Bash(rm:*)", "bash", bash("$CMD x"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (the command name comes from a variable, substitution or expansion); write it as plain commands".into())),
            (D, "Bash(rm:*)", "bash", bash("$(echo rm) x"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (the command name comes from a variable, substitution or expansion); write it as plain commands".into())),
            (D, "Bash(rm:*)", "bash", bash("{rm,-rf,x}"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (the command name comes from a variable, substitution or expansion); write it as plain commands".into())),
            (D, "Bash(rm:*)", "bash", bash("/bin/r? -rf x"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (the command name comes from a variable, substitution or expansion); write it as plain commands".into())),
            (D, "Bash(rm:*)", "bash", bash("sudo /bin/r[m] x"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (the command name comes from a variable, substitution or expansion); write it as plain commands".into())),
            (D, "Bash(rm:*)", "bash", bash("ls *.txt {a,b}.md"), Verdict::Ask),
            (A, "Bash(ls:*)", "bash", bash("ls *.rs"), Verdict::Allow),
            (D, "Bash(rm:*)", "bash", bash("echo 'unclosed"), Verdict::Deny("this command cannot be checked against the deny rule Bash(rm:*) (unbalanced quotes or brackets); write it as plain commands".into())),
            (D, "Bash", "bash", bash("ls"), Verdict::Deny("denied by rule Bash".into())),
            (D, "Bash(git push --force:*)", "bash", bash("git  push --force origin"), Verdict::Deny("denied by rule Bash(git push --force:*)".into())),
            // Bash allow: only one plain command.
            (A, "Bash(npm test:*)", "bash", bash("npm test"), Verdict::Allow),
            (A, "Bash(npm test:*)", "bash", bash("npm test -- --watch=false"), Verdict::Allow),
            (A, "Bash(npm test:*)", "bash", bash("npm testx"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test; rm -rf ~"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test && curl x"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test | sh"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test $(curl evil)"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test `curl evil`"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test > ~/.bashrc"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test 2>&1"), Verdict::Allow),
            (A, "Bash(npm test:*)", "bash", bash("npm test >/dev/null"), Verdict::Allow),
            (A, "Bash(npm test:*)", "bash", bash("LD_PRELOAD=x.so npm test"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test &"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test\nrm x"), Verdict::Ask),
            (A, "Bash(npm test:*)", "bash", bash("npm test\n"), Verdict::Allow),
            (A, "Bash(echo:*)", "bash", bash("echo hello"), Verdict::Allow),
            (A, "Bash(git status)", "bash", bash("git status"), Verdict::Allow),
            (A, "Bash(git status)", "bash", bash("git status --porcelain"), Verdict::Ask),
            (A, "Bash(ls *)", "bash", bash("ls"), Verdict::Allow),
            (A, "Bash(ls *)", "bash", bash("ls -la"), Verdict::Allow),
            (A, "Bash(ls *)", "bash", bash("lsof"), Verdict::Ask),
            (A, "Bash(ls*)", "bash", bash("lsof"), Verdict::Allow),
            (A, "Bash(git * main)", "bash", bash("git merge main"), Verdict::Allow),
            (A, "Bash(git * main)", "bash", bash("git merge dev"), Verdict::Ask),
            (A, "Bash", "bash", bash("anything && at all"), Verdict::Allow),
            // Ask beats allow; ask rules see every segment too.
            (Q, "Bash(git push:*)", "bash", bash("git add . && git push"), Verdict::Ask),
            // Paths: normalised, anchored, resolved.
            (D, "read(secrets/**)", "read", path("secrets/key"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path("./secrets/key"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path("secrets/../secrets/key"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path("src/../secrets//key"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path(&abs("secrets/key")), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path("innocent/key"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "read(secrets/**)", "read", path("src/key.rs"), Verdict::Deny("denied by rule read(secrets/**)".into())),
            (D, "Read(./secrets/**)", "read", path("secrets/key"), Verdict::Deny("denied by rule Read(./secrets/**)".into())),
            (D, "Read(/secrets/**)", "read", path("./secrets/key"), Verdict::Deny("denied by rule Read(/secrets/**)".into())),
            (D, "Read(secrets)", "read", path("secrets/key"), Verdict::Deny("denied by rule Read(secrets)".into())),
            (D, "Read(secrets/)", "read", path("secrets/key"), Verdict::Deny("denied by rule Read(secrets/)".into())),
            (D, "Read(./.env)", "read", path(".env"), Verdict::Deny("denied by rule Read(./.env)".into())),
            (D, "Read(./.env)", "read", path("sub/.env"), Verdict::Allow),
            (D, "Read(.env)", "read", path("sub/.env"), Verdict::Deny("denied by rule Read(.env)".into())),
            (D, "Read(*.env)", "read", path("sub/.env"), Verdict::Deny("denied by rule Read(*.env)".into())),
            (D, "Read(src/*.rs)", "read", path("src/a/b.rs"), Verdict::Allow),
            (D, "Read(//etc/**)", "read", path("/etc/passwd"), Verdict::Deny("denied by rule Read(//etc/**)".into())),
            (D, "Read(~/.ssh/**)", "read", path("/home/u/.ssh/id"), Verdict::Deny("denied by rule Read(~/.ssh/**)".into())),
            (D, "Read", "grep", json!({"pattern": "x"}), Verdict::Deny("denied by rule Read".into())),
            (D, "write(protected/**)", "write", path("./protected/b.txt"), Verdict::Deny("denied by rule write(protected/**)".into())),
            (D, "write(protected/**)", "edit", path("protected/b.txt"), Verdict::Deny("denied by rule write(protected/**)".into())),
            (D, "Edit(protected/**)", "write", path(&abs("protected/new.txt")), Verdict::Deny("denied by rule Edit(protected/**)".into())),
            (A, "Edit(src/**)", "edit", path("./src/lib.rs"), Verdict::Allow),
            (A, "Edit(src/**)", "edit", path("src/../README.md"), Verdict::Ask),
            // Allowed by its name, but a link to a secret: both forms must match to allow.
            (A, "Edit(src/**)", "write", path("src/key.rs"), Verdict::Ask),
            (A, "Edit(docs/**)", "write", path("docs/a/b.md"), Verdict::Allow),
            (Q, "Read(src/**)", "read", path("src/lib.rs"), Verdict::Ask),
            (A, "Grep", "grep", json!({"pattern": "x"}), Verdict::Allow),
            (A, "TodoWrite", "todo", json!({}), Verdict::Allow),
            (A, "BashOutput", "bash_output", json!({"shell_id": "sh-1"}), Verdict::Allow),
            (A, "kill_shell", "kill_shell", json!({"shell_id": "sh-1"}), Verdict::Allow),
        ];
        for (list, rule, tool, input, want) in cases {
            let (mut a, mut q, mut dn) = (vec![], vec![], vec![]);
            match list {
                A => a.push(rule),
                Q => {
                    q.push(rule);
                    a.push("Bash");
                }
                _ => dn.push(rule),
            }
            let p = perms(&root, &a, &q, &dn);
            assert_eq!(
                p.check(tool, &input),
                want,
                "{list} {rule} / {tool} {input}"
            );
        }
    }

    #[test]
    fn deny_beats_ask_beats_allow() {
        let d = workspace();
        let p = perms(d.path(), &["Bash"], &["Bash(git:*)"], &["Bash(git push:*)"]);
        let b = |c: &str| p.check("bash", &json!({ "command": c }));
        assert!(matches!(b("git push"), Verdict::Deny(_)));
        assert_eq!(b("git status"), Verdict::Ask);
        assert_eq!(b("ls"), Verdict::Allow);
        let mut p = perms(d.path(), &[], &[], &["Bash(rm:*)"]);
        p.mode = Mode::AllowAll;
        assert!(matches!(
            p.check("bash", &json!({"command": "ls; rm x"})),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn rules_that_can_never_match_are_errors() {
        for bad in [
            "",
            "bash(",
            "Bash(:*)",
            "b a(x)",
            "Edit([)",
            "WebFetch(domain:x.com)",
            "mcp__github__create_issue",
            "Frobnicate",
            "Read(../x)",
            "Grep(src/**)",
            "Bash()",
            "Read(/)",
            "Skill(deploy)",
        ] {
            assert!(Rule::parse(bad).is_err(), "{bad:?} parsed");
        }
        for good in [
            "read",
            "READ(src/**)",
            "Write",
            "MultiEdit(x)",
            "LS",
            "Bash(*)",
        ] {
            assert!(Rule::parse(good).is_ok(), "{good:?} refused");
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
        assert!(matches!(verdict(Mode::DontAsk, "bash"), Verdict::Deny(_)));
        assert_eq!(verdict(Mode::DontAsk, "read"), Verdict::Allow);
        assert_eq!(verdict(Mode::AllowAll, "bash"), Verdict::Allow);
        assert_eq!(Mode::parse("accept-edits"), Some(Mode::AcceptEdits));
        assert_eq!(Mode::parse("acceptEdits"), Some(Mode::AcceptEdits));
        assert_eq!(Mode::parse("bypassPermissions"), Some(Mode::AllowAll));
        assert_eq!(Mode::parse("default"), Some(Mode::Ask));
        assert_eq!(Mode::parse("yolo"), None);
    }

    #[test]
    fn always_allow_prefix_entry_is_a_prefix_rule() {
        let mut p = Permissions::new(Mode::Ask);
        let rule = Permissions::entry_rule(&json!({"tool": "bash", "prefix": "npm test"}));
        assert_eq!(rule.to_string(), "bash(npm test:*)");
        p.allow.push(rule);
        let check = |c: &str| p.check("bash", &json!({"command": c}));
        assert_eq!(check("npm test"), Verdict::Allow);
        assert_eq!(check("npm test -- --ci"), Verdict::Allow);
        assert_eq!(check("npm testx"), Verdict::Ask);
        assert_eq!(check("npm test && rm -rf x"), Verdict::Ask);
        assert_eq!(check("npm run build"), Verdict::Ask);
    }

    #[test]
    fn always_allow_is_exact() {
        let d = workspace();
        let mut p = Permissions::new(Mode::Ask).with_root(d.path());
        let input = json!({"command": "npm run build && npm test"});
        assert_eq!(p.check("bash", &input), Verdict::Ask);
        p.allow.push(p.always_allow_rule("bash", &input));
        assert_eq!(p.check("bash", &input), Verdict::Allow);
        assert_eq!(
            p.check("bash", &json!({"command": "npm run build && rm x"})),
            Verdict::Ask
        );
        let w = json!({"path": "docs/[draft].md"});
        p.allow.push(p.always_allow_rule("write", &w));
        assert_eq!(p.check("write", &w), Verdict::Allow);
        assert_eq!(
            p.check("write", &json!({"path": "./docs/[draft].md"})),
            Verdict::Allow
        );
        assert_eq!(
            p.check("write", &json!({"path": "docs/d.md"})),
            Verdict::Ask
        );
    }

    #[test]
    fn searching_tools_skip_denied_files() {
        let d = workspace();
        let root = d.path().canonicalize().unwrap();
        let p = perms(&root, &[], &[], &["Read(./.env)", "Read(secrets/**)"]);
        assert!(p.read_denied(&root.join(".env")));
        assert!(p.read_denied(&root.join("secrets/key")));
        assert!(p.read_denied(&root.join("innocent/key")));
        assert!(!p.read_denied(&root.join("src/lib.rs")));
    }
}
