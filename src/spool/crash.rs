//! Crash points, for the tests that kill the agent at each step where the spool's ordering
//! matters (`tests/crash_points.rs`): with `OTLP_SPOOL_CRASH_AT=<point>[:<n>]` in its
//! environment, the process aborts the `n`-th time (default: the first) it passes `<point>` —
//! no unwinding, no flush, as `kill -9` at that instant. Unset (always, outside those tests),
//! a point costs one load of an initialised `OnceLock`.
//!
//! The points, in the order the spool passes them: `append.written` (a frame is in its file,
//! not synced), `sync.synced` (synced, not yet published to readers), `append.durable` (the
//! append is durable, its client not yet answered), `roll.sealed` (a full segment is sealed, the
//! next not yet created), `roll.created` (the next segment exists, its directory not yet synced),
//! `ack.cursor_written` (a cursor is in the index, not yet flushed), `delete.flushed` (the index
//! flush that carries it is done, the segments it passed not yet unlinked), `migrate.copied`
//! (a version-1 spool is copied, `LAYOUT` not yet written), `migrate.layout_written` (`LAYOUT`
//! is written, the version-1 files not yet deleted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const VARIABLE: &str = "OTLP_SPOOL_CRASH_AT";

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static PASSED: AtomicU64 = AtomicU64::new(0);

/// Aborts the process here if `OTLP_SPOOL_CRASH_AT` names this point (see the module docs).
pub fn point(name: &str) {
    let target = TARGET.get_or_init(|| {
        let value = std::env::var(VARIABLE).ok()?;
        let (point, nth) = value.split_once(':').unwrap_or((&value, "1"));
        Some((point.to_string(), nth.parse().unwrap_or(1)))
    });
    let Some((point, nth)) = target else { return };
    if point == name && PASSED.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        eprintln!("otlp-spool: crash point {name} reached ({VARIABLE}); aborting");
        std::process::abort();
    }
}
