//! The cost of validating one request, for callgrind: runs the receiver's validation (the wire
//! walk, `otlp_spool::receiver::decode::validate`) or the one it replaced (prost's full decode,
//! id checks and item count: `fuzz/src/wire_oracle.rs`) `N` times on one request body.
//! Instruction counts are repeatable on a busy machine where timings are not; the cost of one
//! request is the difference between a run of N and a run of 0, divided by N:
//!
//! ```sh
//! cargo build --release --example validate_cost
//! for n in 0 1000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/validate_cost walk traces tests/fixtures/loadgen/traces-100.pb $n
//! done   # "Collected : <instructions>"; then the same with `prost`
//! ```

// Only the old validation (`prost_verdict`) is measured here.
#[allow(dead_code)]
#[path = "../fuzz/src/wire_oracle.rs"]
mod wire_oracle;

use std::hint::black_box;

use otlp_spool::otlp::Signal;
use otlp_spool::receiver::decode;

const USAGE: &str = "usage: validate_cost walk|prost traces|metrics|logs FILE N";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [how, signal, file, n] = &args[..] else {
        eprintln!("{USAGE}");
        std::process::exit(2)
    };
    let signal = Signal::ALL
        .into_iter()
        .find(|s| s.name() == signal)
        .unwrap_or_else(|| panic!("{signal}: not a signal; {USAGE}"));
    let payload = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("{n}: not a count; {USAGE}"));
    let mut items = 0;
    for _ in 0..n {
        let payload = black_box(&payload[..]);
        items += match how.as_str() {
            "walk" => decode::validate(signal, payload).expect("a valid request"),
            "prost" => {
                wire_oracle::prost_verdict(signal, payload)
                    .expect("a valid request")
                    .items
            }
            _ => panic!("{how}: want walk or prost; {USAGE}"),
        };
    }
    println!("{how} {} {file}: {n} times, {items} items", signal.name());
}
