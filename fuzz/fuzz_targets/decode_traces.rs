//! The OTLP/HTTP request decoder on traces requests; the body is [`otlp_spool_fuzz::decode_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    otlp_spool_fuzz::decode_request(otlp_spool::otlp::Signal::Traces, data)
});
