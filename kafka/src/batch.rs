//! Kafka record batch v2 (the `records` of a Produce partition): the header is parsed and the
//! CRC32C checked here; the records themselves (possibly compressed) are never opened — the
//! batch is stored and served as the producer sent it.
//!
//! ```text
//!  0  baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 (= 2)
//! 17  crc u32 (CRC32C of bytes 21..end)  | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27  baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53  baseSequence i32 | 57 recordCount i32 | 61 records ...
//! ```
//! baseOffset and partitionLeaderEpoch are outside the CRC: the broker writes them.

/// Bytes of the v2 batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batchLength` counts (baseOffset + batchLength).
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;
pub const BASE_OFFSET_OFFSET: usize = 0;
pub const BATCH_LENGTH_OFFSET: usize = 8;
pub const LEADER_EPOCH_OFFSET: usize = 12;
pub const MAGIC_OFFSET: usize = 16;
pub const CRC_OFFSET: usize = 17;
pub const ATTRIBUTES_OFFSET: usize = 21;
pub const LAST_OFFSET_DELTA_OFFSET: usize = 23;
pub const BASE_TIMESTAMP_OFFSET: usize = 27;
pub const MAX_TIMESTAMP_OFFSET: usize = 35;
pub const PRODUCER_ID_OFFSET: usize = 43;
pub const RECORD_COUNT_OFFSET: usize = 57;
/// The only record format accepted (Kafka ≥ 0.11 clients).
pub const MAGIC_V2: i8 = 2;
/// Compression codecs 0..=4: none, gzip, snappy, lz4, zstd.
pub const COMPRESSION_CODEC_MAX: i16 = 4;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
const _: () = assert!(RECORD_COUNT_OFFSET + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(ATTRIBUTES_OFFSET == CRC_OFFSET + 4);

/// Why a produced batch is refused; each maps to a Kafka error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("no record batch in the partition data")]
    Missing,
    #[error("record batch truncated: {available} bytes, {needed} needed")]
    Truncated { needed: usize, available: usize },
    #[error("record batch length field {0} is invalid")]
    Length(i32),
    #[error("{0} bytes follow the record batch: send exactly one batch per partition")]
    Trailing(usize),
    #[error("record format (magic) {0} is not supported: use a client speaking record batch v2 (Kafka 0.11+)")]
    Magic(i8),
    #[error("record batch CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("compression codec {0} is unknown (0..=4: none, gzip, snappy, lz4, zstd)")]
    Compression(i16),
    #[error("record count {count} with last offset delta {last_delta}: a batch holds 1..={max} records numbered 0..count")]
    Count {
        count: i32,
        last_delta: i32,
        max: u32,
    },
    #[error("idempotent and transactional produce are not supported yet (planned with replication, #11): disable enable.idempotence")]
    Idempotent,
    #[error("control batches are written by the broker, not by producers")]
    Control,
}

/// A validated v2 batch's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub record_count: u32,
    pub compression: i16,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub bytes: usize,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Bytes of the first batch at the start of `src` (from its length field), without checking it.
pub fn batch_len(src: &[u8]) -> Result<usize, BatchError> {
    if src.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_BYTES,
            available: src.len(),
        });
    }
    let len = i32_at(src, BATCH_LENGTH_OFFSET);
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(BATCH_LENGTH_PREFIX_BYTES))
        .filter(|&t| t >= BATCH_HEADER_BYTES)
        .ok_or(BatchError::Length(len))?;
    if total > src.len() {
        return Err(BatchError::Truncated {
            needed: total,
            available: src.len(),
        });
    }
    Ok(total)
}

/// Validates that `src` is exactly one v2 batch a producer may send, with at most
/// `records_max` records; checks its CRC32C.
pub fn validate_produced(src: &[u8], records_max: u32) -> Result<BatchInfo, BatchError> {
    if src.is_empty() {
        return Err(BatchError::Missing);
    }
    let total = batch_len(src)?;
    if total != src.len() {
        return Err(BatchError::Trailing(src.len() - total));
    }
    let magic = src[MAGIC_OFFSET] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::Magic(magic));
    }
    let stored = u32::from_be_bytes(src[CRC_OFFSET..ATTRIBUTES_OFFSET].try_into().expect("4"));
    let computed = crc32c::crc32c(&src[ATTRIBUTES_OFFSET..total]);
    if stored != computed {
        return Err(BatchError::Crc { stored, computed });
    }
    let attributes = i16_at(src, ATTRIBUTES_OFFSET);
    let compression = attributes & ATTR_COMPRESSION_MASK;
    if compression > COMPRESSION_CODEC_MAX {
        return Err(BatchError::Compression(compression));
    }
    if attributes & ATTR_CONTROL != 0 {
        return Err(BatchError::Control);
    }
    if attributes & ATTR_TRANSACTIONAL != 0 || i64_at(src, PRODUCER_ID_OFFSET) >= 0 {
        return Err(BatchError::Idempotent);
    }
    let count = i32_at(src, RECORD_COUNT_OFFSET);
    let last_delta = i32_at(src, LAST_OFFSET_DELTA_OFFSET);
    let count_ok = u32::try_from(count).is_ok_and(|c| (1..=records_max).contains(&c))
        && last_delta.checked_add(1) == Some(count);
    if !count_ok {
        return Err(BatchError::Count {
            count,
            last_delta,
            max: records_max,
        });
    }
    Ok(BatchInfo {
        record_count: count as u32,
        compression,
        base_timestamp_ms: i64_at(src, BASE_TIMESTAMP_OFFSET),
        max_timestamp_ms: i64_at(src, MAX_TIMESTAMP_OFFSET),
        bytes: total,
    })
}

