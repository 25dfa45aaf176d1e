//! The wire walker against prost's decode, on requests of every signal; the body is
//! [`otlp_spool_fuzz::wire`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| otlp_spool_fuzz::wire(data));
