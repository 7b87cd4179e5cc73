//! On-disk layouts: the segment file header, the record batch, the index files, the
//! leader-epoch history and the truncation intent. Every field is a fixed-width little-endian
//! integer at a documented offset.
//!
//! # Segment file `<base_offset:020>.log`
//! ```text
//!  file offset 0                                                     SEGMENT_HEADER_BYTES (4096)
//!  +-----------------------+--------------------------------------------+----------------------------
//!  | segment header (52 B) | zero padding to one O_DIRECT block (4 KiB) | batch | batch | ... | zeros
//!  +-----------------------+--------------------------------------------+----------------------------
//!  The file is preallocated (fallocate) to `segment_bytes`; unwritten space reads as zeros, and
//!  the space the log zeroes ahead of its append position (`LogConfig::zero_ahead_bytes`) holds
//!  zeros too, so the first all-zero batch header marks the end of the log.
//!
//!  segment header
//!   0        8        10       12            16             24               32              40
//!  +--------+--------+--------+-------------+--------------+----------------+---------------+
//!  | magic  |version |reserved| block_bytes | base_offset  | created_unix_ns| segment_bytes |
//!  | [u8;8] |  u16   |  u16   |    u32      |     u64      |      u64       |      u64      |
//!  +--------+--------+--------+-------------+--------------+----------------+---------------+
//!   40       44          46         48           52
//!  +--------+-----------+----------+------------+
//!  | stream | partition | reserved | header_crc |   header_crc = CRC32C(bytes 0..48)
//!  |  u32   |   u16     |   u16    |    u32     |
//!  +--------+-----------+----------+------------+
//! ```
//!
//! # Record batch (8-byte aligned, packed back to back after the segment header)
//! ```text
//!   0       4        6       8            12             16            24
//!  +-------+--------+-------+------------+--------------+-------------+
//!  | magic |version | flags | batch_bytes| record_count | base_offset |
//!  |  u32  |  u16   |  u16  |    u32     |     u32      |    u64      |
//!  +-------+--------+-------+------------+--------------+-------------+
//!   24                 32                 40      44             48
//!  +------------------+------------------+-------+--------------+
//!  | first_timestamp  | max_timestamp_ns | crc32c| records_bytes|
//!  |  _ns  u64        |      u64         |  u32  |     u32      |
//!  +------------------+------------------+-------+--------------+
//!   48: records, each 8-byte aligned:
//!  +-------------+------------+----------------+----------------------+---------+
//!  | length u32  | flags u32  | timestamp_ns   | payload (length B)   | pad to 8|
//!  |             |   (0)      |    u64         |                      | (zeros) |
//!  +-------------+------------+----------------+----------------------+---------+
//!  crc32c = CRC32C(bytes 0..40 ++ bytes 44..batch_bytes); it covers the header, every record
//!  and the padding. batch_bytes = align8(48 + records_bytes). Record i has offset base_offset + i.
//! ```
//!
//! # Index files `<base_offset:020>.index` (offset -> position) and `.timeindex`
//! (running max timestamp -> offset)
//! ```text
//!   0        8        10       12            16            24             32            40
//!  +--------+--------+--------+-------------+-------------+--------------+-------------+
//!  | magic  |version |reserved| entry_count | base_offset | end_position | next_offset |
//!  | [u8;8] |  u16   |  u16   |    u32      |    u64      |     u64      |    u64      |
//!  +--------+--------+--------+-------------+-------------+--------------+-------------+
//!   40                 48       52         64
//!  +------------------+--------+----------+---------------------------------------------+
//!  | max_timestamp_ns |  crc   | reserved | entries: (key u64, value u64) * entry_count |
//!  |      u64         |  u32   | [u8;12]  |                                             |
//!  +------------------+--------+----------+---------------------------------------------+
//!  crc = CRC32C(bytes 0..48 ++ bytes 52..64 ++ entries). end_position/next_offset form the
//!  recovery checkpoint: every batch before end_position was verified and fsynced.
//! ```
//!
//! # Leader-epoch history `leader-epoch` ([`crate::epoch`]; one per partition directory)
//! ```text
//!   0        8        10       12            16       20         24
//!  +--------+--------+--------+-------------+--------+----------+
//!  | magic  |version |reserved| entry_count |  crc   | reserved |
//!  | [u8;8] |  u16   |  u16   |    u32      |  u32   |   u32    |
//!  +--------+--------+--------+-------------+--------+----------+
//!   24: entries, entry_count * 16 bytes, epochs and start offsets strictly increasing:
//!  +-------------+-------------------+
//!  | epoch u64   | start_offset u64  |  ...
//!  +-------------+-------------------+
//!  crc = CRC32C(bytes 0..16 ++ bytes 20..24 ++ entries); reserved fields are zero;
//!  the file is exactly 24 + 16 * entry_count bytes.
//! ```
//!
//! # Truncation intent `truncate-pending` ([`crate::truncate`]; present only during a cut)
//! ```text
//!   0        8        10       12      16           24
//!  +--------+--------+--------+-------+------------+
//!  | magic  |version |reserved|  crc  | end_offset |   crc = CRC32C(bytes 0..12 ++ 16..24)
//!  | [u8;8] |  u16   |  u16   |  u32  |    u64     |
//!  +--------+--------+--------+-------+------------+
//! ```

