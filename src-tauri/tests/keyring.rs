//! The keychain for real: a private D-Bus session with an unlocked GNOME Keyring (the Secret
//! Service every Linux desktop offers), and the same calls with no keychain at all. Each test
//! re-runs itself as a child process inside the environment it needs, so `cargo test` on any
//! machine with `dbus-run-session` and `gnome-keyring-daemon` exercises the real thing.
#![allow(clippy::unwrap_used)]

use std::process::Command;

mod support;

use jarvis_desktop::secrets::{SecretError, Secrets};

const CHILD: &str = "JARVIS_KEYRING_CHILD";

/// Runs `test` again in a child process with `env`, optionally inside `dbus-run-session` with an
/// unlocked keyring; returns whether it passed.
fn rerun(test: &str, home: &std::path::Path, with_keyring: bool, env: &[(&str, &str)]) -> bool {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = if with_keyring {
        // The login keyring is created and unlocked in $HOME, on a private bus.
        let mut c = support::keyring_session();
        c.arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, test)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // A filter that matched nothing would "pass" too: insist the one test ran.
    out.status.success() && stdout.contains("1 passed")
}

fn is_child(test: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == test)
}

#[test]
fn secrets_round_trip_through_a_real_secret_service() {
    const NAME: &str = "secrets_round_trip_through_a_real_secret_service";
    if !is_child(NAME) {
        let home = tempfile::tempdir().unwrap();
        assert!(rerun(NAME, home.path(), true, &[]), "the child test failed");
        return;
    }
    let secrets = Secrets::new("app.myjarvis.desktop.test");
    assert!(secrets.status().available, "{:?}", secrets.status());
    assert_eq!(secrets.get("hub-token").unwrap(), None);
    secrets.set("hub-token", "jt_first").unwrap();
    assert_eq!(
        secrets.get("hub-token").unwrap().as_deref(),
        Some("jt_first")
    );
    // Replacing keeps one entry with the new value.
    secrets.set("hub-token", "jt_second ✓").unwrap();
    assert_eq!(
        secrets.get("hub-token").unwrap().as_deref(),
        Some("jt_second ✓")
    );
    // It is really in the Secret Service, where other programs (and the user) can see it.
    let out = Command::new("secret-tool")
        .args([
            "lookup",
            "service",
            "app.myjarvis.desktop.test",
            "username",
            "hub-token",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "secret-tool: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "jt_second ✓");
    // Another name is another secret.
    secrets.set("anthropic-api-key", "sk-test").unwrap();
    assert_eq!(
        secrets.get("hub-token").unwrap().as_deref(),
        Some("jt_second ✓")
    );
    secrets.delete("hub-token").unwrap();
    assert_eq!(secrets.get("hub-token").unwrap(), None);
    // Deleting what is not there is not an error.
    secrets.delete("hub-token").unwrap();
    assert_eq!(
        secrets.get("anthropic-api-key").unwrap().as_deref(),
        Some("sk-test")
    );
}

#[test]
fn without_a_keychain_every_call_says_so_and_nothing_is_written() {
    const NAME: &str = "without_a_keychain_every_call_says_so_and_nothing_is_written";
    if !is_child(NAME) {
        let home = tempfile::tempdir().unwrap();
        assert!(
            rerun(
                NAME,
                home.path(),
                false,
                &[("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")]
            ),
            "the child test failed"
        );
        // No plaintext fallback: the home folder is as empty as it was.
        let left: Vec<_> = walk(home.path());
        assert!(
            left.is_empty(),
            "files written without a keychain: {left:?}"
        );
        return;
    }
    let secrets = Secrets::new("app.myjarvis.desktop.test");
    let status = secrets.status();
    assert!(!status.available);
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .contains("never in plain files"),
        "{status:?}"
    );
    let err = secrets.set("hub-token", "jt_secret").unwrap_err();
    assert!(matches!(err, SecretError::Unavailable(_)), "{err:?}");
    assert_eq!(err.code(), "keychain_unavailable");
    assert!(matches!(
        secrets.get("hub-token").unwrap_err(),
        SecretError::Unavailable(_)
    ));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
