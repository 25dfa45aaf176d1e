//! The durable mark: a small file in the spool directory (`durable-seq`) holding a sequence
//! number that is known to be durable in the segments. It lets [`super::Spool::open`] tell a
//! spool that lost acknowledged records (a segment cut short, which reads as a torn tail) from
//! one that never had them.
//!
//! Invariant: the number written is never above what the spool holds durably. It is taken only
//! from appends whose sync succeeded ([`DurableMark::advance`]), and a record leaves the spool
//! only past a cursor or floor that the index keeps, so an intact spool reopens with a newest
//! record, cursor or floor at or above the mark — after `kill -9` too. The converse is best
//! effort: the file is saved by the segment streams' housekeeping (at most once a second), so
//! the mark can lag the spool by a second; it then detects less, never more.
//!
//! Knows a path and a number; nothing of sled or records.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

const FILE: &str = "durable-seq";

pub struct DurableMark {
    path: PathBuf,
    /// What the file said when the spool opened (`None`: no file, or not a number).
    recorded: Option<u64>,
    /// The newest sequence known durable.
    newest: AtomicU64,
    /// The value the file holds now.
    saved: AtomicU64,
    writing: std::sync::Mutex<()>,
}

impl DurableMark {
    /// Reads the mark of the spool in `dir`.
    pub fn open(dir: &Path) -> DurableMark {
        let path = dir.join(FILE);
        let recorded = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let start = recorded.unwrap_or(0);
        DurableMark {
            path,
            recorded,
            newest: AtomicU64::new(start),
            saved: AtomicU64::new(start),
            writing: std::sync::Mutex::new(()),
        }
    }

    /// The sequence the file held at open: the database must hold at least this one.
    pub fn recorded(&self) -> Option<u64> {
        self.recorded
    }

    /// Notes that `seq` is durable (its append's group commit succeeded).
    pub fn advance(&self, seq: u64) {
        self.newest.fetch_max(seq, SeqCst);
    }

    /// Writes the newest durable sequence to the file if it moved. Written to a temporary file
    /// and renamed over the old one, so a reader sees one whole number or the previous one.
    pub fn save(&self) -> std::io::Result<()> {
        let newest = self.newest.load(SeqCst);
        if newest == self.saved.load(SeqCst) {
            return Ok(());
        }
        self.write(newest)
    }

    /// Sets the mark to `seq` now, even below the old one: after the spool has reported that
    /// its database lost writes, so that the loss is reported once, not at every start.
    pub fn reset(&self, seq: u64) -> std::io::Result<()> {
        self.newest.store(seq, SeqCst);
        self.write(seq)
    }

    /// Whole after any crash ([`super::replace_file`]). One writer at a time (each segment
    /// stream saves it).
    fn write(&self, seq: u64) -> std::io::Result<()> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        super::replace_file(&self.path, format!("{seq}\n").as_bytes())?;
        self.saved.store(seq, SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_only_what_moved_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let mark = DurableMark::open(dir.path());
        assert_eq!(mark.recorded(), None);
        mark.save().unwrap();
        assert!(!dir.path().join(FILE).exists(), "nothing durable yet");
        mark.advance(7);
        mark.advance(5);
        mark.save().unwrap();
        assert_eq!(DurableMark::open(dir.path()).recorded(), Some(7));
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        mark.reset(3).unwrap();
        assert_eq!(DurableMark::open(dir.path()).recorded(), Some(3));
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(DurableMark::open(dir.path()).recorded(), None);
    }
}