/// Size of one O_DIRECT block: file positions, lengths and buffers are aligned to it.
pub const BLOCK_BYTES: u64 = 4096;

// ---- segment header ----
pub const SEGMENT_MAGIC: [u8; 8] = *b"MSTRSEG\0";
pub const SEGMENT_VERSION: u16 = 1;
pub const SEG_MAGIC_OFFSET: usize = 0;
pub const SEG_VERSION_OFFSET: usize = 8;
pub const SEG_RESERVED_OFFSET: usize = 10;
pub const SEG_BLOCK_BYTES_OFFSET: usize = 12;
pub const SEG_BASE_OFFSET_OFFSET: usize = 16;
pub const SEG_CREATED_NS_OFFSET: usize = 24;
pub const SEG_SEGMENT_BYTES_OFFSET: usize = 32;
pub const SEG_STREAM_OFFSET: usize = 40;
pub const SEG_PARTITION_OFFSET: usize = 44;
pub const SEG_RESERVED2_OFFSET: usize = 46;
pub const SEG_HEADER_CRC_OFFSET: usize = 48;
/// Bytes of the segment header that carry fields.
pub const SEG_HEADER_USED_BYTES: usize = 52;
/// The header occupies one whole block; batches start right after it.
pub const SEGMENT_HEADER_BYTES: u64 = BLOCK_BYTES;

// ---- batch ----
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"MSTB");
pub const BATCH_VERSION: u16 = 1;
pub const BATCH_MAGIC_OFFSET: usize = 0;
pub const BATCH_VERSION_OFFSET: usize = 4;
pub const BATCH_FLAGS_OFFSET: usize = 6;
pub const BATCH_BYTES_OFFSET: usize = 8;
pub const BATCH_RECORD_COUNT_OFFSET: usize = 12;
pub const BATCH_BASE_OFFSET_OFFSET: usize = 16;
pub const BATCH_FIRST_TS_OFFSET: usize = 24;
pub const BATCH_MAX_TS_OFFSET: usize = 32;
pub const BATCH_CRC_OFFSET: usize = 40;
pub const BATCH_RECORDS_BYTES_OFFSET: usize = 44;
pub const BATCH_HEADER_BYTES: usize = 48;
/// Batches start and end on this alignment.
pub const BATCH_ALIGN_BYTES: usize = 8;

// ---- record inside a batch ----
pub const RECORD_LENGTH_OFFSET: usize = 0;
pub const RECORD_FLAGS_OFFSET: usize = 4;
pub const RECORD_TIMESTAMP_OFFSET: usize = 8;
pub const RECORD_HEADER_BYTES: usize = 16;

/// Largest batch the codec accepts (header + records), in bytes.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Largest record count in one batch.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

// ---- index files ----
pub const OFFSET_INDEX_MAGIC: [u8; 8] = *b"MSTRIDX\0";
pub const TIME_INDEX_MAGIC: [u8; 8] = *b"MSTRTIX\0";
pub const INDEX_VERSION: u16 = 1;
pub const IDX_MAGIC_OFFSET: usize = 0;
pub const IDX_VERSION_OFFSET: usize = 8;
pub const IDX_RESERVED_OFFSET: usize = 10;
pub const IDX_ENTRY_COUNT_OFFSET: usize = 12;
pub const IDX_BASE_OFFSET_OFFSET: usize = 16;
pub const IDX_END_POSITION_OFFSET: usize = 24;
pub const IDX_NEXT_OFFSET_OFFSET: usize = 32;
pub const IDX_MAX_TS_OFFSET: usize = 40;
pub const IDX_CRC_OFFSET: usize = 48;
pub const IDX_RESERVED2_OFFSET: usize = 52;
pub const IDX_HEADER_BYTES: usize = 64;
pub const IDX_ENTRY_BYTES: usize = 16;
/// Entries one index file may hold.
pub const INDEX_ENTRIES_MAX: u32 = 1 << 22;

