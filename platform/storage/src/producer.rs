//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence and offset
//! ranges of its last five batches. `PartitionLog::append` consults it before assigning offsets, so a
//! retried batch gets its original offsets back instead of being written twice, and a gap or reorder
//! in sequence numbers is refused. `PartitionLog::open` rebuilds it by walking batch headers, or,
//! after a clean shutdown, loads the snapshot `close` wrote (encoded here), so a clean restart does not
//! read the last day of data.
//!
//! Transactions live here too, as in Kafka's producer state: a producer whose transactional batches
//! have no marker yet has an ongoing transaction starting at its first such batch. The smallest of
//! those first offsets is the partition's last stable offset (LSO); a commit or abort marker ends the
//! transaction, and an abort yields the aborted range that read_committed fetches report.
//!
//! Snapshot format (big-endian): crc32c u32 of everything after it, version u8, log end offset i64,
//! producer count u32, then per producer: id i64, epoch i16, last timestamp i64, ongoing transaction
//! first offset i64 (-1 for none), batch count u8, and per batch first sequence i32, last sequence i32,
//! first offset i64, last offset i64.
//!
//! Producers are forgotten `producer.id.expiration.ms` (`LogConfig::producer_id_expiration_ms`,
//! default `PRODUCER_ID_EXPIRATION_MS`) after their last write, by broker time (when the batch was
//! appended, not the timestamps the client wrote in it, which may be days old or years ahead), so the
//! table does not grow forever and a producer writing old records keeps its duplicate detection.

use std::collections::{BTreeSet, HashMap};

use crate::batch::{BatchHeader, ControlType, Reader};
use crate::error::StorageError;

/// How many recent batches per producer are remembered for duplicate detection (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub(crate) const PRODUCER_BATCHES_CACHED: usize = 5;
/// Kafka's default `producer.id.expiration.ms`: one day.
pub(crate) const PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;
/// Largest snapshot file `open` reads (over a million producers); a larger one is ignored and the
/// state is rebuilt from the log instead.
pub(crate) const PRODUCER_SNAPSHOT_BYTES_MAX: u64 = 256 * 1024 * 1024;
const SNAPSHOT_VERSION: u8 = 2;
/// Bytes of one producer in a snapshot without its batches, and of one batch.
const SNAPSHOT_PRODUCER_BYTES: usize = 8 + 2 + 8 + 8 + 1;
const SNAPSHOT_BATCH_BYTES: usize = 4 + 4 + 8 + 8;

/// Sequence and offset range of one appended batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CachedBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first; only the first `len` are meaningful. A fixed array, so tracking a producer costs
    /// no allocation beyond the map slot.
    batches: [CachedBatch; PRODUCER_BATCHES_CACHED],
    len: usize,
    /// Broker time of the producer's last append, for expiration.
    last_timestamp: i64,
    /// First offset of the producer's ongoing transaction in this partition; -1 when none.
    txn_first_offset: i64,
}

impl ProducerEntry {
    fn new(epoch: i16, last_timestamp: i64) -> ProducerEntry {
        ProducerEntry { epoch, batches: [CachedBatch::default(); PRODUCER_BATCHES_CACHED], len: 0, last_timestamp, txn_first_offset: -1 }
    }

    fn cached(&self) -> &[CachedBatch] {
        self.batches.get(..self.len).unwrap_or_default()
    }

    fn latest(&self) -> Option<&CachedBatch> {
        self.cached().last()
    }

    fn push(&mut self, batch: CachedBatch) {
        if self.len == PRODUCER_BATCHES_CACHED {
            self.batches.rotate_left(1);
            if let Some(last) = self.batches.last_mut() {
                *last = batch;
            }
        } else if let Some(slot) = self.batches.get_mut(self.len) {
            *slot = batch;
            self.len += 1;
        }
    }
}

/// What an idempotent batch is, given the producer's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// The next batch in sequence (or the first from this producer or epoch): append it.
    Append,
    /// A retry of a batch already in the log: return its offsets, append nothing.
    Duplicate(CachedBatch),
}

/// The epoch and last sequence a producer would have after earlier batches of the same append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
}

/// A transaction that ended with an abort marker: read_committed consumers drop the producer's
/// records from `first_offset` up to the marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Default)]
pub(crate) struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    /// (first offset, producer id) of every ongoing transaction; its first element bounds the LSO.
    ongoing: BTreeSet<(i64, i64)>,
}

/// The sequence number `delta` after `sequence`, wrapping from i32::MAX to 0 as Kafka's do.
pub(crate) fn increment_sequence(sequence: i32, delta: i32) -> i32 {
    let delta = delta.max(0);
    if sequence > i32::MAX - delta { delta - (i32::MAX - sequence) - 1 } else { sequence + delta }
}

