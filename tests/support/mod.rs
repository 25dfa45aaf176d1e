//! Shared test parts, one module a concern; each test binary compiles this folder as its own
//! `mod support;` and uses a subset, so unused items are not warned about here:
//! - [`sink`]: the upstream sink that records and decodes what the agent sends and misbehaves on
//!   request ([`Sink`], [`Reply`]);
//! - [`agent`]: an agent in-process on loopback ports, its config, and clients for it;
//! - [`answer`]: an HTTP answer of the agent, and the `google.rpc.Status` of a refusal;
//! - [`process`]: the real binary as a child process (its config file, signals, its log,
//!   restarts after a kill);
//! - [`requests`]: OTLP requests with predictable names, the names they carry, and gzip;
//! - [`status`]: readers of the agent's `/status` document;
//! - [`wait`]: polling for a condition with a deadline;
//! - [`captures`]: replaying captured requests of real tools, and OTLP as a JSON tree;
//! - [`prometheus`]: a real Prometheus server receiving remote write;
//! - [`lazyfs`]: a FUSE file system that loses unsynced data (power cuts).
//!
//! Here: the SKIP policy for missing prerequisites, the captured-request fixtures' folders, and
//! the content types.
#![allow(dead_code)] // each test binary uses its own subset

pub mod agent;
pub mod answer;
pub mod captures;
pub mod lazyfs;
pub mod process;
pub mod prometheus;
pub mod requests;
pub mod sink;
pub mod status;
pub mod wait;

// The parts a test reaches for by name, as `support::spans`; a binary that uses none of one
// module's would otherwise be warned about its re-export.
#[allow(unused_imports)]
pub use {agent::*, answer::*, requests::*, sink::*, status::*, wait::*};

/// The SKIP policy for a test whose prerequisite (a tool, a privilege) is missing: under `CI`
/// (the variable set at all) it fails the test; otherwise it writes a loud
/// `*** SKIP <test>: <why> ***` straight to stderr, past the test harness's output capture
/// (which swallows `eprintln!`), so a skipped test is seen. The caller then returns early.
#[track_caller]
pub fn skip_or_fail(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why} (a SKIP is a failure under CI)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIP {test}: {why} ***\n");
}

pub const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");
pub const JSON: (&str, &str) = ("content-type", "application/json");
