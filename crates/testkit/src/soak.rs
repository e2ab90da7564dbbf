//! A randomized soak of devices coming and going: several `jarvis sync` processes on one
//! workspace, random edits to shared files (a marker line inserted at a random place), random
//! deletions, devices stopped with `kill -9` or Ctrl-C and started again, the hub killed and
//! restarted — all from one seeded RNG, so a failing seed replays the same schedule.
//!
//! At the end every device runs and the hub is up; every folder must be identical, and every
//! marker line written into any folder must be in every folder, unless the test deleted that
//! file and nobody edited it afterwards.
//!
//! Reused by later suites: [`SoakConfig`] in, [`SoakReport`] out.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::device::{Stop, SyncDevice, converge};
use crate::{CloudAgent, create_token};

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub seed: u64,
    pub devices: usize,
    pub files: usize,
    /// Stop when this many restarts (devices and hub together) have happened.
    pub restarts: u32,
    /// How long the folders get to converge at the end.
    pub settle: Duration,
}

impl SoakConfig {
    /// Three devices, four shared files; the seed from `JARVIS_SOAK_SEED` or the clock.
    pub fn new(restarts: u32) -> SoakConfig {
        let seed = std::env::var("JARVIS_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        SoakConfig {
            seed,
            devices: 3,
            files: 4,
            restarts,
            settle: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub device_restarts: u32,
    pub hub_restarts: u32,
    pub markers: usize,
    /// Markers exempt because their file was deleted and not edited afterwards.
    pub exempt: usize,
    pub deletes: usize,
    pub files_at_end: usize,
    /// `(conflict …)` files at the end. The soak edits only text, which always merges, so any
    /// copy means a device lost its sync base; the caller should expect none.
    pub conflict_copies: usize,
    pub elapsed: Duration,
}

/// What happened to one file, in the test's own order of operations.
#[derive(Default)]
struct FileLog {
    /// (marker, device, op number)
    markers: Vec<(String, usize, u64)>,
    /// (device, op number)
    deletes: Vec<(usize, u64)>,
    last_edit: Option<u64>,
}

impl FileLog {
    /// A marker may be gone when its own folder deleted the file after writing it (it may
    /// never have left that folder), or when the file was deleted after it and nobody edited
    /// the file after that delete (the delete stands).
    fn exempt(&self, device: usize, op: u64) -> bool {
        let own_delete = self.deletes.iter().any(|&(d, t)| d == device && t > op);
        let last_delete = self.deletes.iter().map(|&(_, t)| t).max();
        let delete_stands =
            last_delete.is_some_and(|del| del > op && self.last_edit.is_none_or(|ed| ed < del));
        own_delete || delete_stands
    }
}

fn start_hub(data: &Path, port: u16) -> Result<CloudAgent> {
    // The old process's socket may linger for a moment after a kill.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match CloudAgent::start(data, port) {
            Ok(h) => return Ok(h),
            Err(e) if Instant::now() < deadline => {
                eprintln!("soak: hub restart failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the soak in `base` (a fresh folder). Prints the seed first, so a failure can be
/// replayed with `JARVIS_SOAK_SEED=<seed>`.
pub async fn run(base: &Path, cfg: &SoakConfig) -> Result<SoakReport> {
    eprintln!(
        "soak: seed {} ({} devices, {} files, {} restarts); replay with JARVIS_SOAK_SEED={}",
        cfg.seed, cfg.devices, cfg.files, cfg.restarts, cfg.seed
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let data = base.join("hub");
    let token = create_token(&data, &["ws/soak/*"], false)?;
    let mut hub = Some(CloudAgent::start(&data, 0)?);
    let port = hub.as_ref().map_or(0, |h| h.port);
    let url = format!("http://127.0.0.1:{port}");
    let mut devices = Vec::new();
    for i in 0..cfg.devices {
        devices.push(SyncDevice::new(
            &format!("d{i}"),
            base,
            &url,
            &token,
            "soak",
        )?);
    }
    let files: Vec<String> = (0..cfg.files).map(|i| format!("f{i}.md")).collect();
    for f in &files {
        devices[0].write(f, format!("# {f}\n"))?;
    }
    for d in &mut devices {
        d.start()?;
    }
    {
        let refs: Vec<&SyncDevice> = devices.iter().collect();
        converge(&refs, Duration::from_secs(60), |s| s.len() == files.len())
            .await
            .context("initial sync")?;
    }

    let mut report = SoakReport {
        seed: cfg.seed,
        ..SoakReport::default()
    };
    let mut log: HashMap<String, FileLog> = HashMap::new();
    let mut op: u64 = 0;
    let mut next_marker = 0usize;
    // Every operation, written to `ops.log` beside the devices for whoever investigates.
    let mut trace = Vec::new();
    while report.device_restarts + report.hub_restarts < cfg.restarts {
        op += 1;
        let roll = rng.random_range(0..100u32);
        if roll < 60 {
            // A marker line at a random place in a file this folder has.
            let d = rng.random_range(0..devices.len());
            let f = &files[rng.random_range(0..files.len())];
            let Some(old) = devices[d].read(f) else {
                continue;
            };
            let mut lines: Vec<&str> = old.lines().collect();
            let at = rng.random_range(0..=lines.len());
            let marker = format!("marker-{next_marker}-{}", devices[d].name);
            next_marker += 1;
            lines.insert(at, &marker);
            let mut new = lines.join("\n");
            new.push('\n');
            devices[d].write(f, new)?;
            trace.push(format!(
                "{op} {} {marker} into {f} at line {at} (running: {})",
                devices[d].name,
                devices[d].is_running()
            ));
            let e = log.entry(f.clone()).or_default();
            e.markers.push((marker, d, op));
            e.last_edit = Some(op);
        } else if roll < 62 {
            let d = rng.random_range(0..devices.len());
            let f = &files[rng.random_range(0..files.len())];
            if devices[d].path(f).exists() {
                std::fs::remove_file(devices[d].path(f))?;
                trace.push(format!("{op} {} deletes {f}", devices[d].name));
                log.entry(f.clone()).or_default().deletes.push((d, op));
                report.deletes += 1;
            }
        } else if roll < 92 {
            let d = rng.random_range(0..devices.len());
            if devices[d].is_running() {
                // Ctrl-C waits for the hub to acknowledge; with the hub down that is a
                // timeout, so only a kill then.
                let how = if hub.is_some() && rng.random_bool(0.4) {
                    Stop::Interrupt
                } else {
                    Stop::Kill
                };
                devices[d].stop(how)?;
                trace.push(format!("{op} {} stopped ({how:?})", devices[d].name));
            } else {
                devices[d].start()?;
                trace.push(format!("{op} {} started", devices[d].name));
                report.device_restarts += 1;
            }
        } else {
            match hub.take() {
                Some(h) => {
                    h.kill9()?;
                    trace.push(format!("{op} hub killed"));
                }
                None => {
                    hub = Some(start_hub(&data, port)?);
                    trace.push(format!("{op} hub started"));
                    report.hub_restarts += 1;
                }
            }
        }
        let pause = rng.random_range(0..200u64);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    std::fs::write(base.join("ops.log"), trace.join("\n"))?;
    if hub.is_none() {
        hub = Some(start_hub(&data, port)?);
        report.hub_restarts += 1;
    }
    for d in &mut devices {
        if !d.is_running() {
            d.start()?;
        }
    }
    let refs: Vec<&SyncDevice> = devices.iter().collect();
    let end = match converge(&refs, cfg.settle, |_| true).await {
        Ok(s) => s,
        Err(e) => {
            for d in &devices {
                eprintln!("--- log of {}:\n{}", d.name, d.log());
            }
            bail!("seed {}: {e}", cfg.seed);
        }
    };
    let all: String = end
        .values()
        .map(|(b, _)| String::from_utf8_lossy(b).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let mut missing = Vec::new();
    for (f, l) in &log {
        for (m, d, t) in &l.markers {
            report.markers += 1;
            if l.exempt(*d, *t) {
                report.exempt += 1;
            } else if !all.lines().any(|line| line == m) {
                missing.push(format!("{m} (in {f})"));
            }
        }
    }
    report.files_at_end = end.len();
    report.conflict_copies = end.keys().filter(|p| p.contains(" (conflict ")).count();
    report.elapsed = started.elapsed();
    drop(hub);
    if !missing.is_empty() {
        bail!(
            "seed {}: {} marker lines lost: {}",
            cfg.seed,
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(report)
}
