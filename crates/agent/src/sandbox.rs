//! Containment for every process the agent starts: bash today; background shells, hooks and
//! stdio MCP servers later. One API for all of them: [`Sandbox::command`] builds a
//! `tokio::process::Command` for one workspace, and a [`ProcessScope`] kills everything a run
//! started when the run ends.
//!
//! In the cloud the agent runs on the server that holds every user's data and the team's keys,
//! so [`Sandbox::Bubblewrap`] gives a process: a clean environment (an allow-list plus what the
//! caller passes, e.g. the secrets its workspace names); a file system of the system's programs
//! read-only (`/usr`, the `/bin`, `/lib*` links, a few files of `/etc`), a private `/tmp` and
//! home, and its own workspace read-write — nothing else of the data dir (other workspaces, the
//! hub database, blobs, the device store) exists inside; a private network namespace with no
//! route out (egress only through an explicit [`Egress`] hook); its own PID namespace, so when
//! bubblewrap goes every process of the run goes with it, `setsid` or not; and resource limits
//! (CPU seconds, address space, processes, file size, open files; wall time is the caller's
//! deadline, [`Limits::wall`]).
//!
//! Never: inherit the server's environment, bind the data dir (or `/`), share the host network,
//! or claim containment that is not there — [`Sandbox::describe`] says what holds, and where
//! namespaces are unavailable the server gets [`Sandbox::Refused`] unless the operator opted in
//! to [`Sandbox::Unconfined`].

use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (name, value) pairs of a process environment.
pub type Env = Vec<(String, String)>;

/// The environment variable that names the bubblewrap binary (default `bwrap` on `PATH`).
/// Tests point it at a binary that fails to simulate a host without user namespaces.
pub const BWRAP_ENV: &str = "JARVIS_BWRAP";

/// Resource limits applied inside the sandbox (as rlimits: this works without cgroup
/// delegation, which containers rarely grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpu_seconds: u64,
    /// Address space (`RLIMIT_AS`).
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub open_files: u64,
    /// Processes of the sandbox's user (`RLIMIT_NPROC`); a fork bomb stops here. Enforced
    /// inside bubblewrap's user namespace; not for root in [`Sandbox::Unconfined`].
    pub processes: u64,
    /// The longest a command may run; callers cap their own timeouts with it.
    pub wall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_seconds: 600,
            memory_bytes: 4 << 30,
            file_bytes: 1 << 30,
            open_files: 1024,
            processes: 512,
            wall: Duration::from_secs(600),
        }
    }
}

impl Limits {
    fn prlimit_args(&self) -> Vec<String> {
        vec![
            format!("--cpu={}", self.cpu_seconds),
            format!("--as={}", self.memory_bytes),
            format!("--fsize={}", self.file_bytes),
            format!("--nofile={}", self.open_files),
            format!("--nproc={}", self.processes),
        ]
    }

    /// The limits in one line (reported with a command that hit one).
    pub fn summary_line(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let cg = cgroups();
        let processes = if cg.is_some() {
            format!("{} processes (pids cgroup)", self.processes)
        } else if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            // The kernel does not apply RLIMIT_NPROC to root's processes.
            "processes NOT limited (running as root and no writable pids cgroup)".to_owned()
        } else {
            format!("{} processes (RLIMIT_NPROC)", self.processes)
        };
        let memory = if cg.is_some_and(|c| c.memory.is_some()) {
            "per process and per command (memory cgroup)"
        } else {
            "per process"
        };
        format!(
            "cpu {}s, memory {} MiB {memory}, files {} MiB, {} open files, {processes}, wall {}s",
            self.cpu_seconds,
            self.memory_bytes >> 20,
            self.file_bytes >> 20,
            self.open_files,
            self.wall.as_secs()
        )
    }
}

/// The way out of a sandbox's private network namespace. Without one (the default) a sandboxed
/// process reaches nothing: not the outside, not loopback, not the server. An implementation
/// (the per-workspace egress policy of the cloud dev environment) typically runs a proxy on
/// the host, binds its Unix socket into the sandbox, and sets `HTTPS_PROXY`-style variables;
/// it must refuse every destination for which [`forbidden_destination`] holds unless a policy
/// names it explicitly.
pub trait Egress: Send + Sync + std::fmt::Debug {
    /// What a process of `workspace` gets to reach the outside.
    fn route(&self, workspace: &Path) -> Result<EgressRoute, String>;
    /// One line for [`Sandbox::describe`].
    fn describe(&self) -> String;
}

