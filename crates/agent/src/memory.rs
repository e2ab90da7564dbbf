//! Memory files and the environment block: what the model is told about the workspace beyond
//! the fixed system prompt. Claude Code's conventions: `CLAUDE.md`, `.claude/CLAUDE.md`,
//! `CLAUDE.local.md` and `AGENTS.md` at the workspace root; the user's `~/.claude/CLAUDE.md`
//! when the session runs on their own device; a `CLAUDE.md` / `AGENTS.md` in a subfolder once
//! the agent has worked on a file under it; `@path` imports inside any of them (outside code
//! spans and blocks), at most five hops deep, each file once.
//!
//! Never: read a file outside the workspace for a workspace memory file (an import of
//! `../x`, `/etc/x`, `~/x` or through a symlink out of the root is refused with a warning), or
//! run anything the workspace controls (git runs with `core.fsmonitor` off).
//!
//! The text goes into a second system block after the stable system prompt: memory files are
//! re-read before every request but rarely change, and the environment is a snapshot taken
//! once per runner, so the cached prefix (tools, system prompt, memory) stays the same from
//! one request to the next.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use jarvis_sync::doc::{Block, Message};

use crate::anthropic::{CacheControl, MessagesRequest, SystemBlock};
use serde_json::Value;

/// Imports may chain this many hops (Claude Code's limit).
pub const MAX_IMPORT_DEPTH: usize = 5;
/// A memory file larger than this is cut (a runaway import must not fill the context).
const MAX_FILE_BYTES: usize = 64 * 1024;
/// All memory files together; files past this are left out with a warning.
const MAX_TOTAL_BYTES: usize = 256 * 1024;
/// Workspace memory file names, in the order they are shown.
const ROOT_FILES: &[&str] = &[
    "CLAUDE.md",
    ".claude/CLAUDE.md",
    "CLAUDE.local.md",
    "AGENTS.md",
];
const NESTED_FILES: &[&str] = &["CLAUDE.md", "AGENTS.md"];

/// One memory file as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    /// How the session shows it: relative to the workspace, or `~/.claude/…`.
    pub label: String,
    /// Why it is loaded: "project", "user", "nested", or "imported by X".
    pub origin: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    pub files: Vec<MemoryFile>,
    pub warnings: Vec<String>,
}

