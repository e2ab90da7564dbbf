#![allow(clippy::unwrap_used)]

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

/// The file helpers hold even when a path passed `confine` and was then swapped for a
/// symlink (as a concurrent command could): simulated by skipping `confine`.
#[test]
fn file_access_never_follows_a_swapped_symlink_out() {
    let (d, t) = setup();
    let root = CanonicalRoot::new(t.root()).unwrap();
    std::os::unix::fs::symlink(d.path(), root.join("swapped")).unwrap();
    std::os::unix::fs::symlink(d.path().join("outside.txt"), root.join("link.txt")).unwrap();
    assert!(read_inside(&root, &root.join("swapped/outside.txt")).is_err());
    assert!(read_inside(&root, &root.join("link.txt")).is_err());
    let write =
        |p: &str, bytes: &[u8]| write_inside(&root, &root.join(p), bytes, None, Replace::Always);
    assert!(write("swapped/outside.txt", b"pwned").is_err());
    assert!(write("swapped/new.txt", b"pwned").is_err());
    assert_eq!(
        std::fs::read_to_string(d.path().join("outside.txt")).unwrap(),
        "secret"
    );
    assert!(!d.path().join("new.txt").exists());
    // A walk does not descend into it either.
    assert!(
        t.walk()
            .iter()
            .all(|f| !f.starts_with(root.join("swapped")))
    );
    write("src/ok.txt", b"fine").unwrap();
    assert_eq!(
        read_inside(&root, &root.join("src/ok.txt")).unwrap(),
        b"fine"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.join("src"))
        .unwrap()
        .flatten()
        .filter(|e| jarvis_sync::paths::is_temp_name(&e.file_name().to_string_lossy()))
        .collect();
    assert!(leftovers.is_empty());
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
    t.sandbox = Sandbox::Unconfined {
        limits: Limits {
            file_bytes: 64 * 1024,
            ..Limits::default()
        },
        why: "test".into(),
    };
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
    assert!(
        !Sandbox::detect(Limits::default(), false)
            .describe()
            .is_empty()
    );
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
