//! Helpers shared by the fuzz targets in `fuzz_targets/`.

/// The CRC-32C of a RecordBatch v2 covers the batch from its attributes (byte 21) to its end.
pub const CRC_COVERED_FROM: usize = 21;
const CRC_AT: usize = 17;
const BATCH_LENGTH_AT: usize = 8;
/// The base offset and batch length fields, which the batch length does not count.
const LOG_OVERHEAD_BYTES: usize = 12;
/// The smallest batch length: a 61-byte header with no records.
const BATCH_LENGTH_MIN: usize = 49;

/// Rewrites the CRC of every well-framed batch at the front of `buf` (following the batch-length
/// fields, stopping at the first that does not fit). A checksum guards everything behind it from a
/// mutating fuzzer; with this, mutations inside a batch reach the checks that come after the CRC.
pub fn fix_crcs(buf: &mut [u8]) {
    let mut position = 0;
    while let Some(length) = buf.get(position + BATCH_LENGTH_AT..position + LOG_OVERHEAD_BYTES) {
        let length = i32::from_be_bytes(length.try_into().expect("four bytes"));
        let Some(length) = usize::try_from(length).ok().filter(|l| *l >= BATCH_LENGTH_MIN) else {
            return;
        };
        let end = position + LOG_OVERHEAD_BYTES + length;
        let Some(batch) = buf.get_mut(position..end) else {
            return;
        };
        let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
        batch[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        position = end;
    }
}