const _: () = assert!(BLOCK_BYTES.is_power_of_two());
const _: () = assert!(SEG_HEADER_USED_BYTES as u64 <= SEGMENT_HEADER_BYTES);
const _: () = assert!(SEGMENT_HEADER_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(BATCH_HEADER_BYTES.is_multiple_of(BATCH_ALIGN_BYTES));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(BATCH_ALIGN_BYTES));
const _: () = assert!(BATCH_RECORDS_BYTES_OFFSET + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(SEG_HEADER_CRC_OFFSET + 4 == SEG_HEADER_USED_BYTES);
const _: () = assert!(IDX_RESERVED2_OFFSET + 12 == IDX_HEADER_BYTES);
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);

/// Rounds `v` up to a multiple of `a` (a power of two).
pub const fn align_up(v: u64, a: u64) -> u64 {
    (v + a - 1) & !(a - 1)
}

/// Rounds `v` down to a multiple of `a` (a power of two).
pub const fn align_down(v: u64, a: u64) -> u64 {
    v & !(a - 1)
}

pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Segment header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base_offset: u64,
    pub created_unix_ns: u64,
    pub segment_bytes: u64,
    pub stream: u32,
    pub partition: u16,
}

/// Why bytes are not a segment header of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderDecodeError {
    #[error("too short ({0} bytes) to hold a segment header")]
    TooShort(usize),
    #[error("bad magic: not a MemoryStreamer segment")]
    Magic,
    #[error("unsupported segment version {0} (this build reads version {SEGMENT_VERSION})")]
    Version(u16),
    #[error("segment header checksum mismatch")]
    Checksum,
    #[error("segment header block size {0} differs from {BLOCK_BYTES}")]
    BlockBytes(u32),
}

impl SegmentHeader {
    /// Writes the header into `dst[..SEG_HEADER_USED_BYTES]`.
    pub fn encode(&self, dst: &mut [u8]) {
        dst[..SEG_HEADER_USED_BYTES].fill(0);
        dst[SEG_MAGIC_OFFSET..SEG_MAGIC_OFFSET + 8].copy_from_slice(&SEGMENT_MAGIC);
        put_u16(dst, SEG_VERSION_OFFSET, SEGMENT_VERSION);
        put_u16(dst, SEG_RESERVED_OFFSET, 0);
        put_u32(dst, SEG_BLOCK_BYTES_OFFSET, BLOCK_BYTES as u32);
        put_u64(dst, SEG_BASE_OFFSET_OFFSET, self.base_offset);
        put_u64(dst, SEG_CREATED_NS_OFFSET, self.created_unix_ns);
        put_u64(dst, SEG_SEGMENT_BYTES_OFFSET, self.segment_bytes);
        put_u32(dst, SEG_STREAM_OFFSET, self.stream);
        put_u16(dst, SEG_PARTITION_OFFSET, self.partition);
        put_u16(dst, SEG_RESERVED2_OFFSET, 0);
        let crc = crc32c::crc32c(&dst[..SEG_HEADER_CRC_OFFSET]);
        put_u32(dst, SEG_HEADER_CRC_OFFSET, crc);
    }

    /// Parses and verifies a segment header.
    pub fn decode(src: &[u8]) -> Result<Self, SegmentHeaderDecodeError> {
        if src.len() < SEG_HEADER_USED_BYTES {
            return Err(SegmentHeaderDecodeError::TooShort(src.len()));
        }
        if src[SEG_MAGIC_OFFSET..SEG_MAGIC_OFFSET + 8] != SEGMENT_MAGIC {
            return Err(SegmentHeaderDecodeError::Magic);
        }
        let version = get_u16(src, SEG_VERSION_OFFSET);
        if version != SEGMENT_VERSION {
            return Err(SegmentHeaderDecodeError::Version(version));
        }
        if crc32c::crc32c(&src[..SEG_HEADER_CRC_OFFSET]) != get_u32(src, SEG_HEADER_CRC_OFFSET) {
            return Err(SegmentHeaderDecodeError::Checksum);
        }
        let block = get_u32(src, SEG_BLOCK_BYTES_OFFSET);
        if u64::from(block) != BLOCK_BYTES {
            return Err(SegmentHeaderDecodeError::BlockBytes(block));
        }
        Ok(Self {
            base_offset: get_u64(src, SEG_BASE_OFFSET_OFFSET),
            created_unix_ns: get_u64(src, SEG_CREATED_NS_OFFSET),
            segment_bytes: get_u64(src, SEG_SEGMENT_BYTES_OFFSET),
            stream: get_u32(src, SEG_STREAM_OFFSET),
            partition: get_u16(src, SEG_PARTITION_OFFSET),
        })
    }
}

