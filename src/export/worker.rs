//! The export loop of one destination and one signal.
//!
//! ```text
//! loop: read records after the cursor ─▶ (linger if the batch could still grow) ─▶ send
//!       delivered ─▶ ack (cursor moves, spool may delete)      413 ─▶ split and send halves
//!       retryable ─▶ back off (jittered, Retry-After)          401/403 ─▶ wait retry.max
//!       refused   ─▶ dead-letter, then ack                     held (3xx, untrusted
//!                                                                certificate) ─▶ wait retry.max
//! ```
//!
//! A 413 halves the batch at resource boundaries until the pieces fit. A piece the upstream
//! refuses (400-class, or one resource still too large) is dead-lettered while the other
//! pieces are still sent; a retryable, auth or held failure of any piece retries the whole
//! batch.
//!
//! Dead letters asked to be replayed (`otlp-spool dead-letters replay`) are taken before the
//! next batch, by this destination's worker for their signal only ([`Spool::next_replay`]), and
//! sent the same way; a piece refused again becomes a new dead letter that is not replayed by
//! itself, and a retryable failure retries the replay like a batch. The cursor does not move for
//! them: they are not in the signal's stream any more.
//!
//! A backoff or 401/403 wait ends early when the machine was suspended during it or the network
//! changed ([`pause_unless_woken`]), so a laptop that wakes or joins a network retries at once.
//!
//! Each attempt tells the upstream where its bytes came from ([`Source`]: the records' sequence
//! numbers and which of the batch's resources each holds, or a replay), for a destination that
//! keeps state per spool position. Resources are counted, not bytes: redaction re-encodes a
//! batch but keeps every resource in its order, and a 413 splits between resources, so a
//! resource's position is the same whatever the rules and the pieces.
//!
//! Each attempt re-reads the batch from the spool, so records expired or evicted while the
//! worker waited are not sent. With nothing to send the worker sleeps on the spool's durable
//! sequence (no polling). Owns no data: the spool and the cursor are the state.

use std::borrow::Cow;
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::retry::{pause_unless_woken, Backoff, RetryPolicy, Woken};
use super::{Outcome, Refusal, Source, Upstream};
use crate::config::BatchConfig;
use crate::observe::{now_ms, RetryState, WorkerStats};
use crate::otlp::{count_items, entry_offsets, split_in_two, Signal};
use crate::redact::{Counts, Redactor};
use crate::spool::{DeadLetter, Record, Spool};

pub struct Worker {
    pub destination: String,
    pub signal: Signal,
    pub spool: Spool,
    pub upstream: Arc<Upstream>,
    /// The destination's `[destination.redact]` rules, applied to every batch before it is
    /// sent (and split); dead letters keep what was sent.
    pub redactor: Option<Arc<Redactor>>,
    pub batch: BatchConfig,
    pub retry: RetryPolicy,
    pub stats: Arc<WorkerStats>,
}

impl Worker {
    pub async fn run(self, stop: CancellationToken) {
        tokio::select! {
            _ = self.run_until_stopped() => {}
            _ = stop.cancelled() => {}
        }
    }

