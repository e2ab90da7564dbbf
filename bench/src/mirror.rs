//! `jarvis-bench mirror`: initial import and first sync of a generated tree through a real hub,
//! a second device's first download, and one-line edit propagation, against `rsync -a`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jarvis_sync::client::{ClientConfig, SyncClient};
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::SqliteStore;

#[derive(clap::Parser, Clone)]
pub struct MirrorArgs {
    #[arg(long, default_value = "target/release/jarvis-cloud")]
    pub jarvis_bin: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Total size of the tree in MB.
    #[arg(long, default_value_t = 100)]
    pub megabytes: usize,
    #[arg(long, default_value_t = 100)]
    pub edits: usize,
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn rss_peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// 90% small text files, 9% medium text, 1% binary, sizes scaled to the requested total.
pub fn generate(root: &Path, files: usize, megabytes: usize) -> Result<u64> {
    let total = megabytes as u64 * 1024 * 1024;
    let (small, medium, binary) = (
        files * 90 / 100,
        files * 9 / 100,
        files - files * 90 / 100 - files * 9 / 100,
    );
    // Budget: 20% small, 40% medium, 40% binary.
    let sizes = [
        (small, (total / 5) / small.max(1) as u64, false),
        (medium, (total * 2 / 5) / medium.max(1) as u64, false),
        (binary, (total * 2 / 5) / binary.max(1) as u64, true),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut written = 0u64;
    let mut n = 0;
    for (count, size, is_binary) in sizes {
        for _ in 0..count {
            let dir = root.join(format!("d{:02}/s{:02}", n % 37, n % 11));
            std::fs::create_dir_all(&dir)?;
            let bytes: Vec<u8> = if is_binary {
                (0..size).map(|_| next() as u8).collect()
            } else {
                let mut t = String::with_capacity(size as usize);
                while (t.len() as u64) < size {
                    t.push_str(&format!("line {} of file {n}: {:x}\n", t.len(), next()));
                }
                t.truncate(size as usize);
                t.into_bytes()
            };
            let name = if is_binary {
                format!("f{n}.bin")
            } else {
                format!("f{n}.txt")
            };
            std::fs::write(dir.join(name), &bytes)?;
            written += bytes.len() as u64;
            n += 1;
        }
    }
    Ok(written)
}

fn count_tree(root: &Path) -> (usize, u64) {
    let mut stack = vec![root.to_path_buf()];
    let (mut n, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name.to_string_lossy().contains(".jarvis-tmp-") {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => {
                    n += 1;
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    (n, bytes)
}

pub async fn run(args: MirrorArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src)?;
    let bytes = generate(&src, args.files, args.megabytes)?;
    let mb = bytes as f64 / 1e6;

    // Floor: rsync -a to a local folder.
    let t = Instant::now();
    let status = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(tmp.path().join("rsync-copy"))
        .status()
        .context("running rsync, the yardstick of this benchmark (install it: `apt-get install rsync`; scripts/install-deps.sh does)")?;
    if !status.success() {
        bail!("rsync failed");
    }
    let rsync = t.elapsed();

    // The hub.
    let data = tmp.path().join("hub");
    let out = Command::new(&args.jarvis_bin)
        .args(["token", "create", "--scope", "*", "--data-dir"])
        .arg(&data)
        .output()
        .context("jarvis-cloud token create")?;
    let token = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .context("no token")?
        .to_owned();
    let mut hub = Command::new(&args.jarvis_bin)
        .args(["serve", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let port = {
        use std::io::BufRead;
        let stdout = hub.stdout.take().context("stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        loop {
            let l = lines.next().context("hub exited")??;
            if let Some(a) = l.strip_prefix("listening on ") {
                break a.rsplit(':').next().unwrap_or_default().parse::<u16>()?;
            }
        }
    };
    let url = format!("ws://127.0.0.1:{port}/sync");
    let device = |name: &str| {
        Arc::new(SyncClient::start(
            ClientConfig::new(&url, &token),
            Arc::new(SqliteStore::open(&tmp.path().join(format!("{name}.db"))).expect("store")),
        ))
    };

    // Device A: initial import and first sync, until the hub acknowledged everything.
    let a = device("a");
    let t = Instant::now();
    let ma = FileMirror::start(&src, "bench", a.clone(), None).await?;
    a.flush_all(Duration::from_secs(3600)).await?;
    let import = t.elapsed();

    // Device B: first download into an empty folder.
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(&dst)?;
    let b = device("b");
    let t = Instant::now();
    let mb_ = FileMirror::start(&dst, "bench", b.clone(), None).await?;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (n, sz) = count_tree(&dst);
        if n == args.files && sz == bytes {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "device B has {n} files / {sz} bytes of {} / {bytes}",
                args.files
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let download = t.elapsed();

    // Propagation: one-line edits on A, timed until visible on B's disk. The first ten are
    // not counted: B's watcher is still working through the echoes of the 10,000 files it just
    // wrote, and the figure wanted is the steady state.
    let rel = "d00/s00/f0.txt";
    let mut lat = Vec::new();
    for i in 0..args.edits + 10 {
        let line = format!("edit {i} {:x}\n", rand::random::<u64>());
        let mut text = std::fs::read_to_string(src.join(rel))?;
        text.push_str(&line);
        let t = Instant::now();
        std::fs::write(src.join(rel), &text)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(dst.join(rel)).is_ok_and(|s| s.ends_with(&line)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("edit {i} never arrived");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        if i >= 10 {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    drop((ma, mb_));
    let _ = hub.kill();
    let _ = hub.wait();

    let mut table = String::new();
    table.push_str(&format!(
        "{} files, {:.1} MB ({} text, {} binary). Command: `{}`.\n\n",
        args.files,
        mb,
        args.files - (args.files - args.files * 90 / 100 - args.files * 9 / 100),
        args.files - args.files * 90 / 100 - args.files * 9 / 100,
        std::env::args().collect::<Vec<_>>().join(" ")
    ));
    table.push_str("| measure | time | throughput | vs rsync -a |\n|---|---|---|---|\n");
    let row = |name: &str, d: Duration| {
        format!(
            "| {name} | {:.2} s | {:.1} MB/s | {:.1}× |\n",
            d.as_secs_f64(),
            mb / d.as_secs_f64(),
            d.as_secs_f64() / rsync.as_secs_f64()
        )
    };
    table.push_str(&row("rsync -a (local copy, the floor)", rsync));
    table.push_str(&row(
        "device A: import + first sync to the hub (all acknowledged)",
        import,
    ));
    table.push_str(&row(
        "device B: first download to an empty folder",
        download,
    ));
    table.push_str(&format!(
        "\nOne-line edit on A visible on B's disk ({} edits): p50 {:.1} ms, p99 {:.1} ms. Peak RSS of the benchmark process (both devices): {:.0} MB.\n",
        lat.len(),
        pct(0.5),
        pct(0.99),
        rss_peak_mb()
    ));
    println!("{table}");
    if let Some(p) = &args.out {
        std::fs::write(p, &table)?;
    }
    Ok(())
}