impl Memory {
    /// The system-prompt text: every file with where it came from.
    pub fn render(&self) -> String {
        if self.files.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# Memory files\nInstructions from the workspace and the user, loaded from these \
             files. Follow them; they take precedence over default behaviour.\n",
        );
        for f in &self.files {
            out.push_str(&format!(
                "\nContents of {} ({}):\n\n{}\n",
                f.label,
                f.origin,
                f.text.trim_end()
            ));
        }
        out
    }

    /// "CLAUDE.md, docs/style.md (imported by CLAUDE.md)" — what the session shows.
    pub fn summary(&self) -> String {
        self.files
            .iter()
            .map(|f| match f.origin.as_str() {
                "project" => f.label.clone(),
                o => format!("{} ({o})", f.label),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where memory is read from for one session.
#[derive(Debug, Clone)]
pub struct MemorySources {
    /// The workspace root.
    pub root: PathBuf,
    /// The user's `~/.claude` folder, only when the session runs on the user's own device.
    /// In the cloud it is the session owner's memory kept on the hub (the cloud runner writes
    /// it into a folder of the run's and passes that), never the runner's own home.
    pub user_dir: Option<PathBuf>,
}

impl MemorySources {
    /// Reads every memory file that applies now. `touched` are workspace-relative or absolute
    /// paths the agent has worked on (their folders' nested memory files apply). A file
    /// `hidden` says the agent may not read (a Read deny rule) is left out, so an import cannot
    /// carry `.env` into the prompt.
    pub fn load(&self, touched: &[String], hidden: &dyn Fn(&Path) -> bool) -> Memory {
        let mut loader = Loader {
            seen: HashSet::new(),
            memory: Memory::default(),
            hidden,
        };
        let Ok(root) = self.root.canonicalize() else {
            loader.memory.warnings.push(format!(
                "workspace {} is not accessible",
                self.root.display()
            ));
            return loader.memory;
        };
        if let Some(user) = &self.user_dir
            && let Ok(user) = user.canonicalize()
        {
            let file = user.join("CLAUDE.md");
            if file.is_file() {
                loader.file(&file, &user, "~/.claude", "user".into(), 0);
            }
        }
        for name in ROOT_FILES {
            let file = root.join(name);
            if file.is_file() {
                loader.file(&file, &root, "", "project".into(), 0);
            }
        }
        let mut folders: Vec<PathBuf> = Vec::new();
        for t in touched {
            let p = Path::new(t);
            let abs = if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            };
            let Ok(rel) = lexical(&abs).strip_prefix(&root).map(Path::to_path_buf) else {
                continue;
            };
            // Every folder from the root (exclusive) down to the file's own.
            let mut dir = PathBuf::new();
            let comps: Vec<_> = rel.components().collect();
            for c in comps.iter().take(comps.len().saturating_sub(1)) {
                dir.push(c.as_os_str());
                if !folders.contains(&dir) {
                    folders.push(dir.clone());
                }
            }
        }
        folders.sort();
        for dir in folders {
            for name in NESTED_FILES {
                let file = root.join(&dir).join(name);
                if file.is_file() {
                    loader.file(&file, &root, "", "nested".into(), 0);
                }
            }
        }
        loader.memory
    }
}

struct Loader<'h> {
    seen: HashSet<PathBuf>,
    memory: Memory,
    hidden: &'h dyn Fn(&Path) -> bool,
}

impl Loader<'_> {
    /// Loads `file` (confined to `base`, shown with `prefix`), then its imports.
    fn file(&mut self, file: &Path, base: &Path, prefix: &str, origin: String, depth: usize) {
        let Ok(real) = file.canonicalize() else {
            return;
        };
        let label = label(&real, base, prefix);
        if !real.starts_with(base) {
            self.memory.warnings.push(format!(
                "memory file {label} is refused: it resolves outside its folder"
            ));
            return;
        }
        if !self.seen.insert(real.clone()) {
            // Already loaded (two names for one file, or an import cycle).
            return;
        }
        if (self.hidden)(&real) || (self.hidden)(file) {
            self.memory.warnings.push(format!(
                "memory file {label} is left out: a Read deny rule covers it"
            ));
            return;
        }
        let text = match std::fs::read(&real) {
            Ok(mut bytes) => {
                if bytes.len() > MAX_FILE_BYTES {
                    bytes.truncate(MAX_FILE_BYTES);
                    self.memory.warnings.push(format!(
                        "memory file {label} is larger than {MAX_FILE_BYTES} bytes; the rest is left out"
                    ));
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(e) => {
                self.memory
                    .warnings
                    .push(format!("memory file {label} cannot be read: {e}"));
                return;
            }
        };
        let total: usize = self.memory.files.iter().map(|f| f.text.len()).sum();
        if total + text.len() > MAX_TOTAL_BYTES {
            self.memory.warnings.push(format!(
                "memory file {label} is left out: memory files together may not exceed \
                 {MAX_TOTAL_BYTES} bytes"
            ));
            return;
        }
        let imports = imports(&text);
        self.memory.files.push(MemoryFile {
            label: label.clone(),
            origin,
            text,
        });
        let dir = real.parent().unwrap_or(base).to_path_buf();
        for imp in imports {
            if depth + 1 > MAX_IMPORT_DEPTH {
                self.memory.warnings.push(format!(
                    "import @{imp} in {label} is skipped: imports nest at most {MAX_IMPORT_DEPTH} deep"
                ));
                continue;
            }
            let target = if imp.starts_with('/') || imp.starts_with('~') {
                None
            } else {
                Some(lexical(&dir.join(&imp)))
            };
            match target {
                Some(t) if t.starts_with(base) => {
                    if t.is_file() {
                        self.file(&t, base, prefix, format!("imported by {label}"), depth + 1);
                    } else {
                        self.memory
                            .warnings
                            .push(format!("import @{imp} in {label}: no such file"));
                    }
                }
                _ => self.memory.warnings.push(format!(
                    "import @{imp} in {label} is refused: imports must stay inside the {}",
                    if prefix.is_empty() {
                        "workspace"
                    } else {
                        "folder"
                    }
                )),
            }
        }
    }
}

fn label(real: &Path, base: &Path, prefix: &str) -> String {
    let rel = real
        .strip_prefix(base)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|_| real.to_string_lossy().into_owned());
    if prefix.is_empty() {
        rel
    } else {
        format!("{prefix}/{rel}")
    }
}

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

/// The `@path` imports of a memory file, in order, outside code spans and fenced blocks. An
/// import is `@` at the start of a word followed by a path (no spaces); e-mail addresses and
/// decorators in code are not imports.
pub fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut in_code = false;
        let mut prev = ' ';
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '`' {
                in_code = !in_code;
            } else if c == '@' && !in_code && (prev.is_whitespace() || prev == '(') {
                let path: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | ')' | ','))
                    .collect();
                let path = path.trim_end_matches(['.', ':', ';']).to_owned();
                if !path.is_empty() && path.chars().any(|c| c.is_alphanumeric()) {
                    i += path.chars().count();
                    out.push(path);
                }
            }
            prev = chars[i];
            i += 1;
        }
    }
    out
}