impl ProducerStateTable {
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// Checks one idempotent batch. `pending` holds the state left by earlier batches of the same
    /// append (not yet recorded); a producer found there is checked against it, and duplicates are
    /// recognised only against batches already in the log, and only when `allow_duplicate`.
    pub(crate) fn check(&self, header: &BatchHeader, pending: &[Pending], allow_duplicate: bool) -> Result<SequenceCheck, StorageError> {
        let producer_id = header.producer_id;
        let first_sequence = header.base_sequence;
        let last_sequence = increment_sequence(first_sequence, header.last_offset_delta);
        let (epoch, latest_sequence, cached) = match pending.iter().rev().find(|p| p.producer_id == producer_id) {
            Some(p) => (p.epoch, p.last_sequence, &[][..]),
            None => match self.producers.get(&producer_id) {
                Some(entry) => match entry.latest() {
                    Some(latest) => (entry.epoch, latest.last_sequence, entry.cached()),
                    // Known only from a marker (which carries no sequence): any sequence may start,
                    // but not from an older epoch.
                    None if header.producer_epoch < entry.epoch => {
                        return Err(StorageError::InvalidProducerEpoch { producer_id, current: entry.epoch, got: header.producer_epoch });
                    }
                    None => return Ok(SequenceCheck::Append),
                },
                // Unknown producer (new, or expired): accept whatever sequence it starts at, as Kafka
                // does since KIP-360, rather than failing every producer after an expiration.
                None => return Ok(SequenceCheck::Append),
            },
        };
        if header.producer_epoch < epoch {
            return Err(StorageError::InvalidProducerEpoch { producer_id, current: epoch, got: header.producer_epoch });
        }
        if header.producer_epoch > epoch {
            // A bumped epoch restarts the sequence.
            if first_sequence != 0 {
                return Err(StorageError::OutOfOrderSequence { producer_id, expected: 0, got: first_sequence });
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(original) =
            cached.iter().filter(|_| allow_duplicate).find(|b| b.first_sequence == first_sequence && b.last_sequence == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate(*original));
        }
        let expected = increment_sequence(latest_sequence, 1);
        if first_sequence != expected {
            return Err(StorageError::OutOfOrderSequence { producer_id, expected, got: first_sequence });
        }
        Ok(SequenceCheck::Append)
    }

    /// Records an idempotent batch appended at broker time `append_ms` (with its final offsets). Also
    /// used when rebuilding from the log and for offset-preserving appends, where batches are taken as
    /// they are.
    pub(crate) fn record(&mut self, header: &BatchHeader, append_ms: i64) {
        let batch = CachedBatch {
            first_sequence: header.base_sequence,
            last_sequence: increment_sequence(header.base_sequence, header.last_offset_delta),
            first_offset: header.base_offset,
            last_offset: header.last_offset(),
        };
        let entry = self.producers.entry(header.producer_id).or_insert_with(|| ProducerEntry::new(header.producer_epoch, append_ms));
        if header.producer_epoch != entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.len = 0;
        }
        entry.push(batch);
        entry.last_timestamp = append_ms;
        if header.is_transactional() && entry.txn_first_offset < 0 {
            entry.txn_first_offset = header.base_offset;
            self.ongoing.insert((header.base_offset, header.producer_id));
        }
    }

