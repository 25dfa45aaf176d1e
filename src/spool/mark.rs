//! The durable mark: a small file beside sled's (`durable-seq` in the spool directory) holding a
//! sequence number that is known to be durable in the database. It lets [`super::Spool::open`]
//! tell a database that lost acknowledged writes (a truncated or damaged log, which sled opens
//! without complaint, reading the damage as a torn write) from one that never had them.
//!
//! Invariant: the number written is never above what the database holds durably. It is taken
//! only from appends whose group commit succeeded ([`DurableMark::advance`]), and every flush
//! carries the newest sequence handed out (`meta`'s `last_seq`), so an intact database reopens
//! with a newest sequence at or above the mark — after `kill -9` too. The converse is best
//! effort: the file is saved by the commit thread's housekeeping (at most once a second, without
//! an fsync of its own), so the mark can lag the database by a second or a power cut; it then
//! detects less, never more.
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

    fn write(&self, seq: u64) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("tmp");
        // Owner-only from the start, like everything in the spool directory.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(format!("{seq}\n").as_bytes())?;
        std::fs::rename(&tmp, &self.path)?;
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