/// Paths the agent has worked on in this transcript (file tool calls), for nested memory.
pub fn touched_paths(messages: &[Message]) -> Vec<String> {
    let mut out = Vec::new();
    for m in messages {
        for b in &m.blocks {
            if let Block::ToolUse { name, input, .. } = b
                && matches!(name.as_str(), "read" | "write" | "edit")
                && let Ok(v) = serde_json::from_str::<Value>(input)
                && let Some(p) = v.get("path").and_then(Value::as_str)
                && !out.iter().any(|o| o == p)
            {
                out.push(p.to_owned());
            }
        }
    }
    out
}

/// Where the session runs, for the environment block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The user's own machine (desktop app or `jarvis run`).
    Device(String),
    /// The cloud runner, in the hub's copy of the workspace.
    Cloud,
}

/// The environment block: a snapshot taken when the runner starts.
pub fn environment(root: &Path, location: &Location, today: &str) -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            // A workspace's git config must not get to run a program here.
            .args(["-c", "core.fsmonitor=false", "--no-optional-locks"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    };
    let mut env = format!(
        "<env>\nWorking directory: {}\nPlatform: {}\nToday's date: {today}\nRuns on: {}\n",
        root.display(),
        std::env::consts::OS,
        match location {
            Location::Device(d) => format!("the user's device ({d})"),
            Location::Cloud => "the cloud runner (a synced copy of the workspace)".into(),
        }
    );
    if git(&["rev-parse", "--is-inside-work-tree"]).as_deref() == Some("true") {
        let branch = git(&["symbolic-ref", "--short", "-q", "HEAD"])
            .or_else(|| git(&["rev-parse", "--short", "HEAD"]).map(|c| format!("detached at {c}")))
            .unwrap_or_else(|| "unknown".into());
        env.push_str(&format!("Git branch: {branch}\n"));
        let mut status = git(&["status", "--short"]).unwrap_or_default();
        if status.len() > 2000 {
            let mut cut = 2000;
            while !status.is_char_boundary(cut) {
                cut -= 1;
            }
            status.truncate(cut);
            status.push_str("\n… (truncated)");
        }
        env.push_str(&format!(
            "Git status (a snapshot from the start of this run):\n{}\n",
            if status.is_empty() { "clean" } else { &status }
        ));
    } else {
        env.push_str("Git: not a git repository\n");
    }
    env.push_str("</env>");
    env
}

