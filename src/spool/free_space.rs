//! Free space on the spool's file system, as appends need to know it: enough to keep
//! [`FREE_SPACE_RESERVE`] free, without a `statvfs` for every append.
//!
//! Invariant: [`FreeSpace::take`] refuses an append that a `statvfs` made now would refuse,
//! except for space that *another* process took in the last [`MAX_AGE`] while the file system
//! had more than [`HEADROOM`] above the reserve. Between readings the estimate only goes down
//! (each append subtracts its size; deletions are not added back), so the spool's own writes
//! can never carry it past the reserve; within `HEADROOM` of the reserve every append reads the
//! file system again. What another process takes unseen is bounded by what it can write in
//! `MAX_AGE`, and even then no data is lost: a write that meets ENOSPC fails its request
//! (503, see `segment.rs`'s poisoning) instead of acknowledging it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::FREE_SPACE_RESERVE;

/// The longest a reading is trusted (appends far from the reserve re-read at most this often).
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Within this much of the reserve, every append reads the file system.
pub const HEADROOM: u64 = 64 << 20;

/// Free bytes on a file system, or `None` when it cannot be read.
type Probe = Box<dyn Fn(&Path) -> Option<u64> + Send + Sync>;

/// The free space of the file system holding one directory, cached for appends.
pub struct FreeSpace {
    dir: PathBuf,
    probe: Probe,
    reading: Mutex<Option<Reading>>,
}

/// A `statvfs` result, less what appends took since.
#[derive(Clone, Copy)]
struct Reading {
    free: u64,
    at: Instant,
}

impl FreeSpace {
    pub fn new(dir: &Path) -> FreeSpace {
        FreeSpace::with_probe(dir, statvfs_free)
    }

    fn with_probe(
        dir: &Path,
        probe: impl Fn(&Path) -> Option<u64> + Send + Sync + 'static,
    ) -> FreeSpace {
        FreeSpace {
            dir: dir.to_path_buf(),
            probe: Box::new(probe),
            reading: Mutex::new(None),
        }
    }

    /// Free bytes now, read from the file system (and kept as the new reading); `None` when
    /// `statvfs` fails.
    pub fn now(&self) -> Option<u64> {
        let free = (self.probe)(&self.dir);
        *self.lock() = free.map(|free| Reading {
            free,
            at: Instant::now(),
        });
        free
    }

    /// Takes `size` bytes for an append, or `Err(free bytes)` when that would leave less than
    /// the reserve. An unreadable file system takes anything (the write itself then tells).
    pub fn take(&self, size: u64) -> Result<(), u64> {
        let mut reading = self.lock();
        let fresh = reading
            .filter(|r| r.at.elapsed() < MAX_AGE && r.free >= FREE_SPACE_RESERVE + HEADROOM + size);
        let Some(mut r) = fresh.or_else(|| {
            let free = (self.probe)(&self.dir)?;
            Some(Reading {
                free,
                at: Instant::now(),
            })
        }) else {
            *reading = None;
            return Ok(());
        };
        let result = if r.free < FREE_SPACE_RESERVE + size {
            Err(r.free)
        } else {
            r.free -= size;
            Ok(())
        };
        *reading = Some(r);
        result
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Reading>> {
        // A panic while holding it cannot leave a reading half-written: it is Copy.
        self.reading.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Free bytes for an unprivileged writer (`f_bavail`) on the file system holding `dir`.
fn statvfs_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `statvfs` is plain data, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid place to write the result.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    // The field types differ by platform (u32 on macOS): widen them all.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    /// A file system the test controls: its free bytes, and how often it was read.
    #[derive(Clone, Default)]
    struct Disk {
        free: Arc<AtomicU64>,
        reads: Arc<AtomicU64>,
    }

    impl Disk {
        fn space(&self, free: u64) -> FreeSpace {
            self.set(free);
            let disk = self.clone();
            FreeSpace::with_probe(Path::new("/"), move |_| {
                disk.reads.fetch_add(1, SeqCst);
                Some(disk.free.load(SeqCst))
            })
        }
        fn set(&self, free: u64) {
            self.free.store(free, SeqCst);
        }
        fn reads(&self) -> u64 {
            self.reads.load(SeqCst)
        }
    }

    #[test]
    fn far_from_the_reserve_appends_do_not_read_the_file_system() {
        let disk = Disk::default();
        let space = disk.space(10 << 30);
        for _ in 0..1000 {
            space.take(36 << 10).unwrap();
        }
        assert_eq!(disk.reads(), 1, "one statvfs for 1000 appends");
    }

    #[test]
    fn near_the_reserve_every_append_reads_and_the_reserve_holds() {
        let disk = Disk::default();
        let start = FREE_SPACE_RESERVE + HEADROOM / 2;
        let space = disk.space(start);
        let mut taken = 0;
        while space.take(1 << 20).is_ok() {
            taken += 1 << 20;
            disk.set(start - taken); // the spool's own writes, as the file system sees them
        }
        assert_eq!(start - taken, FREE_SPACE_RESERVE);
        assert_eq!(disk.reads(), taken / (1 << 20) + 1, "a read per append");
    }

    #[test]
    fn another_writer_is_seen_within_max_age_or_at_once_near_the_reserve() {
        let disk = Disk::default();
        let space = disk.space(FREE_SPACE_RESERVE + 2 * HEADROOM);
        space.take(1).unwrap();
        // Another process fills the disk: a fresh reading far from the reserve still admits
        // the next append (the bounded staleness the module doc states)...
        disk.set(FREE_SPACE_RESERVE);
        assert!(space.take(1).is_ok());
        // ...until the reading is MAX_AGE old.
        std::thread::sleep(MAX_AGE);
        assert_eq!(
            space.take(1),
            Err(FREE_SPACE_RESERVE),
            "re-read after MAX_AGE"
        );
        // Near the reserve, a change is seen at once.
        disk.set(FREE_SPACE_RESERVE + HEADROOM);
        assert!(space.take(1).is_ok());
        disk.set(FREE_SPACE_RESERVE);
        assert_eq!(space.take(1), Err(FREE_SPACE_RESERVE));
    }

    #[test]
    fn reads_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let space = FreeSpace::new(dir.path());
        assert!(space.now().is_some_and(|free| free > 0));
        assert_eq!(statvfs_free(&dir.path().join("missing")), None);
    }
}
