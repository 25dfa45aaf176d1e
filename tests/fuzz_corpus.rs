//! Replays every committed fuzz input through the fuzz targets' own bodies, on stable, as part of
//! the normal test suite: the minimized corpus in `fuzz/corpus/<target>/` and the reproducers of
//! fixed crashes in `fuzz/regressions/<target>/`. The bodies live in `fuzz/src/lib.rs`, compiled
//! here as a module, so a target and its replay cannot drift apart. Each body panics on a broken
//! promise (a decoder panicking, a refusal with the wrong status, stored data that cannot be
//! exported); this file only runs them all and names the inputs that failed.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use otlp_spool::otlp::Signal;

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

/// Every file in `fuzz/corpus/<target>` and `fuzz/regressions/<target>` (which may not exist).
fn inputs(target: &str) -> Vec<PathBuf> {
    let corpus = Path::new(FUZZ_DIR).join("corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; every fuzz target has a committed corpus (fuzz/seed_corpus.py, then \
                 `cargo fuzz cmin`)",
                corpus.display()
            )
        })
        .map(|entry| entry.expect("listing the corpus").path())
        .collect();
    assert!(
        !files.is_empty(),
        "{} is empty; seed it with fuzz/seed_corpus.py",
        corpus.display()
    );
    let regressions = Path::new(FUZZ_DIR).join("regressions").join(target);
    if let Ok(entries) = std::fs::read_dir(regressions) {
        files.extend(entries.map(|entry| entry.expect("listing regressions").path()));
    }
    files.sort();
    files
}

/// Runs `body` on every input of `target`, and fails naming each input that panicked.
fn replay(target: &str, body: impl Fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter(|path| {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| body(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: these inputs fail (see the panics above; reproduce one with `scripts/fuzz.sh` \
         or `cargo fuzz run {target} <file>` in fuzz/):\n{}",
        failed.join("\n")
    );
}

#[test]
fn decode_traces() {
    replay("decode_traces", |data| {
        targets::decode_request(Signal::Traces, data)
    });
}

#[test]
fn decode_metrics() {
    replay("decode_metrics", |data| {
        targets::decode_request(Signal::Metrics, data)
    });
}

#[test]
fn decode_logs() {
    replay("decode_logs", |data| {
        targets::decode_request(Signal::Logs, data)
    });
}

#[test]
fn wire() {
    replay("wire", targets::wire);
}

#[test]
fn config() {
    replay("config", targets::config);
}

#[test]
fn record() {
    replay("record", targets::record);
}
