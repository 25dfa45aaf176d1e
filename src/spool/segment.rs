//! One stream of segment files: the payloads of one signal (or the dead letters), appended in
//! sequence order, read in order, deleted in order, a whole file at a time.
//!
//! Layout: `seg/<stream>/<first_seq:016x>.seg`, each file a run of [`record`] frames; a segment
//! closed by a roll ends with a seal frame (its record count, last sequence and newest receive
//! time), so opening reads one frame per closed segment. A file is named by the first sequence
//! it may hold (the next sequence at its creation), so names give a floor for sequence numbers
//! even when every record is gone.
//!
//! Invariants (the spool's module doc lists them with their tests):
//! - Only the newest segment of this run (the active one) is appended to; a segment from an
//!   earlier run, or one whose write or sync failed, is never appended to again.
//! - A reader (and deletion) sees only frames below a segment's published durable length, which
//!   [`StreamSync`] raises only after an `fdatasync` of that file (and, for a new file, of the
//!   stream's directory) succeeded. An append is acknowledged only once that length covers it.
//! - Records before the head are deleted (acknowledged by every destination, expired, evicted);
//!   a segment wholly before the head is handed to the spool ([`Stream::take_deletable`]), which
//!   unlinks it only after the cursors and floors that passed it are durable.
//! - At open, a torn tail of the newest segment is cut off, and what is kept is synced before
//!   anything is appended, so sequence numbers seen at open are durable and never handed out
//!   again. A bad frame elsewhere is damage: counted, logged, skipped; the frames after it are
//!   still read.
//!
//! This file knows files, frames, sequence numbers and positions; nothing of cursors,
//! destinations, sled or OTLP.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::commit::{Flush, GroupCommit};
use super::crash;
use super::record::{self, Frame, FrameError, Kind, RecordHeader, HEADER_LEN};
use super::Record;

/// A drained active segment at least this long is closed so that it can be deleted: disk comes
/// back after a backlog, without a new file for every small batch that flows through.
const ROLL_DRAINED_AT: u64 = 1 << 20;
/// How many read positions each stream remembers (a few readers, each reading on from where it
/// stopped; see [`Stream::read`]).
const HINTS: usize = 16;
/// How much a scan reads at once.
const CHUNK: usize = 256 << 10;

/// Where a record starts in a stream: its segment (by name), byte offset and ordinal there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub seg: u64,
    pub offset: u64,
    pub index: u32,
}

impl Pos {
    /// The start of segment `seg`.
    fn start(seg: u64) -> Pos {
        Pos {
            seg,
            offset: 0,
            index: 0,
        }
    }
}

/// What has reached the disk of one segment (published after a successful sync).
#[derive(Debug, Clone, Copy, Default)]
struct Extent {
    len: u64,
    records: u32,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Record frames written (the active segment: including those not yet synced).
    written: Extent,
    /// Record frames known durable: what readers and deletion may see.
    durable: Extent,
    last_seq: u64,
    /// The newest receive time in it (times never go backwards: the last record's).
    newest_ms: u64,
    /// Whether appends go here (only the newest segment of this run, until it rolls or fails).
    active: bool,
}

/// What one stream's state is, under its lock.
struct State {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    /// The first record not deleted; always in `segments[0]` (or at its end).
    head: Pos,
    /// Record frames and their bytes in all segments (deleted ones included).
    total_records: u64,
    total_bytes: u64,
    /// Set by a failed write or sync: the active segment takes no more appends.
    poisoned: bool,
    /// Files closed since the last sync (their tails still to be synced), and whether the
    /// directory has an entry not yet synced.
    unsynced: Vec<(u64, Arc<File>, Extent)>,
    dir_unsynced: bool,
    /// `(after, position of the first record after `after`)`, newest last.
    hints: VecDeque<(u64, Pos)>,
    /// Segments wholly deleted, waiting for the spool to unlink them.
    deletable: Vec<PathBuf>,
    /// Segments whose unsynced tail was cut after a failed sync, and the length kept: the
    /// appends past it failed, whenever their waiters look.
    cut: Vec<(u64, u64)>,
    /// Damaged frames already counted (segment, offset).
    damaged: HashSet<(u64, u64)>,
    segment_size: u64,
    /// A fail point: the next sync fails (tests of invariant 5).
    #[cfg(test)]
    fail_next_sync: bool,
}

/// What the spool learns from opening a stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct Opened {
    /// The newest sequence in the stream's files (or below one's name).
    pub max_seq: u64,
    pub newest_received_ms: u64,
    /// Bad frames found where a torn tail cannot be (closed segments, or before durable frames).
    pub damaged: u64,
}

pub struct Stream {
    name: &'static str,
    state: Arc<Mutex<State>>,
    commit: GroupCommit,
}

