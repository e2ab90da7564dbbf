//! The agent's tools — read, write, edit, glob, grep, bash, todo — every path confined to the
//! workspace root. A tool's failure is a value (`ToolOutput { is_error: true }`) reported to
//! the model, never a panic or a process exit.
//!
//! Never: follow a path or symlink out of the root, or leave a bash process group running after
//! a timeout or an interrupt.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::anthropic::ToolDef;
use jarvis_sync::paths::{CanonicalRoot, PinnedDir, Replace, read_inside, write_inside};

#[cfg(test)]
mod tests;

/// What a tool returns to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    fn err(content: impl Into<String>) -> Self {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// Tools that change nothing; safe to re-run after a crash and allowed in plan mode.
pub fn is_read_only(tool: &str) -> bool {
    // bash_output and kill_shell only touch background shells this runner started.
    matches!(
        tool,
        "read" | "glob" | "grep" | "todo" | "bash_output" | "kill_shell"
    )
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {path:?} is refused: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

/// Resolves `path` (relative to `root`, or absolute inside it) to a path inside the root.
/// Refuses `..` escapes, absolute paths elsewhere, and any existing ancestor that resolves
/// (through a symlink) outside the root.
pub fn confine(root: &Path, path: &str) -> Result<PathBuf, PathError> {
    let refuse = |reason| PathError {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() || path.contains('\0') {
        return Err(refuse("empty or contains NUL"));
    }
    let root = root
        .canonicalize()
        .map_err(|_| refuse("workspace root is not accessible"))?;
    let p = Path::new(path);
    let relative = if p.is_absolute() {
        p.strip_prefix(&root)
            .map_err(|_| refuse("absolute path outside the workspace"))?
            .to_path_buf()
    } else {
        p.to_path_buf()
    };
    let mut out = root.clone();
    for c in relative.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("'..' is not allowed")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("not relative")),
        }
    }
    // The deepest existing ancestor must resolve inside the root (this is where a symlink
    // pointing outside is caught); what does not exist yet cannot be a symlink.
    let mut existing = out.as_path();
    while !existing.exists() && existing.symlink_metadata().is_err() {
        existing = existing
            .parent()
            .ok_or_else(|| refuse("no existing ancestor"))?;
    }
    let resolved = existing
        .canonicalize()
        .map_err(|_| refuse("a symlink on the path does not resolve"))?;
    if !resolved.starts_with(&root) {
        return Err(refuse("resolves outside the workspace through a symlink"));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Todo {
    pub content: String,
    pub status: String,
}

pub use crate::sandbox::{Limits, ProcessScope, Sandbox};

/// The tool set of one session, bound to one workspace root.
#[derive(Clone)]
pub struct ToolBox {
    root: PathBuf,
    /// A bash call's timeout when the model names none.
    pub bash_timeout: Duration,
    /// The longest timeout the model may ask for (per workspace; 10 minutes by default).
    pub bash_timeout_max: Duration,
    /// Background commands (`run_in_background`), shared by clones of this tool box.
    pub shells: crate::shells::Shells,
    pub output_cap: usize,
    pub sandbox: Sandbox,
    /// Extra environment for every command: a settings file's `env`, and the secrets the
    /// workspace's configuration names.
    pub env: Vec<(String, String)>,
    /// (name, value) pairs replaced by `[secret NAME]` in command output, so a value that a
    /// command prints never reaches the transcript.
    pub redact: Vec<(String, String)>,
    /// Every process this tool set started; killed whole when the run ends.
    pub scope: ProcessScope,
    todos: Arc<Mutex<Vec<Todo>>>,
    /// Files the searching tools (glob, grep) skip: those Read deny rules cover.
    hidden: Option<Hidden>,
}

/// Given a file's absolute path: whether the searching tools skip it.
pub type Hidden = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

impl ToolBox {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let (bash_timeout, bash_timeout_max) = crate::shells::workspace_bash_timeouts(&root);
        ToolBox {
            root,
            bash_timeout,
            bash_timeout_max,
            shells: crate::shells::Shells::default(),
            output_cap: 30_000,
            sandbox: Sandbox::Host,
            env: Vec::new(),
            redact: Vec::new(),
            scope: ProcessScope::new(),
            todos: Arc::default(),
            hidden: None,
        }
    }

    /// Hides files from glob and grep (given the file's absolute path).
    pub fn hide(&mut self, hidden: Hidden) {
        self.hidden = Some(hidden);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn definitions() -> Vec<ToolDef> {
        let def = |name: &str, description: &str, schema: Value| ToolDef {
            name: name.into(),
            description: description.into(),
            input_schema: schema,
            cache_control: None,
        };
        vec![
            def(
                "read",
                "Read a text file of the workspace. Returns its content with line numbers.",
                json!({"type":"object","properties":{"path":{"type":"string"},"offset":{"type":"integer","description":"first line, 1-based"},"limit":{"type":"integer"}},"required":["path"]}),
            ),
            def(
                "write",
                "Create or overwrite a file of the workspace with the given content. With append: true, add the content to the end of the file instead (write a large file in parts).",
                json!({"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"},"append":{"type":"boolean"}},"required":["path","content"]}),
            ),
            def(
                "edit",
                "Replace one exact occurrence of old_string with new_string in a file (or every occurrence with replace_all).",
                json!({"type":"object","properties":{"path":{"type":"string"},"old_string":{"type":"string"},"new_string":{"type":"string"},"replace_all":{"type":"boolean"}},"required":["path","old_string","new_string"]}),
            ),
            def(
                "glob",
                "List workspace files matching a glob pattern such as src/**/*.rs.",
                json!({"type":"object","properties":{"pattern":{"type":"string"}},"required":["pattern"]}),
            ),
            def(
                "grep",
                "Search workspace files for a regular expression; returns path:line: text.",
                json!({"type":"object","properties":{"pattern":{"type":"string"},"glob":{"type":"string"}},"required":["pattern"]}),
            ),
            def(
                "bash",
                "Run a shell command in the workspace root, with a timeout (default 2 minutes, at most 10). With run_in_background: true it returns a shell id at once; read its output with bash_output and stop it with kill_shell (it is stopped when the run ends).",
                json!({"type":"object","properties":{"command":{"type":"string"},"timeout_ms":{"type":"integer"},"run_in_background":{"type":"boolean"}},"required":["command"]}),
            ),
            def(
                "bash_output",
                "New output of a background shell since the last read, and whether it still runs. Optional filter: a regular expression; only matching lines are returned.",
                json!({"type":"object","properties":{"shell_id":{"type":"string"},"filter":{"type":"string"}},"required":["shell_id"]}),
            ),
            def(
                "kill_shell",
                "Stop a background shell and every process it started.",
                json!({"type":"object","properties":{"shell_id":{"type":"string"}},"required":["shell_id"]}),
            ),
            def(
                "todo",
                "Replace the session's todo list.",
                json!({"type":"object","properties":{"todos":{"type":"array","items":{"type":"object","properties":{"content":{"type":"string"},"status":{"type":"string","enum":["pending","in_progress","completed"]}},"required":["content","status"]}}},"required":["todos"]}),
            ),
        ]
    }

    pub fn todos(&self) -> Vec<Todo> {
        self.todos.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs one tool call. Unknown tools and bad input are errors reported to the model.
    pub async fn run(&self, name: &str, input: &Value, cancel: &CancellationToken) -> ToolOutput {
        let s = |k: &str| input.get(k).and_then(Value::as_str);
        let result = match name {
            "read" => match s("path") {
                Some(p) => self.read(p, input).await,
                None => Err("read needs a string 'path'".into()),
            },
            "write" => match (s("path"), s("content")) {
                (Some(p), Some(c))
                    if input.get("append").and_then(Value::as_bool) == Some(true) =>
                {
                    self.append(p, c).await
                }
                (Some(p), Some(c)) => self.write(p, c).await,
                _ => Err("write needs string 'path' and 'content'".into()),
            },
            "edit" => match (s("path"), s("old_string"), s("new_string")) {
                (Some(p), Some(o), Some(n)) => {
                    let all = input
                        .get("replace_all")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    self.edit(p, o, n, all).await
                }
                _ => Err("edit needs string 'path', 'old_string' and 'new_string'".into()),
            },
            "glob" => match s("pattern") {
                Some(p) => self.glob(p).await,
                None => Err("glob needs a string 'pattern'".into()),
            },
            "grep" => match s("pattern") {
                Some(p) => self.grep(p, s("glob")).await,
                None => Err("grep needs a string 'pattern'".into()),
            },
            "bash" => match s("command") {
                Some(c)
                    if input.get("run_in_background").and_then(Value::as_bool) == Some(true) =>
                {
                    self.shells
                        .start(&self.scope, |extra| self.shell_command(c, extra), c)
                        .map(|id| {
                            format!(
                                "Started in the background as {id}. Read its output with \
                             bash_output {{\"shell_id\": \"{id}\"}}; stop it with kill_shell."
                            )
                        })
                }
                Some(c) => {
                    let timeout = input
                        .get("timeout_ms")
                        .and_then(Value::as_u64)
                        .map(Duration::from_millis)
                        .map_or(self.bash_timeout, |t| t.min(self.bash_timeout_max));
                    return self.bash(c, timeout, cancel).await;
                }
                None => Err("bash needs a string 'command'".into()),
            },
            "bash_output" => match s("shell_id") {
                Some(id) => match s("filter").map(regex::Regex::new).transpose() {
                    Ok(filter) => self.shells.read(id, filter.as_ref()),
                    Err(e) => Err(format!("invalid filter: {e}")),
                },
                None => Err("bash_output needs a string 'shell_id'".into()),
            },
            "kill_shell" => match s("shell_id") {
                Some(id) => self.shells.kill(id).await,
                None => Err("kill_shell needs a string 'shell_id'".into()),
            },
            "todo" => match input
                .get("todos")
                .cloned()
                .map(serde_json::from_value::<Vec<Todo>>)
            {
                Some(Ok(list)) => {
                    let n = list.len();
                    *self.todos.lock().unwrap_or_else(|p| p.into_inner()) = list;
                    Ok(format!("todo list updated ({n} items)"))
                }
                _ => Err("todo needs 'todos': [{content, status}]".into()),
            },
            other => Err(format!("unknown tool {other:?}")),
        };
        // Whatever a tool returns (a file a command wrote, a grep hit) goes to the transcript.
        match result {
            Ok(text) => ToolOutput::ok(self.cap(self.redacted(text))),
            Err(e) => ToolOutput::err(self.redacted(e)),
        }
    }

    fn cap(&self, mut s: String) -> String {
        if s.len() > self.output_cap {
            let mut cut = self.output_cap;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            let total = s.len();
            s.truncate(cut);
            s.push_str(&format!(
                "\n… [output truncated: {total} bytes, showing {cut}]"
            ));
        }
        s
    }

    fn path(&self, p: &str) -> Result<PathBuf, String> {
        confine(&self.root, p).map_err(|e| e.to_string())
    }

    /// The root resolved for the confined reads and writes of one tool call (resolved per call:
    /// the folder may not exist yet when the tool box is made).
    fn canonical_root(&self) -> Result<CanonicalRoot, String> {
        CanonicalRoot::new(&self.root).map_err(|e| format!("the workspace folder: {e}"))
    }

    async fn read(&self, p: &str, input: &Value) -> Result<String, String> {
        let path = self.path(p)?;
        let root = self.canonical_root()?;
        let bytes = tokio::task::spawn_blocking(move || read_inside(&root, &path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read {p}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{p} is not a UTF-8 text file"))?;
        let offset = input
            .get("offset")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let limit = input.get("limit").and_then(Value::as_u64).unwrap_or(2000) as usize;
        let mut out = String::new();
        for (i, line) in text.lines().enumerate().skip(offset - 1).take(limit) {
            out.push_str(&format!("{:>6}\t{line}\n", i + 1));
        }
        Ok(out)
    }

    async fn write(&self, p: &str, content: &str) -> Result<String, String> {
        let path = self.path(p)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot create the folder of {p}: {e}"))?;
        }
        // Re-check after creating folders; `write_inside` then pins the folder it writes in.
        let path = self.path(p)?;
        let root = self.canonical_root()?;
        let bytes = content.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || {
            write_inside(&root, &path, &bytes, None, Replace::Always)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write {p}: {e}"))?;
        Ok(format!("wrote {} bytes to {p}", content.len()))
    }

    /// Appends to a file (created if missing): how a file too big for one reply is written.
    async fn append(&self, p: &str, content: &str) -> Result<String, String> {
        use tokio::io::AsyncWriteExt;
        let path = self.path(p)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot create the folder of {p}: {e}"))?;
        }
        let path = self.path(p)?;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| format!("cannot open {p}: {e}"))?;
        f.write_all(content.as_bytes())
            .await
            .map_err(|e| format!("cannot append to {p}: {e}"))?;
        f.flush()
            .await
            .map_err(|e| format!("cannot append to {p}: {e}"))?;
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        Ok(format!(
            "appended {} bytes to {p} (now {len} bytes)",
            content.len()
        ))
    }

    async fn edit(&self, p: &str, old: &str, new: &str, all: bool) -> Result<String, String> {
        if old.is_empty() {
            return Err("old_string must not be empty".into());
        }
        if old == new {
            return Err("old_string and new_string are identical".into());
        }
        let path = self.path(p)?;
        let root = self.canonical_root()?;
        let bytes = tokio::task::spawn_blocking(move || read_inside(&root, &path))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read {p}: {e}"))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("{p} is not a UTF-8 text file"))?;
        let count = text.matches(old).count();
        let updated = match (count, all) {
            (0, _) => return Err(format!("old_string not found in {p}")),
            (1, _) | (_, true) => text.replace(old, new),
            (n, false) => {
                return Err(format!(
                    "old_string occurs {n} times in {p}; give more context or set replace_all"
                ));
            }
        };
        self.write(p, &updated).await?;
        Ok(format!("replaced {count} occurrence(s) in {p}"))
    }

    fn walk(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(root) = self.canonical_root() else {
            return out;
        };
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            // Listed through a pinned descriptor: a folder swapped for a symlink after it was
            // seen is not walked.
            let Ok(handle) = PinnedDir::open(&root, &dir) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(handle.join("")) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if matches!(name.to_str(), Some(".git" | "node_modules" | "target")) {
                    continue;
                }
                // file_type does not follow symlinks: linked folders are not walked.
                if self.hidden.as_ref().is_some_and(|h| h(&e.path())) {
                    continue;
                }
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(dir.join(&name)),
                    Ok(t) if t.is_file() => out.push(dir.join(&name)),
                    _ => {}
                }
            }
        }
        out.sort();
        out
    }

    fn relative(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    }

    async fn glob(&self, pattern: &str) -> Result<String, String> {
        let matcher = globset::Glob::new(pattern)
            .map_err(|e| format!("invalid glob {pattern:?}: {e}"))?
            .compile_matcher();
        let me = self.clone();
        let files = tokio::task::spawn_blocking(move || me.walk())
            .await
            .map_err(|e| e.to_string())?;
        let hits: Vec<String> = files
            .iter()
            .map(|f| self.relative(f))
            .filter(|r| matcher.is_match(r))
            .collect();
        Ok(if hits.is_empty() {
            "no files match".into()
        } else {
            hits.join("\n")
        })
    }

    async fn grep(&self, pattern: &str, glob: Option<&str>) -> Result<String, String> {
        let re = regex::Regex::new(pattern).map_err(|e| format!("invalid regex: {e}"))?;
        let filter = match glob {
            Some(g) => Some(
                globset::Glob::new(g)
                    .map_err(|e| format!("invalid glob {g:?}: {e}"))?
                    .compile_matcher(),
            ),
            None => None,
        };
        let me = self.clone();
        let cap = self.output_cap;
        let root = self.canonical_root()?;
        tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            for f in me.walk() {
                let rel = me.relative(&f);
                if filter.as_ref().is_some_and(|m| !m.is_match(&rel)) {
                    continue;
                }
                let Ok(text) = read_inside(&root, &f).map(String::from_utf8) else {
                    continue;
                };
                let Ok(text) = text else {
                    continue;
                };
                for (i, line) in text.lines().enumerate() {
                    if re.is_match(line) {
                        out.push_str(&format!("{rel}:{}: {line}\n", i + 1));
                        if out.len() > cap {
                            return Ok(out);
                        }
                    }
                }
            }
            Ok(if out.is_empty() {
                "no matches".into()
            } else {
                out
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Runs `command` with `sh -c` in the sandbox, in its own process group; when it ends,
    /// times out or is interrupted the whole group is killed (under bubblewrap with its PID
    /// namespace), so nothing it started outlives the call.
    async fn bash(
        &self,
        command: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> ToolOutput {
        let limits = self.sandbox.limits().cloned();
        let timeout = limits.as_ref().map_or(timeout, |l| timeout.min(l.wall));
        let mut cmd = match self.shell_command(command, &[]) {
            Ok(c) => c,
            Err(e) => return ToolOutput::err(e),
        };
        cmd.command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = match self.scope.spawn(cmd) {
            Ok(c) => c,
            Err(e) => return ToolOutput::err(format!("cannot start sh: {e}")),
        };
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let cap = self.output_cap;
        // Both pipes are drained to the end (beyond the cap, discarding), concurrently, or a
        // chatty command would block on a full pipe and never exit.
        async fn drain<R: tokio::io::AsyncRead + Unpin>(
            r: Option<R>,
            keep: usize,
        ) -> (Vec<u8>, usize) {
            let mut kept = Vec::new();
            let mut total = 0;
            let Some(mut r) = r else { return (kept, 0) };
            let mut buf = [0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                total += n;
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            (kept, total)
        }
        let read_all = async move {
            let (a, b) = tokio::join!(drain(out.take(), cap + 1), drain(err.take(), cap + 1));
            (a.0, b.0)
        };
        let limit_note = limits
            .as_ref()
            .map(|l| format!("\n[sandbox limits: {}]", l.summary_line()))
            .unwrap_or_default();
        let outcome = tokio::select! {
            r = async { let io = read_all.await; (child.wait().await, io) } => Ok(r),
            _ = tokio::time::sleep(timeout) => Err(format!("timed out after {timeout:?}; every process it started was killed{limit_note}")),
            _ = cancel.cancelled() => Err("interrupted; every process it started was killed".to_owned()),
        };
        // Whatever the outcome, anything the command left running goes too.
        self.scope.kill(&child);
        match outcome {
            Ok((status, (stdout, stderr))) => {
                let mut text = String::from_utf8_lossy(&stdout).into_owned();
                if !stderr.is_empty() {
                    text.push_str("\n[stderr]\n");
                    text.push_str(&String::from_utf8_lossy(&stderr));
                }
                let text = self.cap(self.redacted(text));
                let status = status.ok();
                let code = status.and_then(|s| s.code());
                let signal = status.and_then(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.signal()
                });
                // A shell reports a child killed by signal N as exit code 128+N.
                let signal =
                    signal.or_else(|| code.filter(|c| *c > 128 && *c < 160).map(|c| c - 128));
                match (code, signal) {
                    (Some(0), _) => ToolOutput::ok(text),
                    (_, Some(sig)) if limits.is_some() => ToolOutput::err(format!(
                        "killed by signal {sig}{}{limit_note}\n{text}",
                        signal_hint(sig)
                    )),
                    (Some(c), _) => ToolOutput::err(format!("exit code {c}{limit_note}\n{text}")),
                    (None, _) => ToolOutput::err(format!("killed by a signal\n{text}")),
                }
            }
            Err(reason) => ToolOutput::err(reason),
        }
    }

    /// `sh -c command` wrapped by the sandbox, in the workspace root, with the tool box's
    /// environment plus `extra` (foreground and background commands alike).
    pub(crate) fn shell_command(
        &self,
        command: &str,
        extra: &[(String, String)],
    ) -> Result<crate::sandbox::SandboxCommand, String> {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        let mut cmd = self
            .sandbox
            .command(
                &self.root,
                "sh",
                &["-c".to_owned(), command.to_owned()],
                &env,
            )
            .map_err(|e| format!("bash is not available: {e}"))?;
        cmd.command.current_dir(&self.root);
        Ok(cmd)
    }

    fn redacted(&self, mut text: String) -> String {
        for (name, value) in &self.redact {
            if !value.is_empty() && text.contains(value.as_str()) {
                text = text.replace(value.as_str(), &format!("[secret {name}]"));
            }
        }
        text
    }
}

/// Which limit a signal usually means.
fn signal_hint(sig: i32) -> &'static str {
    match sig {
        24 => " (SIGXCPU: the CPU time limit)",
        25 => " (SIGXFSZ: the file size limit)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV: often the memory limit)",
        6 => " (SIGABRT: often the memory limit)",
        _ => "",
    }
}