/// Writes the broker's fields into a validated batch: its base offset and the leader epoch
/// (both outside the CRC).
pub fn assign(batch: &mut [u8], base_offset: u64, leader_epoch: i32) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "assign on a validated batch"
    );
    batch[BASE_OFFSET_OFFSET..BASE_OFFSET_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH_OFFSET..LEADER_EPOCH_OFFSET + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Base offset and record count of a stored batch (validated when it was produced; the
/// storage layer's CRC32C covers it on disk).
pub fn stored_range(batch: &[u8]) -> Option<(u64, u32)> {
    if batch.len() < BATCH_HEADER_BYTES {
        return None;
    }
    let base = u64::try_from(i64_at(batch, BASE_OFFSET_OFFSET)).ok()?;
    let count = u32::try_from(i32_at(batch, RECORD_COUNT_OFFSET)).ok()?;
    Some((base, count))
}

/// Builds a valid uncompressed v2 batch of `values` (tests, benches).
pub fn build_for_tests(values: &[&[u8]], timestamp_ms: i64) -> Vec<u8> {
    let mut records = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let mut body = Vec::new();
        body.push(0); // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, i as i64); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, v.len() as i64);
        body.extend_from_slice(v);
        put_varint(&mut body, 0); // no headers
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let mut b = vec![0u8; BATCH_HEADER_BYTES];
    b.extend_from_slice(&records);
    let len = (b.len() - BATCH_LENGTH_PREFIX_BYTES) as i32;
    b[BATCH_LENGTH_OFFSET..BATCH_LENGTH_OFFSET + 4].copy_from_slice(&len.to_be_bytes());
    b[MAGIC_OFFSET] = MAGIC_V2 as u8;
    let last = values.len() as i32 - 1;
    b[LAST_OFFSET_DELTA_OFFSET..LAST_OFFSET_DELTA_OFFSET + 4].copy_from_slice(&last.to_be_bytes());
    b[BASE_TIMESTAMP_OFFSET..BASE_TIMESTAMP_OFFSET + 8]
        .copy_from_slice(&timestamp_ms.to_be_bytes());
    b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&(-1i64).to_be_bytes());
    b[PRODUCER_ID_OFFSET + 8..PRODUCER_ID_OFFSET + 10].copy_from_slice(&(-1i16).to_be_bytes());
    b[PRODUCER_ID_OFFSET + 10..PRODUCER_ID_OFFSET + 14].copy_from_slice(&(-1i32).to_be_bytes());
    b[RECORD_COUNT_OFFSET..RECORD_COUNT_OFFSET + 4]
        .copy_from_slice(&(values.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_built_batch_validates_and_takes_the_brokers_fields() {
        let mut b = build_for_tests(&[b"a", b"bc"], 1_700_000_000_000);
        let info = validate_produced(&b, 10).unwrap();
        assert_eq!(info.record_count, 2);
        assert_eq!(info.compression, 0);
        assert_eq!(info.bytes, b.len());
        assign(&mut b, 42, 7);
        assert_eq!(
            validate_produced(&b, 10).unwrap(),
            info,
            "offset and epoch are outside the CRC"
        );
        assert_eq!(stored_range(&b), Some((42, 2)));
    }

    #[test]
    fn each_defect_has_its_error() {
        let good = build_for_tests(&[b"x"], 1);
        assert_eq!(validate_produced(&[], 10), Err(BatchError::Missing));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            validate_produced(&flipped, 10),
            Err(BatchError::Crc { .. })
        ));
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert_eq!(
            validate_produced(&two, 10),
            Err(BatchError::Trailing(good.len()))
        );
        let mut magic = good.clone();
        magic[MAGIC_OFFSET] = 1;
        assert_eq!(validate_produced(&magic, 10), Err(BatchError::Magic(1)));
        assert!(matches!(
            validate_produced(&good[..20], 10),
            Err(BatchError::Truncated { .. })
        ));
        let many = build_for_tests(&[b"a", b"b", b"c"], 1);
        assert!(matches!(
            validate_produced(&many, 2),
            Err(BatchError::Count { .. })
        ));
        let mut idem = good.clone();
        idem[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&5i64.to_be_bytes());
        let crc = crc32c::crc32c(&idem[ATTRIBUTES_OFFSET..]);
        idem[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(validate_produced(&idem, 10), Err(BatchError::Idempotent));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate_produced(&bytes, 100);
            let _ = batch_len(&bytes);
            let _ = stored_range(&bytes);
        }
    }
}
