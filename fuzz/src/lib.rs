//! The bodies of otlp-spool's fuzz targets, in one place for two callers: the cargo-fuzz targets
//! in `fuzz/fuzz_targets/` (one line each) and `tests/fuzz_corpus.rs`, which replays the committed
//! corpus through these same functions on stable (it compiles this file as a module with
//! `#[path]`, so it must use nothing but `otlp_spool`'s public API, its dependencies prost and
//! opentelemetry-proto, and `tempfile`).
//!
//! Each function takes raw fuzzer bytes, drives one parser of untrusted input, and panics only on
//! a broken promise: the parser itself panicking, a clean refusal with the wrong status, or
//! accepted data that the rest of the agent could not use.

use otlp_spool::config::Config;
use otlp_spool::otlp::{self, json, Signal};
use otlp_spool::receiver::decode::{self, Format};
use otlp_spool::spool::record::{self, HEADER_LEN};

pub mod wire_oracle;

/// `server.max_decompressed` for the decoder targets: small enough that an accepted body stays
/// cheap to check, large enough for every fixture (the largest is under 64 KiB decompressed).
pub const MAX_DECOMPRESSED: u64 = 1 << 20;

/// What the first input byte selects (modulo the length): the request headers the HTTP receiver
/// would pass on. The rest of the input is the body.
pub const REQUEST_KINDS: [(&str, Option<&str>); 4] = [
    ("application/x-protobuf", None),
    ("application/json", None),
    ("application/x-protobuf", Some("gzip")),
    ("application/json", Some("gzip")),
];

/// One OTLP/HTTP request body through the receiver's decoder, as `receiver::http` calls it.
///
/// Accepted: the payload is within the limit, and it renders as OTLP/JSON and back with the same
/// item count (an `encoding = "json"` destination must be able to send whatever was stored);
/// a JSON body's canonical protobuf survives that round trip byte for byte. Refused: 400 or 413
/// with a message (415 cannot happen, both headers are supported).
pub fn decode_request(signal: Signal, data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let (content_type, content_encoding) = REQUEST_KINDS[usize::from(kind) % REQUEST_KINDS.len()];
    let format = Format::from_content_type(content_type).expect("a supported content type");
    let decoded = match decode::decode(
        signal,
        format,
        content_encoding,
        body.to_vec().into(),
        MAX_DECOMPRESSED,
    ) {
        Ok(decoded) => decoded,
        Err(rejection) => {
            assert!(
                matches!(rejection.status, 400 | 413) && !rejection.message.is_empty(),
                "{content_type} {content_encoding:?}: refused with {} {:?}",
                rejection.status,
                rejection.message
            );
            return;
        }
    };
    assert!(decoded.payload.len() as u64 <= MAX_DECOMPRESSED);
    let rendered = json::protobuf_to_json(signal, &decoded.payload)
        .unwrap_or_else(|e| panic!("accepted {content_type} payload does not render as JSON: {e}"));
    let reparsed = json::json_to_protobuf(signal, &rendered).unwrap_or_else(|e| {
        panic!(
            "accepted {content_type} payload renders as OTLP/JSON that is refused: {e}\n{}",
            String::from_utf8_lossy(&rendered)
        )
    });
    assert_eq!(
        otlp::count_items(signal, &reparsed).expect("transcoded protobuf decodes"),
        decoded.items,
        "the JSON rendering of an accepted {content_type} payload changes its item count"
    );
    if format == Format::Json {
        assert!(
            reparsed == decoded.payload,
            "canonical protobuf from JSON changes in a JSON round trip: {}",
            String::from_utf8_lossy(&rendered)
        );
    }
}

/// Arbitrary bytes as a protobuf request of the signal the first byte selects (modulo 3, in
/// [`Signal::ALL`] order), through the wire walker and through prost: they must agree
/// ([`wire_oracle::agree`]).
pub fn wire(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    wire_oracle::agree(Signal::ALL[usize::from(selector) % 3], payload);
}

/// Arbitrary text through [`Config::load`], the loader `otlp-spool check` runs on its file, then
/// the masked rendering `check` prints. Either may refuse; neither may panic.
pub fn config(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("creating a temporary config file");
    std::io::Write::write_all(&mut file, data).expect("writing the temporary config file");
    if let Ok(config) = Config::load(file.path()) {
        config.to_masked_toml();
    }
}

/// Arbitrary segment bytes through the frame decoder ([`record::decode`]): a frame it accepts
/// lies within the input, agrees with [`record::decode_header`] and [`record::peek_len`], and
/// re-encodes to the same bytes (but for the reserved bytes, which the encoder writes as 0).
pub fn record(data: &[u8]) {
    let Ok(frame) = record::decode(data) else {
        return;
    };
    assert!(frame.len <= data.len() && frame.len >= HEADER_LEN);
    assert_eq!(record::decode_header(data), Ok(frame));
    assert_eq!(record::peek_len(data), Ok(frame.len));
    let mut again = Vec::new();
    record::encode(
        frame.kind,
        frame.index,
        frame.seq,
        frame.header,
        &data[HEADER_LEN..frame.len],
        &mut again,
    );
    let mut expected = data[..frame.len].to_vec();
    expected[10..12].copy_from_slice(&[0, 0]);
    if expected != again {
        // Reserved bytes are inside the CRC: a frame with them set decodes only if its CRC
        // covered them, and then re-encoding (zeroing them) changes the CRC too.
        assert_ne!(
            &data[10..12],
            &[0, 0],
            "a frame did not survive re-encoding"
        );
    }
}
