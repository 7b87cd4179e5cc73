//! The fixed frame header of docs/protocol.md: encoding, decoding and the
//! CRC32C. The XDP program checks the cheap fields (magic, version, type,
//! reserved, length); `FrameHeader::decode` checks everything, CRC included.
//!
//! ```text
//!  0 magic u32 "MSTR"   4 version u8  5 type u8  6 flags u16
//!  8 stream_id u32     12 partition u16         14 reserved u16 (0)
//! 16 session_id u32    20 length u32 (header + body bytes)
//! 24 offset u64
//! 32 epoch u32         36 crc32c u32 (over the frame with this field zero)
//! 40 body ...
//! ```

pub use crate::frame_consts::*;
use crate::le;
use thiserror::Error;

pub const HEADER_BYTES: usize = FRAME_HEADER_BYTES as usize;
pub const VERSION: u8 = FRAME_VERSION as u8;

const _: () = assert!(FRAME_VERSION <= u8::MAX as u32);
const _: () = assert!(FRAME_TYPE_MAX <= u8::MAX as u32);
const _: () = assert!(FRAME_CRC32C_OFFSET + 4 == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_BYTES_MTU1500_IPV6 <= FRAME_BYTES_MTU1500_IPV4);
const _: () = assert!(FRAME_BYTES_MTU1500_IPV4 <= FRAME_BYTES_MAX);

/// Frame types (the `type` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameType {
    Data,
    Status,
    Nak,
    Setup,
    Heartbeat,
    /// Replication: follower -> leader, "send me records from my log end" (#11).
    Fetch,
    /// Replication: follower -> leader, its received and durable offsets (#11).
    Report,
}

impl FrameType {
    pub const fn id(self) -> u8 {
        (match self {
            FrameType::Data => FRAME_TYPE_DATA,
            FrameType::Status => FRAME_TYPE_STATUS,
            FrameType::Nak => FRAME_TYPE_NAK,
            FrameType::Setup => FRAME_TYPE_SETUP,
            FrameType::Heartbeat => FRAME_TYPE_HEARTBEAT,
            FrameType::Fetch => FRAME_TYPE_FETCH,
            FrameType::Report => FRAME_TYPE_REPORT,
        }) as u8
    }

    pub fn from_id(id: u8) -> Option<FrameType> {
        match u32::from(id) {
            FRAME_TYPE_DATA => Some(FrameType::Data),
            FRAME_TYPE_STATUS => Some(FrameType::Status),
            FRAME_TYPE_NAK => Some(FrameType::Nak),
            FRAME_TYPE_SETUP => Some(FrameType::Setup),
            FRAME_TYPE_HEARTBEAT => Some(FrameType::Heartbeat),
            FRAME_TYPE_FETCH => Some(FrameType::Fetch),
            FRAME_TYPE_REPORT => Some(FrameType::Report),
            _ => None,
        }
    }
}

