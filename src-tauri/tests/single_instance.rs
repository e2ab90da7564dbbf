//! One app at a time: a second launch of the real desktop binary (under Xvfb, in its own D-Bus
//! session, where the single-instance plugin registers) hands over to the running one and
//! exits at once; the first keeps running.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_second_launch_hands_over_and_exits() {
    let exe = std::env::current_exe().unwrap();
    let app = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("jarvis-desktop");
    assert!(
        app.exists(),
        "{} not built (cargo build --workspace --bins)",
        app.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    // The first instance must be up (its window drawn) before the second starts.
    let script = r#"
        "$APP" > "$TMPD/first.log" 2>&1 & FIRST=$!
        i=0
        until grep -q "window interactive" "$TMPD/first.log"; do
          i=$((i+1)); [ $i -gt 600 ] && { echo "first never drew its window"; exit 3; }
          sleep 0.05
        done
        timeout 20 "$APP" > "$TMPD/second.log" 2>&1; echo "second exit $?"
        if kill -0 $FIRST 2>/dev/null; then echo "first running"; fi
        kill $FIRST
    "#;
    let out = Command::new("xvfb-run")
        .args(["-a", "dbus-run-session", "--", "sh", "-c", script])
        .env("APP", &app)
        .env("TMPD", tmp.path())
        .env("JARVIS_DESKTOP_DATA", tmp.path().join("data"))
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("second exit 0"), "{stdout}\n{out:?}");
    assert!(stdout.contains("first running"), "{stdout}");
    let second = std::fs::read_to_string(tmp.path().join("second.log")).unwrap();
    assert!(
        !second.contains("window interactive"),
        "the second launch opened a window of its own: {second}"
    );
}
