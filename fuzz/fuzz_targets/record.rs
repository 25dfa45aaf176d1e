//! The spool segment frame decoder on arbitrary bytes; the body is [`otlp_spool_fuzz::record`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otlp_spool_fuzz::record(data));
