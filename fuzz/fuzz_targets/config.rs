//! The config loader `otlp-spool check` uses, on arbitrary text; the body is
//! [`otlp_spool_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otlp_spool_fuzz::config(data));
