#![allow(clippy::unwrap_used)]

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
    std::os::unix::fs::symlink(d.path().join("secrets/key"), d.path().join("src/key.rs")).unwrap();
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