/// What an [`Egress`] hook adds to one sandboxed process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressRoute {
    pub env: Vec<(String, String)>,
    /// (host path, path inside) bound read-write, after the workspace: the proxy's Unix
    /// socket, a workspace's cached dependency folders (kept outside it on the host).
    pub sockets: Vec<(PathBuf, PathBuf)>,
    /// (host path, path inside) bound read-only: e.g. the forwarder the wrapper runs.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// A program (and arguments) run inside the namespace in front of the command, e.g. a
    /// forwarder listening on the sandbox's own loopback; it must `exec` the rest of its argv.
    pub wrapper: Vec<String>,
}

/// Destinations a sandboxed process may never reach through an egress hook unless a policy
/// names them: loopback (the server's own ports), link-local (cloud metadata at
/// 169.254.169.254), private and shared ranges, unspecified, multicast and broadcast.
pub fn forbidden_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                // 100.64.0.0/10: carrier-grade NAT, used inside some clouds.
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_destination(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "commands are refused on this server: {0}. An operator can accept running them without \
         confinement with --allow-unsandboxed (JARVIS_ALLOW_UNSANDBOXED=1)"
    )]
    Refused(String),
    #[error("the sandbox's network hook failed: {0}")]
    Egress(String),
    #[error("the workspace {0} is not accessible")]
    Workspace(String),
}

/// How processes are contained.
#[derive(Debug, Clone)]
pub enum Sandbox {
    /// The user's own machine (desktop, CLI): the user's environment, their own process group,
    /// no further limits.
    Host,
    /// Bubblewrap namespaces; see the module documentation.
    Bubblewrap {
        limits: Limits,
        egress: Option<Arc<dyn Egress>>,
        bwrap: PathBuf,
    },
    /// No namespaces, by the operator's explicit choice: a clean environment, rlimits and a
    /// process group, but the file system and the network are NOT confined.
    Unconfined { limits: Limits, why: String },
    /// No namespaces and no opt-in: every command is refused, with this reason.
    Refused { reason: String },
}

/// The bubblewrap binary to use.
pub fn bwrap_binary() -> PathBuf {
    std::env::var_os(BWRAP_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("bwrap"), PathBuf::from)
}

const BASE_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";
const HOME_INSIDE: &str = "/home/jarvis";

/// Files of `/etc` programs need (dynamic linking, user names, TLS roots, time zone); nothing
/// else of `/etc` is visible.
const ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/mime.types",
];

impl Sandbox {
    /// Bubblewrap with these limits and no egress, using [`bwrap_binary`].
    pub fn bubblewrap(limits: Limits) -> Sandbox {
        Sandbox::Bubblewrap {
            limits,
            egress: None,
            bwrap: bwrap_binary(),
        }
    }