/// A record written but maybe not yet durable: where it ends.
pub struct Written {
    pub seq: u64,
    seg: u64,
    end: u64,
}

impl Stream {
    /// Opens the stream in `dir` (created if missing), deleting segments wholly at or below
    /// `deleted_through` and placing the head on the first record after it.
    pub fn open(
        dir: PathBuf,
        name: &'static str,
        segment_size: u64,
        deleted_through: u64,
        housekeeping: Box<dyn Fn() + Send>,
    ) -> io::Result<(Stream, Opened)> {
        create_dir(&dir)?;
        let mut names: Vec<u64> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?.strip_suffix(".seg")?.to_owned();
                u64::from_str_radix(&name, 16).ok()
            })
            .collect();
        names.sort_unstable();
        let mut opened = Opened::default();
        let mut segments = VecDeque::new();
        for (i, &first_seq) in names.iter().enumerate() {
            let path = segment_path(&dir, first_seq);
            let newest = i + 1 == names.len();
            opened.max_seq = opened.max_seq.max(first_seq.saturating_sub(1));
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let found = recover(&file, newest)?;
            if found.damaged > 0 {
                tracing::error!(
                    segment = %path.display(),
                    frames = found.damaged,
                    "damaged frames in a spool segment: the records in them are lost; the \
                     records after them are kept and will be sent. Check the disk"
                );
            }
            if newest && found.torn > 0 {
                tracing::warn!(segment = %path.display(), bytes = found.torn, "cut the torn tail of the newest spool segment (writes that were never acknowledged)");
                file.set_len(found.extent.len)?;
            }
            if newest {
                // What this run sees must stay: its numbers are not handed out again.
                file.sync_all()?;
            }
            opened.max_seq = opened.max_seq.max(found.last_seq);
            opened.newest_received_ms = opened.newest_received_ms.max(found.newest_received_ms);
            opened.damaged += found.damaged;
            if let Some(next) = found.next {
                // Segments go from the front only: one missing after a segment that is still
                // here was deleted by hand (or lost with its directory entry).
                if names.get(i + 1).is_some_and(|&after| after != next) {
                    tracing::error!(
                        segment = %segment_path(&dir, next).display(),
                        "a spool segment is missing (deleted by hand, or lost): the records in \
                         it are lost; the others are kept and will be sent"
                    );
                    opened.damaged += 1;
                }
            }
            segments.push_back(Segment {
                first_seq,
                path,
                file: Arc::new(file),
                written: found.extent,
                durable: found.extent,
                last_seq: found.last_seq,
                newest_ms: found.newest_received_ms,
                active: false,
            });
        }
        File::open(&dir)?.sync_all()?;
        let head = Pos::start(segments.front().map_or(0, |s| s.first_seq));
        let mut state = State {
            total_records: segments.iter().map(|s| u64::from(s.written.records)).sum(),
            total_bytes: segments.iter().map(|s| s.written.len).sum(),
            dir,
            segments,
            head,
            poisoned: false,
            unsynced: Vec::new(),
            dir_unsynced: false,
            hints: VecDeque::new(),
            deletable: Vec::new(),
            damaged: HashSet::new(),
            cut: Vec::new(),
            segment_size,
            #[cfg(test)]
            fail_next_sync: false,
        };
        state.delete_through(deleted_through, None)?;
        for path in state.deletable.drain(..) {
            std::fs::remove_file(&path)?;
        }
        let state = Arc::new(Mutex::new(state));
        let commit = GroupCommit::start(
            &format!("spool-sync-{name}"),
            Box::new(StreamSync {
                state: Arc::clone(&state),
                name,
                housekeeping,
            }),
        );
        Ok((
            Stream {
                name,
                state,
                commit,
            },
            opened,
        ))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("spool stream lock poisoned")
    }

    /// Writes one record frame (not yet durable: see [`Stream::wait_durable`]), taking its
    /// sequence number from `next_seq` under the stream's lock so that file order is sequence
    /// order.
    pub fn write(
        &self,
        next_seq: &AtomicU64,
        header: RecordHeader,
        payload: &[u8],
    ) -> io::Result<Written> {
        let mut state = self.state();
        let frame_len = (HEADER_LEN + payload.len()) as u64;
        let roll = match state.segments.back() {
            Some(s) if s.active && !state.poisoned => {
                s.written.records > 0 && s.written.len + frame_len > state.segment_size
            }
            _ => true,
        };
        if roll {
            state.start_segment(next_seq.load(Ordering::SeqCst))?;
        }
        let seq = next_seq.fetch_add(1, Ordering::SeqCst);
        let active = state.segments.back_mut().expect("an active segment");
        let frame_header =
            record::encode_header(Kind::Record, active.written.records, seq, header, payload);
        if let Err(e) = write_frame_at(&active.file, active.written.len, &frame_header, payload) {
            state.poisoned = true;
            return Err(e);
        }
        crash::point("append.written");
        active.written.len += frame_len;
        active.written.records += 1;
        active.last_seq = seq;
        active.newest_ms = active.newest_ms.max(header.received_ms);
        let (seg, end) = (active.first_seq, active.written.len);
        state.total_records += 1;
        state.total_bytes += frame_len;
        Ok(Written { seq, seg, end })
    }

    /// Waits until `written` is durable (a sync that started after the write covered it); an
    /// error if that sync failed (the segment then takes no more appends).
    pub async fn wait_durable(&self, written: &Written) -> Result<(), String> {
        self.commit.wait().await?;
        let state = self.state();
        let durable = state
            .segments
            .iter()
            .find(|s| s.first_seq == written.seg)
            .is_some_and(|s| s.durable.len >= written.end);
        // A segment deleted meanwhile was durable (only durable records are deleted), unless
        // its unsynced tail was cut after a failed sync.
        let deleted = state
            .segments
            .front()
            .is_none_or(|s| s.first_seq > written.seg);
        let cut = state
            .cut
            .iter()
            .any(|&(seg, kept)| seg == written.seg && written.end > kept);
        if durable || (deleted && !cut) {
            Ok(())
        } else {
            Err(format!(
                "syncing spool segment {} failed (see the log); the request was not stored",
                segment_path(&state.dir, written.seg).display()
            ))
        }
    }

    /// Records after sequence `after`: at least one if any is durable, then more while they fit
    /// in `max_bytes` payload bytes and `max_items` items. Damaged frames are skipped and
    /// reported (the count of newly found ones is returned).
    pub fn read(
        &self,
        after: u64,
        max_bytes: u64,
        max_items: u64,
    ) -> io::Result<(Vec<Record>, u64)> {
        let (start, plan) = {
            let state = self.state();
            let start = state.start_after(after);
            let plan: Vec<(u64, Arc<File>, Extent)> = state
                .segments
                .iter()
                .filter(|s| s.first_seq >= start.seg)
                .map(|s| (s.first_seq, Arc::clone(&s.file), s.durable))
                .collect();
            (start, plan)
        };
        let mut out: Vec<Record> = Vec::new();
        let (mut bytes, mut items) = (0u64, 0u64);
        let mut damaged = Vec::new();
        let mut end = None;
        'segments: for (seg, file, extent) in plan {
            let mut pos = if seg == start.seg {
                start
            } else {
                Pos {
                    seg,
                    offset: 0,
                    index: 0,
                }
            };
            let mut reader = ChunkReader::new(&file, extent.len);
            while pos.offset < extent.len {
                // What is left of the budget, up to a chunk at a time (one record may go over
                // it): a batch is usually capped by items long before bytes, and reading more
                // than it takes would cost reads and memory for nothing.
                let budget =
                    max_bytes.saturating_sub(bytes).min(CHUNK as u64) as usize + HEADER_LEN;
                let (frame, chunk) = match reader.frame_at(pos.offset, budget)? {
                    Ok(found) => found,
                    Err(_) => {
                        damaged.push((seg, pos.offset));
                        let next = resync(&file, pos.offset, extent.len)?;
                        pos.offset = next.map_or(extent.len, |(offset, _)| offset);
                        if let Some((_, f)) = next {
                            pos.index = f.index;
                        }
                        continue;
                    }
                };
                if frame.kind == Kind::Seal {
                    break;
                }
                let next = Pos {
                    seg,
                    offset: pos.offset + frame.len as u64,
                    index: frame.index + 1,
                };
                if frame.seq > after {
                    let size = frame.payload_len() as u64;
                    let more = u64::from(frame.header.items);
                    if !out.is_empty() && (bytes + size > max_bytes || items + more > max_items) {
                        break 'segments;
                    }
                    bytes += size;
                    items += more;
                    out.push(Record {
                        seq: frame.seq,
                        header: frame.header,
                        payload: chunk.slice(HEADER_LEN..frame.len),
                    });
                    end = Some((frame.seq, next));
                }
                pos = next;
            }
        }
        let mut state = self.state();
        let mut new_damage = 0;
        for at in damaged {
            if state.damaged.insert(at) {
                new_damage += 1;
                tracing::error!(stream = self.name, segment = %segment_path(&state.dir, at.0).display(), offset = at.1, "a damaged frame in a spool segment was skipped: the record in it is lost");
            }
        }
        if let Some((seq, next)) = end {
            state.remember(seq, next);
        }
        Ok((out, new_damage))
    }

    /// Deletes every record up to sequence `up_to` (acknowledged by all). Cheap when a reader
    /// just read up to there (the usual case: the position is remembered).
    pub fn delete_through(&self, up_to: u64) -> io::Result<()> {
        let mut state = self.state();
        let hint = state.hint(up_to);
        state.delete_through(up_to, hint)
    }

    /// The oldest record not deleted: its sequence and header (`None`: the stream is empty).
    pub fn first(&self) -> io::Result<Option<(u64, RecordHeader)>> {
        let state = self.state();
        Ok(state.frame_at_head()?.map(|f| (f.seq, f.header)))
    }

    /// Deletes the oldest record (eviction, expiry); what it was.
    pub fn delete_first(&self) -> io::Result<Option<(u64, RecordHeader)>> {
        let mut state = self.state();
        let Some(frame) = state.frame_in_front()? else {
            return Ok(None);
        };
        state.move_head_past(&frame);
        Ok(Some((frame.seq, frame.header)))
    }

    /// Closes the stream's only segment when every record in it is deleted, however short it
    /// is (a drained segment is otherwise kept until it is worth a new file): the spool unlinks
    /// it with the next index flush, and the next write starts a new one. For a purge, which
    /// gives the disk back at once.
    pub fn release_drained(&self) {
        let mut state = self.state();
        let releasable = state.segments.len() == 1
            && state.segments.front().is_some_and(|s| {
                // A segment with a record is named below every sequence still to come.
                s.written.records > 0
                    && state.head.offset >= s.written.len
                    && s.durable.len == s.written.len
            });
        if releasable {
            state.pop_front();
        }
    }

    /// The newest durable record's sequence (`None`: no record in any segment).
    pub fn last_seq(&self) -> Option<u64> {
        let state = self.state();
        state
            .segments
            .iter()
            .rev()
            .find(|s| s.durable.records > 0)
            .map(|s| s.last_seq)
    }

    /// Records and bytes not deleted.
    pub fn live(&self) -> (u64, u64) {
        let state = self.state();
        state.live()
    }

    /// Records and bytes after sequence `after`, and the receive time of the first of them.
    pub fn pending_after(&self, after: u64) -> io::Result<(u64, u64, Option<u64>)> {
        let state = self.state();
        let start = state.locate(after)?;
        let (records, bytes) = state.live();
        // Records between the head and `start`, which `after` already has.
        let (done_records, done_bytes) = state.between(state.head, start);
        let oldest = match state.frame_at(start)? {
            Some(f) if f.seq > after => Some(f.header.received_ms),
            _ => None,
        };
        Ok((
            records.saturating_sub(done_records),
            bytes.saturating_sub(done_bytes),
            oldest,
        ))
    }

    /// Segment files that every record has left, for the spool to unlink once what deleted them
    /// is durable.
    pub fn take_deletable(&self) -> Vec<PathBuf> {
        std::mem::take(&mut self.state().deletable)
    }

    /// Segment files and the bytes they take.
    pub fn files(&self) -> (u64, u64) {
        let state = self.state();
        let bytes = state
            .segments
            .iter()
            .map(|s| s.file.metadata().map_or(s.written.len, |m| m.len()))
            .sum();
        (state.segments.len() as u64, bytes)
    }

    /// Makes the next sync fail, as a failing disk would.
    #[cfg(test)]
    pub fn fail_next_sync(&self) {
        self.state().fail_next_sync = true;
    }

    /// Whether no sync is failing or stuck.
    pub fn healthy(&self) -> bool {
        self.commit.healthy() && !self.state().poisoned
    }
}