    async fn run_until_stopped(&self) {
        let mut newest = self.spool.subscribe(self.signal);
        let mut replays = self.spool.subscribe_replays();
        let mut cursor = self.spool.cursor(&self.destination, self.signal);
        let mut trouble = Trouble {
            failures: 0,
            backoff: self.retry.backoff(),
        };
        // The stats outlive a reload's restart of this worker; its predecessor's failures are
        // not this worker's (it would report them until its own next failure).
        self.stats.set_retry(RetryState::Ready);
        loop {
            // Taken before the reads: an append that becomes durable (or a replay asked for)
            // after this moment raises its watch above it, so an empty read can never miss
            // one, nor spin on an old value.
            let seen = *newest.borrow_and_update();
            replays.borrow_and_update();
            // Dead letters asked to be replayed go before the next batch.
            if let Some(id) = self.spool.next_replay(&self.destination, self.signal) {
                match self.replay(id).await {
                    Ok(()) => self.recovered(&mut trouble),
                    Err(failure) => self.wait_out(failure, &mut trouble).await,
                }
                continue;
            }
            let batch = match self.spool.read(
                self.signal,
                cursor,
                self.batch.max_bytes.0,
                self.batch.max_items,
            ) {
                Ok(b) => b,
                Err(e) => {
                    self.stats.set_last_error(e.to_string());
                    tokio::time::sleep(self.retry.slow()).await;
                    continue;
                }
            };
            let Some(last) = batch.last().map(|r| r.seq) else {
                // Nothing to send: sleep until a newer record is durable or a replay is asked.
                tokio::select! {
                    durable = newest.wait_for(|n| *n > seen) => if durable.is_err() { return },
                    asked = replays.changed() => if asked.is_err() { return },
                }
                continue;
            };
            let newest_seq = *newest.borrow();
            if let Some(wait) = self.linger_left(&batch, newest_seq) {
                tokio::time::sleep(wait).await;
                continue;
            }
            if let Err(failure) = self.deliver(&batch).await {
                self.wait_out(failure, &mut trouble).await;
                continue;
            }
            self.recovered(&mut trouble);
            if let Err(e) = self.spool.ack(&self.destination, self.signal, last) {
                tracing::error!(destination = %self.destination, signal = self.signal.name(), error = %e, "saving the cursor failed; the batch may be sent again");
            }
            cursor = last;
        }
    }

    /// Reports a failure [`Self::deliver`] or [`Self::replay`] returned and waits before the
    /// next attempt: a backoff, or the slow pace for 401/403 and held failures. Only the
    /// upstream's Retry-After keeps a network change from ending the wait early.
    async fn wait_out(&self, failure: Outcome, trouble: &mut Trouble) {
        trouble.failures += 1;
        let (pause, asked_for) = match &failure {
            Outcome::Retry { retry_after, .. } => (
                trouble.backoff.next_delay(*retry_after),
                retry_after.unwrap_or_default(),
            ),
            _ => (self.retry.slow(), Duration::ZERO),
        };
        self.report_failure(failure, trouble.failures, pause);
        if let Some(woken) = pause_unless_woken(pause, asked_for).await {
            let why = match woken {
                Woken::FromSleep => "the machine was asleep",
                Woken::ByNetworkChange => "the network changed",
            };
            tracing::info!(destination = %self.destination, signal = self.signal.name(), "{why}; retrying now instead of finishing the backoff");
            trouble.backoff = self.retry.backoff();
        }
    }

    /// After a send that needs no retry: ends a run of failures.
    fn recovered(&self, trouble: &mut Trouble) {
        if trouble.failures > 0 {
            tracing::info!(destination = %self.destination, signal = self.signal.name(), failures = trouble.failures, "upstream accepts data again");
            trouble.failures = 0;
            trouble.backoff = self.retry.backoff();
            self.stats.set_retry(RetryState::Ready);
        }
    }

    /// Sends dead letter `id` again (a replay asked for with `otlp-spool dead-letters
    /// replay`). `Ok` once every piece was delivered or refused again (kept as a new dead
    /// letter, not replayed by itself: no loop); else the failure to retry it after.
    async fn replay(&self, id: u64) -> Result<(), Outcome> {
        let (letter, payload) = match self.spool.dead_letter_payload(id) {
            Ok(Some(found)) => found,
            // Purged or pushed out by the cap since the replay was asked for (then it is not
            // offered again), or unreadable now (then its replay is dropped).
            Ok(None) => {
                if let Err(e) = self.spool.abandon_replay(id) {
                    tracing::error!(id, error = %e, "dropping the replay of an unreadable dead letter failed");
                }
                return Ok(());
            }
            Err(error) => {
                return Err(Outcome::Retry {
                    retry_after: None,
                    error,
                })
            }
        };
        tracing::info!(destination = %self.destination, signal = self.signal.name(), id, items = letter.info.items, "replaying a dead letter");
        let origin = Origin {
            seqs: letter.info.seqs[0]..=letter.info.seqs[1],
            received_ms: letter.info.received_ms,
            replay_of: Some(id),
            replays: letter.info.replays + 1,
        };
        self.send_payload(&payload, letter.info.items, &origin, &[])
            .await?;
        if let Err(e) = self.spool.replayed(&letter) {
            tracing::error!(id, error = %e, "recording a dead letter's replay failed; it may be replayed again");
        }
        Ok(())
    }