    /// Whether bubblewrap can create the namespaces this sandbox uses here (containers often
    /// forbid user namespaces). Runs it once, with the exact arguments of a real command.
    pub fn probe_bubblewrap(limits: &Limits) -> Result<(), String> {
        let probe = Sandbox::bubblewrap(limits.clone());
        let dir = std::env::temp_dir();
        let Sandbox::Bubblewrap { bwrap, .. } = &probe else {
            return Err("unreachable".into());
        };
        let (args, environment) = probe
            .bwrap_args(&dir, "true", &[], &[])
            .map_err(|e| e.to_string())?;
        let out = std::process::Command::new(bwrap)
            .args(&args)
            .env_clear()
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} cannot create namespaces here ({}): {}",
                bwrap.display(),
                out.status,
                err.trim()
            ))
        }
    }

    /// The server's choice: bubblewrap where it works; otherwise [`Sandbox::Unconfined`] only
    /// when the operator opted in, else [`Sandbox::Refused`].
    pub fn detect(limits: Limits, allow_unsandboxed: bool) -> Sandbox {
        match Sandbox::probe_bubblewrap(&limits) {
            Ok(()) => Sandbox::bubblewrap(limits),
            Err(e) if allow_unsandboxed => Sandbox::Unconfined {
                limits,
                why: format!("bubblewrap unavailable: {e}"),
            },
            Err(reason) => Sandbox::Refused { reason },
        }
    }

    /// The same sandbox with an egress hook (bubblewrap only; the others ignore it).
    pub fn with_egress(mut self, hook: Arc<dyn Egress>) -> Sandbox {
        if let Sandbox::Bubblewrap { egress, .. } = &mut self {
            *egress = Some(hook);
        }
        self
    }

    pub fn limits(&self) -> Option<&Limits> {
        match self {
            Sandbox::Bubblewrap { limits, .. } | Sandbox::Unconfined { limits, .. } => Some(limits),
            Sandbox::Host | Sandbox::Refused { .. } => None,
        }
    }

    /// Whether commands run confined (namespaces), for policies such as refusing allow-all
    /// sessions where they do not.
    pub fn confines(&self) -> bool {
        matches!(self, Sandbox::Bubblewrap { .. })
    }

    pub fn refusal(&self) -> Option<SandboxError> {
        match self {
            Sandbox::Refused { reason } => Some(SandboxError::Refused(reason.clone())),
            _ => None,
        }
    }

    /// What holds, truthfully, in one line (logged at start-up, shown in sessions).
    pub fn describe(&self) -> String {
        match self {
            Sandbox::Host => "none: the user's own machine (own process group only)".into(),
            Sandbox::Bubblewrap { limits, egress, .. } => format!(
                "bubblewrap: clean environment; system programs read-only, only the session's \
                 workspace writable, private /tmp and home, nothing else of the data dir; private \
                 network namespace ({}); own PID namespace, nothing survives a run; limits: {}",
                egress
                    .as_ref()
                    .map_or_else(|| "no egress".to_owned(), |e| e.describe()),
                limits.summary_line()
            ),
            Sandbox::Unconfined { limits, why } => format!(
                "UNCONFINED by operator opt-in ({why}): clean environment and limits ({}), but \
                 commands can read and write every file this server can (other users' \
                 workspaces, the hub database, keys, the server's environment through /proc) and \
                 reach the network and the server's own \
                 port{}",
                limits.summary_line(),
                if has_pids_cgroup() {
                    ""
                } else {
                    ", and a process that calls setsid survives its run"
                }
            ),
            Sandbox::Refused { reason } => format!(
                "refusing commands: namespaces unavailable ({reason}); bash and allow-all cloud \
                 sessions are refused unless an operator opts in with --allow-unsandboxed"
            ),
        }
    }

    /// A command that runs `program args` for `workspace` inside this sandbox, with only the
    /// allow-listed environment plus `env`. It starts in its own process group (and, where the
    /// machine has a writable pids/memory cgroup, its own cgroup) with stdin closed, and is
    /// killed when dropped. Set its stdio on [`SandboxCommand::command`], then start it with
    /// [`ProcessScope::spawn`] so the end of the run kills everything it started.
    pub fn command(
        &self,
        workspace: &Path,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<SandboxCommand, SandboxError> {
        let (mut cmd, limits) = match self {
            Sandbox::Refused { reason } => return Err(SandboxError::Refused(reason.clone())),
            Sandbox::Host => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).envs(env.iter().map(|(k, v)| (k, v)));
                (c, None)
            }
            Sandbox::Bubblewrap { bwrap, limits, .. } => {
                let (bwrap_argv, environment) = self.bwrap_args(workspace, program, args, env)?;
                let mut argv = vec![bwrap.clone().into_os_string()];
                argv.extend(bwrap_argv);
                let mut c = host_command(argv);
                // bubblewrap hands its own (cleared, then exactly this) environment on.
                c.env_clear().envs(environment);
                (c, Some(limits))
            }
            Sandbox::Unconfined { limits, .. } => {
                let home = std::env::temp_dir().join("jarvis-unconfined-home");
                std::fs::create_dir_all(&home)
                    .map_err(|_| SandboxError::Workspace(home.display().to_string()))?;
                let mut argv: Vec<OsString> = vec!["prlimit".into()];
                argv.extend(limits.prlimit_args().into_iter().map(OsString::from));
                argv.push("--".into());
                argv.push(program.into());
                argv.extend(args.iter().map(OsString::from));
                let mut c = host_command(argv);
                c.envs(base_env(&home.to_string_lossy()))
                    .envs(env.iter().map(|(k, v)| (k, v)));
                (c, Some(limits))
            }
        };
        // The cgroup is joined by a tiny shell on the host before it execs the sandbox, so no
        // process of the command is ever outside it (fork bombs race a join done afterwards).
        let group = match (limits, cgroups()) {
            (Some(l), Some(cg)) => match cg.create(l) {
                Ok(g) => {
                    let std = cmd.as_std();
                    let mut argv: Vec<OsString> = vec![
                        "-c".into(),
                        "for d in $JARVIS_CGROUPS; do echo $$ > \"$d/cgroup.procs\" || exit 125; done; unset JARVIS_CGROUPS; exec \"$@\"".into(),
                        "jarvis-sandbox".into(),
                        std.get_program().to_owned(),
                    ];
                    argv.extend(std.get_args().map(OsStr::to_owned));
                    let envs: Vec<(OsString, OsString)> = std
                        .get_envs()
                        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                        .collect();
                    let mut c = tokio::process::Command::new("sh");
                    c.args(argv).env_clear().envs(envs).env(
                        "JARVIS_CGROUPS",
                        g.dirs
                            .iter()
                            .map(|d| d.to_string_lossy())
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                    if !c.as_std().get_envs().any(|(k, _)| k == "PATH") {
                        c.env("PATH", BASE_PATH);
                    }
                    cmd = c;
                    Some(g)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating a cgroup for a sandboxed command failed; rlimits only");
                    None
                }
            },
            _ => None,
        };
        cmd.current_dir(workspace)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        Ok(SandboxCommand {
            command: cmd,
            group,
        })
    }

    /// bubblewrap's arguments and the exact environment to start it with: values (secrets)
    /// travel in the environment, never in an argument other host processes can read.
    fn bwrap_args(
        &self,
        workspace: &Path,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<(Vec<OsString>, Env), SandboxError> {
        let Sandbox::Bubblewrap { limits, egress, .. } = self else {
            return Err(SandboxError::Refused("not a bubblewrap sandbox".into()));
        };
        // The real path: a symlink in the workspace path must not redirect the bind.
        let ws = workspace
            .canonicalize()
            .map_err(|_| SandboxError::Workspace(workspace.display().to_string()))?;
        let route = match egress {
            Some(e) => e.route(&ws).map_err(SandboxError::Egress)?,
            None => EgressRoute::default(),
        };
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
        push(&[
            "--unshare-user-try",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            // Kills the sandbox when the server (bwrap's parent) dies; with the PID namespace,
            // the namespace's init dying takes every process of the run with it.
            "--die-with-parent",
            // No controlling terminal to inject keystrokes into (TIOCSTI).
            "--new-session",
            // A root server's bwrap keeps every capability inside by default; none are needed,
            // and without them the sandbox's root obeys file permissions.
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
        ]);
        for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(dir);
            match std::fs::read_link(p) {
                Ok(target) => {
                    a.push("--symlink".into());
                    a.push(target.into_os_string());
                    a.push(dir.into());
                }
                Err(_) if p.is_dir() => {
                    a.extend(["--ro-bind", dir, dir].map(OsString::from));
                }
                Err(_) => {}
            }
        }
        for f in ETC {
            if Path::new(f).exists() {
                a.extend(["--ro-bind", f, f].map(OsString::from));
            }
        }
        a.extend(
            [
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                HOME_INSIDE,
            ]
            .map(OsString::from),
        );
        // The workspace last, after /tmp: a data dir under /tmp is then bound over the fresh
        // tmpfs with nothing else of it.
        a.push("--bind".into());
        a.push(ws.clone().into_os_string());
        a.push(ws.clone().into_os_string());
        // A data dir under /tmp (tests, some deployments) appears as empty folders in the
        // private /tmp: make them read-only so nothing "outside the workspace" is writable.
        let mut scratch: Vec<&Path> = ws
            .ancestors()
            .skip(1)
            .filter(|p| p.starts_with("/tmp") && *p != Path::new("/tmp"))
            .collect();
        scratch.reverse();
        for p in scratch {
            a.push("--chmod".into());
            a.push("0555".into());
            a.push(p.as_os_str().to_owned());
        }
        for (host, inside) in &route.sockets {
            a.push("--bind".into());
            a.push(host.clone().into_os_string());
            a.push(inside.clone().into_os_string());
        }
        for (host, inside) in &route.files {
            a.push("--ro-bind".into());
            a.push(host.clone().into_os_string());
            a.push(inside.clone().into_os_string());
        }
        // Everything but the mounts above is read-only (bwrap's root is a scratch tmpfs).
        a.extend(["--remount-ro", "/", "--chdir"].map(OsString::from));
        a.push(ws.into_os_string());
        a.push("--".into());
        // Limits are set inside the user namespace: RLIMIT_NPROC counts the sandbox's own
        // user there, where set outside it would count every process of the host's user.
        a.push("prlimit".into());
        a.extend(limits.prlimit_args().into_iter().map(OsString::from));
        a.push("--".into());
        a.extend(route.wrapper.iter().map(OsString::from));
        a.push(program.into());
        a.extend(args.iter().map(OsString::from));
        let environment = base_env(HOME_INSIDE)
            .into_iter()
            .chain(route.env)
            .chain(env.iter().cloned())
            .collect();
        Ok((a, environment))
    }
}