impl State {
    fn live(&self) -> (u64, u64) {
        (
            self.total_records - u64::from(self.head.index),
            self.total_bytes - self.head.offset,
        )
    }

    /// Records and bytes from `from` up to `to` (both positions in this stream, `from` first).
    fn between(&self, from: Pos, to: Pos) -> (u64, u64) {
        let (mut records, mut bytes) = (0u64, 0u64);
        for s in &self.segments {
            if s.first_seq < from.seg || s.first_seq > to.seg {
                continue;
            }
            let start = if s.first_seq == from.seg {
                (from.index, from.offset)
            } else {
                (0, 0)
            };
            let end = if s.first_seq == to.seg {
                (to.index, to.offset)
            } else {
                (s.written.records, s.written.len)
            };
            records += u64::from(end.0.saturating_sub(start.0));
            bytes += end.1.saturating_sub(start.1);
        }
        (records, bytes)
    }

    /// Where a read for records after `after` starts: a remembered position, or the start of the
    /// segment that may hold `after + 1` (frames up to `after` are skipped as they are read), but
    /// never before the head.
    fn start_after(&self, after: u64) -> Pos {
        if let Some(pos) = self.hint(after) {
            if (pos.seg, pos.offset) >= (self.head.seg, self.head.offset) {
                return pos;
            }
        }
        let seg = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= after.saturating_add(1))
            .map(|s| s.first_seq);
        match seg {
            Some(seg) if seg > self.head.seg => Pos {
                seg,
                offset: 0,
                index: 0,
            },
            _ => self.head,
        }
    }

    /// The exact position of the first record after `after` (or the end): from
    /// [`State::start_after`], walking headers past the records up to `after`.
    fn locate(&self, after: u64) -> io::Result<Pos> {
        let mut pos = self.start_after(after);
        let from = pos.seg;
        for s in self.segments.iter().filter(|s| s.first_seq >= from) {
            if s.first_seq > pos.seg {
                pos = Pos::start(s.first_seq);
            }
            let mut reader = ChunkReader::new(&s.file, s.durable.len);
            while pos.offset < s.durable.len {
                match reader.header_at(pos.offset)? {
                    Ok(f) if f.kind == Kind::Record && f.seq <= after => {
                        pos.offset += f.len as u64;
                        pos.index = f.index + 1;
                    }
                    Ok(f) if f.kind == Kind::Record => return Ok(pos),
                    // A seal, or damage (which reading reports): on to the next segment.
                    _ => break,
                }
            }
        }
        Ok(pos)
    }

    fn hint(&self, after: u64) -> Option<Pos> {
        self.hints
            .iter()
            .rev()
            .find(|(a, _)| *a == after)
            .map(|(_, p)| *p)
    }

    fn remember(&mut self, after: u64, pos: Pos) {
        if self.hint(after) == Some(pos) {
            return;
        }
        if self.hints.len() == HINTS {
            self.hints.pop_front();
        }
        self.hints.push_back((after, pos));
    }

    fn segment(&self, seg: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.first_seq == seg)
    }

    /// The record frame at `pos` if it is durable (skipping to the next segment at an end).
    fn frame_at(&self, pos: Pos) -> io::Result<Option<Frame>> {
        let mut pos = pos;
        loop {
            let Some(segment) = self.segment(pos.seg) else {
                return Ok(None);
            };
            if pos.offset < segment.durable.len {
                let mut reader = ChunkReader::new(&segment.file, segment.durable.len);
                match reader.header_at(pos.offset)? {
                    Ok(frame) if frame.kind == Kind::Record => return Ok(Some(frame)),
                    Ok(_) => {}
                    Err(_) => {
                        // Damage: the reader reports it; here, the next good frame.
                        match resync(&segment.file, pos.offset, segment.durable.len)? {
                            Some((_, f)) if f.kind == Kind::Record => return Ok(Some(f)),
                            _ => {}
                        }
                    }
                }
            }
            let next = self.segments.iter().find(|s| s.first_seq > pos.seg);
            let Some(next) = next else { return Ok(None) };
            pos = Pos::start(next.first_seq);
        }
    }

    fn frame_at_head(&self) -> io::Result<Option<Frame>> {
        self.frame_at(self.head)
    }

    /// Moves the head past every record up to `up_to`; `hint` is the position after `up_to` if
    /// known. Segments the head leaves become deletable; a drained active segment of some size
    /// is closed first so that it can go too.
    fn delete_through(&mut self, up_to: u64, hint: Option<Pos>) -> io::Result<()> {
        if let Some(to) = hint.filter(|p| self.segment(p.seg).is_some()) {
            while self.segments.front().is_some_and(|s| s.first_seq < to.seg) {
                self.pop_front();
            }
            if (to.seg, to.offset) > (self.head.seg, self.head.offset) {
                self.head = to;
            }
        } else {
            while let Some(front) = self.segments.front() {
                // Whole segments when their last record is covered, without reading them.
                if front.last_seq <= up_to
                    && !front.active
                    && front.durable.len == front.written.len
                {
                    self.pop_front();
                    continue;
                }
                let Some(frame) = self.frame_in_front()? else {
                    break;
                };
                if frame.seq > up_to {
                    break;
                }
                self.move_head_past(&frame);
            }
        }
        self.close_drained();
        Ok(())
    }

    /// Deletes `frame`, the record at the head.
    fn move_head_past(&mut self, frame: &FrontFrame) {
        self.head.index = frame.index + 1;
        self.head.offset = frame.offset_end;
        self.close_drained();
    }

    /// The durable record at the head, if it is in `segments[0]` (with where it ends).
    fn frame_in_front(&mut self) -> io::Result<Option<FrontFrame>> {
        loop {
            let Some(front) = self.segments.front() else {
                return Ok(None);
            };
            if self.head.offset >= front.durable.len {
                if front.active || front.durable.len < front.written.len {
                    return Ok(None);
                }
                self.pop_front();
                continue;
            }
            let mut reader = ChunkReader::new(&front.file, front.durable.len);
            let found = match reader.header_at(self.head.offset)? {
                Ok(f) if f.kind == Kind::Record => Some((self.head.offset, f)),
                Ok(_) => None,
                Err(_) => resync(&front.file, self.head.offset, front.durable.len)?
                    .filter(|(_, f)| f.kind == Kind::Record),
            };
            match found {
                Some((offset, frame)) => {
                    return Ok(Some(FrontFrame {
                        seq: frame.seq,
                        header: frame.header,
                        index: frame.index,
                        offset_end: offset + frame.len as u64,
                    }))
                }
                None => {
                    // Nothing readable up to the end: the rest of this segment is gone.
                    self.head.offset = front.durable.len;
                    self.head.index = front.durable.records;
                }
            }
        }
    }

    fn pop_front(&mut self) {
        let Some(front) = self.segments.pop_front() else {
            return;
        };
        self.total_records -= u64::from(front.written.records);
        self.total_bytes -= front.written.len;
        self.deletable.push(front.path);
        self.head = Pos::start(self.segments.front().map_or(0, |s| s.first_seq));
        self.hints.retain(|(_, p)| p.seg != front.first_seq);
    }

    /// Closes the only segment once it is drained and long enough to be worth a new file.
    fn close_drained(&mut self) {
        let Some(front) = self.segments.front() else {
            return;
        };
        let drained = self.segments.len() == 1
            && self.head.offset >= front.written.len
            && front.durable.len == front.written.len;
        if drained && (front.written.len >= ROLL_DRAINED_AT || !front.active) {
            // The next append starts a new file; this one goes once the head's move is durable.
            self.pop_front();
        }
    }

    /// Closes the active segment (sealed, its tail synced by the next sync) and creates the
    /// next one, named `next_seq` (at least one above the newest name).
    fn start_segment(&mut self, next_seq: u64) -> io::Result<()> {
        let name = self
            .segments
            .back()
            .map_or(next_seq, |s| next_seq.max(s.first_seq + 1));
        if let Some(last) = self.segments.back_mut().filter(|s| s.active) {
            last.active = false;
            if self.poisoned {
                // Never trusted again past what was synced; its unsynced tail is not read.
                self.total_records -= u64::from(last.written.records - last.durable.records);
                self.total_bytes -= last.written.len - last.durable.len;
                last.written = last.durable;
                let _ = last.file.set_len(last.durable.len);
                self.cut.push((last.first_seq, last.durable.len));
            } else {
                // Its tail is synced by the next sync, whether or not the seal is written.
                self.unsynced
                    .push((last.first_seq, Arc::clone(&last.file), last.written));
                let header = RecordHeader {
                    items: 0,
                    received_ms: last.newest_ms,
                };
                let next = name.to_be_bytes();
                let seal = record::encode_header(
                    Kind::Seal,
                    last.written.records,
                    last.last_seq,
                    header,
                    &next,
                );
                if let Err(e) = write_frame_at(&last.file, last.written.len, &seal, &next) {
                    // Unsealed, it is read whole at the next open: slower, not wrong.
                    tracing::warn!(segment = %last.path.display(), error = %e, "sealing a spool segment failed");
                }
                crash::point("roll.sealed");
            }
        }
        self.poisoned = false;
        let path = segment_path(&self.dir, name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        crash::point("roll.created");
        self.dir_unsynced = true;
        let empty = self.segments.is_empty();
        self.segments.push_back(Segment {
            first_seq: name,
            path,
            file: Arc::new(file),
            written: Extent::default(),
            durable: Extent::default(),
            last_seq: 0,
            newest_ms: 0,
            active: true,
        });
        if empty {
            self.head = Pos::start(name);
        }
        Ok(())
    }
}