/// Adds the context block after the system prompt, moving the system cache breakpoint onto it
/// (tools, system prompt and context then form one cached prefix).
pub fn add_to_request(request: &mut MessagesRequest, text: String) {
    if text.is_empty() {
        return;
    }
    for s in &mut request.system {
        s.cache_control = None;
    }
    request.system.push(SystemBlock {
        kind: "text".into(),
        text,
        cache_control: CacheControl::ephemeral(),
    });
}

/// Everything a runner needs to add memory and environment to its requests.
#[derive(Debug, Clone)]
pub struct WorkspaceContext {
    pub sources: MemorySources,
    /// Taken once (see `environment`), so the prefix stays the same across requests.
    pub environment: String,
}

impl WorkspaceContext {
    /// Memory from `sources` and an environment snapshot taken now.
    pub fn new(sources: MemorySources, location: Location) -> Self {
        let today = chrono::Local::now().format("%Y-%m-%d").to_string();
        let environment = environment(&sources.root, &location, &today);
        WorkspaceContext {
            sources,
            environment,
        }
    }

    /// The second system block's text for this transcript, and the memory it came from.
    pub fn block(&self, messages: &[Message], hidden: &dyn Fn(&Path) -> bool) -> (String, Memory) {
        let mut memory = self.sources.load(&touched_paths(messages), hidden);
        let (skills, warnings) = crate::commands::load_skills(&self.sources.root);
        memory.warnings.extend(warnings);
        let mut text = memory.render();
        if !text.is_empty() {
            text.push('\n');
        }
        let skills = crate::commands::render_skills(&skills);
        if !skills.is_empty() {
            text.push_str(&skills);
            text.push('\n');
        }
        text.push_str(&self.environment);
        (text, memory)
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
    fn import_syntax() {
        let text = "See @docs/a.md and @b.md.\nmail me@example.com\n`@not/this`\n```\n@nor/this\n```\n(@c.md)\n- @~/x.md";
        assert_eq!(imports(text), vec!["docs/a.md", "b.md", "c.md", "~/x.md"]);
    }

    #[test]
    fn files_imports_confinement_depth_and_cycles() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        write(
            &ws,
            "CLAUDE.md",
            "root rules @docs/style.md @../outside.md @/etc/passwd @~/x.md @missing.md",
        );
        write(&ws, "docs/style.md", "style @../CLAUDE.md @deep/1.md");
        for i in 1..=6 {
            write(
                &ws,
                &format!("docs/deep/{i}.md"),
                &format!("level {i} @{}.md", i + 1),
            );
        }
        write(&ws, ".claude/CLAUDE.md", "dot-claude rules");
        write(&ws, "AGENTS.md", "agents rules");
        write(&ws, "pkg/sub/CLAUDE.md", "nested rules");
        write(&ws, "other/CLAUDE.md", "not loaded");
        write(d.path(), "outside.md", "SECRET");
        write(d.path(), "home/.claude/CLAUDE.md", "user rules");
        std::os::unix::fs::symlink(d.path().join("outside.md"), ws.join("docs/link.md")).unwrap();
        write(&ws, "docs/linker.md", "");
        let sources = MemorySources {
            root: ws.clone(),
            user_dir: Some(d.path().join("home/.claude")),
        };
        let m = sources.load(&["pkg/sub/x.rs".into()], &|_| false);
        let labels: Vec<_> = m.files.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "~/.claude/CLAUDE.md",
                "CLAUDE.md",
                "docs/style.md",
                "docs/deep/1.md",
                "docs/deep/2.md",
                "docs/deep/3.md",
                "docs/deep/4.md",
                ".claude/CLAUDE.md",
                "AGENTS.md",
                "pkg/sub/CLAUDE.md",
            ]
        );
        assert_eq!(m.files[2].origin, "imported by CLAUDE.md");
        assert_eq!(m.files[9].origin, "nested");
        let rendered = m.render();
        assert!(!rendered.contains("SECRET") && !rendered.contains("not loaded"));
        assert!(rendered.contains("Contents of docs/style.md (imported by CLAUDE.md):\n\nstyle"));
        let w = m.warnings.join("\n");
        for expect in [
            "@../outside.md in CLAUDE.md is refused",
            "@/etc/passwd in CLAUDE.md is refused",
            "@~/x.md in CLAUDE.md is refused",
            "@missing.md in CLAUDE.md: no such file",
            "@5.md in docs/deep/4.md is skipped: imports nest at most 5 deep",
        ] {
            assert!(w.contains(expect), "{expect:?} not in {w}");
        }
        // A symlink out of the workspace is refused, even as a direct import.
        write(&ws, "CLAUDE.md", "@docs/link.md");
        let m = sources.load(&[], &|_| false);
        assert!(!m.render().contains("SECRET"), "{:?}", m);
        assert!(
            m.warnings.join("\n").contains("resolves outside"),
            "{:?}",
            m.warnings
        );
        // Without a user folder (the cloud), the user's file is not read.
        let cloud = MemorySources {
            root: ws.clone(),
            user_dir: None,
        };
        assert!(!cloud.load(&[], &|_| false).render().contains("user rules"));
        // An import of a file a Read deny rule covers stays out of the prompt.
        write(&ws, ".env", "TOKEN=from-dotenv");
        write(&ws, "CLAUDE.md", "rules @.env");
        let mut p =
            crate::permissions::Permissions::new(crate::permissions::Mode::Ask).with_root(&ws);
        p.deny
            .push(crate::permissions::Rule::parse("Read(./.env)").unwrap());
        let m = cloud.load(&[], &|path| p.read_denied(path));
        assert!(!m.render().contains("from-dotenv"), "{m:?}");
        assert!(
            m.warnings
                .join("\n")
                .contains(".env is left out: a Read deny rule"),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn memory_is_capped_per_file_and_in_total() {
        let d = tempfile::tempdir().unwrap();
        let big = "x".repeat(60 * 1024);
        let names: Vec<String> = (1..=5).map(|i| format!("@big{i}.md")).collect();
        write(d.path(), "CLAUDE.md", &names.join(" "));
        for i in 1..=5 {
            write(d.path(), &format!("big{i}.md"), &big);
        }
        write(d.path(), "AGENTS.md", &"y".repeat(100 * 1024));
        let m = MemorySources {
            root: d.path().to_path_buf(),
            user_dir: None,
        }
        .load(&[], &|_| false);
        let total: usize = m.files.iter().map(|f| f.text.len()).sum();
        assert!(total <= MAX_TOTAL_BYTES, "{total}");
        let w = m.warnings.join("\n");
        assert!(w.contains("big5.md is left out"), "{w}");
        assert!(w.contains("AGENTS.md is larger than"), "{w}");
    }

    #[test]
    fn environment_block() {
        let d = tempfile::tempdir().unwrap();
        let env = environment(d.path(), &Location::Device("cli".into()), "2026-11-30");
        assert!(env.contains("Today's date: 2026-11-30"), "{env}");
        assert!(env.contains("Runs on: the user's device (cli)"), "{env}");
        assert!(env.contains(&format!("Working directory: {}", d.path().display())));
        assert!(env.contains("Git: not a git repository"), "{env}");
        let git = std::process::Command::new("git")
            .args(["init", "-q"])
            .current_dir(d.path())
            .status()
            .unwrap();
        assert!(git.success());
        std::process::Command::new("git")
            .args(["symbolic-ref", "HEAD", "refs/heads/trunk"])
            .current_dir(d.path())
            .status()
            .unwrap();
        std::fs::write(d.path().join("new.txt"), "x").unwrap();
        let env = environment(d.path(), &Location::Cloud, "2026-11-30");
        assert!(env.contains("Git branch: trunk"), "{env}");
        assert!(env.contains("?? new.txt"), "{env}");
        assert!(env.contains("cloud runner"), "{env}");
    }
}