/// The allow-listed environment: never the server's (provider keys, tokens).
fn base_env(home: &str) -> Vec<(String, String)> {
    let lang = std::env::var("LANG")
        .ok()
        .filter(|l| {
            l.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        })
        .unwrap_or_else(|| "C.UTF-8".into());
    vec![
        ("PATH".into(), BASE_PATH.into()),
        ("HOME".into(), home.into()),
        ("USER".into(), "jarvis".into()),
        ("LANG".into(), lang),
        ("TERM".into(), "dumb".into()),
        ("TMPDIR".into(), "/tmp".into()),
    ]
}

/// A command run on the host with an empty environment (bubblewrap and prlimit find nothing
/// of the server's in it).
fn host_command(argv: Vec<OsString>) -> tokio::process::Command {
    let mut it = argv.into_iter();
    let mut c = tokio::process::Command::new(it.next().unwrap_or_default());
    c.args(it).env_clear().env("PATH", BASE_PATH);
    c
}

/// A command ready to start, with the cgroup it joins (if any).
pub struct SandboxCommand {
    pub command: tokio::process::Command,
    group: Option<RunGroup>,
}

/// Writable cgroup hierarchies (pids, memory) where each command gets its own group, so a
/// fork bomb stops at `pids.max` even when the server runs as root (the kernel exempts root
/// from `RLIMIT_NPROC`) and a run's memory is capped as a whole.
#[derive(Debug)]
struct Cgroups {
    /// `jarvis-sandbox` parents under which run groups are made, each with its limit file.
    pids: PathBuf,
    memory: Option<(PathBuf, &'static str)>,
}

static CGROUPS: std::sync::OnceLock<Option<Cgroups>> = std::sync::OnceLock::new();

fn cgroups() -> Option<&'static Cgroups> {
    CGROUPS.get_or_init(Cgroups::detect).as_ref()
}

