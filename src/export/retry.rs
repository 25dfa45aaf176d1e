//! When to try again: jittered exponential backoff (backon) between `retry.initial` and
//! `retry.max`, stretched to honour an upstream's `Retry-After`.
//!
//! The exponential step `b` doubles from `initial` to `max`; each delay is drawn from
//! `[b/2, b)` ("equal jitter") and never below `initial`, so a fleet that failed together does
//! not retry together, and no delay exceeds `retry.max` unless the upstream asked for longer.
//!
//! Waits survive sleep: tokio's timers follow the monotonic clock, which stops while a laptop
//! is suspended, so a 5-minute backoff would last 5 more minutes after waking.
//! [`pause_unless_woken`] checks, only while a wait is under way, whether wall-clock time ran
//! ahead of monotonic time, and ends the wait early if it did, or if the network changed
//! ([`super::network`]) (promise 6).
//!
//! Pure timing policy; knows nothing of HTTP beyond parsing a `Retry-After` value.

use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::config::RetryConfig;

/// The longest `Retry-After` honoured; a larger one is a misconfigured server, not a plan.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    initial: Duration,
    max: Duration,
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        RetryPolicy {
            initial: c.initial,
            max: c.max.max(c.initial),
        }
    }
}

/// The delays of one run of consecutive failures; start a new one after a success.
pub struct Backoff {
    /// backon's jittered steps, in `[b, 2b)` for step `b`; halved in [`Backoff::next_delay`].
    delays: ExponentialBackoff,
    initial: Duration,
    max: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            delays: ExponentialBuilder::default()
                .with_min_delay(self.initial)
                .with_max_delay(self.max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
            initial: self.initial,
            max: self.max,
        }
    }

    /// The slow, steady pace for failures only a person can fix (401/403: an expired SSO
    /// session, a revoked key; a redirect; an untrusted certificate).
    pub fn slow(&self) -> Duration {
        self.max
    }
}

impl Backoff {
    /// The next delay, at least `retry_after` when the upstream asked for one.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .delays
            .next()
            .map_or(self.max, |jittered| (jittered / 2).max(self.initial));
        match retry_after {
            Some(asked) => backoff.max(asked.min(RETRY_AFTER_CAP)),
            None => backoff,
        }
    }
}

/// How often a wait checks whether the machine slept through it (only while waiting).
const WAKE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Wall-clock time running this far ahead of monotonic time means the machine was asleep (or
/// the clock was set forward: retrying early then is harmless).
const SUSPEND_THRESHOLD: Duration = Duration::from_secs(5);

/// Why a pause ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The machine was suspended during the pause.
    FromSleep,
    /// A new local address appeared (a network joined, a VPN up).
    ByNetworkChange,
}

/// Waits `pause`, or less if the machine was suspended meanwhile, or the network changed — but
/// not before `asked_for` (the upstream's `Retry-After`: the upstream, not the route to it, said
/// when; a change during it ends the pause once it is over).
pub async fn pause_unless_woken(pause: Duration, asked_for: Duration) -> Option<Woken> {
    let (mono, wall) = (Instant::now(), SystemTime::now());
    let mut network = super::network::changes();
    loop {
        let elapsed = mono.elapsed();
        let left = pause.saturating_sub(elapsed);
        if left.is_zero() {
            return None;
        }
        let network_wakes = elapsed >= asked_for;
        // Also woken when `asked_for` ends, so that a change seen meanwhile counts then.
        let nap = left.min(WAKE_CHECK_EVERY).min(if network_wakes {
            Duration::MAX
        } else {
            asked_for - elapsed
        });
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            Ok(()) = network.changed(), if network_wakes => return Some(Woken::ByNetworkChange),
        }
        // A wall clock set backwards reads as no time passed: that never ends a wait early.
        let wall_elapsed = wall.elapsed().unwrap_or_default();
        if slept_through(mono.elapsed(), wall_elapsed) {
            return Some(Woken::FromSleep);
        }
    }
}

fn slept_through(monotonic: Duration, wall: Duration) -> bool {
    wall > monotonic + SUSPEND_THRESHOLD
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_within_bounds_and_honours_retry_after() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut b = policy.backoff();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay(None)).collect();
        assert!(
            delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200),
            "{delays:?}"
        );
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(100) && *d <= Duration::from_secs(2)),
            "delays stay within retry.initial..=retry.max: {delays:?}"
        );
        assert!(delays[6] >= Duration::from_secs(1), "{delays:?}");
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(86400))),
            RETRY_AFTER_CAP
        );
    }

    #[test]
    fn a_suspend_is_a_wall_clock_lead_over_monotonic_time() {
        let s = Duration::from_secs;
        assert!(!slept_through(s(10), s(10)));
        assert!(
            !slept_through(s(10), s(14)),
            "clock jitter and small NTP steps are not sleep"
        );
        assert!(
            slept_through(s(10), s(3600)),
            "an hour asleep in a 10 s wait"
        );
        assert!(
            !slept_through(s(10), s(0)),
            "a clock set backwards does not end a wait"
        );
    }

    #[tokio::test]
    async fn an_undisturbed_pause_lasts_its_time() {
        let started = Instant::now();
        assert_eq!(
            pause_unless_woken(Duration::from_millis(120), Duration::ZERO).await,
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn parses_both_retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let d = parse_retry_after(&later).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
