//! The on-disk format of one spooled record: a fixed 14-byte header followed by the payload.
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       1     flags (reserved, 0)
//! 2       4     item count, big-endian u32 (spans, data points or log records)
//! 6       8     received time, big-endian u64 milliseconds since the Unix epoch
//! 14      ..    payload: one canonical OTLP protobuf Export*ServiceRequest
//! ```
//!
//! Invariant: a record once written is never rewritten; readers refuse versions they do not
//! know rather than guess. This file knows bytes only, not OTLP.

pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub items: u32,
    pub received_ms: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("spool record is {0} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("spool record has format version {0}, this build reads version {FORMAT_VERSION}; it was written by a newer otlp-spool")]
    UnknownVersion(u8),
}

impl RecordHeader {
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(FORMAT_VERSION);
        out.push(0);
        out.extend_from_slice(&self.items.to_be_bytes());
        out.extend_from_slice(&self.received_ms.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Splits a stored value into its header and payload.
    pub fn decode(value: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
        if value.len() < HEADER_LEN {
            return Err(RecordError::Truncated(value.len()));
        }
        if value[0] != FORMAT_VERSION {
            return Err(RecordError::UnknownVersion(value[0]));
        }
        let items = u32::from_be_bytes(value[2..6].try_into().expect("4 bytes"));
        let received_ms = u64::from_be_bytes(value[6..14].try_into().expect("8 bytes"));
        Ok((RecordHeader { items, received_ms }, &value[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = RecordHeader {
            items: 7,
            received_ms: 1_795_318_401_418,
        };
        let v = h.encode(b"payload");
        assert_eq!(v.len(), HEADER_LEN + 7);
        assert_eq!(RecordHeader::decode(&v).unwrap(), (h, &b"payload"[..]));
    }

    #[test]
    fn refuses_short_and_unknown() {
        assert_eq!(
            RecordHeader::decode(&[1, 0, 0]),
            Err(RecordError::Truncated(3))
        );
        let mut v = RecordHeader {
            items: 1,
            received_ms: 0,
        }
        .encode(b"");
        v[0] = 9;
        assert_eq!(
            RecordHeader::decode(&v),
            Err(RecordError::UnknownVersion(9))
        );
    }
}
