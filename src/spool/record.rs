//! The on-disk format of one frame in a segment file: a fixed 36-byte header, then the payload.
//!
//! ```text
//! offset  size  field
//! 0       4     length L of what follows this 8-byte prefix (header rest + payload), BE u32
//! 4       4     CRC32 (crc32fast, IEEE) of those L bytes: offsets 8 .. 8 + L
//! 8       1     kind: 1 = record, 2 = seal (the last frame of a closed segment)
//! 9       1     format version (1)
//! 10      2     reserved, 0
//! 12      4     index: the record's ordinal in its segment, from 0, BE u32
//!               (a seal: the segment's record count)
//! 16      8     sequence number, BE u64 (a seal: the segment's last record's, 0 if none)
//! 24      8     received time, BE u64 ms since the Unix epoch (a seal: the segment's newest)
//! 32      4     item count, BE u32: spans, data points or log records (a seal: the segment's
//!               total, saturating)
//! 36      ..    payload: one canonical OTLP protobuf Export*ServiceRequest (a dead letter: a
//!               JSON description line, a newline, then the refused protobuf; a seal: the first
//!               sequence of the segment that follows, BE u64, 0 if none)
//! ```
//!
//! Invariant: a frame once written is never rewritten, and a frame is accepted only whole, with
//! a matching CRC and a version this build knows; a reader refuses anything else rather than
//! guess (the caller decides whether that is a torn tail or damage). This file knows bytes only:
//! not OTLP, not files, not which segment or stream a frame sits in.

pub const FORMAT_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 36;
/// The bytes before the CRC-covered part: length and CRC.
const PREFIX_LEN: usize = 8;
/// The largest frame a reader accepts: a record is at most a request (`server.max_decompressed`
/// is far below this); a larger length is damage, not a record.
pub const MAX_FRAME: usize = 1 << 30;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Record = 1,
    Seal = 2,
}

/// What the spool keeps beside each payload (the rest of the header is about placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordHeader {
    pub items: u32,
    pub received_ms: u64,
}

/// One decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub index: u32,
    pub seq: u64,
    pub header: RecordHeader,
    /// The whole frame's length on disk, header included.
    pub len: usize,
}

impl Frame {
    pub fn payload_len(&self) -> usize {
        self.len - HEADER_LEN
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: at the end of a file, a torn tail.
    #[error("frame cut short: {have} of {need} bytes")]
    Short { have: usize, need: usize },
    #[error("frame length {0} is impossible")]
    BadLength(usize),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame has format version {0}, this build reads version {FORMAT_VERSION}; it was written by a newer otlp-spool")]
    UnknownVersion(u8),
    #[error("frame has unknown kind {0}")]
    UnknownKind(u8),
}

/// The header of the frame holding `payload`: write it, then the payload, to write the frame
/// (a writer can hand both to the kernel without joining them).
pub fn encode_header(
    kind: Kind,
    index: u32,
    seq: u64,
    header: RecordHeader,
    payload: &[u8],
) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    let len = (HEADER_LEN - PREFIX_LEN + payload.len()) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out[8] = kind as u8;
    out[9] = FORMAT_VERSION;
    out[12..16].copy_from_slice(&index.to_be_bytes());
    out[16..24].copy_from_slice(&seq.to_be_bytes());
    out[24..32].copy_from_slice(&header.received_ms.to_be_bytes());
    out[32..36].copy_from_slice(&header.items.to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[PREFIX_LEN..]);
    crc.update(payload);
    out[4..8].copy_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// Encodes one frame into `out` (appended).
pub fn encode(
    kind: Kind,
    index: u32,
    seq: u64,
    header: RecordHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&encode_header(kind, index, seq, header, payload));
    out.extend_from_slice(payload);
}

/// The length of the frame starting at `bytes` (which may hold only its first 8 bytes), without
/// checking it: to know how much more to read.
pub fn peek_len(bytes: &[u8]) -> Result<usize, FrameError> {
    if bytes.len() < PREFIX_LEN {
        return Err(FrameError::Short {
            have: bytes.len(),
            need: PREFIX_LEN,
        });
    }
    let len = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    if !(HEADER_LEN - PREFIX_LEN..=MAX_FRAME).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    Ok(PREFIX_LEN + len)
}