    /// How much longer to wait for a partial batch to fill: the oldest record waits `linger` at
    /// most, and a batch that is full or has more records behind it goes at once.
    fn linger_left(&self, batch: &[Record], newest: u64) -> Option<Duration> {
        let items: u64 = batch.iter().map(|r| u64::from(r.header.items)).sum();
        let bytes: u64 = batch.iter().map(|r| r.payload().len() as u64).sum();
        let more_behind = batch.last().is_some_and(|r| newest > r.seq);
        if more_behind || items >= self.batch.max_items || bytes >= self.batch.max_bytes.0 {
            return None;
        }
        let linger = self.batch.linger.as_millis() as u64;
        let left = (batch[0].header.received_ms + linger).saturating_sub(now_ms());
        // More than `linger` left means the wall clock was set back since the record arrived
        // (its receive time lies in the future): waiting could strand it for hours, so go now.
        (left > 0 && left <= linger).then(|| Duration::from_millis(left))
    }

    /// Sends one batch. `Ok` when the cursor may move past it: every piece of it was delivered
    /// or refused (refused pieces are dead-lettered first); else the failure to retry it after
    /// (`Retry`, `AuthFailed` or `Held`).
    async fn deliver(&self, batch: &[Record]) -> Result<(), Outcome> {
        // Concatenated Export*ServiceRequests are one valid request (their resources merge).
        let payload = batch
            .iter()
            .map(|r| r.payload())
            .collect::<Vec<_>>()
            .concat();
        let items: u64 = batch.iter().map(|r| u64::from(r.header.items)).sum();
        let records = first_resources(batch.iter().map(|r| (r.seq, r.payload())));
        let origin = Origin {
            seqs: batch[0].seq..=batch[batch.len() - 1].seq,
            // Receive times never go backwards: the first record is the oldest.
            received_ms: Some(batch[0].header.received_ms),
            replay_of: None,
            replays: 0,
        };
        self.send_payload(&payload, items, &origin, &records).await
    }

    /// Sends `payload` (`items` items, from `origin`; the stream's `records`, with the index in
    /// `payload` of each one's first resource, or none for a replay) with the destination's
    /// redaction rules
    /// applied, dead-lettering the pieces the upstream refuses; counts what was delivered and
    /// redacted. `Ok` when nothing is left to retry.
    async fn send_payload(
        &self,
        payload: &[u8],
        items: u64,
        origin: &Origin,
        records: &[(u64, usize)],
    ) -> Result<(), Outcome> {
        let (redacted_payload, redacted) = match &self.redactor {
            None => (Cow::Borrowed(payload), Counts::default()),
            Some(redactor) => match redactor.apply(self.signal, payload) {
                Ok(done) => done,
                // The spool validated it at ingest, so only damage the CRC missed gets here;
                // sending it unredacted is not an option.
                Err(e) => {
                    let error = format!(
                        "the batch does not decode as {} ({e}), so this destination's redact \
                         rules cannot be applied; it is kept as a dead letter, not sent",
                        self.signal.name()
                    );
                    let piece = RefusedPiece::new(
                        self.signal,
                        payload,
                        0..payload.len(),
                        Refusal::local(error),
                    );
                    self.dead_letter(payload, &piece, origin).await;
                    return Ok(());
                }
            },
        };
        let payload = &*redacted_payload;
        let mut sent = Sent::default();
        let whole = Piece {
            payload,
            offset: 0,
            first_resource: 0,
        };
        self.send_splitting(whole, records, &mut sent).await?;
        self.stats.redacted(redacted);
        let refused_items: u64 = sent.refused.iter().map(|p| p.items).sum();
        let delivered_items = items.saturating_sub(refused_items);
        if sent.requests > 0 {
            self.stats
                .sent_items
                .fetch_add(delivered_items.saturating_sub(sent.rejected_items), Relaxed);
            self.stats.sent_requests.fetch_add(sent.requests, Relaxed);
            self.stats.last_success_ms.store(now_ms(), Relaxed);
        }
        if sent.rejected_items > 0 {
            let message = sent.messages.join("; ");
            let rejected_items = sent.rejected_items;
            self.stats
                .partial_rejected_items
                .fetch_add(rejected_items, Relaxed);
            tracing::warn!(destination = %self.destination, signal = self.signal.name(), rejected_items, message = %message, "upstream accepted the batch in part");
            self.stats.set_last_error(format!(
                "partial success: {rejected_items} items rejected: {message}"
            ));
        }
        for piece in &sent.refused {
            self.dead_letter(&payload[piece.bytes.clone()], piece, origin)
                .await;
        }
        Ok(())
    }

