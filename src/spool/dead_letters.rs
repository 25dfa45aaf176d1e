//! The dead-letter stream: data an upstream refused for good, kept with why it was refused, for
//! `otlp-spool dead-letters` to list, show, replay and purge.
//!
//! A dead letter is one record of the `dead_letter` stream: a JSON description line
//! ([`LetterInfo`]), a newline, then the refused canonical protobuf. Its id is its sequence
//! number (never reused). Descriptions written before replay existed lack `received_ms`,
//! `status`, `message`, `replay_of` and `replays`: they read as absent (the status is taken from
//! the reason's `HTTP <code>` when it has one), so every spool since version 1 still lists.
//!
//! Like every stream, dead letters are deleted from the front only. So purging a letter, or
//! delivering its replay, writes a mark in the index (tree `dead_letter_marks`, id → [`Mark`])
//! that hides it at once; then the front run of hidden letters is deleted, and a stream left
//! with no letter closes its segment whatever its size. Purging all letters, or the oldest ones,
//! thus gives their disk back at once (a purge returns after the index flush that unlinks the
//! segments); a letter purged from the middle gives its space back when the letters before it
//! go. Marks at or below the stream's floor are garbage, removed as the floor passes them and at
//! open.
//!
//! Replay marks a letter `replay` with its destination and signal: only that destination's
//! worker for that signal takes it ([`Spool::next_replay`]), before its next batch, and reports
//! back with [`Spool::replayed`] once every piece was delivered or dead-lettered again (or with
//! [`Spool::abandon_replay`] if the letter can no longer be read). A piece
//! refused again becomes a new dead letter (`replay_of`, `replays` + 1) that is not replayed
//! unless asked again: a refusal never loops. A replay that fails retryably waits and is retried
//! like any batch.
//!
//! The cap (`max_bytes / 16`, at least 1 MiB) deletes the oldest letters first; those it deletes
//! unpurged (replay pending or not) are counted in the index (`meta` key `dead_letters_capped`),
//! so `status` says so across restarts.
//!
//! This file knows the description's fields, not OTLP and not HTTP: the status code and
//! message are what the export worker recorded.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{now_ms, record, MutexGuard, RecordHeader, Spool, SpoolError, State, Store};
use crate::otlp::Signal;

/// The index tree of marks, and the `meta` key of the cap's count.
const MARKS_TREE: &str = "dead_letter_marks";
const CAPPED_KEY: &str = "dead_letters_capped";
/// Index of the dead-letter stream among the spool's streams.
const STREAM: usize = 3;
/// How much of the stream a listing reads at once.
const LIST_CHUNK: u64 = 4 << 20;

/// Data an upstream refused for good, to be kept for inspection and replay.
pub struct DeadLetter<'a> {
    /// The spool records the data came from (first and last sequence).
    pub seqs: RangeInclusive<u64>,
    pub items: u64,
    pub payload: &'a [u8],
    /// The whole error, as `status` shows it.
    pub reason: &'a str,
    /// The upstream's HTTP status (`None`: refused before it was sent).
    pub status: Option<u16>,
    /// The upstream's own message.
    pub message: &'a str,
    /// When the agent received the data (its oldest record), ms since the epoch.
    pub received_ms: Option<u64>,
    /// The dead letter whose replay this was refused in, and how many replays were refused.
    pub replay_of: Option<u64>,
    pub replays: u32,
}

/// A dead letter's description line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LetterInfo {
    pub destination: String,
    pub signal: String,
    pub seqs: [u64; 2],
    pub items: u64,
    /// When the upstream refused it, ms since the epoch.
    pub dead_lettered_ms: u64,
    pub reason: String,
    #[serde(default)]
    pub received_ms: Option<u64>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub replay_of: Option<u64>,
    #[serde(default)]
    pub replays: u32,
}

impl LetterInfo {
    pub fn signal(&self) -> Option<Signal> {
        Signal::from_name(&self.signal)
    }
}