struct FrontFrame {
    seq: u64,
    header: RecordHeader,
    index: u32,
    offset_end: u64,
}

/// The stream's group commit: syncs the directory if a segment was created, the tails of
/// segments closed since the last sync, then the active segment, and publishes what became
/// durable. A failure poisons the active segment (the next append starts a new one) and leaves
/// its durable length where it was, so the appends it covered fail.
struct StreamSync {
    state: Arc<Mutex<State>>,
    name: &'static str,
    /// The spool's, after syncs (saving the durable mark).
    housekeeping: Box<dyn Fn() + Send>,
}

impl Flush for StreamSync {
    fn flush(&mut self) -> Result<(), String> {
        let (dir, dir_unsynced, closed, active) = {
            let mut state = self.state.lock().expect("spool stream lock poisoned");
            #[cfg(test)]
            if std::mem::take(&mut state.fail_next_sync) {
                tracing::error!(stream = self.name, "injected sync failure");
                state.poisoned = true;
                return Ok(());
            }
            let active = state
                .segments
                .back()
                .filter(|s| s.active && s.written.len > s.durable.len && !state.poisoned)
                .map(|s| (s.first_seq, Arc::clone(&s.file), s.written));
            (
                state.dir.clone(),
                std::mem::take(&mut state.dir_unsynced),
                std::mem::take(&mut state.unsynced),
                active,
            )
        };
        let synced = (|| -> io::Result<()> {
            if dir_unsynced {
                File::open(&dir)?.sync_all()?;
            }
            for (_, file, _) in &closed {
                sync_data(file)?;
            }
            if let Some((_, file, _)) = &active {
                sync_data(file)?;
            }
            Ok(())
        })();
        crash::point("sync.synced");
        let mut state = self.state.lock().expect("spool stream lock poisoned");
        if let Err(e) = synced {
            tracing::error!(stream = self.name, error = %e, "syncing a spool segment failed: the requests waiting on it get 503; later ones go to a new segment");
            state.poisoned = true;
            return Ok(());
        }
        for (seg, _, extent) in closed.into_iter().chain(active) {
            if let Some(s) = state.segments.iter_mut().find(|s| s.first_seq == seg) {
                if extent.len > s.durable.len {
                    s.durable = extent;
                }
            }
        }
        Ok(())
    }

