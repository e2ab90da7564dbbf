//! The scheduler's time: the system's, or (tests) a file or a value moved by hand.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The scheduler's time, in milliseconds since the epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::control::now_ms()
    }
}

/// A clock set by hand (unit tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The time written in a file (milliseconds since the epoch), read on every call: the
/// end-to-end tests' clock, which they move by hand across restarts of the server.
pub struct FileClock {
    path: PathBuf,
    last: AtomicU64,
}

impl FileClock {
    pub fn new(path: &Path) -> Self {
        FileClock {
            path: path.to_path_buf(),
            last: AtomicU64::new(0),
        }
    }
}

impl Clock for FileClock {
    fn now_ms(&self) -> u64 {
        match std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            Some(t) => {
                self.last.store(t, Ordering::SeqCst);
                t
            }
            // Mid-write or missing: keep the last time read.
            None => self.last.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_file_clock_reads_the_file_and_keeps_the_last_good_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clock");
        let c = FileClock::new(&p);
        assert_eq!(c.now_ms(), 0);
        std::fs::write(&p, "1764061200000\n").unwrap();
        assert_eq!(c.now_ms(), 1_764_061_200_000);
        std::fs::write(&p, "garbage").unwrap();
        assert_eq!(c.now_ms(), 1_764_061_200_000);
        let m = ManualClock::default();
        m.0.store(5, Ordering::SeqCst);
        assert_eq!(m.now_ms(), 5);
    }
}
