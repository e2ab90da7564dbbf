//! A slow hub never costs a device its own files: `jarvis sync` restarted on a folder whose
//! files changed while it was stopped, through a proxy that holds every chunk for two seconds,
//! keeps the local versions on disk the whole time (never the stale copy from its store, never
//! an empty file), sends them to the hub, and takes in what another device did meanwhile.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use jarvis_e2e::device::{Stop, SyncDevice, converge_folders};
use jarvis_e2e::{CloudAgent, add_user};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback proxy to `target` that delivers every chunk `delay` after it arrived, in order,
/// both ways (latency, not a throughput limit). Returns its port.
async fn slow_proxy(target: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(delayed(cr, sw, delay));
            tokio::spawn(delayed(sr, cw, delay));
        }
    });
    port
}

async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    while let Some((at, bytes)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

fn read(dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(rel)).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hub_never_overwrites_local_changes_at_sync_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("hub");
    let token = add_user(&data, "dana").unwrap();
    let agent = CloudAgent::start(&data, 0).unwrap();
    let hub = agent.http_url("");

    let mut a = SyncDevice::new("a", tmp.path(), &hub, &token, "notes").unwrap();
    let mut b = SyncDevice::new("b", tmp.path(), &hub, &token, "notes").unwrap();
    a.write("notes.md", "v1 from a\n").unwrap();
    a.write("plan.md", "plan v1\n").unwrap();
    a.start().unwrap();
    b.start().unwrap();
    let both = |a: &SyncDevice, b: &SyncDevice| vec![("a", a.dir.clone()), ("b", b.dir.clone())];
    let pairs = both(&a, &b);
    let refs: Vec<(&str, &Path)> = pairs.iter().map(|(n, p)| (*n, p.as_path())).collect();
    if let Err(e) = converge_folders(&refs, Duration::from_secs(60), |s| s.len() == 2).await {
        panic!("{e}\n{}\n{}", a.log(), b.log());
    }

    // A stops; its folder changes meanwhile, and B changes another file.
    a.stop(Stop::Interrupt).unwrap();
    a.write("notes.md", "v2 edited while a was stopped\n")
        .unwrap();
    a.write("todo.md", "new while a was stopped\n").unwrap();
    b.write("plan.md", "plan v2 from b\n").unwrap();

    // A comes back through a hub that answers two seconds late.
    let proxy = slow_proxy(agent.port, Duration::from_secs(2)).await;
    let slow = format!("http://127.0.0.1:{proxy}");
    let out = a.cli(&["login", &slow, "--token", &token]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.start().unwrap();
    // Through start-up and the first exchanges, A's own files stay as A left them.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(10) {
        let notes = read(&a.dir, "notes.md");
        assert_eq!(
            notes.as_deref(),
            Some("v2 edited while a was stopped\n"),
            "notes.md changed under a slow hub after {:?}\n{}",
            watch.elapsed(),
            a.log()
        );
        assert_eq!(
            read(&a.dir, "todo.md").as_deref(),
            Some("new while a was stopped\n"),
            "todo.md changed under a slow hub after {:?}\n{}",
            watch.elapsed(),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // And both sides' work ends up everywhere.
    let pairs = both(&a, &b);
    let refs: Vec<(&str, &Path)> = pairs.iter().map(|(n, p)| (*n, p.as_path())).collect();
    let merged = converge_folders(&refs, Duration::from_secs(90), |s| {
        s.get("notes.md").map(|(c, _)| c.as_slice()) == Some(b"v2 edited while a was stopped\n")
            && s.get("todo.md").is_some()
            && s.get("plan.md").map(|(c, _)| c.as_slice()) == Some(b"plan v2 from b\n")
    })
    .await;
    if let Err(e) = merged {
        panic!("{e}\n{}\n{}", a.log(), b.log());
    }
    a.stop(Stop::Interrupt).unwrap();
    b.stop(Stop::Interrupt).unwrap();
}