    /// Keeps one refused piece of a batch in the spool's dead-letter stream.
    async fn dead_letter(&self, payload: &[u8], piece: &RefusedPiece, origin: &Origin) {
        let items = piece.items;
        let refusal = &piece.refusal;
        tracing::error!(destination = %self.destination, signal = self.signal.name(), items, error = %refusal.error, "upstream refused the data; dead-lettered");
        self.stats.dead_lettered_items.fetch_add(items, Relaxed);
        self.stats
            .set_last_error(format!("dead-lettered {items} items: {}", refusal.error));
        let letter = DeadLetter {
            seqs: origin.seqs.clone(),
            items,
            payload,
            reason: &refusal.error,
            status: refusal.status,
            message: &refusal.message,
            received_ms: origin.received_ms,
            replay_of: origin.replay_of,
            replays: origin.replays,
        };
        if let Err(e) = self
            .spool
            .dead_letter(&self.destination, self.signal, letter)
            .await
        {
            tracing::error!(error = %e, "storing the dead letter failed; the refused data is dropped");
        }
    }

    /// Sends `piece` of the batch `records` came from, halving it at resource boundaries on
    /// every 413 until the pieces fit. A piece the upstream refuses (4xx, or a single resource
    /// still too large) is noted in `sent` and the other pieces still go: one bad resource does
    /// not sink its batch. A retryable, auth or held failure of any piece stops the batch
    /// (`Err`), to be retried whole (pieces already delivered may arrive twice).
    async fn send_splitting(
        &self,
        piece: Piece<'_>,
        records: &[(u64, usize)],
        sent: &mut Sent,
    ) -> Result<(), Outcome> {
        self.stats.attempts.fetch_add(1, Relaxed);
        let payload = piece.payload;
        let outcome = self
            .upstream
            .send(self.signal, payload, piece.source(records))
            .await;
        if !matches!(outcome, Outcome::Delivered { .. }) {
            self.stats.failed_attempts.fetch_add(1, Relaxed);
        }
        let bytes = piece.offset..piece.offset + payload.len();
        match outcome {
            Outcome::Delivered {
                rejected_items,
                message,
            } => {
                sent.requests += 1;
                sent.rejected_items += rejected_items;
                if !message.is_empty() {
                    sent.messages.push(message);
                }
                Ok(())
            }
            Outcome::Refused(refusal) => {
                sent.refused
                    .push(RefusedPiece::new(self.signal, payload, bytes, refusal));
                Ok(())
            }
            Outcome::TooLarge(error) => {
                let Some((first, second)) = piece.halves() else {
                    let error = format!(
                        "{error} (a single resource's data, which cannot be split further)"
                    );
                    sent.refused.push(RefusedPiece::new(
                        self.signal,
                        payload,
                        bytes,
                        Refusal {
                            status: Some(413),
                            message: error.clone(),
                            error,
                        },
                    ));
                    return Ok(());
                };
                tracing::info!(destination = %self.destination, bytes = payload.len(), "upstream said 413; splitting the batch in two");
                Box::pin(self.send_splitting(first, records, sent)).await?;
                Box::pin(self.send_splitting(second, records, sent)).await
            }
            failure @ (Outcome::Retry { .. } | Outcome::AuthFailed(_) | Outcome::Held(_)) => {
                Err(failure)
            }
        }
    }