/// The header fields a sender chooses (length and CRC are computed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_type: FrameType,
    pub flags: u16,
    pub stream_id: u32,
    pub partition: u16,
    pub session_id: u32,
    pub offset: u64,
    pub epoch: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameDecodeError {
    #[error("frame of {len} bytes is shorter than the {HEADER_BYTES}-byte header")]
    Truncated { len: usize },
    #[error("bad magic {found:#010x}: not a MemoryStreamer frame")]
    BadMagic { found: u32 },
    #[error("frame version {found}, this node speaks {VERSION}: upgrade the older side")]
    BadVersion { found: u8 },
    #[error("unknown frame type {found}")]
    BadType { found: u8 },
    #[error("reserved header field is {found}, must be 0")]
    BadReserved { found: u16 },
    #[error("length field says {field} bytes, datagram has {actual}")]
    BadLength { field: u32, actual: usize },
    #[error("CRC32C mismatch: header says {field:#010x}, computed {computed:#010x}")]
    BadCrc { field: u32, computed: u32 },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameEncodeError {
    #[error("frame of {len} bytes exceeds FRAME_BYTES_MAX ({FRAME_BYTES_MAX}): split the batch")]
    TooLarge { len: usize },
}

fn field(at: u32, n: usize) -> std::ops::Range<usize> {
    at as usize..at as usize + n
}

impl FrameHeader {
    /// Writes header + body into `out` (cleared first) with length and CRC32C set.
    pub fn encode(&self, body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameEncodeError> {
        let len = HEADER_BYTES + body.len();
        if len > FRAME_BYTES_MAX as usize {
            return Err(FrameEncodeError::TooLarge { len });
        }
        out.clear();
        out.resize(HEADER_BYTES, 0);
        out[field(FRAME_MAGIC_OFFSET, 4)].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        out[FRAME_VERSION_OFFSET as usize] = VERSION;
        out[FRAME_TYPE_OFFSET as usize] = self.frame_type.id();
        out[field(FRAME_FLAGS_OFFSET, 2)].copy_from_slice(&self.flags.to_le_bytes());
        out[field(FRAME_STREAM_ID_OFFSET, 4)].copy_from_slice(&self.stream_id.to_le_bytes());
        out[field(FRAME_PARTITION_OFFSET, 2)].copy_from_slice(&self.partition.to_le_bytes());
        out[field(FRAME_SESSION_ID_OFFSET, 4)].copy_from_slice(&self.session_id.to_le_bytes());
        out[field(FRAME_LENGTH_OFFSET, 4)].copy_from_slice(&(len as u32).to_le_bytes());
        out[field(FRAME_OFFSET_OFFSET, 8)].copy_from_slice(&self.offset.to_le_bytes());
        out[field(FRAME_EPOCH_OFFSET, 4)].copy_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(body);
        let crc = crc32c(out);
        out[field(FRAME_CRC32C_OFFSET, 4)].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Validates a whole datagram and returns its header; the body is
    /// `&datagram[HEADER_BYTES..]`.
    pub fn decode(datagram: &[u8]) -> Result<FrameHeader, FrameDecodeError> {
        if datagram.len() < HEADER_BYTES {
            return Err(FrameDecodeError::Truncated {
                len: datagram.len(),
            });
        }
        // The header's fields are all inside the `HEADER_BYTES` checked above.
        let u16_at = |at: u32| le::u16_at(datagram, at as usize);
        let u32_at = |at: u32| le::u32_at(datagram, at as usize);
        let u64_at = |at: u32| le::u64_at(datagram, at as usize);
        let magic = u32_at(FRAME_MAGIC_OFFSET);
        if magic != FRAME_MAGIC {
            return Err(FrameDecodeError::BadMagic { found: magic });
        }
        let version = datagram[FRAME_VERSION_OFFSET as usize];
        if version != VERSION {
            return Err(FrameDecodeError::BadVersion { found: version });
        }
        let type_id = datagram[FRAME_TYPE_OFFSET as usize];
        let frame_type =
            FrameType::from_id(type_id).ok_or(FrameDecodeError::BadType { found: type_id })?;
        let reserved = u16_at(FRAME_RESERVED_OFFSET);
        if reserved != 0 {
            return Err(FrameDecodeError::BadReserved { found: reserved });
        }
        let length = u32_at(FRAME_LENGTH_OFFSET);
        if length as usize != datagram.len() || length > FRAME_BYTES_MAX {
            return Err(FrameDecodeError::BadLength {
                field: length,
                actual: datagram.len(),
            });
        }
        let crc_field = u32_at(FRAME_CRC32C_OFFSET);
        let computed = crc32c_with_zero_field(datagram, FRAME_CRC32C_OFFSET as usize);
        if crc_field != computed {
            return Err(FrameDecodeError::BadCrc {
                field: crc_field,
                computed,
            });
        }
        Ok(FrameHeader {
            frame_type,
            flags: u16_at(FRAME_FLAGS_OFFSET),
            stream_id: u32_at(FRAME_STREAM_ID_OFFSET),
            partition: u16_at(FRAME_PARTITION_OFFSET),
            session_id: u32_at(FRAME_SESSION_ID_OFFSET),
            offset: u64_at(FRAME_OFFSET_OFFSET),
            epoch: u32_at(FRAME_EPOCH_OFFSET),
        })
    }
}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78). The `crc32c` crate
/// uses the SSE4.2 `crc32` instruction when the CPU has it (detected at run
/// time) and a table otherwise: a table-driven loop cost ~60 ns per 64-byte
/// record on the receiver's decode path.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C of `bytes` with the 4 bytes at `zero_at` taken as zero.
fn crc32c_with_zero_field(bytes: &[u8], zero_at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..zero_at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[zero_at + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            frame_type: FrameType::Data,
            flags: 0x0003,
            stream_id: 7,
            partition: 2,
            session_id: 0x1234_5678,
            offset: 4096,
            epoch: 9,
        }
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut buf = Vec::new();
        header().encode(b"hello records", &mut buf).expect("fits");
        assert_eq!(buf.len(), HEADER_BYTES + 13);
        assert_eq!(&buf[..4], b"MSTR");
        assert_eq!(FrameHeader::decode(&buf), Ok(header()));
    }

    #[test]
    fn decode_rejects_every_bad_field() {
        let mut good = Vec::new();
        header()
            .encode(&[1, 2, 3, 4, 5, 6, 7, 8], &mut good)
            .expect("fits");
        assert_eq!(
            FrameHeader::decode(&good[..39]),
            Err(FrameDecodeError::Truncated { len: 39 })
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadMagic { .. })
        ));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadVersion { found: 2 })
        );
        let mut b = good.clone();
        b[5] = 0;
        assert_eq!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadType { found: 0 })
        );
        let mut b = good.clone();
        b[14] = 1;
        assert_eq!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadReserved { found: 1 })
        );
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadLength { .. })
        ));
        let mut b = good.clone();
        b[HEADER_BYTES] ^= 0x40;
        assert!(matches!(
            FrameHeader::decode(&b),
            Err(FrameDecodeError::BadCrc { .. })
        ));
    }

    #[test]
    fn encode_refuses_oversize() {
        let body = vec![0; FRAME_BYTES_MAX as usize];
        assert!(matches!(
            header().encode(&body, &mut Vec::new()),
            Err(FrameEncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_never_panics_on_prefixes_of_garbage() {
        let mut good = Vec::new();
        header().encode(&[0xAA; 64], &mut good).expect("fits");
        for cut in 0..=good.len() {
            let _ = FrameHeader::decode(&good[..cut]);
        }
        let mut x: u32 = 0x9E37_79B9;
        for len in 0..200usize {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            assert!(FrameHeader::decode(&junk).is_err());
        }
    }

    #[test]
    fn header_fields_sit_at_their_documented_offsets() {
        let h = FrameHeader {
            frame_type: FrameType::Heartbeat,
            flags: 0x0102,
            stream_id: 0x0304_0506,
            partition: 0x0708,
            session_id: 0x090A_0B0C,
            offset: 0x1112_1314_1516_1718,
            epoch: 0x2122_2324,
        };
        let mut b = Vec::new();
        h.encode(&[0xEE; 8], &mut b).expect("fits");
        let at = |o: u32, n: usize| b[o as usize..o as usize + n].to_vec();
        assert_eq!(at(FRAME_MAGIC_OFFSET, 4), b"MSTR");
        assert_eq!(at(FRAME_VERSION_OFFSET, 1), [VERSION]);
        assert_eq!(at(FRAME_TYPE_OFFSET, 1), [5]);
        assert_eq!(at(FRAME_FLAGS_OFFSET, 2), 0x0102u16.to_le_bytes());
        assert_eq!(at(FRAME_STREAM_ID_OFFSET, 4), 0x0304_0506u32.to_le_bytes());
        assert_eq!(at(FRAME_PARTITION_OFFSET, 2), 0x0708u16.to_le_bytes());
        assert_eq!(at(FRAME_RESERVED_OFFSET, 2), [0, 0]);
        assert_eq!(at(FRAME_SESSION_ID_OFFSET, 4), 0x090A_0B0Cu32.to_le_bytes());
        assert_eq!(at(FRAME_LENGTH_OFFSET, 4), 48u32.to_le_bytes());
        assert_eq!(
            at(FRAME_OFFSET_OFFSET, 8),
            0x1112_1314_1516_1718u64.to_le_bytes()
        );
        assert_eq!(at(FRAME_EPOCH_OFFSET, 4), 0x2122_2324u32.to_le_bytes());
        let mut zeroed = b.clone();
        zeroed[FRAME_CRC32C_OFFSET as usize..][..4].fill(0);
        assert_eq!(at(FRAME_CRC32C_OFFSET, 4), crc32c(&zeroed).to_le_bytes());
        assert_eq!(&b[HEADER_BYTES..], &[0xEE; 8]);
        // The offsets tile the header with no gap and no overlap.
        let fields = [
            (FRAME_MAGIC_OFFSET, 4),
            (FRAME_VERSION_OFFSET, 1),
            (FRAME_TYPE_OFFSET, 1),
            (FRAME_FLAGS_OFFSET, 2),
            (FRAME_STREAM_ID_OFFSET, 4),
            (FRAME_PARTITION_OFFSET, 2),
            (FRAME_RESERVED_OFFSET, 2),
            (FRAME_SESSION_ID_OFFSET, 4),
            (FRAME_LENGTH_OFFSET, 4),
            (FRAME_OFFSET_OFFSET, 8),
            (FRAME_EPOCH_OFFSET, 4),
            (FRAME_CRC32C_OFFSET, 4),
        ];
        let mut next = 0;
        for (offset, size) in fields {
            assert_eq!(offset, next);
            next += size;
        }
        assert_eq!(next, FRAME_HEADER_BYTES);
    }

    proptest::proptest! {
        #[test]
        fn decode_accepts_exactly_what_encode_writes(
            type_id in 1u8..=5,
            flags: u16, stream_id: u32, partition: u16, session_id: u32, offset: u64, epoch: u32,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let h = FrameHeader {
                frame_type: FrameType::from_id(type_id).expect("1..=5"),
                flags, stream_id, partition, session_id, offset, epoch,
            };
            let mut b = Vec::new();
            h.encode(&body, &mut b).expect("fits");
            proptest::prop_assert_eq!(FrameHeader::decode(&b), Ok(h));
        }
    }
}
