//! Readers of an in-process agent's `/status` document (`otlp_spool::Agent::status`, the JSON
//! the README's "Endpoints" section describes): a number at a JSON pointer, one destination's
//! entry for one signal, the refusal counters. Each fails the test, showing the document, when
//! what it reads is missing.

use serde_json::Value;

/// The number at `pointer` (`/spool/records`) in the agent's status.
pub fn status_u64(agent: &otlp_spool::Agent, pointer: &str) -> u64 {
    agent
        .status()
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in status: {}", agent.status()))
}

/// The status entry of destination `index` (in config order) for `signal` (`"traces"`…).
pub fn signal_status(agent: &otlp_spool::Agent, index: usize, signal: &str) -> Value {
    agent.status()["destinations"][index]["signals"][signal].clone()
}

/// `v` as a number; fails the test if it is not one.
pub fn num(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Requests refused for `reason` (`invalid`, `too_large`, `unauthorized`, `full`, `storage`).
pub fn refused(agent: &otlp_spool::Agent, reason: &str) -> u64 {
    status_u64(agent, &format!("/refused_requests/{reason}"))
}