// ---- leader-epoch history ----
/// File name of the leader-epoch history inside a partition directory.
pub const EPOCH_FILE_NAME: &str = "leader-epoch";
/// Name of the temporary file an update is written to before it is renamed into place.
pub const EPOCH_TEMP_FILE_NAME: &str = "leader-epoch.tmp";
pub const EPOCH_MAGIC: [u8; 8] = *b"MSTREPO\0";
pub const EPOCH_VERSION: u16 = 1;
pub const EPOCH_MAGIC_OFFSET: usize = 0;
pub const EPOCH_VERSION_OFFSET: usize = 8;
pub const EPOCH_RESERVED_OFFSET: usize = 10;
pub const EPOCH_COUNT_OFFSET: usize = 12;
pub const EPOCH_CRC_OFFSET: usize = 16;
pub const EPOCH_RESERVED2_OFFSET: usize = 20;
pub const EPOCH_HEADER_BYTES: usize = 24;
pub const EPOCH_ENTRY_BYTES: usize = 16;
/// Most entries one history keeps. Each is one leader election that wrote records into this
/// replica's retained log; retention drops old ones. Beyond it `assign` is refused.
pub const EPOCH_ENTRIES_MAX: usize = 1 << 16;
const _: () = assert!(EPOCH_RESERVED2_OFFSET + 4 == EPOCH_HEADER_BYTES);
const _: () = assert!(EPOCH_HEADER_BYTES.is_multiple_of(8));

// ---- truncation intent ----
pub const TRUNCATE_FILE_NAME: &str = "truncate-pending";
pub const TRUNCATE_TEMP_FILE_NAME: &str = "truncate-pending.tmp";
pub const TRUNCATE_MAGIC: [u8; 8] = *b"MSTRTRN\0";
pub const TRUNCATE_VERSION: u16 = 1;
pub const TRUNC_MAGIC_OFFSET: usize = 0;
pub const TRUNC_VERSION_OFFSET: usize = 8;
pub const TRUNC_RESERVED_OFFSET: usize = 10;
pub const TRUNC_CRC_OFFSET: usize = 12;
pub const TRUNC_END_OFFSET_OFFSET: usize = 16;
pub const TRUNCATE_FILE_BYTES: usize = 24;
const _: () = assert!(TRUNC_END_OFFSET_OFFSET + 8 == TRUNCATE_FILE_BYTES);

/// File names: `<base_offset as 20 digits>.<ext>`.
pub const SEGMENT_EXT: &str = "log";
pub const OFFSET_INDEX_EXT: &str = "index";
pub const TIME_INDEX_EXT: &str = "timeindex";
/// The writer's lock file (flock) in each partition directory.
pub const LOCK_FILE_NAME: &str = "ms-log.lock";

/// `00000000000000000042.log` for base 42 and ext "log".
pub fn file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Parses a file name of ours into (base offset, extension).
pub fn parse_file_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if ext != SEGMENT_EXT && ext != OFFSET_INDEX_EXT && ext != TIME_INDEX_EXT {
        return None;
    }
    Some((stem.parse().ok()?, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            base_offset: 7,
            created_unix_ns: 9,
            segment_bytes: 1 << 20,
            stream: 3,
            partition: 2,
        };
        let mut b = [0u8; 64];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderDecodeError::Checksum)
        );
        b[0] = b'X';
        assert_eq!(
            SegmentHeader::decode(&b),
            Err(SegmentHeaderDecodeError::Magic)
        );
        assert_eq!(
            SegmentHeader::decode(&b[..3]),
            Err(SegmentHeaderDecodeError::TooShort(3))
        );
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_file_name(&file_name(42, "log")), Some((42, "log")));
        assert_eq!(parse_file_name("notes.txt"), None);
        assert_eq!(parse_file_name("00000000000000000042.tmp"), None);
    }
}