/// Whether commands get a pids cgroup here (what `describe` and tests rely on).
pub fn has_pids_cgroup() -> bool {
    cgroups().is_some()
}

impl Cgroups {
    fn detect() -> Option<Cgroups> {
        let try_parent = |base: &Path, limit: &'static str| -> Option<PathBuf> {
            let parent = base.join("jarvis-sandbox");
            std::fs::create_dir_all(&parent).ok()?;
            parent.join(limit).exists().then_some(parent)
        };
        let v1 = Path::new("/sys/fs/cgroup/pids");
        let found = if v1.join("cgroup.procs").exists() {
            try_parent(v1, "pids.max").map(|pids| Cgroups {
                pids,
                memory: try_parent(Path::new("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")
                    .map(|m| (m, "memory.limit_in_bytes")),
            })
        } else {
            // cgroup v2: our own group, with the controllers delegated to its children.
            let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let base = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
            let _ = std::fs::write(base.join("cgroup.subtree_control"), "+pids +memory");
            try_parent(&base, "pids.max").map(|pids| {
                let _ = std::fs::write(pids.join("cgroup.subtree_control"), "+pids +memory");
                Cgroups {
                    memory: pids
                        .join("memory.max")
                        .exists()
                        .then(|| (pids.clone(), "memory.max")),
                    pids,
                }
            })
        };
        if let Some(cg) = &found {
            // Groups left by a server process that is gone (`run-<pid>-…`): their processes
            // died with it (--die-with-parent), so only the empty folders remain.
            for parent in std::iter::once(&cg.pids).chain(cg.memory.as_ref().map(|m| &m.0)) {
                for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let owner = name
                        .strip_prefix("run-")
                        .and_then(|r| r.split('-').next())
                        .and_then(|p| p.parse::<u32>().ok());
                    if let Some(pid) = owner
                        && !Path::new(&format!("/proc/{pid}")).exists()
                    {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
        }
        found
    }

    fn create(&self, limits: &Limits) -> std::io::Result<RunGroup> {
        let name = format!("run-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let mut dirs = Vec::new();
        let pids = self.pids.join(&name);
        std::fs::create_dir(&pids)?;
        dirs.push(pids.clone());
        let group = RunGroup { dirs };
        std::fs::write(pids.join("pids.max"), limits.processes.to_string())?;
        let mut group = group;
        if let Some((parent, file)) = &self.memory
            && parent != &self.pids
        {
            let mem = parent.join(&name);
            std::fs::create_dir(&mem)?;
            group.dirs.push(mem.clone());
            std::fs::write(mem.join(file), limits.memory_bytes.to_string())?;
        } else if let Some((_, file)) = &self.memory {
            std::fs::write(pids.join(file), limits.memory_bytes.to_string())?;
        }
        Ok(group)
    }
}

/// One command's cgroups; emptied (every member killed) and removed when dropped.
#[derive(Debug)]
struct RunGroup {
    dirs: Vec<PathBuf>,
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        let mut dirs = std::mem::take(&mut self.dirs);
        // Usually everything is gone and reaped by now: remove at once.
        dirs.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
        if dirs.is_empty() {
            return;
        }
        // Killed processes leave the group only once reaped: wait for that off the runtime.
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            for d in dirs {
                empty_and_remove(&d, deadline);
            }
        });
    }
}