/// One dead letter as held.
#[derive(Debug, Clone, Serialize)]
pub struct StoredLetter {
    pub id: u64,
    #[serde(flatten)]
    pub info: LetterInfo,
    /// Bytes of the refused protobuf.
    pub bytes: u64,
    /// Whether a replay was asked for and is not done yet.
    pub replay_pending: bool,
    /// Its frame's bytes in the stream (what purging it gives back).
    #[serde(skip)]
    pub frame_bytes: u64,
}

/// Which dead letters a replay or purge is about.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(Vec<u64>),
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Replayed {
    /// Marked for replay by their destination's worker.
    pub replayed: Vec<u64>,
    /// No such dead letter (purged, replayed, pushed out by the cap, or never there).
    pub unknown: Vec<u64>,
    /// Their destination no longer routes their signal: nothing would send them.
    pub not_routed: Vec<u64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Purged {
    pub purged: Vec<u64>,
    pub unknown: Vec<u64>,
    /// Bytes of the purged letters' frames.
    pub bytes: u64,
}

/// What the index says of one dead letter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mark", rename_all = "snake_case")]
pub(super) enum Mark {
    /// Purged, or its replay done: hidden, and deleted once it reaches the front.
    Gone { frame_bytes: u64 },
    /// To be sent again by `destination`'s worker for `signal`.
    Replay { destination: String, signal: String },
}

/// The marks, as in the index, and the cap's count.
#[derive(Debug, Default)]
pub(super) struct Marks {
    marks: BTreeMap<u64, Mark>,
    capped_records: u64,
    capped_items: u64,
}

impl Marks {
    /// Reads the marks of `db`, removing those at or below `floor` (their letters are gone).
    pub(super) fn load(db: &sled::Db, floor: u64) -> sled::Result<Marks> {
        let tree = db.open_tree(MARKS_TREE)?;
        let mut marks = Marks::default();
        for entry in tree.iter() {
            let (key, value) = entry?;
            let id = super::seq_of(&key);
            match serde_json::from_slice::<Mark>(&value) {
                Ok(mark) if id > floor => {
                    marks.marks.insert(id, mark);
                }
                Ok(_) => {
                    tree.remove(&key)?;
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "ignoring an unreadable dead-letter mark");
                }
            }
        }
        let meta = db.open_tree("meta")?;
        if let Some(v) = meta.get(CAPPED_KEY)? {
            if let Ok([records, items]) = serde_json::from_slice::<[u64; 2]>(&v) {
                (marks.capped_records, marks.capped_items) = (records, items);
            }
        }
        Ok(marks)
    }

    fn gone(&self, id: u64) -> bool {
        matches!(self.marks.get(&id), Some(Mark::Gone { .. }))
    }
}

/// Dead-letter counts for `usage()`.
pub(super) struct LetterUsage {
    /// Letters and frame bytes hidden (purged, replayed) but not yet deleted.
    pub hidden_records: u64,
    pub hidden_bytes: u64,
    pub replays_pending: u64,
    pub capped_records: u64,
    pub capped_items: u64,
}

/// Splits a dead letter's value into its description and the refused protobuf.
fn parse(id: u64, value: &[u8]) -> Result<(LetterInfo, &[u8]), String> {
    let newline = value
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| format!("dead letter {id} has no description line"))?;
    let mut info: LetterInfo = serde_json::from_slice(&value[..newline])
        .map_err(|e| format!("dead letter {id}'s description is not readable: {e}"))?;
    if info.status.is_none() {
        // Letters from before the status was recorded: their reason reads "HTTP 400 Bad …".
        info.status = info
            .reason
            .strip_prefix("HTTP ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok());
    }
    Ok((info, &value[newline + 1..]))
}

