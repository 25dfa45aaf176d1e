//! The spool's layout marker, and the conversion of a version-1 spool (every record a sled
//! value, in one sled database at the top of `spool.dir`) to the current layout.
//!
//! [`to_current`] runs before anything else opens the directory:
//! - `LAYOUT` says `2`: nothing to do, except deleting version-1 files a finished migration
//!   left (it deletes them after writing `LAYOUT`).
//! - `LAYOUT` says something else: a newer otlp-spool wrote it; refuse.
//! - No `LAYOUT`, no version-1 files: a new spool; write `LAYOUT`.
//! - No `LAYOUT`, version-1 files: migrate. Every record keeps its sequence number (so cursors
//!   stay right), every cursor, dead letter and state tree is copied, all of it is synced,
//!   then `LAYOUT` is written (tmp → fsync → rename → directory fsync), then the version-1
//!   files go. A crash anywhere before `LAYOUT` leaves the version-1 spool whole and the next
//!   start deletes the half-built `seg/` and `index/` and starts again: nothing is lost.
//!
//! Knows both layouts' files; nothing of routes, caps or OTLP.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::record::{self, Kind, RecordHeader};
use super::{
    io_error, OpenError, DEAD_LETTER_STREAM, FORMAT_KEY, INDEX_DIR, LAST_SEQ, LAYOUT_FILE,
    LAYOUT_VERSION, SEGMENTS_DIR,
};
use crate::otlp::Signal;

/// Version-1 files at the top of the spool directory (sled's, and its blob directory).
const V1_FILES: [&str; 2] = ["db", "conf"];
/// How large a migrated segment grows before the next one starts.
const SEGMENT_SIZE: u64 = 32 << 20;