    /// Logs and shows a failure [`Self::deliver`] returned.
    fn report_failure(&self, failure: Outcome, failures: u64, pause: Duration) {
        let (consecutive_failures, next_attempt_ms) =
            (failures, now_ms() + pause.as_millis() as u64);
        let (retry, error) = match failure {
            Outcome::Retry { error, .. } => (
                RetryState::Backoff {
                    consecutive_failures,
                    next_attempt_ms,
                },
                error,
            ),
            Outcome::AuthFailed(error) => (
                RetryState::AuthFailed {
                    consecutive_failures,
                    next_attempt_ms,
                },
                error,
            ),
            Outcome::Held(error) => (
                RetryState::Held {
                    consecutive_failures,
                    next_attempt_ms,
                },
                error,
            ),
            other => unreachable!("deliver fails only with Retry, AuthFailed or Held: {other:?}"),
        };
        tracing::warn!(destination = %self.destination, signal = self.signal.name(), %error, retry_in = ?pause, failures, "upstream attempt failed; data kept");
        self.stats.set_last_error(error);
        self.stats.set_retry(retry);
    }
}

/// What the pieces of one batch came to, when none of them must be retried.
#[derive(Default)]
struct Sent {
    /// Requests the upstream accepted.
    requests: u64,
    /// Items rejected in OTLP partial successes, and the upstream's messages.
    rejected_items: u64,
    messages: Vec<String>,
    /// Pieces of the batch the upstream refused.
    refused: Vec<RefusedPiece>,
}

/// A piece of a batch the upstream refused: where it is in the batch, its items, and why.
struct RefusedPiece {
    bytes: Range<usize>,
    items: u64,
    refusal: Refusal,
}

impl RefusedPiece {
    fn new(signal: Signal, payload: &[u8], bytes: Range<usize>, refusal: Refusal) -> RefusedPiece {
        RefusedPiece {
            items: count_items(signal, payload).unwrap_or(0),
            bytes,
            refusal,
        }
    }
}

/// Where the data a worker sends came from, as its dead letters record it.
struct Origin {
    seqs: RangeInclusive<u64>,
    received_ms: Option<u64>,
    /// The dead letter being replayed, and how many of its replays were refused with this one.
    replay_of: Option<u64>,
    replays: u32,
}

/// A run of failed attempts: how many, and the backoff that paces them.
struct Trouble {
    failures: u64,
    backoff: Backoff,
}

/// A piece of a batch being sent, and where it starts in the batch: at byte `offset` (what a
/// refused piece's dead letter keeps) and at resource `first_resource` (what [`Source`] says).
#[derive(Clone, Copy)]
struct Piece<'a> {
    payload: &'a [u8],
    offset: usize,
    first_resource: usize,
}

impl<'a> Piece<'a> {
    /// The piece halved at a resource boundary ([`split_in_two`]); `None` for a single resource.
    fn halves(self) -> Option<(Piece<'a>, Piece<'a>)> {
        let (first, second) = split_in_two(self.payload)?;
        // A cut between well-formed entries leaves a well-formed first half.
        let resources_in_first = entry_offsets(first).map_or(0, |starts| starts.len());
        let second = Piece {
            payload: second,
            offset: self.offset + first.len(),
            first_resource: self.first_resource + resources_in_first,
        };
        Some((
            Piece {
                payload: first,
                ..self
            },
            second,
        ))
    }

