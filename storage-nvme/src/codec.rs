//! Sans-IO record-batch codec (see [`crate::layout`] for the byte layout).
//! `encode_batch` writes straight into the caller's (aligned, preallocated) buffer;
//! `decode_batch` validates every field and the CRC32C before handing out a borrowed view.

use crate::layout::*;

/// One record to append: a payload and its timestamp. Its offset is assigned by position in the
/// batch (`base_offset + index`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp_ns: u64,
    pub payload: &'a [u8],
}

/// A record read back from the log, borrowing the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: u64,
    pub timestamp_ns: u64,
    pub payload: &'a [u8],
}

/// Why a batch could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchEncodeError {
    #[error("a batch needs at least one record")]
    Empty,
    #[error("batch of {records} records exceeds the limit of {BATCH_RECORDS_MAX}; split it")]
    TooManyRecords { records: usize },
    #[error("batch needs {needed} bytes but only {available} are available (limit {BATCH_BYTES_MAX}); split it or raise batch_bytes_max")]
    TooLarge { needed: usize, available: usize },
    #[error("record offsets would overflow u64 (base {base_offset}, {records} records)")]
    OffsetOverflow { base_offset: u64, records: usize },
}

/// Why bytes are not a valid batch. `Zero` means "no batch here" (unwritten space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    #[error("no batch: the header is all zeros (end of the written log)")]
    Zero,
    #[error("truncated: {available} bytes available, {needed} needed")]
    Truncated { needed: usize, available: usize },
    #[error("bad batch magic {0:#010x}")]
    Magic(u32),
    #[error("unsupported batch version {0}")]
    Version(u16),
    #[error("invalid batch length {0}")]
    Length(u32),
    #[error("CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("invalid record structure: {0}")]
    Records(&'static str),
}

/// Bytes a batch of records with these payload lengths takes on disk.
pub fn batch_bytes_for<'a>(payloads: impl IntoIterator<Item = &'a Record<'a>>) -> usize {
    let mut n = BATCH_HEADER_BYTES;
    for r in payloads {
        n += record_frame_bytes(r.payload.len());
    }
    n
}

/// Bytes one record frame takes (header + payload, padded to 8).
pub const fn record_frame_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len + BATCH_ALIGN_BYTES - 1) & !(BATCH_ALIGN_BYTES - 1)
}

/// Encodes `records` as one batch at the start of `dst`; returns the batch length in bytes.
pub fn encode_batch(
    dst: &mut [u8],
    base_offset: u64,
    records: &[Record<'_>],
) -> Result<usize, BatchEncodeError> {
    if records.is_empty() {
        return Err(BatchEncodeError::Empty);
    }
    if records.len() > BATCH_RECORDS_MAX as usize {
        return Err(BatchEncodeError::TooManyRecords {
            records: records.len(),
        });
    }
    if base_offset.checked_add(records.len() as u64).is_none() {
        return Err(BatchEncodeError::OffsetOverflow {
            base_offset,
            records: records.len(),
        });
    }
    let total = batch_bytes_for(records);
    if total > dst.len() || total > BATCH_BYTES_MAX {
        return Err(BatchEncodeError::TooLarge {
            needed: total,
            available: dst.len().min(BATCH_BYTES_MAX),
        });
    }
    let mut at = BATCH_HEADER_BYTES;
    let mut max_ts = 0u64;
    for r in records {
        let frame = record_frame_bytes(r.payload.len());
        put_u32(dst, at + RECORD_LENGTH_OFFSET, r.payload.len() as u32);
        put_u32(dst, at + RECORD_FLAGS_OFFSET, 0);
        put_u64(dst, at + RECORD_TIMESTAMP_OFFSET, r.timestamp_ns);
        let p = at + RECORD_HEADER_BYTES;
        dst[p..p + r.payload.len()].copy_from_slice(r.payload);
        dst[p + r.payload.len()..at + frame].fill(0);
        max_ts = max_ts.max(r.timestamp_ns);
        at += frame;
    }
    debug_assert_eq!(at, total);
    put_u32(dst, BATCH_MAGIC_OFFSET, BATCH_MAGIC);
    put_u16(dst, BATCH_VERSION_OFFSET, BATCH_VERSION);
    put_u16(dst, BATCH_FLAGS_OFFSET, 0);
    put_u32(dst, BATCH_BYTES_OFFSET, total as u32);
    put_u32(dst, BATCH_RECORD_COUNT_OFFSET, records.len() as u32);
    put_u64(dst, BATCH_BASE_OFFSET_OFFSET, base_offset);
    put_u64(dst, BATCH_FIRST_TS_OFFSET, records[0].timestamp_ns);
    put_u64(dst, BATCH_MAX_TS_OFFSET, max_ts);
    put_u32(
        dst,
        BATCH_RECORDS_BYTES_OFFSET,
        (total - BATCH_HEADER_BYTES) as u32,
    );
    let crc = batch_crc(&dst[..total]);
    put_u32(dst, BATCH_CRC_OFFSET, crc);
    Ok(total)
}

fn batch_crc(batch: &[u8]) -> u32 {
    let c = crc32c::crc32c(&batch[..BATCH_CRC_OFFSET]);
    crc32c::crc32c_append(c, &batch[BATCH_CRC_OFFSET + 4..])
}

/// A validated batch borrowed from a buffer.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    bytes: &'a [u8],
    /// Records before this index are skipped by [`BatchView::records`] (after a seek).
    skip: u32,
}

