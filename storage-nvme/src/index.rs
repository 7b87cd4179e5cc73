//! Sans-IO sparse indexes of one segment: the offset index (batch base offset -> file position)
//! and the timestamp index (running max timestamp -> batch base offset). One entry is added for
//! the first batch and then whenever `index_interval_bytes` have been appended since the last.

use crate::layout::*;

/// One sparse index: entries sorted by key (both kinds are monotonic by construction).
#[derive(Clone, Debug)]
pub struct SparseIndex {
    entries: Vec<(u64, u64)>,
    capacity: usize,
}

impl PartialEq for SparseIndex {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}
impl Eq for SparseIndex {}

impl SparseIndex {
    /// An empty index that never allocates beyond `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }
    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }
    pub fn clear(&mut self) {
        self.entries.clear();
    }
    /// Adds an entry; returns false (and adds nothing) when full or when `key` would break the order.
    pub fn push(&mut self, key: u64, value: u64) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        if let Some(&(k, _)) = self.entries.last() {
            if key < k {
                return false;
            }
        }
        self.entries.push((key, value));
        true
    }
    /// The last entry whose key is <= `key`.
    pub fn floor(&self, key: u64) -> Option<(u64, u64)> {
        let i = self.entries.partition_point(|&(k, _)| k <= key);
        if i == 0 {
            None
        } else {
            Some(self.entries[i - 1])
        }
    }
    /// The last entry whose key is < `key`.
    pub fn lower(&self, key: u64) -> Option<(u64, u64)> {
        let i = self.entries.partition_point(|&(k, _)| k < key);
        if i == 0 {
            None
        } else {
            Some(self.entries[i - 1])
        }
    }
}

/// Decides when to add index entries while batches are appended or scanned.
#[derive(Clone, Copy, Debug)]
pub struct IndexCursor {
    pub interval_bytes: u64,
    bytes_since_entry: u64,
    first: bool,
    pub max_timestamp_ns: u64,
}

impl IndexCursor {
    pub fn new(interval_bytes: u64) -> Self {
        Self {
            interval_bytes,
            bytes_since_entry: 0,
            first: true,
            max_timestamp_ns: 0,
        }
    }
    /// Continues after a loaded index whose last entry is `bytes_since_entry` bytes back.
    pub fn resume_after(&mut self, bytes_since_entry: u64) {
        self.first = false;
        self.bytes_since_entry = bytes_since_entry;
    }
    /// Notes one batch and adds entries to both indexes when due. Returns false when an index is full.
    pub fn note_batch(
        &mut self,
        offsets: &mut SparseIndex,
        times: &mut SparseIndex,
        base_offset: u64,
        position: u64,
        batch_bytes: u64,
        max_ts: u64,
    ) -> bool {
        self.max_timestamp_ns = self.max_timestamp_ns.max(max_ts);
        let mut ok = true;
        if self.first || self.bytes_since_entry >= self.interval_bytes {
            ok &= offsets.push(base_offset, position);
            ok &= times.push(self.max_timestamp_ns, base_offset);
            self.first = false;
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += batch_bytes;
        ok
    }
}

/// Header fields of an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexCheckpoint {
    pub base_offset: u64,
    /// Every batch before this file position was verified and fsynced.
    pub end_position: u64,
    /// The offset of the first batch at `end_position`.
    pub next_offset: u64,
    pub max_timestamp_ns: u64,
}

/// Why an index file was rejected (it is then rebuilt from the segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexDecodeError {
    #[error("index file too short ({0} bytes)")]
    TooShort(usize),
    #[error("bad index magic")]
    Magic,
    #[error("unsupported index version {0}")]
    Version(u16),
    #[error("index length does not match its entry count")]
    Length,
    #[error("index checksum mismatch")]
    Checksum,
    #[error("index entries are out of order or out of range")]
    Entries,
}

/// Bytes an index file with `n` entries takes.
pub fn index_file_bytes(n: usize) -> usize {
    IDX_HEADER_BYTES + n * IDX_ENTRY_BYTES
}

fn index_crc(b: &[u8]) -> u32 {
    let c = crc32c::crc32c(&b[..IDX_CRC_OFFSET]);
    crc32c::crc32c_append(c, &b[IDX_CRC_OFFSET + 4..])
}

/// Encodes an index file into `dst` (cleared first).
pub fn encode_index(
    dst: &mut Vec<u8>,
    magic: [u8; 8],
    cp: &IndexCheckpoint,
    entries: &[(u64, u64)],
) {
    dst.clear();
    dst.resize(index_file_bytes(entries.len()), 0);
    dst[IDX_MAGIC_OFFSET..IDX_MAGIC_OFFSET + 8].copy_from_slice(&magic);
    put_u16(dst, IDX_VERSION_OFFSET, INDEX_VERSION);
    put_u32(dst, IDX_ENTRY_COUNT_OFFSET, entries.len() as u32);
    put_u64(dst, IDX_BASE_OFFSET_OFFSET, cp.base_offset);
    put_u64(dst, IDX_END_POSITION_OFFSET, cp.end_position);
    put_u64(dst, IDX_NEXT_OFFSET_OFFSET, cp.next_offset);
    put_u64(dst, IDX_MAX_TS_OFFSET, cp.max_timestamp_ns);
    for (i, &(k, v)) in entries.iter().enumerate() {
        let at = IDX_HEADER_BYTES + i * IDX_ENTRY_BYTES;
        put_u64(dst, at, k);
        put_u64(dst, at + 8, v);
    }
    let crc = index_crc(dst);
    put_u32(dst, IDX_CRC_OFFSET, crc);
}