/// Brings the spool in `dir` to the current layout (see the module docs).
pub fn to_current(dir: &Path) -> Result<(), OpenError> {
    let fail = |what: &str, e: std::io::Error| match io_error(dir, e) {
        OpenError::Storage { dir, message } => OpenError::Storage {
            dir,
            message: format!("{what}: {message}"),
        },
        other => other,
    };
    let v1 = V1_FILES.iter().any(|f| dir.join(f).exists());
    let current = |found: &str| {
        // Empty: written on a file system that lost its data but kept the rename (one whose
        // fsync does nothing). A new spool makes `seg/` only after `LAYOUT`; with version-1
        // files still there, the migration is done again from them.
        found.trim() == LAYOUT_VERSION
            || (found.trim().is_empty() && !v1 && dir.join(SEGMENTS_DIR).exists())
    };
    match std::fs::read_to_string(dir.join(LAYOUT_FILE)) {
        Ok(found) if current(&found) => {
            if found.trim().is_empty() {
                write_layout(dir).map_err(|e| fail("writing the spool's LAYOUT file", e))?;
            }
            if v1 {
                remove_v1(dir).map_err(|e| fail("deleting the migrated version-1 files", e))?;
            }
            return Ok(());
        }
        Ok(found) if found.trim().is_empty() => {}
        Ok(found) => {
            return Err(OpenError::Layout {
                dir: dir.to_path_buf(),
                found: found.trim().to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("reading the spool's LAYOUT file", e)),
    }
    if v1 {
        migrate_v1(dir)?;
        super::crash::point("migrate.copied");
    }
    write_layout(dir).map_err(|e| fail("writing the spool's LAYOUT file", e))?;
    if v1 {
        super::crash::point("migrate.layout_written");
        remove_v1(dir).map_err(|e| fail("deleting the migrated version-1 files", e))?;
    }
    Ok(())
}

/// Writes `LAYOUT` so that it is whole, or absent, after any crash.
fn write_layout(dir: &Path) -> std::io::Result<()> {
    super::replace_file(
        &dir.join(LAYOUT_FILE),
        format!("{LAYOUT_VERSION}\n").as_bytes(),
    )
}

fn remove_v1(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if V1_FILES.contains(&name.as_ref()) || name.starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
        } else if name == "blobs" {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Copies a version-1 spool into `seg/` and `index/` beside it (see the module docs).
fn migrate_v1(dir: &Path) -> Result<(), OpenError> {
    let failed = |message: String| OpenError::Storage {
        dir: dir.to_path_buf(),
        message: format!(
            "migrating the version-1 spool: {message}; nothing was lost (the version-1 files \
             are untouched), and the next start tries again"
        ),
    };
    let io = |what: &'static str| move |e: std::io::Error| failed(format!("{what}: {e}"));
    for half_built in [SEGMENTS_DIR, INDEX_DIR] {
        match std::fs::remove_dir_all(dir.join(half_built)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing a half-built migration")(e))
            }
            _ => {}
        }
    }
    let sled = |e: sled::Error| failed(e.to_string());
    let old = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .map_err(sled)?;
    let new = sled::Config::new()
        .path(dir.join(INDEX_DIR))
        .flush_every_ms(None)
        .open()
        .map_err(sled)?;
    let seq_of = |v: &[u8]| u64::from_be_bytes(v.try_into().unwrap_or([0; 8]));
    let mut max_seq = 0;
    let (mut records, mut unreadable) = (0u64, 0u64);
    for signal in Signal::ALL {
        let tree = old.open_tree(signal.name()).map_err(sled)?;
        let mut out = SegmentWriter::new(dir.join(SEGMENTS_DIR).join(signal.name()));
        for entry in tree.iter() {
            let (key, value) = entry.map_err(sled)?;
            let seq = seq_of(&key);
            max_seq = max_seq.max(seq);
            let Some((header, payload)) = decode_v1(&value) else {
                unreadable += 1;
                continue;
            };
            out.push(seq, header, payload)
                .map_err(io("writing a segment"))?;
            records += 1;
        }
        out.finish().map_err(io("syncing a segment"))?;
    }
    // Dead letters had keys of their own: they take numbers above every record's.
    let meta = old.open_tree("meta").map_err(sled)?;
    if let Some(last) = meta.get(LAST_SEQ).map_err(sled)? {
        max_seq = max_seq.max(seq_of(&last));
    }
    let cursors = old.open_tree("cursors").map_err(sled)?;
    let new_cursors = new.open_tree("cursors").map_err(sled)?;
    for entry in cursors.iter() {
        let (key, value) = entry.map_err(sled)?;
        max_seq = max_seq.max(seq_of(&value));
        new_cursors.insert(key, value).map_err(sled)?;
    }
    let mut letters = SegmentWriter::new(dir.join(SEGMENTS_DIR).join(DEAD_LETTER_STREAM));
    for entry in old.open_tree("dead_letter").map_err(sled)?.iter() {
        let (_, value) = entry.map_err(sled)?;
        max_seq += 1;
        let header = RecordHeader {
            items: 0,
            received_ms: super::now_ms(),
        };
        letters
            .push(max_seq, header, &value)
            .map_err(io("writing a dead letter"))?;
    }
    letters.finish().map_err(io("syncing the dead letters"))?;
    for name in old.tree_names() {
        if !name.starts_with(b"state/") {
            continue;
        }
        let from = old.open_tree(&name).map_err(sled)?;
        let to = new.open_tree(&name).map_err(sled)?;
        for entry in from.iter() {
            let (k, v) = entry.map_err(sled)?;
            to.insert(k, v).map_err(sled)?;
        }
    }
    let meta = new.open_tree("meta").map_err(sled)?;
    meta.insert(FORMAT_KEY, LAYOUT_VERSION).map_err(sled)?;
    meta.insert(LAST_SEQ, &max_seq.to_be_bytes())
        .map_err(sled)?;
    new.flush().map_err(sled)?;
    drop(new);
    // sled's flush does not fsync on Linux (see commit.rs): the index's files are synced here.
    super::commit::DiskSync::open(&dir.join(INDEX_DIR))
        .and_then(|mut d| d.sync())
        .map_err(io("syncing the index"))?;
    File::open(dir.join(SEGMENTS_DIR))
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the segment directory"))?;
    tracing::info!(
        spool = %dir.display(),
        records,
        unreadable,
        "migrated the spool from layout version 1 (records as sled values) to version 2 (segment files)"
    );
    Ok(())
}

/// A version-1 record: version 1, a reserved byte, items (BE u32), received ms (BE u64), then
/// the payload.
fn decode_v1(value: &[u8]) -> Option<(RecordHeader, &[u8])> {
    if value.len() < 14 || value[0] != 1 {
        return None;
    }
    let header = RecordHeader {
        items: u32::from_be_bytes(value[2..6].try_into().ok()?),
        received_ms: u64::from_be_bytes(value[6..14].try_into().ok()?),
    };
    Some((header, &value[14..]))
}

/// Writes frames into new sealed segments of one stream, synced at the end.
struct SegmentWriter {
    dir: PathBuf,
    file: Option<(File, u64, u32, u64, u64)>,
    closed: Vec<File>,
}

impl SegmentWriter {
    fn new(dir: PathBuf) -> Self {
        SegmentWriter {
            dir,
            file: None,
            closed: Vec::new(),
        }
    }

    fn push(&mut self, seq: u64, header: RecordHeader, payload: &[u8]) -> std::io::Result<()> {
        if self
            .file
            .as_ref()
            .is_some_and(|(_, len, _, _, _)| *len >= SEGMENT_SIZE)
        {
            self.seal(seq)?;
        }
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(format!("{seq:016x}.seg")))?;
            self.file = Some((file, 0, 0, 0, 0));
        }
        let (file, len, records, last, newest) = self.file.as_mut().expect("open");
        let mut frame = Vec::with_capacity(record::HEADER_LEN + payload.len());
        record::encode(Kind::Record, *records, seq, header, payload, &mut frame);
        file.write_all(&frame)?;
        *len += frame.len() as u64;
        *records += 1;
        *last = seq;
        *newest = (*newest).max(header.received_ms);
        Ok(())
    }

    /// Ends the open segment with its seal, naming the `next` one (0: none).
    fn seal(&mut self, next: u64) -> std::io::Result<()> {
        if let Some((mut file, _, records, last, newest)) = self.file.take() {
            let mut seal = Vec::new();
            let header = RecordHeader {
                items: 0,
                received_ms: newest,
            };
            record::encode(
                Kind::Seal,
                records,
                last,
                header,
                &next.to_be_bytes(),
                &mut seal,
            );
            file.write_all(&seal)?;
            self.closed.push(file);
        }
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.seal(0)?;
        for file in &self.closed {
            super::segment::sync_data(file)?;
        }
        if self.dir.exists() {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }
}
