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

/// How bash commands are contained. Every mode runs the command in its own process group,
/// killed whole on timeout or interrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// The user's own machine: no further limits (the desktop and the CLI).
    None,
    /// Resource limits set by the shell before the command runs (`ulimit`): CPU seconds,
    /// address space, file size, open files, processes.
    Limits(Limits),
    /// Bubblewrap: a read-only view of the system, the workspace read-write, private /tmp,
    /// no other writable path, new namespaces; plus the same limits.
    Bubblewrap(Limits),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub open_files: u64,
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 600,
            memory_bytes: 4 << 30,
            file_bytes: 1 << 30,
            open_files: 1024,
            processes: 512,
        }
    }
}

impl Sandbox {
    /// The strongest containment this machine offers: bubblewrap when `bwrap` exists and can
    /// create its namespaces here (containers often forbid it), else resource limits.
    pub fn detect(limits: Limits) -> Sandbox {
        let works = std::process::Command::new("bwrap")
            .args([
                "--ro-bind",
                "/",
                "/",
                "--dev",
                "/dev",
                "--unshare-all",
                "--die-with-parent",
                "true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            Sandbox::Bubblewrap(limits)
        } else {
            Sandbox::Limits(limits)
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sandbox::None => "none (own process group only)".into(),
            Sandbox::Limits(l) => format!(
                "resource limits in a separate process group (cpu {}s, memory {} MiB,                  files {} MiB, {} open files, {} processes); bubblewrap unavailable",
                l.cpu_seconds,
                l.memory_bytes >> 20,
                l.file_bytes >> 20,
                l.open_files,
                l.processes
            ),
            Sandbox::Bubblewrap(_) => {
                "bubblewrap (read-only system, workspace writable, private /tmp, no network                  namespace sharing) plus resource limits"
                    .into()
            }
        }
    }
}

fn ulimit_prefix(l: &Limits) -> String {
    // `sh` is dash on Debian: -v in KiB, -f in 512-byte blocks. A limit the shell cannot set
    // (-u is not in every sh) is skipped rather than failing the command.
    format!(
        "ulimit -t {} ; ulimit -v {} ; ulimit -f {} ; ulimit -n {} ; (ulimit -u {}) 2>/dev/null && ulimit -u {} ; ",
        l.cpu_seconds,
        l.memory_bytes / 1024,
        l.file_bytes / 512,
        l.open_files,
        l.processes,
        l.processes
    )
}

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
    todos: Arc<Mutex<Vec<Todo>>>,
}

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
            sandbox: Sandbox::None,
            todos: Arc::default(),
        }
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
                    self.shells.start(self.shell_command(c), c).map(|id| {
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
        match result {
            Ok(text) => ToolOutput::ok(self.cap(text)),
            Err(e) => ToolOutput::err(e),
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

    async fn read(&self, p: &str, input: &Value) -> Result<String, String> {
        let path = self.path(p)?;
        let bytes = tokio::fs::read(&path)
            .await
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
        // Re-check after creating folders: a racing symlink must not redirect the write.
        let path = self.path(p)?;
        let tmp = path.with_extension(format!("jarvis-tmp-{}", rand::random::<u32>()));
        tokio::fs::write(&tmp, content)
            .await
            .map_err(|e| format!("cannot write {p}: {e}"))?;
        tokio::fs::rename(&tmp, &path)
            .await
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
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| format!("cannot read {p}: {e}"))?;
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
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if matches!(name.to_str(), Some(".git" | "node_modules" | "target")) {
                    continue;
                }
                // file_type does not follow symlinks: linked folders are not walked.
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => out.push(e.path()),
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
        tokio::task::spawn_blocking(move || {
            let mut out = String::new();
            for f in me.walk() {
                let rel = me.relative(&f);
                if filter.as_ref().is_some_and(|m| !m.is_match(&rel)) {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&f) else {
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

    /// Runs `command` with `sh -c` in its own process group; on timeout or interrupt the whole
    /// group is killed, so no grandchild outlives the call.
    async fn bash(
        &self,
        command: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> ToolOutput {
        let mut cmd = self.shell_command(command);
        cmd.current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        self.bash_spawned(cmd, timeout, cancel).await
    }

    /// `sh -c command` wrapped by the sandbox, in the workspace root (foreground and
    /// background commands alike).
    pub(crate) fn shell_command(&self, command: &str) -> tokio::process::Command {
        let mut cmd = match &self.sandbox {
            Sandbox::None => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(command);
                c
            }
            Sandbox::Limits(l) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(format!("{}{command}", ulimit_prefix(l)));
                c
            }
            Sandbox::Bubblewrap(l) => {
                let root = self.root.to_string_lossy().into_owned();
                let mut c = tokio::process::Command::new("bwrap");
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
                    .args(["--tmpfs", "/tmp", "--bind", &root, &root, "--chdir", &root])
                    .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts"])
                    .args(["--die-with-parent", "--new-session", "sh", "-c"])
                    .arg(format!("{}{command}", ulimit_prefix(l)));
                c
            }
        };
        cmd.current_dir(&self.root);
        cmd
    }

    async fn bash_spawned(
        &self,
        mut cmd: tokio::process::Command,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> ToolOutput {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return ToolOutput::err(format!("cannot start sh: {e}")),
        };
        let pgid = child.id();
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
        let outcome = tokio::select! {
            r = async { let io = read_all.await; (child.wait().await, io) } => Ok(r),
            _ = tokio::time::sleep(timeout) => Err(format!("timed out after {timeout:?}; process group killed")),
            _ = cancel.cancelled() => Err("interrupted; process group killed".to_owned()),
        };
        let kill_group = || {
            if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        };
        match outcome {
            Ok((status, (stdout, stderr))) => {
                // The shell is done; anything it left running in its group goes too.
                kill_group();
                let mut text = String::from_utf8_lossy(&stdout).into_owned();
                if !stderr.is_empty() {
                    text.push_str("\n[stderr]\n");
                    text.push_str(&String::from_utf8_lossy(&stderr));
                }
                let code = status.ok().and_then(|s| s.code());
                let text = self.cap(text);
                match code {
                    Some(0) => ToolOutput::ok(text),
                    Some(c) => ToolOutput::err(format!("exit code {c}\n{text}")),
                    None => ToolOutput::err(format!("killed by a signal\n{text}")),
                }
            }
            Err(reason) => {
                kill_group();
                ToolOutput::err(reason)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn setup() -> (tempfile::TempDir, ToolBox) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ws/src")).unwrap();
        std::fs::write(
            dir.path().join("ws/src/main.rs"),
            "fn main() {\n    old();\n}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret").unwrap();
        let tools = ToolBox::new(dir.path().join("ws"));
        (dir, tools)
    }

    async fn run(t: &ToolBox, name: &str, input: Value) -> ToolOutput {
        t.run(name, &input, &CancellationToken::new()).await
    }

    #[tokio::test]
    async fn read_write_edit() {
        let (_d, t) = setup();
        let r = run(&t, "read", json!({"path": "src/main.rs"})).await;
        assert!(
            !r.is_error && r.content.contains("     2\t    old();"),
            "{r:?}"
        );
        let w = run(
            &t,
            "write",
            json!({"path": "notes/a.md", "content": "# A\n"}),
        )
        .await;
        assert!(!w.is_error, "{w:?}");
        assert_eq!(
            std::fs::read_to_string(t.root().join("notes/a.md")).unwrap(),
            "# A\n"
        );
        let e = run(
            &t,
            "edit",
            json!({"path": "src/main.rs", "old_string": "old()", "new_string": "new()"}),
        )
        .await;
        assert!(!e.is_error, "{e:?}");
        assert!(
            std::fs::read_to_string(t.root().join("src/main.rs"))
                .unwrap()
                .contains("new();")
        );
        let missing = run(
            &t,
            "edit",
            json!({"path": "src/main.rs", "old_string": "nope", "new_string": "x"}),
        )
        .await;
        assert!(missing.is_error && missing.content.contains("not found"));
        std::fs::write(t.root().join("dup.txt"), "a a").unwrap();
        let dup = run(
            &t,
            "edit",
            json!({"path": "dup.txt", "old_string": "a", "new_string": "b"}),
        )
        .await;
        assert!(dup.is_error && dup.content.contains("occurs 2 times"));
        let all = run(
            &t,
            "edit",
            json!({"path": "dup.txt", "old_string": "a", "new_string": "b", "replace_all": true}),
        )
        .await;
        assert!(!all.is_error);
        let bad = run(&t, "edit", json!({"path": 3})).await;
        assert!(bad.is_error);
        let unknown = run(&t, "rm_rf", json!({})).await;
        assert!(unknown.is_error && unknown.content.contains("unknown tool"));
    }

    #[tokio::test]
    async fn hostile_paths_are_refused() {
        let (d, t) = setup();
        std::os::unix::fs::symlink(d.path(), t.root().join("escape")).unwrap();
        let outside = d.path().join("outside.txt");
        for p in [
            "../outside.txt",
            "src/../../outside.txt",
            outside.to_str().unwrap(),
            "/etc/passwd",
            "escape/outside.txt",
            "escape/new-file.txt",
        ] {
            let r = run(&t, "read", json!({"path": p})).await;
            assert!(r.is_error && r.content.contains("refused"), "{p}: {r:?}");
            let w = run(&t, "write", json!({"path": p, "content": "pwned"})).await;
            assert!(w.is_error, "{p}: {w:?}");
        }
        assert_eq!(std::fs::read_to_string(outside).unwrap(), "secret");
        assert!(!d.path().join("new-file.txt").exists());
        // An absolute path inside the root is fine.
        let inside = t.root().join("src/main.rs");
        let r = run(&t, "read", json!({"path": inside.to_str().unwrap()})).await;
        assert!(!r.is_error, "{r:?}");
    }

    #[tokio::test]
    async fn glob_grep_todo() {
        let (_d, t) = setup();
        std::fs::write(t.root().join("src/lib.rs"), "pub fn old() {}\n").unwrap();
        let g = run(&t, "glob", json!({"pattern": "src/*.rs"})).await;
        assert_eq!(g.content, "src/lib.rs\nsrc/main.rs");
        let r = run(&t, "grep", json!({"pattern": "old\\(", "glob": "**/*.rs"})).await;
        assert!(
            r.content.contains("src/main.rs:2:") && r.content.contains("src/lib.rs:1:"),
            "{r:?}"
        );
        assert!(run(&t, "grep", json!({"pattern": "("})).await.is_error);
        let todo = run(
            &t,
            "todo",
            json!({"todos": [{"content": "ship", "status": "pending"}]}),
        )
        .await;
        assert!(!todo.is_error);
        assert_eq!(t.todos()[0].content, "ship");
    }

    #[tokio::test]
    async fn limits_sandbox_caps_file_size() {
        let (_d, mut t) = setup();
        t.sandbox = Sandbox::Limits(Limits {
            file_bytes: 64 * 1024,
            ..Limits::default()
        });
        let out = run(
            &t,
            "bash",
            json!({"command": "head -c 300000 /dev/zero > big; echo done"}),
        )
        .await;
        let size = std::fs::metadata(t.root().join("big")).unwrap().len();
        assert!(
            size <= 64 * 1024,
            "file grew to {size} bytes: {}",
            out.content
        );
        let ok = run(&t, "bash", json!({"command": "echo fine"})).await;
        assert!(
            !ok.is_error && ok.content.contains("fine"),
            "{}",
            ok.content
        );
        assert!(!Sandbox::detect(Limits::default()).describe().is_empty());
    }

    #[tokio::test]
    async fn bash_output_exit_timeout_and_interrupt() {
        let (_d, mut t) = setup();
        let ok = run(&t, "bash", json!({"command": "echo hi; echo oops >&2"})).await;
        assert!(!ok.is_error && ok.content.starts_with("hi\n") && ok.content.contains("oops"));
        let fail = run(&t, "bash", json!({"command": "exit 3"})).await;
        assert!(fail.is_error && fail.content.starts_with("exit code 3"));
        t.output_cap = 100;
        let big = run(&t, "bash", json!({"command": "yes | head -c 100000"})).await;
        assert!(
            big.content.contains("output truncated"),
            "{}",
            big.content.len()
        );
        // A command that never ends, with a grandchild: both die at the timeout.
        let pidfile = t.root().join("grandchild.pid");
        let started = Instant::now();
        let cmd = format!(
            "sh -c 'echo $$ > {}; exec sleep 600' & sleep 600",
            pidfile.display()
        );
        let slow = run(&t, "bash", json!({"command": cmd, "timeout_ms": 500})).await;
        assert!(
            slow.is_error && slow.content.contains("timed out"),
            "{slow:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        // A killed process may linger briefly as a zombie until it is reaped.
        let alive = |dir: &Path| {
            std::fs::read_to_string(dir.join("stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        while alive(&proc_dir) {
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} survived the process-group kill"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c2.cancel();
        });
        let cut = t
            .run("bash", &json!({"command": "sleep 600"}), &cancel)
            .await;
        assert!(cut.is_error && cut.content.contains("interrupted"));
    }
}