/// Decodes and validates an index file. `is_offset_index` selects the value checks:
/// offset index values are positions in `[SEGMENT_HEADER_BYTES, end_position)`, timestamp index
/// values are offsets in `[base_offset, next_offset)`.
pub fn decode_index(
    src: &[u8],
    magic: [u8; 8],
    is_offset_index: bool,
) -> Result<(IndexCheckpoint, SparseIndex), IndexDecodeError> {
    if src.len() < IDX_HEADER_BYTES {
        return Err(IndexDecodeError::TooShort(src.len()));
    }
    if src[IDX_MAGIC_OFFSET..IDX_MAGIC_OFFSET + 8] != magic {
        return Err(IndexDecodeError::Magic);
    }
    let version = get_u16(src, IDX_VERSION_OFFSET);
    if version != INDEX_VERSION {
        return Err(IndexDecodeError::Version(version));
    }
    let n = get_u32(src, IDX_ENTRY_COUNT_OFFSET);
    if n > INDEX_ENTRIES_MAX || src.len() != index_file_bytes(n as usize) {
        return Err(IndexDecodeError::Length);
    }
    if index_crc(src) != get_u32(src, IDX_CRC_OFFSET) {
        return Err(IndexDecodeError::Checksum);
    }
    let cp = IndexCheckpoint {
        base_offset: get_u64(src, IDX_BASE_OFFSET_OFFSET),
        end_position: get_u64(src, IDX_END_POSITION_OFFSET),
        next_offset: get_u64(src, IDX_NEXT_OFFSET_OFFSET),
        max_timestamp_ns: get_u64(src, IDX_MAX_TS_OFFSET),
    };
    if cp.end_position < SEGMENT_HEADER_BYTES || cp.next_offset < cp.base_offset {
        return Err(IndexDecodeError::Entries);
    }
    let mut idx = SparseIndex::with_capacity(n as usize);
    for i in 0..n as usize {
        let at = IDX_HEADER_BYTES + i * IDX_ENTRY_BYTES;
        let (k, v) = (get_u64(src, at), get_u64(src, at + 8));
        let in_range = if is_offset_index {
            k >= cp.base_offset
                && k < cp.next_offset
                && v >= SEGMENT_HEADER_BYTES
                && v < cp.end_position
        } else {
            k <= cp.max_timestamp_ns && v >= cp.base_offset && v < cp.next_offset
        };
        if !in_range || !idx.push(k, v) {
            return Err(IndexDecodeError::Entries);
        }
    }
    Ok((cp, idx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn floor_matches_linear_search(mut keys in proptest::collection::vec(0u64..1000, 0..50), probe in 0u64..1100) {
            keys.sort_unstable();
            let mut idx = SparseIndex::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                prop_assert!(idx.push(*k, i as u64));
            }
            let want = keys.iter().enumerate().rfind(|(_, k)| **k <= probe).map(|(i, k)| (*k, i as u64));
            prop_assert_eq!(idx.floor(probe), want);
            let want_lower = keys.iter().enumerate().rfind(|(_, k)| **k < probe).map(|(i, k)| (*k, i as u64));
            prop_assert_eq!(idx.lower(probe), want_lower);
        }

        #[test]
        fn index_file_round_trips(sizes in proptest::collection::vec((1u64..50, 1u64..5000, 0u64..1_000_000), 1..60), interval in 1u64..20_000) {
            let mut offs = SparseIndex::with_capacity(sizes.len());
            let mut times = SparseIndex::with_capacity(sizes.len());
            let mut cur = IndexCursor::new(interval);
            let (mut off, mut pos) = (100u64, SEGMENT_HEADER_BYTES);
            for (count, bytes, ts) in &sizes {
                prop_assert!(cur.note_batch(&mut offs, &mut times, off, pos, *bytes, *ts));
                off += count;
                pos += bytes;
            }
            let cp = IndexCheckpoint { base_offset: 100, end_position: pos, next_offset: off, max_timestamp_ns: cur.max_timestamp_ns };
            let mut buf = Vec::new();
            encode_index(&mut buf, OFFSET_INDEX_MAGIC, &cp, offs.entries());
            prop_assert_eq!(decode_index(&buf, OFFSET_INDEX_MAGIC, true), Ok((cp, offs.clone())));
            encode_index(&mut buf, TIME_INDEX_MAGIC, &cp, times.entries());
            prop_assert_eq!(decode_index(&buf, TIME_INDEX_MAGIC, false), Ok((cp, times.clone())));
            // Any truncation is rejected, never a panic.
            for cut in [0, 1, buf.len() / 2, buf.len() - 1] {
                prop_assert!(decode_index(&buf[..cut], TIME_INDEX_MAGIC, false).is_err());
            }
        }

        #[test]
        fn arbitrary_index_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_index(&bytes, OFFSET_INDEX_MAGIC, true);
            let _ = decode_index(&bytes, TIME_INDEX_MAGIC, false);
        }
    }
}