impl<'a> BatchView<'a> {
    pub fn base_offset(&self) -> u64 {
        get_u64(self.bytes, BATCH_BASE_OFFSET_OFFSET)
    }
    pub fn record_count(&self) -> u32 {
        get_u32(self.bytes, BATCH_RECORD_COUNT_OFFSET)
    }
    /// The offset after the last record of this batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.record_count())
    }
    pub fn first_timestamp_ns(&self) -> u64 {
        get_u64(self.bytes, BATCH_FIRST_TS_OFFSET)
    }
    pub fn max_timestamp_ns(&self) -> u64 {
        get_u64(self.bytes, BATCH_MAX_TS_OFFSET)
    }
    /// Length on disk, in bytes.
    pub fn batch_bytes(&self) -> usize {
        self.bytes.len()
    }
    /// The raw bytes of the batch (header included).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The index of the first record [`records`](Self::records) yields.
    pub fn skip(&self) -> u32 {
        self.skip
    }
    pub(crate) fn from_verified(bytes: &'a [u8]) -> Self {
        Self { bytes, skip: 0 }
    }
    pub(crate) fn with_skip(mut self, skip: u32) -> Self {
        self.skip = skip.min(self.record_count());
        self
    }
    /// Records of the batch (from the seek point on, for the first batch after a seek).
    pub fn records(&self) -> RecordIter<'a> {
        let mut it = RecordIter {
            bytes: self.bytes,
            at: BATCH_HEADER_BYTES,
            index: 0,
            count: self.record_count(),
            base: self.base_offset(),
        };
        for _ in 0..self.skip {
            it.next();
        }
        it
    }
}

/// Iterator over the records of a validated batch; never allocates.
#[derive(Clone, Debug)]
pub struct RecordIter<'a> {
    bytes: &'a [u8],
    at: usize,
    index: u32,
    count: u32,
    base: u64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordView<'a>;
    fn next(&mut self) -> Option<RecordView<'a>> {
        if self.index >= self.count {
            return None;
        }
        // The structure was validated by decode_batch.
        let len = get_u32(self.bytes, self.at + RECORD_LENGTH_OFFSET) as usize;
        let ts = get_u64(self.bytes, self.at + RECORD_TIMESTAMP_OFFSET);
        let p = self.at + RECORD_HEADER_BYTES;
        let view = RecordView {
            offset: self.base + u64::from(self.index),
            timestamp_ns: ts,
            payload: &self.bytes[p..p + len],
        };
        self.at += record_frame_bytes(len);
        self.index += 1;
        Some(view)
    }
}

/// Reads only the batch length from a header, for callers that must fetch more bytes before
/// calling [`decode_batch`]. Validates magic, version and length bounds (not the CRC).
pub fn peek_batch_bytes(src: &[u8]) -> Result<usize, BatchDecodeError> {
    if src.len() < BATCH_HEADER_BYTES {
        return Err(BatchDecodeError::Truncated {
            needed: BATCH_HEADER_BYTES,
            available: src.len(),
        });
    }
    let magic = get_u32(src, BATCH_MAGIC_OFFSET);
    if magic != BATCH_MAGIC {
        if src[..BATCH_HEADER_BYTES].iter().all(|&b| b == 0) {
            return Err(BatchDecodeError::Zero);
        }
        return Err(BatchDecodeError::Magic(magic));
    }
    let version = get_u16(src, BATCH_VERSION_OFFSET);
    if version != BATCH_VERSION {
        return Err(BatchDecodeError::Version(version));
    }
    let len = get_u32(src, BATCH_BYTES_OFFSET);
    let l = len as usize;
    if !(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES..=BATCH_BYTES_MAX).contains(&l)
        || !l.is_multiple_of(BATCH_ALIGN_BYTES)
    {
        return Err(BatchDecodeError::Length(len));
    }
    Ok(l)
}