/// Decodes the frame at the start of `bytes`, checking its CRC; its payload is
/// `bytes[HEADER_LEN..frame.len]`.
pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    let len = peek_len(bytes)?;
    if bytes.len() < len {
        return Err(FrameError::Short {
            have: bytes.len(),
            need: len,
        });
    }
    let stored = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[PREFIX_LEN..len]) != stored {
        return Err(FrameError::Checksum);
    }
    decode_header(bytes)
}

/// Decodes the header at the start of `bytes` (at least [`HEADER_LEN`] of them) without the CRC,
/// which covers the payload: for walking frames whose payload is not read. Its fields may be
/// wrong where [`decode`] would find the frame damaged.
pub fn decode_header(bytes: &[u8]) -> Result<Frame, FrameError> {
    let len = peek_len(bytes)?;
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Short {
            have: bytes.len(),
            need: HEADER_LEN,
        });
    }
    let kind = match bytes[8] {
        1 => Kind::Record,
        2 => Kind::Seal,
        other => return Err(FrameError::UnknownKind(other)),
    };
    if bytes[9] != FORMAT_VERSION {
        return Err(FrameError::UnknownVersion(bytes[9]));
    }
    let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Frame {
        kind,
        index: u32_at(12),
        seq: u64_at(16),
        header: RecordHeader {
            received_ms: u64_at(24),
            items: u32_at(32),
        },
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = RecordHeader {
            items: 7,
            received_ms: 1_795_318_401_418,
        };
        encode(Kind::Record, 3, 42, header, payload, &mut out);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = frame(b"payload");
        assert_eq!(bytes.len(), HEADER_LEN + 7);
        let f = decode(&bytes).unwrap();
        assert_eq!(
            (f.kind, f.index, f.seq, f.len),
            (Kind::Record, 3, 42, bytes.len())
        );
        assert_eq!(f.header.items, 7);
        assert_eq!(&bytes[HEADER_LEN..f.len], b"payload");
        assert_eq!(peek_len(&bytes[..8]), Ok(bytes.len()));
    }

    #[test]
    fn refuses_short_flipped_and_unknown() {
        let bytes = frame(b"payload");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(FrameError::Short { .. })
        ));
        for at in [5, 9, 20, HEADER_LEN + 2] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert_eq!(decode(&flipped), Err(FrameError::Checksum), "byte {at}");
        }
        let mut zeros = vec![0; 64];
        assert_eq!(decode(&zeros), Err(FrameError::BadLength(0)));
        zeros[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&zeros), Err(FrameError::BadLength(_))));
    }

    proptest::proptest! {
        /// Any frame reads back as written, and any single flipped bit or cut is refused; any
        /// bytes at all decode or are refused without a panic (the fuzz target `record` does
        /// the last at length).
        #[test]
        fn frames_round_trip_and_damage_is_refused(
            index in proptest::prelude::any::<u32>(),
            seq in proptest::prelude::any::<u64>(),
            items in proptest::prelude::any::<u32>(),
            received_ms in proptest::prelude::any::<u64>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
        ) {
            let header = RecordHeader { items, received_ms };
            let mut bytes = Vec::new();
            encode(Kind::Record, index, seq, header, &payload, &mut bytes);
            let frame = decode(&bytes).unwrap();
            proptest::prop_assert_eq!((frame.index, frame.seq, frame.header), (index, seq, header));
            proptest::prop_assert_eq!(&bytes[HEADER_LEN..frame.len], &payload[..]);
            let at = flip.index(bytes.len());
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            proptest::prop_assert!(decode(&flipped).is_err(), "a flip at {} went unnoticed", at);
            proptest::prop_assert!(decode(&bytes[..bytes.len() - 1]).is_err());
            let _ = decode(&junk);
            let _ = decode_header(&junk);
        }
    }
}
