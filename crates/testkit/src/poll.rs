//! Waiting on a condition with a deadline — never a bare sleep as synchronisation. Each
//! helper checks, then pauses briefly, until the condition holds or the deadline passes.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// The pause between checks of a local condition: short against the seconds-long deadlines
/// tests use.
const PAUSE: Duration = Duration::from_millis(10);

/// The pause between checks that call the server (25 ms, as the API tests polled before the
/// kit): polling faster trips the API's per-token rate limit (429).
const API_PAUSE: Duration = Duration::from_millis(25);

/// Polls `cond` until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(
    what: &str,
    timeout: Duration,
    mut cond: F,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(PAUSE).await;
    }
    bail!("timed out after {timeout:?} waiting for: {what}")
}

/// Polls `f` until it gives a value, and returns it; panics with `what` at the deadline (tests
/// want the failure where the wait was).
pub async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(PAUSE).await;
    }
}

/// [`until`] for a check that awaits (an HTTP call, a database read).
pub async fn until_async<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(API_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_fails_at_the_deadline_and_passes_when_the_condition_holds() {
        let mut n = 0;
        assert!(
            eventually("never", Duration::from_millis(30), || false)
                .await
                .is_err()
        );
        eventually("third check", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        })
        .await
        .expect("holds on the third check");
        assert_eq!(n, 3);
    }

    #[tokio::test]
    async fn until_returns_the_first_value() {
        let mut n = 0;
        let v = until("a value", Duration::from_secs(5), || {
            n += 1;
            (n == 2).then_some(n)
        })
        .await;
        assert_eq!(v, 2);
        let v = until_async("a value", Duration::from_secs(5), async || Some(7)).await;
        assert_eq!(v, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing")]
    async fn until_panics_at_the_deadline() {
        until::<()>("nothing", Duration::from_millis(30), || None).await;
    }
}