impl Spool {
    /// The marks, taken after the state lock when both are held.
    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.inner
            .marks
            .lock()
            .expect("dead-letter marks lock poisoned")
    }

    fn marks_tree(&self, store: &Store) -> Result<sled::Tree, SpoolError> {
        store
            .db
            .open_tree(MARKS_TREE)
            .map_err(|e| self.fail_on_index_error(store, "opening the dead-letter marks", e))
    }

    /// The dead letters' cap: a sixteenth of the spool, at least 1 MiB.
    fn dead_letter_cap(&self) -> u64 {
        (self.inner.limits.max_bytes / 16).max(1 << 20)
    }

    /// Keeps data that `destination` refused for good, with why, in the capped dead-letter
    /// stream (the oldest letters go first once it holds `max_bytes / 16`). Returns its id once
    /// it is durable: the records it came from are acknowledged next.
    pub async fn dead_letter(
        &self,
        destination: &str,
        signal: Signal,
        letter: DeadLetter<'_>,
    ) -> Result<u64, SpoolError> {
        let refused_ms = now_ms();
        let info = LetterInfo {
            destination: destination.to_string(),
            signal: signal.name().to_string(),
            seqs: [*letter.seqs.start(), *letter.seqs.end()],
            items: letter.items,
            dead_lettered_ms: refused_ms,
            reason: letter.reason.to_string(),
            received_ms: letter.received_ms,
            status: letter.status,
            message: Some(letter.message.to_string()),
            replay_of: letter.replay_of,
            replays: letter.replays,
        };
        let mut value = serde_json::to_vec(&info).expect("a description serializes");
        value.push(b'\n');
        value.extend_from_slice(letter.payload);
        let header = RecordHeader {
            items: u32::try_from(letter.items).unwrap_or(u32::MAX),
            received_ms: refused_ms,
        };
        let stream = &self.inner.streams[STREAM];
        let written = stream
            .write(&self.inner.links.next_seq, header, &value)
            .map_err(|e| SpoolError::Segment(format!("storing a dead letter: {e}")))?;
        stream
            .wait_durable(&written)
            .await
            .map_err(SpoolError::Segment)?;
        let store = self.store()?;
        let mut state = self.state();
        state.dropped.dead_letter_records += 1;
        state.dropped.dead_letter_items += letter.items;
        let mut marks = self.marks();
        let (mut capped_records, mut capped_items) = (0, 0);
        while stream.live().1 > self.dead_letter_cap() {
            let Some((id, header)) = self.delete_front_letter(&store, &mut state)? else {
                break;
            };
            if !marks.gone(id) {
                capped_records += 1;
                capped_items += u64::from(header.items);
            }
            self.forget_mark(&store, &mut marks, id)?;
        }
        if capped_records > 0 {
            marks.capped_records += capped_records;
            marks.capped_items += capped_items;
            let count = serde_json::to_vec(&[marks.capped_records, marks.capped_items])
                .expect("two numbers serialize");
            store
                .db
                .open_tree("meta")
                .and_then(|meta| meta.insert(CAPPED_KEY, count))
                .map_err(|e| self.fail_on_index_error(&store, "counting capped dead letters", e))?;
            tracing::warn!(
                letters = capped_records,
                items = capped_items,
                "the dead-letter store is full (spool.max_bytes / 16): deleted its oldest letters"
            );
        }
        drop((marks, state));
        store.commit.flush_soon();
        Ok(written.seq)
    }

    /// Deletes the oldest dead letter (marked or not); its id and header.
    fn delete_front_letter(
        &self,
        store: &Store,
        state: &mut State,
    ) -> Result<Option<(u64, RecordHeader)>, SpoolError> {
        let stream = &self.inner.streams[STREAM];
        let front = stream
            .first()
            .map_err(|e| SpoolError::Segment(format!("reading the dead letters: {e}")))?;
        let Some((id, _)) = front else {
            return Ok(None);
        };
        let deleted = self.delete_first(store, state, STREAM)?;
        Ok(deleted.map(|header| (id, header)))
    }

    fn forget_mark(&self, store: &Store, marks: &mut Marks, id: u64) -> Result<(), SpoolError> {
        if marks.marks.remove(&id).is_some() {
            self.marks_tree(store)?
                .remove(id.to_be_bytes())
                .map_err(|e| self.fail_on_index_error(store, "removing a dead-letter mark", e))?;
        }
        Ok(())
    }

    fn set_mark(
        &self,
        store: &Store,
        marks: &mut Marks,
        id: u64,
        mark: Mark,
    ) -> Result<(), SpoolError> {
        let value = serde_json::to_vec(&mark).expect("a mark serializes");
        self.marks_tree(store)?
            .insert(id.to_be_bytes(), value)
            .map_err(|e| self.fail_on_index_error(store, "saving a dead-letter mark", e))?;
        marks.marks.insert(id, mark);
        Ok(())
    }

    /// Deletes the hidden letters at the front, and closes the stream's segment once no letter
    /// is left in it, so their disk comes back with the next index flush.
    fn delete_hidden_front(
        &self,
        store: &Store,
        state: &mut State,
        marks: &mut Marks,
    ) -> Result<(), SpoolError> {
        let stream = &self.inner.streams[STREAM];
        loop {
            let front = stream
                .first()
                .map_err(|e| SpoolError::Segment(format!("reading the dead letters: {e}")))?;
            match front {
                Some((id, _)) if marks.gone(id) => {
                    self.delete_front_letter(store, state)?;
                    self.forget_mark(store, marks, id)?;
                }
                _ => break,
            }
        }
        stream.release_drained();
        self.inner.links.deletions.queue(stream.take_deletable());
        Ok(())
    }

    /// Every dead letter held (not purged or replayed), oldest first.
    pub fn dead_letters(&self) -> Result<Vec<StoredLetter>, String> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let batch = self.read_letters(after, LIST_CHUNK)?;
            let Some(last) = batch.last() else {
                return Ok(out);
            };
            after = last.seq;
            let marks = self.marks();
            for record in &batch {
                if let Some(letter) = self.stored_letter(&marks, record)? {
                    out.push(letter.0);
                }
            }
        }
    }

    /// One dead letter and its refused protobuf; `None` if it is not held.
    pub fn dead_letter_payload(&self, id: u64) -> Result<Option<(StoredLetter, Bytes)>, String> {
        let batch = self.read_letters(id.saturating_sub(1), 1)?;
        let Some(record) = batch.first().filter(|r| r.seq == id) else {
            return Ok(None);
        };
        let marks = self.marks();
        Ok(self.stored_letter(&marks, record)?.map(|(letter, offset)| {
            let payload = record.payload.slice(offset..);
            (letter, payload)
        }))
    }

    /// `record` as a held letter, and where its protobuf starts in the payload; `None` if it
    /// is hidden. A letter whose description cannot be read is skipped (and logged).
    fn stored_letter(
        &self,
        marks: &Marks,
        record: &super::Record,
    ) -> Result<Option<(StoredLetter, usize)>, String> {
        let id = record.seq;
        if marks.gone(id) {
            return Ok(None);
        }
        let value = record.payload();
        let (info, protobuf) = match parse(id, value) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(id, error = %e, "skipping an unreadable dead letter");
                return Ok(None);
            }
        };
        let letter = StoredLetter {
            id,
            bytes: protobuf.len() as u64,
            replay_pending: matches!(marks.marks.get(&id), Some(Mark::Replay { .. })),
            frame_bytes: (record::HEADER_LEN + value.len()) as u64,
            info,
        };
        Ok(Some((letter, value.len() - protobuf.len())))
    }

    fn read_letters(&self, after: u64, max_bytes: u64) -> Result<Vec<super::Record>, String> {
        let (records, damaged) = self.inner.streams[STREAM]
            .read(after, max_bytes, u64::MAX)
            .map_err(|e| {
                format!(
                    "reading the dead letters in {}: {e}",
                    self.inner.dir.display()
                )
            })?;
        if damaged > 0 {
            self.state().dropped.unreadable_records += damaged;
        }
        Ok(records)
    }

    /// The held letters `selection` names, and the ids it names that are not held.
    fn select(&self, selection: &Selection) -> Result<(Vec<StoredLetter>, Vec<u64>), String> {
        let held = self.dead_letters()?;
        Ok(match selection {
            Selection::All => (held, Vec::new()),
            Selection::Ids(ids) => {
                let mut found = Vec::new();
                let mut unknown = Vec::new();
                for &id in ids {
                    match held.iter().find(|l| l.id == id) {
                        Some(letter) => found.push(letter.clone()),
                        None => unknown.push(id),
                    }
                }
                (found, unknown)
            }
        })
    }

    /// Marks the selected letters for replay by their destination's worker for their signal
    /// (letters already marked stay marked). Returns once the marks are durable.
    pub async fn replay_dead_letters(&self, selection: &Selection) -> Result<Replayed, String> {
        let (letters, unknown) = self.select(selection)?;
        let store = self.store()?;
        let mut result = Replayed {
            unknown,
            ..Replayed::default()
        };
        {
            let state = self.state();
            let mut marks = self.marks();
            for letter in letters {
                let routed = letter
                    .info
                    .signal()
                    .is_some_and(|signal| state.routes[signal].contains(&letter.info.destination));
                if !routed {
                    result.not_routed.push(letter.id);
                    continue;
                }
                let mark = Mark::Replay {
                    destination: letter.info.destination.clone(),
                    signal: letter.info.signal.clone(),
                };
                self.set_mark(&store, &mut marks, letter.id, mark)?;
                result.replayed.push(letter.id);
            }
        }
        store.commit.wait().await?;
        if !result.replayed.is_empty() {
            self.inner.replays.send_modify(|n| *n += 1);
        }
        Ok(result)
    }

    /// The oldest letter waiting to be replayed by `destination`'s worker for `signal`.
    pub fn next_replay(&self, destination: &str, signal: Signal) -> Option<u64> {
        self.marks()
            .marks
            .iter()
            .find_map(|(&id, mark)| match mark {
                Mark::Replay {
                    destination: d,
                    signal: s,
                } if d == destination && s == signal.name() => Some(id),
                _ => None,
            })
    }

    /// Wakes when a replay is asked for.
    pub fn subscribe_replays(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.replays.subscribe()
    }

    /// The replay of `letter` is done: each piece was delivered, or refused again and kept as
    /// a new dead letter. It is hidden (and deleted once at the front). A letter purged
    /// meanwhile stays purged.
    pub fn replayed(&self, letter: &StoredLetter) -> Result<(), String> {
        let store = self.store()?;
        let mut state = self.state();
        let mut marks = self.marks();
        if !matches!(marks.marks.get(&letter.id), Some(Mark::Replay { .. })) {
            return Ok(());
        }
        let gone = Mark::Gone {
            frame_bytes: letter.frame_bytes,
        };
        self.set_mark(&store, &mut marks, letter.id, gone)?;
        self.delete_hidden_front(&store, &mut state, &mut marks)?;
        drop((marks, state));
        store.commit.flush_soon();
        Ok(())
    }

    /// Drops the replay of `id`, which is not held any more (a damaged frame, an unreadable
    /// description): there is nothing to send, and its worker must not be offered it again.
    pub fn abandon_replay(&self, id: u64) -> Result<(), String> {
        let store = self.store()?;
        let mut marks = self.marks();
        if matches!(marks.marks.get(&id), Some(Mark::Replay { .. })) {
            self.forget_mark(&store, &mut marks, id)?;
            tracing::warn!(
                id,
                "dead letter {id} can no longer be read: its replay is dropped"
            );
        }
        drop(marks);
        store.commit.flush_soon();
        Ok(())
    }

    /// Removes the selected letters. Returns once that is durable and the disk of the letters
    /// that were at the front is given back (see the module docs).
    pub async fn purge_dead_letters(&self, selection: &Selection) -> Result<Purged, String> {
        let (letters, unknown) = self.select(selection)?;
        let store = self.store()?;
        let mut result = Purged {
            unknown,
            ..Purged::default()
        };
        {
            let mut state = self.state();
            let mut marks = self.marks();
            for letter in letters {
                let gone = Mark::Gone {
                    frame_bytes: letter.frame_bytes,
                };
                self.set_mark(&store, &mut marks, letter.id, gone)?;
                result.purged.push(letter.id);
                result.bytes += letter.frame_bytes;
            }
            self.delete_hidden_front(&store, &mut state, &mut marks)?;
        }
        // The flush that carries the floor unlinks the emptied segments before it reports.
        store.commit.wait().await?;
        Ok(result)
    }

    pub(super) fn letter_usage(&self) -> LetterUsage {
        let marks = self.marks();
        let mut usage = LetterUsage {
            hidden_records: 0,
            hidden_bytes: 0,
            replays_pending: 0,
            capped_records: marks.capped_records,
            capped_items: marks.capped_items,
        };
        for mark in marks.marks.values() {
            match mark {
                Mark::Gone { frame_bytes } => {
                    usage.hidden_records += 1;
                    usage.hidden_bytes += frame_bytes;
                }
                Mark::Replay { .. } => usage.replays_pending += 1,
            }
        }
        usage
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;
    use crate::config::WhenFull;
    use crate::spool::{Limits, Routes};

    /// A dead letter of `payload` from record `i`, refused with a 400.
    pub(in crate::spool) fn letter(i: u64, payload: &[u8]) -> DeadLetter<'_> {
        DeadLetter {
            seqs: i..=i,
            items: 2,
            payload,
            reason: "HTTP 400 Bad Request from http://127.0.0.1:9/v1/logs: bad data",
            status: Some(400),
            message: "bad data",
            received_ms: Some(1_000),
            replay_of: None,
            replays: 0,
        }
    }

    fn open(dir: &Path, logs: &[&str]) -> Spool {
        let limits = Limits {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
            when_full: WhenFull::DropOldest,
        };
        let routes = Routes::from([
            vec!["a".into()],
            Vec::new(),
            logs.iter().map(|d| d.to_string()).collect(),
        ]);
        Spool::open(dir, limits, routes).unwrap()
    }

    fn letter_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("seg/dead_letter"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    fn ids(spool: &Spool) -> Vec<u64> {
        spool.dead_letters().unwrap().iter().map(|l| l.id).collect()
    }

    #[tokio::test]
    async fn purged_letters_are_hidden_at_once_and_their_disk_comes_back_from_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), &["a"]);
        let payload = vec![9u8; 10_000];
        let mut written = Vec::new();
        for i in 0..5 {
            let id = spool
                .dead_letter("a", Signal::Logs, letter(i, &payload))
                .await
                .unwrap();
            written.push(id);
        }
        assert_eq!(ids(&spool), written);
        let held = spool.dead_letters().unwrap();
        assert_eq!(held[0].bytes, 10_000);
        assert_eq!(held[0].info.message.as_deref(), Some("bad data"));
        let on_disk = |spool: &Spool| spool.usage().streams["dead_letter"].disk_bytes;
        let full = on_disk(&spool);

        // From the middle: hidden and uncounted at once, its bytes still on disk.
        let purged = spool
            .purge_dead_letters(&Selection::Ids(vec![written[1], 999]))
            .await
            .unwrap();
        assert_eq!(
            (purged.purged, purged.unknown),
            (vec![written[1]], vec![999])
        );
        assert_eq!(
            ids(&spool),
            [written[0], written[2], written[3], written[4]]
        );
        let usage = spool.usage();
        assert_eq!(usage.dead_letter_records, 4);
        assert_eq!(usage.dead_letter_bytes, 4 * held[0].frame_bytes);
        assert_eq!(on_disk(&spool), full);
        assert!(spool.dead_letter_payload(written[1]).unwrap().is_none());

        // Everything: the segment goes, before the purge returns.
        let purged = spool.purge_dead_letters(&Selection::All).await.unwrap();
        assert_eq!(
            purged.purged,
            [written[0], written[2], written[3], written[4]]
        );
        assert!(ids(&spool).is_empty());
        assert_eq!(spool.usage().dead_letter_records, 0);
        assert_eq!(letter_files(dir.path()), Vec::<PathBuf>::new());
        assert_eq!(on_disk(&spool), 0);

        // The stream goes on in a new segment, and nothing purged comes back after a restart.
        let next = spool
            .dead_letter("a", Signal::Logs, letter(9, &payload))
            .await
            .unwrap();
        drop(spool);
        let spool = open(dir.path(), &["a"]);
        assert_eq!(ids(&spool), [next]);
        assert_eq!(spool.usage().dead_letter_records, 1);
    }

    #[tokio::test]
    async fn a_replay_is_for_its_destination_and_signal_only_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), &["a", "b"]);
        let mut asked = spool.subscribe_replays();
        let id = |destination: &'static str| {
            let spool = spool.clone();
            async move {
                spool
                    .dead_letter(destination, Signal::Logs, letter(1, b"x"))
                    .await
                    .unwrap()
            }
        };
        let (for_a, for_b, for_c) = (id("a").await, id("b").await, id("c").await);
        let replayed = spool.replay_dead_letters(&Selection::All).await.unwrap();
        assert_eq!(replayed.replayed, [for_a, for_b]);
        assert_eq!(
            replayed.not_routed,
            [for_c],
            "c routes no logs: nothing would send it"
        );
        assert!(asked.has_changed().unwrap(), "the workers are woken");
        asked.borrow_and_update();
        assert_eq!(spool.next_replay("a", Signal::Logs), Some(for_a));
        assert_eq!(spool.next_replay("a", Signal::Traces), None);
        assert_eq!(spool.next_replay("b", Signal::Logs), Some(for_b));
        let pending: Vec<bool> = spool
            .dead_letters()
            .unwrap()
            .iter()
            .map(|l| l.replay_pending)
            .collect();
        assert_eq!(pending, [true, true, false]);
        assert_eq!(spool.usage().dead_letter_replays_pending, 2);

        // Asked replays survive a restart.
        drop(spool);
        let spool = open(dir.path(), &["a", "b"]);
        assert_eq!(spool.next_replay("a", Signal::Logs), Some(for_a));
        let (letter_a, _) = spool.dead_letter_payload(for_a).unwrap().unwrap();
        spool.replayed(&letter_a).unwrap();
        assert_eq!(spool.next_replay("a", Signal::Logs), None);
        assert_eq!(ids(&spool), [for_b, for_c]);
        // A letter purged while its replay waits is not sent.
        spool
            .purge_dead_letters(&Selection::Ids(vec![for_b]))
            .await
            .unwrap();
        assert_eq!(spool.next_replay("b", Signal::Logs), None);
        assert_eq!(spool.usage().dead_letter_replays_pending, 0);
        assert_eq!(ids(&spool), [for_c]);
    }

    /// A letter that cannot be read any more (here a flipped byte in its frame) is not offered
    /// for replay again once its worker found it gone.
    #[tokio::test]
    async fn the_replay_of_a_damaged_letter_is_dropped() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = open(dir.path(), &["a"]);
        let id = spool
            .dead_letter("a", Signal::Logs, letter(1, &[7; 64]))
            .await
            .unwrap();
        spool
            .replay_dead_letters(&Selection::Ids(vec![id]))
            .await
            .unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&letter_files(dir.path())[0])
            .unwrap();
        file.write_all_at(&[0xFF], 100).unwrap();
        assert_eq!(spool.next_replay("a", Signal::Logs), Some(id));
        assert!(spool.dead_letter_payload(id).unwrap().is_none());
        spool.abandon_replay(id).unwrap();
        assert_eq!(spool.next_replay("a", Signal::Logs), None);
        assert_eq!(spool.usage().dead_letter_replays_pending, 0);
    }

    #[test]
    fn descriptions_without_the_newer_fields_still_read() {
        // As written by version 1 (tests/fixtures/spool-v1) and by version 2 before replay.
        let old = b"{\"dead_lettered_ms\":1796304894472,\"destination\":\"a\",\"items\":4,\
            \"reason\":\"HTTP 400 Bad Request from http://127.0.0.1:43181/a/v1/logs: malformed\",\
            \"seqs\":[3,3],\"signal\":\"logs\"}\n\x0a\x02";
        let (info, protobuf) = parse(7, old).unwrap();
        assert_eq!(info.status, Some(400), "taken from the reason");
        assert_eq!(info.received_ms, None);
        assert_eq!(info.message, None);
        assert_eq!((info.replay_of, info.replays), (None, 0));
        assert_eq!(info.signal(), Some(Signal::Logs));
        assert_eq!(protobuf, b"\x0a\x02");
        let local = b"{\"dead_lettered_ms\":1,\"destination\":\"a\",\"items\":4,\"reason\":\
            \"could not render the batch\",\"seqs\":[3,3],\"signal\":\"logs\"}\n";
        assert_eq!(parse(8, local).unwrap().0.status, None);
        assert!(parse(9, b"no newline")
            .unwrap_err()
            .contains("dead letter 9"));
    }
}
