//! Waiting for a condition a test cannot be told about (a spool draining, a counter reaching a
//! value): poll it often, give up at a deadline. [`eventually`] says whether it held, for a test
//! that asserts with its own message; [`wait_until`] fails the test itself, naming what it
//! waited for and how long.

use std::time::{Duration, Instant};

/// How often a condition is polled: often enough that a test waits little past the moment it
/// holds, and that a state that holds only briefly is seen.
const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds; fails the test if it does not within `within`, saying `what`
/// it waited for.
pub async fn wait_until(cond: impl FnMut() -> bool, within: Duration, what: &str) {
    assert!(
        eventually(within, cond).await,
        "timed out after {within:?} waiting for: {what}"
    );
}