    /// Refuses a marker from an epoch older than the producer's: a fenced coordinator request.
    pub(crate) fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), StorageError> {
        match self.producers.get(&producer_id) {
            Some(entry) if epoch < entry.epoch => Err(StorageError::InvalidProducerEpoch { producer_id, current: entry.epoch, got: epoch }),
            _ => Ok(()),
        }
    }

    /// The aborted-transaction entry `record_marker` would return for this marker, without changing
    /// anything: the log writes it to the index file before the transaction ends in memory.
    pub(crate) fn aborted_by_marker(&self, header: &BatchHeader, control: ControlType) -> Option<AbortedTxn> {
        let first_offset = self.producers.get(&header.producer_id)?.txn_first_offset;
        (control == ControlType::Abort && first_offset >= 0).then_some(AbortedTxn {
            producer_id: header.producer_id,
            first_offset,
            last_offset: header.base_offset,
        })
    }

    /// Records an appended (or recovered) transaction marker: it ends the producer's ongoing
    /// transaction, if any, and raises its epoch to the marker's (a fencing abort carries a bumped
    /// epoch). Returns the aborted range for an abort that ended a transaction.
    pub(crate) fn record_marker(&mut self, header: &BatchHeader, control: ControlType, append_ms: i64) -> Option<AbortedTxn> {
        let entry = self.producers.entry(header.producer_id).or_insert_with(|| ProducerEntry::new(header.producer_epoch, append_ms));
        if header.producer_epoch > entry.epoch {
            entry.epoch = header.producer_epoch;
            entry.len = 0;
        }
        entry.last_timestamp = entry.last_timestamp.max(append_ms);
        let first_offset = std::mem::replace(&mut entry.txn_first_offset, -1);
        if first_offset < 0 {
            return None;
        }
        self.ongoing.remove(&(first_offset, header.producer_id));
        (control == ControlType::Abort).then_some(AbortedTxn {
            producer_id: header.producer_id,
            first_offset,
            last_offset: header.base_offset,
        })
    }

    /// The producer's current epoch, if it is known here.
    pub(crate) fn epoch(&self, producer_id: i64) -> Option<i16> {
        self.producers.get(&producer_id).map(|e| e.epoch)
    }

    /// First offset of the oldest ongoing transaction: nothing at or after it is stable.
    pub(crate) fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.first().map(|(offset, _)| *offset)
    }

    /// (producer id, first offset) of every ongoing transaction, oldest first.
    pub(crate) fn ongoing_transactions(&self) -> Vec<(i64, i64)> {
        self.ongoing.iter().map(|(offset, producer)| (*producer, *offset)).collect()
    }

    /// Forgets producers whose last append was before `cutoff_ms`, except those in a transaction:
    /// their state bounds the last stable offset until a marker ends it.
    pub(crate) fn expire(&mut self, cutoff_ms: i64) {
        self.producers.retain(|_, entry| entry.last_timestamp >= cutoff_ms || entry.txn_first_offset >= 0);
    }

    /// Forgets producers whose last batch lies below `fence` (or that wrote no batch), except those
    /// in a transaction. See `PartitionLog::fence_producers`.
    /// A producer kept (it wrote after the fence, as after a rebuild from the log) keeps only its
    /// batches from after the fence.
    pub(crate) fn forget_before(&mut self, fence: i64) {
        self.producers.retain(|_, entry| {
            let kept: Vec<CachedBatch> = entry.cached().iter().filter(|b| b.last_offset >= fence).copied().collect();
            entry.len = 0;
            for batch in kept {
                entry.push(batch);
            }
            entry.txn_first_offset >= 0 || entry.len > 0
        });
    }

    /// The snapshot of this state, taken at `log_end_offset`.
    pub(crate) fn encode_snapshot(&self, log_end_offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + 1 + 8 + 4 + self.producers.len() * (SNAPSHOT_PRODUCER_BYTES + PRODUCER_BATCHES_CACHED * SNAPSHOT_BATCH_BYTES),
        );
        out.extend_from_slice(&[0; 4]);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&log_end_offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (producer_id, entry) in &self.producers {
            out.extend_from_slice(&producer_id.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.last_timestamp.to_be_bytes());
            out.extend_from_slice(&entry.txn_first_offset.to_be_bytes());
            out.push(entry.len as u8);
            for batch in entry.cached() {
                out.extend_from_slice(&batch.first_sequence.to_be_bytes());
                out.extend_from_slice(&batch.last_sequence.to_be_bytes());
                out.extend_from_slice(&batch.first_offset.to_be_bytes());
                out.extend_from_slice(&batch.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(out.get(4..).unwrap_or_default());
        if let Some(head) = out.first_chunk_mut::<4>() {
            *head = crc.to_be_bytes();
        }
        out
    }

    /// Decodes a snapshot: the log end offset it was taken at and the state. `None` for anything that
    /// is not an intact snapshot of this version.
    pub(crate) fn decode_snapshot(bytes: &[u8]) -> Option<(i64, ProducerStateTable)> {
        let mut r = Reader::new(bytes);
        let crc = r.u32()?;
        if crc32c::crc32c(bytes.get(4..)?) != crc || r.i8()? as u8 != SNAPSHOT_VERSION {
            return None;
        }
        let log_end_offset = r.i64()?;
        let count = r.u32()? as usize;
        // The count comes from a file: allocate for what the bytes can actually hold.
        let mut producers = HashMap::with_capacity(count.min(bytes.len() / SNAPSHOT_PRODUCER_BYTES));
        let mut ongoing = BTreeSet::new();
        for _ in 0..count {
            let producer_id = r.i64()?;
            let mut entry = ProducerEntry::new(r.i16()?, r.i64()?);
            entry.txn_first_offset = r.i64()?.max(-1);
            if entry.txn_first_offset >= 0 {
                ongoing.insert((entry.txn_first_offset, producer_id));
            }
            let len = r.i8()? as u8 as usize;
            if len > PRODUCER_BATCHES_CACHED {
                return None;
            }
            for _ in 0..len {
                entry.push(CachedBatch {
                    first_sequence: r.i32()?,
                    last_sequence: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            producers.insert(producer_id, entry);
        }
        r.is_empty().then_some((log_end_offset, ProducerStateTable { producers, ongoing }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::BatchBuilder;

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: usize, base_offset: i64) -> BatchHeader {
        let bytes = BatchBuilder::new(1_000).producer(producer_id, epoch, sequence).base_offset(base_offset).records(records, 1).build();
        BatchHeader::parse(&bytes).unwrap()
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(increment_sequence(5, 1), 6);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(0, 0), 0);
    }

    #[test]
    fn accepts_in_order_detects_duplicates_and_refuses_gaps() {
        let mut table = ProducerStateTable::default();
        let first = header(1, 0, 0, 3, 0);
        assert_eq!(table.check(&first, &[], true).unwrap(), SequenceCheck::Append);
        table.record(&first, 0);
        let second = header(1, 0, 3, 2, 3);
        assert_eq!(table.check(&second, &[], true).unwrap(), SequenceCheck::Append);
        table.record(&second, 0);

        let retry = header(1, 0, 0, 3, 99);
        assert_eq!(
            table.check(&retry, &[], true).unwrap(),
            SequenceCheck::Duplicate(CachedBatch { first_sequence: 0, last_sequence: 2, first_offset: 0, last_offset: 2 })
        );
        assert!(matches!(
            table.check(&header(1, 0, 6, 1, 0), &[], true),
            Err(StorageError::OutOfOrderSequence { expected: 5, got: 6, .. })
        ));
        // Inside a multi-batch append a retry cannot be answered with offsets: it is out of order.
        assert!(matches!(table.check(&retry, &[], false), Err(StorageError::OutOfOrderSequence { expected: 5, got: 0, .. })));
        // An earlier batch of the same append moves the expectation.
        let pending = [Pending { producer_id: 1, epoch: 0, last_sequence: 5 }];
        assert_eq!(table.check(&header(1, 0, 6, 1, 0), &pending, true).unwrap(), SequenceCheck::Append);
    }

    #[test]
    fn epochs_fence_zombies_and_restart_sequences() {
        let mut table = ProducerStateTable::default();
        table.record(&header(1, 3, 10, 1, 0), 0);
        assert!(matches!(
            table.check(&header(1, 2, 11, 1, 1), &[], true),
            Err(StorageError::InvalidProducerEpoch { current: 3, got: 2, .. })
        ));
        assert!(matches!(
            table.check(&header(1, 4, 11, 1, 1), &[], true),
            Err(StorageError::OutOfOrderSequence { expected: 0, got: 11, .. })
        ));
        let bumped = header(1, 4, 0, 1, 1);
        assert_eq!(table.check(&bumped, &[], true).unwrap(), SequenceCheck::Append);
        table.record(&bumped, 0);
        // The old epoch's batches are forgotten: a retry of them is a stale epoch, not a duplicate.
        assert!(matches!(table.check(&header(1, 3, 10, 1, 0), &[], true), Err(StorageError::InvalidProducerEpoch { .. })));
    }

    #[test]
    fn remembers_only_the_last_five_batches() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            table.record(&header(9, 0, i, 1, i64::from(i)), 0);
        }
        assert!(matches!(table.check(&header(9, 0, 2, 1, 0), &[], true).unwrap(), SequenceCheck::Duplicate(b) if b.first_offset == 2));
        assert!(matches!(table.check(&header(9, 0, 1, 1, 0), &[], true), Err(StorageError::OutOfOrderSequence { expected: 7, .. })));
    }

    #[test]
    fn snapshots_round_trip_and_reject_damage() {
        let mut table = ProducerStateTable::default();
        for i in 0..7 {
            table.record(&header(1, 0, i, 1, i64::from(i)), 0);
        }
        table.record(&header(2, 4, 0, 3, 7), 0);
        let bytes = table.encode_snapshot(10);
        let (offset, loaded) = ProducerStateTable::decode_snapshot(&bytes).unwrap();
        assert_eq!((offset, loaded.len()), (10, 2));
        for (id, entry) in &table.producers {
            let other = &loaded.producers[id];
            assert_eq!((other.epoch, other.cached(), other.last_timestamp), (entry.epoch, entry.cached(), entry.last_timestamp));
        }
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            assert!(ProducerStateTable::decode_snapshot(&damaged).is_none(), "byte {i}");
            assert!(ProducerStateTable::decode_snapshot(&bytes[..i]).is_none(), "cut at {i}");
        }
        assert_eq!(ProducerStateTable::decode_snapshot(&ProducerStateTable::default().encode_snapshot(0)).unwrap().1.len(), 0);
    }

    #[test]
    fn expiration_forgets_idle_producers() {
        let mut table = ProducerStateTable::default();
        table.record(&header(1, 0, 0, 1, 0), 1_000);
        table.expire(1_000);
        assert_eq!(table.len(), 1);
        table.expire(1_001);
        assert_eq!(table.len(), 0);
    }
}
