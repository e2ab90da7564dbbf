//! The randomized soak (tests/src/soak.rs): three `jarvis sync` devices, random edits and
//! deletions, devices and the hub killed and restarted at random.
//!
//! CI runs a short version (at least 10 restarts). The long run is ignored by default:
//! `JARVIS_SOAK_RESTARTS=100 cargo nextest run -p jarvis-e2e --test soak --run-ignored only`
//! (replay a seed with `JARVIS_SOAK_SEED=<seed>`).
#![allow(clippy::unwrap_used)]

use jarvis_testkit::soak::{SoakConfig, run};

async fn soak(restarts: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = SoakConfig::new(restarts);
    let report = match run(tmp.path(), &cfg).await {
        Ok(r) => r,
        Err(e) => {
            // Keep the folders, stores and logs for whoever investigates.
            let kept = tmp.keep();
            panic!("{e:#}\n(kept in {})", kept.display());
        }
    };
    eprintln!("soak: {report:?}");
    if std::env::var("JARVIS_SOAK_KEEP").is_ok() {
        eprintln!("soak: kept in {}", tmp.keep().display());
    }
    assert!(report.device_restarts + report.hub_restarts >= restarts);
    assert!(report.markers > 0, "the soak wrote nothing: {report:?}");
    assert_eq!(report.conflict_copies, 0, "text always merges: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_devices_and_hub_restarting_lose_nothing() {
    soak(12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long soak (minutes): run with --run-ignored only"]
async fn soak_long_devices_and_hub_restarting_lose_nothing() {
    let restarts = std::env::var("JARVIS_SOAK_RESTARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    soak(restarts).await;
}