    fn housekeep(&mut self) {
        (self.housekeeping)();
    }

    fn has_housekeeping(&self) -> bool {
        true
    }
}

/// `fdatasync`, or on macOS `F_FULLFSYNC`: there `fsync` leaves the data in the drive's cache,
/// which a power cut loses.
pub fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor this File owns; F_FULLFSYNC takes no pointer.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) } == 0 {
            return Ok(());
        }
        // Some file systems (network, FUSE) refuse it: the ordinary sync is what they offer.
    }
    file.sync_data()
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:016x}.seg"))
}

fn create_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reads frames from one file through a buffer of [`CHUNK`] bytes (or one frame, if larger).
struct ChunkReader<'a> {
    file: &'a File,
    end: u64,
    buf: Bytes,
    buf_at: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, end: u64) -> Self {
        ChunkReader {
            file,
            end,
            buf: Bytes::new(),
            buf_at: 0,
        }
    }

    /// Makes `[offset, offset + len)` (clamped to the end) readable from `buf`, reading at least
    /// `want` bytes when it must read.
    fn fill(&mut self, offset: u64, len: usize, want: usize) -> io::Result<()> {
        let have =
            offset >= self.buf_at && offset + len as u64 <= self.buf_at + self.buf.len() as u64;
        if have {
            return Ok(());
        }
        let size = (len.max(want) as u64).min(self.end.saturating_sub(offset)) as usize;
        let mut buf = vec![0; size];
        self.file.read_exact_at(&mut buf, offset)?;
        self.buf = Bytes::from(buf);
        self.buf_at = offset;
        Ok(())
    }

    fn slice(&self, offset: u64, len: usize) -> &[u8] {
        let from = (offset - self.buf_at) as usize;
        let to = (from + len).min(self.buf.len());
        &self.buf[from..to]
    }

    /// The whole frame at `offset`, checked, and the buffer holding it (its bytes start at
    /// `frame`'s offset in the returned `Bytes`).
    fn frame_at(
        &mut self,
        offset: u64,
        want: usize,
    ) -> io::Result<Result<(Frame, Bytes), FrameError>> {
        let want = want.clamp(HEADER_LEN, record::MAX_FRAME);
        self.fill(offset, HEADER_LEN, want)?;
        let len = match record::peek_len(self.slice(offset, HEADER_LEN)) {
            Ok(len) if offset + len as u64 <= self.end => len,
            Ok(len) => {
                return Ok(Err(FrameError::Short {
                    have: (self.end - offset) as usize,
                    need: len,
                }))
            }
            Err(e) => return Ok(Err(e)),
        };
        self.fill(offset, len, want)?;
        let from = (offset - self.buf_at) as usize;
        let bytes = self.buf.slice(from..from + len);
        Ok(record::decode(&bytes).map(|f| (f, bytes)))
    }

    /// The header of the frame at `offset`, its length checked against the end but its payload
    /// not read (deletion and status only need the header).
    fn header_at(&mut self, offset: u64) -> io::Result<Result<Frame, FrameError>> {
        if self.end.saturating_sub(offset) < HEADER_LEN as u64 {
            return Ok(Err(FrameError::Short {
                have: self.end.saturating_sub(offset) as usize,
                need: HEADER_LEN,
            }));
        }
        let mut header = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut header, offset)?;
        Ok(record::decode_header(&header).and_then(|f| {
            if offset + f.len as u64 <= self.end {
                Ok(f)
            } else {
                Err(FrameError::Short {
                    have: (self.end - offset) as usize,
                    need: f.len,
                })
            }
        }))
    }
}