    /// Where the piece came from, given its batch's `records` (none for a replay).
    fn source(self, records: &[(u64, usize)]) -> Source<'_> {
        match records {
            [] => Source::Replay,
            records => Source::Stream {
                records,
                first_resource: self.first_resource,
            },
        }
    }
}

/// Each record's sequence number and the index of its first resource in the batch the records'
/// payloads make when concatenated: a walk of each record's top-level fields (no decoding),
/// once per read of the batch.
fn first_resources<'a>(records: impl Iterator<Item = (u64, &'a [u8])>) -> Vec<(u64, usize)> {
    let mut first = 0;
    records
        .map(|(seq, payload)| {
            let at = (seq, first);
            // The spool validated every record at ingest, so this walks; a damaged record would
            // count no resource (remote write refuses a batch that is not a run of resources).
            first += entry_offsets(payload).map_or(0, |starts| starts.len());
            at
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use prost::Message;

    use super::*;
    use crate::export::prw::positions;
    use crate::otlp::ExportMetricsServiceRequest;
    use crate::redact::RedactConfig;

    /// A request of one resource per address, each with that `user.email`.
    fn request(addresses: &[&str]) -> Vec<u8> {
        let resource = |address: &&str| ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "user.email".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(address.to_string())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: addresses.iter().map(resource).collect(),
        }
        .encode_to_vec()
    }

    /// The pieces 413s would make of `piece`, halving until each is a single resource.
    fn split_to_single_resources(piece: Piece<'_>) -> Vec<Piece<'_>> {
        match piece.halves() {
            None => vec![piece],
            Some((first, second)) => {
                let mut pieces = split_to_single_resources(first);
                pieces.extend(split_to_single_resources(second));
                pieces
            }
        }
    }

    #[test]
    fn resource_positions_are_the_same_with_or_without_redaction_and_across_413_splits() {
        // Records 7 (two resources), 8 (none), 9 (one), 10 (three), concatenated as the worker
        // does; redaction deletes every address, so each resource's bytes move.
        let parts = [
            request(&["a-long-address@example.com", "b@example.com"]),
            request(&[]),
            request(&["c-long-address@example.com"]),
            request(&["d@example.com", "e@example.com", "f@example.com"]),
        ];
        let records = first_resources([7, 8, 9, 10].into_iter().zip(parts.iter().map(|p| &p[..])));
        assert_eq!(records, vec![(7, 0), (8, 2), (9, 2), (10, 3)]);
        let batch = parts.concat();
        let rules = r#"
            hmac_key = "0123456789abcdef0123456789abcdef"
            delete = ["user.email"]
        "#;
        let rules: RedactConfig = toml::from_str(rules).unwrap();
        let redactor = Redactor::new(&rules).unwrap();
        let (redacted, _) = redactor.apply(Signal::Metrics, &batch).unwrap();
        assert!(
            redacted.len() < batch.len(),
            "the rules re-encoded the batch"
        );
        let expected: Vec<Option<(u64, u64)>> = [(7, 0), (7, 1), (9, 0), (10, 0), (10, 1), (10, 2)]
            .into_iter()
            .map(Some)
            .collect();
        for (sent, payload) in [("as stored", &batch[..]), ("redacted", &redacted)] {
            let whole = Piece {
                payload,
                offset: 0,
                first_resource: 0,
            };
            let at_once = positions(payload, whole.source(&records));
            assert_eq!(at_once.as_ref(), Some(&expected), "{sent}, in one request");
            let pieces = split_to_single_resources(whole);
            assert_eq!(
                pieces.len(),
                expected.len(),
                "{sent}: one piece per resource"
            );
            let piece_by_piece: Vec<_> = pieces
                .iter()
                .flat_map(|piece| positions(piece.payload, piece.source(&records)).unwrap())
                .collect();
            assert_eq!(piece_by_piece, expected, "{sent}, split on 413s");
        }
        let replayed = positions(
            &batch,
            Piece {
                payload: &batch,
                offset: 0,
                first_resource: 0,
            }
            .source(&[]),
        );
        assert_eq!(replayed, Some(vec![None; expected.len()]));
    }
}