/// Kills every process in a cgroup until it is empty, then removes it (by the deadline).
fn empty_and_remove(dir: &Path, deadline: std::time::Instant) {
    loop {
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(cgroup = %dir.display(), "a sandbox cgroup did not empty in time");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every process group one run started; [`kill_all`](Self::kill_all) (or dropping the last
/// clone) kills them all. Under bubblewrap, killing bwrap's group takes its PID namespace with
/// it, so a process that escaped into its own session dies too.
#[derive(Clone, Default)]
pub struct ProcessScope {
    inner: Arc<ScopeInner>,
}

#[derive(Default)]
struct ScopeInner {
    started: Mutex<Vec<Started>>,
}

struct Started {
    pgid: i32,
    group: Option<RunGroup>,
}

impl Started {
    fn kill(self) {
        kill_group(self.pgid);
        // Dropping the group kills whatever is left in it (a setsid escapee, unconfined).
        drop(self.group);
    }
}

impl ProcessScope {
    pub fn new() -> Self {
        ProcessScope::default()
    }

    /// Starts a sandboxed command and records it in this scope.
    pub fn spawn(&self, cmd: SandboxCommand) -> std::io::Result<tokio::process::Child> {
        let SandboxCommand { mut command, group } = cmd;
        let child = command.spawn()?;
        if let Some(pgid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            self.inner.lock().push(Started { pgid, group });
        }
        Ok(child)
    }

    /// SIGKILL to everything this scope started.
    pub fn kill_all(&self) {
        let started = std::mem::take(&mut *self.inner.lock());
        for s in started {
            s.kill();
        }
    }

    /// SIGKILL to everything one child started, and forget it.
    pub fn kill(&self, child: &tokio::process::Child) {
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        let mine: Vec<Started> = {
            let mut all = self.inner.lock();
            let (mine, rest) = std::mem::take(&mut *all)
                .into_iter()
                .partition(|s| s.pgid == pid);
            *all = rest;
            mine
        };
        for s in mine {
            s.kill();
        }
    }
}

impl ScopeInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Started>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ScopeInner {
    fn drop(&mut self) {
        for s in std::mem::take(&mut *self.lock()) {
            s.kill();
        }
    }
}

fn kill_group(pgid: i32) {
    // ESRCH (the group is already gone) is the expected outcome after a clean exit.
    if let Err(e) = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    ) && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, error = %e, "killing a sandboxed process group failed");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_destinations() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.100.100.200",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(forbidden_destination(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!forbidden_destination(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn refused_refuses_and_says_why() {
        let s = Sandbox::Refused {
            reason: "no user namespaces".into(),
        };
        let e = s
            .command(Path::new("/tmp"), "true", &[], &[])
            .err()
            .unwrap();
        assert!(e.to_string().contains("no user namespaces"), "{e}");
        assert!(e.to_string().contains("JARVIS_ALLOW_UNSANDBOXED"), "{e}");
        assert!(s.describe().contains("refusing"));
        assert!(!s.confines());
    }

    #[test]
    fn bwrap_arguments_bind_only_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("workspaces/a");
        std::fs::create_dir_all(&ws).unwrap();
        let s = Sandbox::bubblewrap(Limits::default());
        let (args, environment) = s
            .bwrap_args(
                &ws,
                "sh",
                &["-c".into(), "true".into()],
                &[("TOKEN".into(), "value-7d1e".into())],
            )
            .unwrap();
        // A value travels in the environment, never in an argument (/proc/<pid>/cmdline).
        assert!(environment.contains(&("TOKEN".into(), "value-7d1e".into())));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // No bind of / or of anything under the data dir but the workspace.
        let binds: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--bind" || w[0] == "--ro-bind")
            .map(|w| w[1].as_str())
            .collect();
        assert!(!binds.contains(&"/"), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("value-7d1e")), "{args:?}");
        let data = dir.path().canonicalize().unwrap();
        let data = data.to_string_lossy();
        let ws_real = ws.canonicalize().unwrap();
        for b in binds {
            if b.starts_with(&*data) {
                assert_eq!(Path::new(b), ws_real, "{args:?}");
            }
        }
        for flag in [
            "--unshare-net",
            "--unshare-pid",
            "--die-with-parent",
            "--cap-drop",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} missing: {args:?}");
        }
    }

    /// Bubblewrap where this machine can create its namespaces; on one that cannot, the
    /// refusal path is what runs (tested above and end to end), so say so and skip.
    fn bwrap_or_skip(limits: Limits) -> Option<Sandbox> {
        match Sandbox::probe_bubblewrap(&limits) {
            Ok(()) => Some(Sandbox::bubblewrap(limits)),
            Err(e) => {
                eprintln!("skipping: {e}");
                None
            }
        }
    }

    /// Every process on the host whose command line holds `marker`.
    fn processes_with(marker: &str) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
                && String::from_utf8_lossy(&cmd).contains(marker)
            {
                found.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        found
    }

    async fn bash(t: &crate::tools::ToolBox, command: &str) -> crate::tools::ToolOutput {
        t.run(
            "bash",
            &serde_json::json!({ "command": command }),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
    }

    #[tokio::test]
    async fn bubblewrap_holds_environment_files_network_and_processes() {
        let Some(sandbox) = bwrap_or_skip(Limits::default()) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ws = data.join("workspaces/a");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(data.join("workspaces/b")).unwrap();
        std::fs::write(data.join("workspaces/b/private.txt"), "b's").unwrap();
        std::fs::write(data.join("hub.db"), "hub-contents").unwrap();
        let mut t = crate::tools::ToolBox::new(&ws);
        t.sandbox = sandbox;
        t.env = vec![("GIVEN".into(), "yes".into())];

        let env = bash(&t, "env").await;
        assert!(!env.is_error, "{env:?}");
        let mut names: Vec<&str> = env
            .content
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "GIVEN", "HOME", "LANG", "PATH", "PWD", "TERM", "TMPDIR", "USER"
            ],
            "{}",
            env.content
        );

        let d = data.canonicalize().unwrap();
        let d = d.display();
        let look = bash(
            &t,
            &format!(
                "ls -a {d}; ls -a {d}/workspaces; cat {d}/workspaces/b/private.txt {d}/hub.db"
            ),
        )
        .await;
        assert!(look.is_error, "{look:?}");
        assert!(
            !look.content.contains("b's") && !look.content.contains("hub-contents"),
            "{look:?}"
        );
        let listed: Vec<&str> = look.content.lines().collect();
        assert!(
            !listed.contains(&"hub.db") && !listed.contains(&"b"),
            "{look:?}"
        );

        let write = bash(&t, &format!("for f in {d}/workspaces/b/new {d}/new /usr/new /etc/new /new; do (echo x > $f) 2>/dev/null && echo wrote $f; done; echo x > mine.txt; echo checked")).await;
        assert!(
            write.content.contains("checked") && !write.content.contains("wrote"),
            "{write:?}"
        );
        assert!(!data.join("workspaces/b/new").exists() && !data.join("new").exists());
        assert!(!Path::new("/usr/new").exists() && !Path::new("/etc/new").exists());
        assert_eq!(std::fs::read_to_string(ws.join("mine.txt")).unwrap(), "x\n");

        // Loopback inside is the namespace's own: a listener on the host's is unreachable.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let net = bash(&t, &format!("for a in 127.0.0.1/{port} 169.254.169.254/80 1.1.1.1/443 10.0.0.1/80; do bash -c \"echo > /dev/tcp/$a\" 2>/dev/null && echo reached $a; done; echo checked")).await;
        assert!(
            net.content.contains("checked") && !net.content.contains("reached"),
            "{net:?}"
        );
        assert!(
            listener.accept().is_err(),
            "the host's loopback was reached"
        );

        // A process that leaves the group and the session still dies with the run.
        let marker = format!("jarvis-sbx-{}", rand::random::<u32>());
        let out = bash(
            &t,
            &format!("setsid sh -c 'sleep 600; : {marker}' > /dev/null 2>&1 & echo started"),
        )
        .await;
        assert!(out.content.contains("started"), "{out:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_with(&marker).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "setsid survivor: {:?}",
                processes_with(&marker)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn bubblewrap_contains_fork_bombs_memory_hogs_and_endless_commands() {
        // Without a pids cgroup a root server has no process limit: a bomb would take the host.
        if !has_pids_cgroup() {
            eprintln!("skipping: no writable pids cgroup here");
            return;
        }
        let Some(sandbox) = bwrap_or_skip(Limits {
            memory_bytes: 256 << 20,
            processes: 64,
            wall: Duration::from_secs(3),
            ..Limits::default()
        }) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut t = crate::tools::ToolBox::new(dir.path());
        t.sandbox = sandbox;
        let started = std::time::Instant::now();
        let marker = format!("jarvis-bomb-{}", rand::random::<u32>());
        let bomb = bash(&t, &format!("b() {{ b | b & }}; b; sleep 600; : {marker}")).await;
        assert!(
            bomb.is_error && bomb.content.contains("timed out"),
            "{bomb:?}"
        );
        assert!(
            bomb.content.contains("64 processes (pids cgroup)"),
            "{bomb:?}"
        );
        let hog = bash(&t, "head -c 1000000000 /dev/zero | tail").await;
        assert!(hog.is_error && hog.content.contains("memory"), "{hog:?}");
        let endless = bash(&t, &format!("while :; do :; done; : {marker}")).await;
        assert!(
            endless.is_error && endless.content.contains("timed out"),
            "{endless:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_with(&marker).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "survivors: {:?}",
                processes_with(&marker)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ok = bash(&t, "echo still fine").await;
        assert!(!ok.is_error, "{ok:?}");
    }

    /// A proxy's Unix socket handed in by an egress hook: the only way out.
    #[derive(Debug)]
    struct SocketEgress(PathBuf);

    impl Egress for SocketEgress {
        fn route(&self, _workspace: &Path) -> Result<EgressRoute, String> {
            Ok(EgressRoute {
                env: vec![("JARVIS_EGRESS".into(), "/run/egress.sock".into())],
                sockets: vec![(self.0.clone(), PathBuf::from("/run/egress.sock"))],
                files: Vec::new(),
                wrapper: Vec::new(),
            })
        }
        fn describe(&self) -> String {
            "egress through a test socket".into()
        }
    }

    #[tokio::test]
    async fn an_egress_hook_is_the_only_way_out() {
        let Some(sandbox) = bwrap_or_skip(Limits::default()) else {
            return;
        };
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipping: no python3 to speak to the socket");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        let sock = dir.path().join("proxy.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let mut t = crate::tools::ToolBox::new(&ws);
        t.sandbox = sandbox.with_egress(Arc::new(SocketEgress(sock.clone())));
        assert!(
            t.sandbox
                .describe()
                .contains("egress through a test socket")
        );
        let accept = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            got
        });
        let out = bash(
            &t,
            "python3 -c \"import socket,os; s=socket.socket(socket.AF_UNIX); s.connect(os.environ['JARVIS_EGRESS']); s.sendall(b'via the hook')\" && echo sent",
        )
        .await;
        assert!(!out.is_error && out.content.contains("sent"), "{out:?}");
        let got = tokio::time::timeout(Duration::from_secs(10), accept)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, "via the hook");
    }
}