/// Validates the batch at the start of `src` (magic, version, lengths, CRC32C, record
/// structure, timestamps) and returns a view of exactly its bytes.
pub fn decode_batch(src: &[u8]) -> Result<BatchView<'_>, BatchDecodeError> {
    let len = peek_batch_bytes(src)?;
    if src.len() < len {
        return Err(BatchDecodeError::Truncated {
            needed: len,
            available: src.len(),
        });
    }
    let b = &src[..len];
    let stored = get_u32(b, BATCH_CRC_OFFSET);
    let computed = batch_crc(b);
    if stored != computed {
        return Err(BatchDecodeError::Checksum { stored, computed });
    }
    if get_u16(b, BATCH_FLAGS_OFFSET) != 0 {
        return Err(BatchDecodeError::Records("unknown batch flags"));
    }
    let records_bytes = get_u32(b, BATCH_RECORDS_BYTES_OFFSET) as usize;
    if records_bytes != len - BATCH_HEADER_BYTES {
        return Err(BatchDecodeError::Records(
            "records_bytes does not match batch_bytes",
        ));
    }
    let count = get_u32(b, BATCH_RECORD_COUNT_OFFSET);
    if count == 0 || count > BATCH_RECORDS_MAX {
        return Err(BatchDecodeError::Records("record count out of range"));
    }
    let base = get_u64(b, BATCH_BASE_OFFSET_OFFSET);
    if base.checked_add(u64::from(count)).is_none() {
        return Err(BatchDecodeError::Records("record offsets overflow u64"));
    }
    let mut at = BATCH_HEADER_BYTES;
    let mut max_ts = 0u64;
    let mut first_ts = None;
    for _ in 0..count {
        if len - at < RECORD_HEADER_BYTES {
            return Err(BatchDecodeError::Records(
                "record header runs past the batch",
            ));
        }
        let rlen = get_u32(b, at + RECORD_LENGTH_OFFSET) as usize;
        if get_u32(b, at + RECORD_FLAGS_OFFSET) != 0 {
            return Err(BatchDecodeError::Records("unknown record flags"));
        }
        if rlen > len - at - RECORD_HEADER_BYTES {
            return Err(BatchDecodeError::Records(
                "record payload runs past the batch",
            ));
        }
        let ts = get_u64(b, at + RECORD_TIMESTAMP_OFFSET);
        first_ts.get_or_insert(ts);
        max_ts = max_ts.max(ts);
        let frame = record_frame_bytes(rlen);
        if frame > len - at {
            return Err(BatchDecodeError::Records(
                "record padding runs past the batch",
            ));
        }
        at += frame;
    }
    if at != len {
        return Err(BatchDecodeError::Records(
            "trailing bytes after the last record",
        ));
    }
    if first_ts != Some(get_u64(b, BATCH_FIRST_TS_OFFSET))
        || max_ts != get_u64(b, BATCH_MAX_TS_OFFSET)
    {
        return Err(BatchDecodeError::Records(
            "header timestamps do not match the records",
        ));
    }
    Ok(BatchView { bytes: b, skip: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn recs(payloads: &[(u64, Vec<u8>)]) -> Vec<Record<'_>> {
        payloads
            .iter()
            .map(|(t, p)| Record {
                timestamp_ns: *t,
                payload: p,
            })
            .collect()
    }

    #[test]
    fn zero_header_is_end_of_log() {
        assert_eq!(
            decode_batch(&[0u8; 64]).unwrap_err(),
            BatchDecodeError::Zero
        );
    }

    #[test]
    fn empty_batch_is_rejected() {
        assert_eq!(
            encode_batch(&mut [0u8; 64], 0, &[]),
            Err(BatchEncodeError::Empty)
        );
    }

    proptest! {
        #[test]
        fn round_trip(base in 0u64..u64::MAX / 2, payloads in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..20)) {
            let records = recs(&payloads);
            let mut buf = vec![0u8; batch_bytes_for(&records)];
            let n = encode_batch(&mut buf, base, &records).unwrap();
            prop_assert_eq!(n, buf.len());
            let v = decode_batch(&buf).unwrap();
            prop_assert_eq!(v.base_offset(), base);
            prop_assert_eq!(v.record_count() as usize, records.len());
            prop_assert_eq!(v.max_timestamp_ns(), records.iter().map(|r| r.timestamp_ns).max().unwrap());
            for (i, (got, want)) in v.records().zip(records.iter()).enumerate() {
                prop_assert_eq!(got.offset, base + i as u64);
                prop_assert_eq!(got.timestamp_ns, want.timestamp_ns);
                prop_assert_eq!(got.payload, want.payload);
            }
            prop_assert_eq!(v.records().count(), records.len());
        }

        #[test]
        fn any_single_bit_flip_is_detected(payloads in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 1..5), bit in any::<usize>()) {
            let records = recs(&payloads);
            let mut buf = vec![0u8; batch_bytes_for(&records)];
            encode_batch(&mut buf, 5, &records).unwrap();
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_batch(&buf).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(v) = decode_batch(&bytes) {
                // Whatever decodes must be internally consistent.
                prop_assert_eq!(v.records().count() as u32, v.record_count());
            }
        }

        #[test]
        fn corrupted_valid_batches_never_panic(payloads in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 1..5), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let records = recs(&payloads);
            let mut buf = vec![0u8; batch_bytes_for(&records)];
            encode_batch(&mut buf, 1, &records).unwrap();
            for (at, v) in edits {
                let i = at % buf.len();
                buf[i] = v;
            }
            let cut = cut % (buf.len() + 1);
            if let Ok(v) = decode_batch(&buf[..cut]) {
                prop_assert_eq!(v.records().count() as u32, v.record_count());
            }
        }
    }
}
