//! A device that comes back loses nothing: two `jarvis sync` processes on one workspace; one is
//! stopped (`kill -9`, or Ctrl-C), both sides change the same files, it starts again. Every
//! change from both sides must be on every device, byte for byte.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jarvis_e2e::device::{Snapshot, Stop, SyncDevice, converge};
use jarvis_e2e::{CloudAgent, create_token};

const NOTES: &str = "# Notes\nline 2\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n";
const NOTES_A: &str =
    "# Notes\nline 2\nline 3\nline 4\nline 5\nline 6 edited on A\nline 7\nline 8\n";
const NOTES_B: &str =
    "# Notes\nline 2 edited on B\nline 3\nline 4\nline 5\nline 6\nline 7\nline 8\n";
const NOTES_BOTH: &str =
    "# Notes\nline 2 edited on B\nline 3\nline 4\nline 5\nline 6 edited on A\nline 7\nline 8\n";

fn binary_version(tag: u8) -> Vec<u8> {
    let mut v = vec![0u8, 159, 146, 150, tag];
    v.extend((0..4096u32).map(|i| (i.wrapping_mul(31) as u8) ^ tag));
    v
}

fn text(s: &Snapshot, path: &str) -> Option<String> {
    s.get(path)
        .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
}

fn conflict_copies<'a>(s: &'a Snapshot, stem: &str, ext: &str) -> Vec<(&'a String, &'a Vec<u8>)> {
    s.iter()
        .filter(|(p, _)| p.starts_with(&format!("{stem} (conflict ")) && p.ends_with(ext))
        .map(|(p, (b, _))| (p, b))
        .collect()
}

fn chmod_x(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = std::fs::metadata(path).unwrap().permissions();
    p.set_mode(p.mode() | 0o111);
    std::fs::set_permissions(path, p).unwrap();
}

async fn device_comes_back(how: Stop) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let token = create_token(&data, &["ws/notes/*"], false).unwrap();
    let hub = CloudAgent::start(&data, 0).unwrap();
    let url = format!("http://127.0.0.1:{}", hub.port);
    let mut a = SyncDevice::new("a", tmp.path(), &url, &token, "notes").unwrap();
    let mut b = SyncDevice::new("b", tmp.path(), &url, &token, "notes").unwrap();
    a.write("notes.md", NOTES).unwrap();
    a.write("image.bin", binary_version(0)).unwrap();
    a.write("plan.md", "plan v1\n").unwrap();
    a.write("todo.md", "todo v1\n").unwrap();
    a.write("bin/run.sh", "#!/bin/sh\necho hi\n").unwrap();
    a.start().unwrap();
    b.start().unwrap();
    let synced = converge(&[&a, &b], Duration::from_secs(60), |s| s.len() == 5).await;
    if let Err(e) = synced {
        panic!("{e}\n{}\n{}", a.log(), b.log());
    }

    // B's laptop closes.
    b.stop(how).unwrap();

    // Meanwhile A edits line 6, changes the image, deletes todo.md and edits plan.md ...
    a.write("notes.md", NOTES_A).unwrap();
    a.write("image.bin", binary_version(1)).unwrap();
    std::fs::remove_file(a.path("todo.md")).unwrap();
    a.write("plan.md", "plan v2 from A\n").unwrap();
    // ... and the hub has it: a third, fresh device receives all of it.
    let mut c = SyncDevice::new("c", tmp.path(), &url, &token, "notes").unwrap();
    c.start().unwrap();
    let seen = converge(&[&a, &c], Duration::from_secs(60), |s| {
        text(s, "notes.md").as_deref() == Some(NOTES_A)
            && s.get("image.bin").map(|(b, _)| b.clone()) == Some(binary_version(1))
            && !s.contains_key("todo.md")
            && text(s, "plan.md").as_deref() == Some("plan v2 from A\n")
    })
    .await;
    if let Err(e) = seen {
        panic!("{e}\n{}\n{}", a.log(), c.log());
    }

    // B, offline, edits line 2, changes the image its own way, deletes plan.md, edits
    // todo.md, creates a file and makes the script executable.
    b.write("notes.md", NOTES_B).unwrap();
    b.write("image.bin", binary_version(2)).unwrap();
    std::fs::remove_file(b.path("plan.md")).unwrap();
    b.write("todo.md", "todo v2 from B\n").unwrap();
    b.write("new.md", "new on B\n").unwrap();
    chmod_x(&b.path("bin/run.sh"));

    b.start().unwrap();
    let all = converge(&[&a, &b, &c], Duration::from_secs(60), |s| {
        text(s, "notes.md").as_deref() == Some(NOTES_BOTH)
            && conflict_copies(s, "image", ".bin").len() == 1
            && s.get("bin/run.sh").is_some_and(|(_, x)| *x)
            && s.contains_key("new.md")
            && s.contains_key("todo.md")
    })
    .await;
    let all = match all {
        Ok(s) => s,
        Err(e) => panic!("{e}\nA:\n{}\nB:\n{}", a.log(), b.log()),
    };
    // Both text edits, on every device.
    assert_eq!(text(&all, "notes.md").as_deref(), Some(NOTES_BOTH));
    // Both binary versions: the document's (A's, which reached the hub first) at the path,
    // B's as the conflict copy.
    assert_eq!(all["image.bin"].0, binary_version(1));
    let copies = conflict_copies(&all, "image", ".bin");
    assert_eq!(copies[0].1, &binary_version(2), "{}", copies[0].0);
    // Delete against edit: the edit wins, whichever side deleted.
    assert_eq!(text(&all, "plan.md").as_deref(), Some("plan v2 from A\n"));
    assert_eq!(text(&all, "todo.md").as_deref(), Some("todo v2 from B\n"));
    assert_eq!(text(&all, "new.md").as_deref(), Some("new on B\n"));
    assert!(
        all["bin/run.sh"].1,
        "the executable bit set offline reached every device"
    );
    assert_eq!(all.len(), 7, "{:?}", all.keys().collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_killed_with_kill_9_loses_nothing_when_it_comes_back() {
    device_comes_back(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stopped_with_ctrl_c_loses_nothing_when_it_comes_back() {
    device_comes_back(Stop::Interrupt).await;
}
