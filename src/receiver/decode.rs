//! Request bodies to canonical protobuf: content type (protobuf or OTLP/JSON), content encoding
//! (gzip or identity), size limits, validation and item counting.
//!
//! Invariant: what comes out is a valid `Export*ServiceRequest` of the route's signal, no larger
//! than `max_decompressed`; protobuf input is passed through byte for byte once it decodes, JSON
//! input is transcoded once here. Knows no transport: takes header values and bytes.

use std::io::Read;

use crate::observe::Refusal;
use crate::otlp::{self, Signal};

use super::Rejection;

/// The two OTLP/HTTP body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// From a `Content-Type` value (parameters such as `; charset=utf-8` ignored).
    pub fn from_content_type(value: &str) -> Result<Format, Rejection> {
        let media = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Format::Protobuf),
            "application/json" => Ok(Format::Json),
            _ => Err(Rejection::new(
                415,
                Refusal::Invalid,
                format!(
                    "unsupported Content-Type {value:?}: OTLP/HTTP takes application/x-protobuf or application/json"
                ),
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// A decoded request: canonical protobuf and how many items it holds.
#[derive(Debug)]
pub struct Decoded {
    pub payload: Vec<u8>,
    pub items: u64,
}

/// Decompresses (per `content_encoding`), checks the size, and decodes `body`.
pub fn decode(
    signal: Signal,
    format: Format,
    content_encoding: Option<&str>,
    body: Vec<u8>,
    max_decompressed: u64,
) -> Result<Decoded, Rejection> {
    let raw = match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => body,
        Some("gzip") | Some("x-gzip") => gunzip(&body, max_decompressed)?,
        Some(other) => {
            return Err(Rejection::new(
                415,
                Refusal::Invalid,
                format!("unsupported Content-Encoding {other:?}: use gzip or none"),
            ))
        }
    };
    if raw.len() as u64 > max_decompressed {
        return Err(too_large(max_decompressed));
    }
    let payload = match format {
        Format::Protobuf => raw,
        Format::Json => otlp::json::json_to_protobuf(signal, &raw)
            .map_err(|e| Rejection::new(400, Refusal::Invalid, e.to_string()))?,
    };
    let items = otlp::count_items(signal, &payload)
        .map_err(|e| Rejection::new(400, Refusal::Invalid, e.to_string()))?;
    Ok(Decoded { payload, items })
}

fn too_large(limit: u64) -> Rejection {
    Rejection::new(
        413,
        Refusal::TooLarge,
        format!(
            "request body is larger than {limit} bytes once decompressed (server.max_decompressed)"
        ),
    )
}

/// Gunzips at most `limit` bytes: reading one byte past the limit proves the body is too large
/// without ever inflating a gzip bomb.
fn gunzip(body: &[u8], limit: u64) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit as usize));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Rejection::new(400, Refusal::Invalid, format!("invalid gzip body: {e}")))?;
    if out.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}