/// The next whole, checked frame at or after `from + 1` and before `end` (a damaged frame's
/// length cannot be trusted, so every offset is tried).
fn resync(file: &File, from: u64, end: u64) -> io::Result<Option<(u64, Frame)>> {
    let mut reader = ChunkReader::new(file, end);
    let mut offset = from + 1;
    while offset + HEADER_LEN as u64 <= end {
        reader.fill(offset, HEADER_LEN, CHUNK)?;
        let head = reader.slice(offset, HEADER_LEN);
        // Cheap tests before the CRC: kind, version, reserved bytes.
        if matches!(head[8], 1 | 2) && head[9] == record::FORMAT_VERSION && head[10..12] == [0, 0] {
            if let Ok(Ok((frame, _))) = reader.frame_at(offset, CHUNK) {
                return Ok(Some((offset, frame)));
            }
        }
        offset += 1;
    }
    Ok(None)
}

/// What [`recover`] found in one file.
struct Found {
    extent: Extent,
    last_seq: u64,
    newest_received_ms: u64,
    damaged: u64,
    /// Bytes after the last good frame of the newest segment.
    torn: u64,
    /// The segment that followed this one when it was sealed (`None`: not sealed, or the last).
    next: Option<u64>,
}

/// Writes a frame (its header, then its payload) at `offset` with `pwritev`: the kernel takes
/// both parts, so a request's payload is never copied into a joined buffer.
fn write_frame_at(
    file: &File,
    mut offset: u64,
    header: &[u8; HEADER_LEN],
    payload: &[u8],
) -> io::Result<()> {
    let mut parts = [IoSlice::new(header), IoSlice::new(payload)];
    let mut left = &mut parts[..];
    while !left.is_empty() {
        match rustix::io::pwritev(file, left, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut left, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A seal frame: the header, then the name (first sequence) of the next segment (0: none).
pub const SEAL_LEN: usize = HEADER_LEN + 8;

fn seal_next(seal: &[u8]) -> Option<u64> {
    let next = u64::from_be_bytes(seal.get(HEADER_LEN..SEAL_LEN)?.try_into().ok()?);
    (next != 0).then_some(next)
}

/// Reads a segment at open: a closed one by its seal alone when it has one, otherwise every
/// frame, checked. In the newest segment, bad bytes after the last good frame are a torn tail;
/// anywhere else a bad frame is damage (the good frames after it are kept).
fn recover(file: &File, newest: bool) -> io::Result<Found> {
    let len = file.metadata()?.len();
    if !newest && len >= SEAL_LEN as u64 {
        let mut seal = [0u8; SEAL_LEN];
        file.read_exact_at(&mut seal, len - SEAL_LEN as u64)?;
        if let Ok(f) = record::decode(&seal) {
            if f.kind == Kind::Seal && f.len == SEAL_LEN {
                return Ok(Found {
                    extent: Extent {
                        len: len - SEAL_LEN as u64,
                        records: f.index,
                    },
                    last_seq: f.seq,
                    newest_received_ms: f.header.received_ms,
                    damaged: 0,
                    torn: 0,
                    next: seal_next(&seal),
                });
            }
        }
    }
    let mut found = Found {
        extent: Extent::default(),
        last_seq: 0,
        newest_received_ms: 0,
        damaged: 0,
        torn: 0,
        next: None,
    };
    let mut reader = ChunkReader::new(file, len);
    let mut offset = 0;
    let mut good_end = 0;
    let mut pending_damage = 0;
    let mut sealed_at = None;
    while offset < len {
        match reader.frame_at(offset, CHUNK)? {
            Ok((f, _)) if f.kind == Kind::Record => {
                found.extent.records = f.index + 1;
                found.last_seq = f.seq;
                found.newest_received_ms = found.newest_received_ms.max(f.header.received_ms);
                offset += f.len as u64;
                good_end = offset;
                // Good frames after bad ones: the bad ones were damage, not a torn tail.
                found.damaged += pending_damage;
                pending_damage = 0;
            }
            Ok((f, bytes)) => {
                // The seal: nothing follows, and it is not data.
                found.next = seal_next(&bytes);
                sealed_at = Some(offset);
                good_end = offset + f.len as u64;
                break;
            }
            Err(_) => match resync(file, offset, len)? {
                Some((next, _)) => {
                    pending_damage += 1;
                    offset = next;
                }
                None => break,
            },
        }
    }
    if !newest {
        found.damaged += pending_damage;
    }
    found.extent.len = sealed_at.unwrap_or(good_end);
    found.torn = len - good_end;
    Ok(found)
}
