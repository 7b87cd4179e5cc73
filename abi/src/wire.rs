//! Frame bodies of docs/protocol.md that the network client builds and
//! checks: DATA record batches, STATUS, NAK and SETUP. The fixed 40-byte
//! header (and its CRC32C) is [`crate::frame`].
//!
//! ```text
//!  DATA record:  +0 payload_len u32 | +4 record_type u16 | +6 record_flags u16 (= 0)
//!                +8 payload | zero padding to a multiple of 8
//!  STATUS body:  +0 durable_offset u64 | +8 window_bytes u32 | +12 reserved u32 (= 0)
//!                +16 receiver_id u64                               (24 bytes)
//!  NAK body:     +0 length_bytes u32 | +4 reserved u32 (= 0)       (8 bytes)
//!  SETUP body:   +0 frame_bytes_max u32 | +4 principal_len u16 | +6 reserved u16 (= 0)
//!                +8 principal, zero padded to a multiple of 8
//! ```

use crate::frame_consts::{
    FRAME_BYTES_MAX, FRAME_HEADER_BYTES, RECORD_ALIGNMENT_BYTES, RECORD_HEADER_BYTES,
};
use crate::le::{u16_at, u32_at, u64_at};

/// Record header field offsets inside a DATA body.
pub const RECORD_PAYLOAD_LEN_OFFSET: usize = 0;
pub const RECORD_TYPE_OFFSET: usize = 4;
pub const RECORD_FLAGS_OFFSET: usize = 6;
pub const RECORD_PAYLOAD_OFFSET: usize = RECORD_HEADER_BYTES as usize;

pub const STATUS_BODY_BYTES: usize = 24;
pub const STATUS_DURABLE_OFFSET_OFFSET: usize = 0;
pub const STATUS_WINDOW_BYTES_OFFSET: usize = 8;
pub const STATUS_RESERVED_OFFSET: usize = 12;
pub const STATUS_RECEIVER_ID_OFFSET: usize = 16;

pub const NAK_BODY_BYTES: usize = 8;
pub const NAK_LENGTH_BYTES_OFFSET: usize = 0;
pub const NAK_RESERVED_OFFSET: usize = 4;

pub const SETUP_FRAME_BYTES_MAX_OFFSET: usize = 0;
pub const SETUP_PRINCIPAL_LEN_OFFSET: usize = 4;
pub const SETUP_RESERVED_OFFSET: usize = 6;
pub const SETUP_PRINCIPAL_OFFSET: usize = 8;
/// Longest principal name (bytes of UTF-8).
pub const PRINCIPAL_BYTES_MAX: usize = 255;
/// Largest SETUP body: fixed part plus the padded longest principal.
pub const SETUP_BODY_BYTES_MAX: usize = SETUP_PRINCIPAL_OFFSET + align8(PRINCIPAL_BYTES_MAX);

/// Flag bits of the header (docs/protocol.md, Flags).
pub const FLAG_RETRANSMIT: u16 = 0x0001;
pub const FLAG_END_OF_SESSION: u16 = 0x0002;
pub const FLAG_REPLY_REQUESTED: u16 = 0x0004;
pub const FLAG_SETUP_ACK: u16 = 0x0008;
/// SETUP from a remote subscriber asking a node for a partition (node-side
/// flag: a node answers with its own SETUP from its sender port, then DATA).
/// Not in FLAGS_KNOWN: a subscriber or publisher never accepts it.
pub const FLAG_SUBSCRIBE: u16 = 0x0010;
/// Every flag bit version 1 knows; frames with others are dropped.
pub const FLAGS_KNOWN: u16 =
    FLAG_RETRANSMIT | FLAG_END_OF_SESSION | FLAG_REPLY_REQUESTED | FLAG_SETUP_ACK;

pub const HEADER_BYTES: usize = FRAME_HEADER_BYTES as usize;
/// Smallest frame a sender may choose: header plus one record of 8 payload bytes.
pub const FRAME_BYTES_MIN: usize = HEADER_BYTES + RECORD_PAYLOAD_OFFSET + 8;

const _: () = assert!(FLAGS_KNOWN & FLAG_SUBSCRIBE == 0);
const _: () = assert!(RECORD_ALIGNMENT_BYTES == 8);
const _: () = assert!(RECORD_PAYLOAD_OFFSET == 8);
const _: () = assert!(HEADER_BYTES + SETUP_BODY_BYTES_MAX <= FRAME_BYTES_MIN * 8);
const _: () = assert!(FRAME_BYTES_MIN <= FRAME_BYTES_MAX as usize);

/// `n` rounded up to a multiple of 8.
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes a record with `payload_len` bytes of payload takes in a DATA body.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_PAYLOAD_OFFSET + align8(payload_len)
}

/// Largest record payload in a frame of `frame_bytes` bytes.
pub const fn payload_bytes_max(frame_bytes: usize) -> usize {
    frame_bytes - HEADER_BYTES - RECORD_PAYLOAD_OFFSET
}

/// One record of a DATA frame, borrowed from the datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireRecord<'a> {
    /// Position of the record in the session's byte sequence.
    pub offset: u64,
    pub record_type: u16,
    pub payload: &'a [u8],
}

/// Why a DATA body was rejected (every case is a counted drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    #[error("DATA body of {len} bytes: empty or not a multiple of 8")]
    BadBodyLength { len: usize },
    #[error("record at body offset {at} runs past the body ({payload_len} payload bytes)")]
    RecordOverrun { at: usize, payload_len: u32 },
    #[error("record at body offset {at} has reserved flags {flags:#06x} (must be 0)")]
    RecordFlags { at: usize, flags: u16 },
    #[error("record at body offset {at} has non-zero padding")]
    Padding { at: usize },
}

/// A validated DATA body: every record header is checked before any record is
/// used, so a frame is accepted whole or dropped whole. This is the one DATA
/// body parser: the node's receiver and the SDK's subscriber both use it.
#[derive(Clone, Copy, Debug)]
pub struct RecordBatch<'a> {
    body: &'a [u8],
    first_offset: u64,
    count: u32,
}

impl<'a> RecordBatch<'a> {
    /// Checks the whole body (size a non-zero multiple of 8, every record
    /// inside the body, record flags 0, zero padding); `first_offset` is the
    /// DATA header's offset.
    pub fn parse(body: &'a [u8], first_offset: u64) -> Result<RecordBatch<'a>, RecordDecodeError> {
        if body.is_empty() || !body.len().is_multiple_of(RECORD_ALIGNMENT_BYTES as usize) {
            return Err(RecordDecodeError::BadBodyLength { len: body.len() });
        }
        let mut at = 0usize;
        let mut count = 0u32;
        while at < body.len() {
            // `at` is a multiple of 8 below the length, a multiple of 8: the 8 header bytes exist.
            let payload_len = u32_at(body, at + RECORD_PAYLOAD_LEN_OFFSET);
            let flags = u16_at(body, at + RECORD_FLAGS_OFFSET);
            if flags != 0 {
                return Err(RecordDecodeError::RecordFlags { at, flags });
            }
            let start = at + RECORD_PAYLOAD_OFFSET;
            if payload_len as usize > body.len() - start {
                return Err(RecordDecodeError::RecordOverrun { at, payload_len });
            }
            // The payload fits and the length is a multiple of 8, so the padding fits too.
            let next = at + record_bytes(payload_len as usize);
            let padding = body
                .get(start + payload_len as usize..next)
                .ok_or(RecordDecodeError::RecordOverrun { at, payload_len })?;
            if padding.iter().any(|&b| b != 0) {
                return Err(RecordDecodeError::Padding { at });
            }
            count += 1;
            at = next;
        }
        Ok(RecordBatch {
            body,
            first_offset,
            count,
        })
    }

    /// Records in the batch (at least one).
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Session offset of the first record (the DATA header's offset).
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    /// Session offset after the last record.
    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.body.len() as u64
    }

    /// The records, in order.
    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter {
            body: self.body,
            at: 0,
            first_offset: self.first_offset,
        }
    }
}

/// The records of a [`RecordBatch`], in order.
pub struct RecordIter<'a> {
    body: &'a [u8],
    at: usize,
    first_offset: u64,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = WireRecord<'a>;
    fn next(&mut self) -> Option<WireRecord<'a>> {
        // Only a parsed batch builds this iterator: every record header and payload is inside.
        let at = self.at;
        let header = self.body.get(at..at + RECORD_PAYLOAD_OFFSET)?;
        let len = u32_at(header, RECORD_PAYLOAD_LEN_OFFSET) as usize;
        let start = at + RECORD_PAYLOAD_OFFSET;
        let payload = self.body.get(start..start + len)?;
        self.at = at + record_bytes(len);
        Some(WireRecord {
            offset: self.first_offset + at as u64,
            record_type: u16_at(header, RECORD_TYPE_OFFSET),
            payload,
        })
    }
}

/// Appends one record (header, payload, zero padding) to `body`.
pub fn push_record(body: &mut Vec<u8>, record_type: u16, payload: &[u8]) {
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    body.extend_from_slice(&record_type.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(payload);
    body.resize(body.len() + align8(payload.len()) - payload.len(), 0);
}

/// STATUS body fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusBody {
    pub durable_offset: u64,
    pub window_bytes: u32,
    pub receiver_id: u64,
}

impl StatusBody {
    pub fn encode(&self) -> [u8; STATUS_BODY_BYTES] {
        let mut b = [0u8; STATUS_BODY_BYTES];
        b[STATUS_DURABLE_OFFSET_OFFSET..][..8].copy_from_slice(&self.durable_offset.to_le_bytes());
        b[STATUS_WINDOW_BYTES_OFFSET..][..4].copy_from_slice(&self.window_bytes.to_le_bytes());
        b[STATUS_RECEIVER_ID_OFFSET..][..8].copy_from_slice(&self.receiver_id.to_le_bytes());
        b
    }

    /// None when the body has the wrong size or a non-zero reserved field.
    pub fn decode(body: &[u8]) -> Option<StatusBody> {
        if body.len() != STATUS_BODY_BYTES || u32_at(body, STATUS_RESERVED_OFFSET) != 0 {
            return None;
        }
        Some(StatusBody {
            durable_offset: u64_at(body, STATUS_DURABLE_OFFSET_OFFSET),
            window_bytes: u32_at(body, STATUS_WINDOW_BYTES_OFFSET),
            receiver_id: u64_at(body, STATUS_RECEIVER_ID_OFFSET),
        })
    }
}

/// NAK body: the missing range is `[header.offset, header.offset + length_bytes)`.
pub fn encode_nak(length_bytes: u32) -> [u8; NAK_BODY_BYTES] {
    let mut b = [0u8; NAK_BODY_BYTES];
    b[NAK_LENGTH_BYTES_OFFSET..][..4].copy_from_slice(&length_bytes.to_le_bytes());
    b
}

/// None when the body has the wrong size or a non-zero reserved field.
pub fn decode_nak(body: &[u8]) -> Option<u32> {
    if body.len() != NAK_BODY_BYTES || u32_at(body, NAK_RESERVED_OFFSET) != 0 {
        return None;
    }
    Some(u32_at(body, NAK_LENGTH_BYTES_OFFSET))
}

/// Writes a SETUP body into `out` (cleared first); the principal must be
/// 1..=255 bytes (checked by the caller's config validation).
pub fn encode_setup(frame_bytes_max: u32, principal: &str, out: &mut Vec<u8>) {
    debug_assert!((1..=PRINCIPAL_BYTES_MAX).contains(&principal.len()));
    out.clear();
    out.extend_from_slice(&frame_bytes_max.to_le_bytes());
    out.extend_from_slice(&(principal.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(principal.as_bytes());
    out.resize(SETUP_PRINCIPAL_OFFSET + align8(principal.len()), 0);
}

/// Where a remote subscriber starts (SETUP with `FLAG_SUBSCRIBE`, docs/protocol.md): the
/// SETUP body's `reserved` u16 carries the kind, the header's `offset` the partition offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeStart {
    /// The next record the partition gets (kind 0: what version-1 subscribers always sent).
    Latest,
    /// The oldest record the node still has (its log when it archives, else its ring).
    Earliest,
    /// The record with this partition offset (or the oldest kept, if it is older).
    Offset(u64),
}

pub const SUBSCRIBE_START_LATEST: u16 = 0;
pub const SUBSCRIBE_START_EARLIEST: u16 = 1;
pub const SUBSCRIBE_START_OFFSET: u16 = 2;

impl SubscribeStart {
    /// (start kind for the SETUP body, header offset).
    pub fn encode(self) -> (u16, u64) {
        match self {
            SubscribeStart::Latest => (SUBSCRIBE_START_LATEST, 0),
            SubscribeStart::Earliest => (SUBSCRIBE_START_EARLIEST, 0),
            SubscribeStart::Offset(x) => (SUBSCRIBE_START_OFFSET, x),
        }
    }

    /// None for an unknown kind, or an offset with a kind that takes none.
    pub fn decode(kind: u16, offset: u64) -> Option<SubscribeStart> {
        match (kind, offset) {
            (SUBSCRIBE_START_LATEST, 0) => Some(SubscribeStart::Latest),
            (SUBSCRIBE_START_EARLIEST, 0) => Some(SubscribeStart::Earliest),
            (SUBSCRIBE_START_OFFSET, x) => Some(SubscribeStart::Offset(x)),
            _ => None,
        }
    }
}

/// Writes the body of a SUBSCRIBE (SETUP with `FLAG_SUBSCRIBE`): a SETUP body whose reserved
/// u16 is the start kind. Returns the header offset to send with it.
pub fn encode_subscribe(
    frame_bytes_max: u32,
    principal: &str,
    start: SubscribeStart,
    out: &mut Vec<u8>,
) -> u64 {
    encode_setup(frame_bytes_max, principal, out);
    let (kind, offset) = start.encode();
    out[SETUP_RESERVED_OFFSET..SETUP_RESERVED_OFFSET + 2].copy_from_slice(&kind.to_le_bytes());
    offset
}

/// Decodes a SUBSCRIBE body and its header offset; None when malformed (as [`decode_setup`],
/// plus an unknown start kind).
pub fn decode_subscribe(body: &[u8], offset: u64) -> Option<(SetupBody<'_>, SubscribeStart)> {
    if body.len() < SETUP_PRINCIPAL_OFFSET {
        return None;
    }
    let start = SubscribeStart::decode(u16_at(body, SETUP_RESERVED_OFFSET), offset)?;
    // The rest is checked like a SETUP body.
    let len = u16_at(body, SETUP_PRINCIPAL_LEN_OFFSET) as usize;
    if !(1..=PRINCIPAL_BYTES_MAX).contains(&len)
        || body.len() != SETUP_PRINCIPAL_OFFSET + align8(len)
        || body[SETUP_PRINCIPAL_OFFSET + len..].iter().any(|&b| b != 0)
    {
        return None;
    }
    let principal = std::str::from_utf8(&body[SETUP_PRINCIPAL_OFFSET..][..len]).ok()?;
    Some((
        SetupBody {
            frame_bytes_max: u32_at(body, SETUP_FRAME_BYTES_MAX_OFFSET),
            principal,
        },
        start,
    ))
}

/// SETUP body fields, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetupBody<'a> {
    pub frame_bytes_max: u32,
    pub principal: &'a str,
}

/// None when the body is malformed (sizes, reserved, padding, UTF-8).
pub fn decode_setup(body: &[u8]) -> Option<SetupBody<'_>> {
    if body.len() < SETUP_PRINCIPAL_OFFSET || u16_at(body, SETUP_RESERVED_OFFSET) != 0 {
        return None;
    }
    let len = u16_at(body, SETUP_PRINCIPAL_LEN_OFFSET) as usize;
    if !(1..=PRINCIPAL_BYTES_MAX).contains(&len)
        || body.len() != SETUP_PRINCIPAL_OFFSET + align8(len)
    {
        return None;
    }
    let name = &body[SETUP_PRINCIPAL_OFFSET..SETUP_PRINCIPAL_OFFSET + len];
    if body[SETUP_PRINCIPAL_OFFSET + len..].iter().any(|&b| b != 0) {
        return None;
    }
    let principal = std::str::from_utf8(name).ok()?;
    Some(SetupBody {
        frame_bytes_max: u32_at(body, SETUP_FRAME_BYTES_MAX_OFFSET),
        principal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_padding() {
        let mut body = Vec::new();
        push_record(&mut body, 3, b"abc");
        push_record(&mut body, 0, b"");
        push_record(&mut body, 9, &[7u8; 16]);
        assert_eq!(body.len(), 16 + 8 + 24);
        let batch = RecordBatch::parse(&body, 100).expect("valid");
        assert_eq!((batch.len(), batch.end_offset()), (3, 148));
        let seen: Vec<_> = batch
            .iter()
            .map(|r| (r.offset, r.record_type, r.payload.to_vec()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (100, 3, b"abc".to_vec()),
                (116, 0, vec![]),
                (124, 9, vec![7; 16])
            ]
        );
    }

    #[test]
    fn bad_bodies_are_rejected_not_panicking() {
        assert!(RecordBatch::parse(&[], 0).is_err());
        assert!(RecordBatch::parse(&[0; 7], 0).is_err());
        let mut body = Vec::new();
        push_record(&mut body, 1, b"abcde");
        let mut b = body.clone();
        b[0] = 200; // payload length past the body
        assert!(matches!(
            RecordBatch::parse(&b, 0),
            Err(RecordDecodeError::RecordOverrun { .. })
        ));
        let mut b = body.clone();
        b[6] = 1;
        assert!(matches!(
            RecordBatch::parse(&b, 0),
            Err(RecordDecodeError::RecordFlags { .. })
        ));
        let mut b = body.clone();
        b[15] = 1;
        assert_eq!(
            RecordBatch::parse(&b, 0).err(),
            Some(RecordDecodeError::Padding { at: 0 })
        );
        let mut x: u32 = 0x1234_5677;
        for len in (0..256).step_by(8) {
            let _ = RecordBatch::parse(&junk(&mut x, len), 0);
        }
    }

    /// `len` pseudo-random bytes (xorshift32 from `x`).
    fn junk(x: &mut u32, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *x ^= *x << 13;
                *x ^= *x >> 17;
                *x ^= *x << 5;
                *x as u8
            })
            .collect()
    }

    #[test]
    fn subscribe_bodies_carry_the_start_position() {
        let mut body = Vec::new();
        for start in [
            SubscribeStart::Latest,
            SubscribeStart::Earliest,
            SubscribeStart::Offset(0),
            SubscribeStart::Offset(u64::MAX),
        ] {
            let offset = encode_subscribe(1472, "bob", start, &mut body);
            let (setup, got) = decode_subscribe(&body, offset).expect("valid");
            assert_eq!(
                (setup.frame_bytes_max, setup.principal, got),
                (1472, "bob", start)
            );
        }
        // A version-1 subscriber's SETUP body means "latest".
        encode_setup(1472, "bob", &mut body);
        assert_eq!(
            decode_subscribe(&body, 0).unwrap().1,
            SubscribeStart::Latest
        );
        // Unknown kinds, offsets without an offset kind and bad bodies are refused.
        let mut b = body.clone();
        b[SETUP_RESERVED_OFFSET] = 3;
        assert_eq!(decode_subscribe(&b, 0), None);
        assert_eq!(decode_subscribe(&body, 5), None);
        assert_eq!(decode_subscribe(&body[..7], 0), None);
        let mut b = body.clone();
        b[SETUP_PRINCIPAL_OFFSET + 4] = 1; // padding
        assert_eq!(decode_subscribe(&b, 0), None);
        // Arbitrary bytes: an answer, never a panic.
        let mut x: u32 = 0x2545_F491;
        for len in 0..300usize {
            let bytes = junk(&mut x, len);
            let _ = decode_subscribe(&bytes, u64::from(x));
        }
    }

    #[test]
    fn control_bodies_round_trip() {
        let s = StatusBody {
            durable_offset: 77,
            window_bytes: 1 << 20,
            receiver_id: 5,
        };
        assert_eq!(StatusBody::decode(&s.encode()), Some(s));
        assert_eq!(StatusBody::decode(&[0; 23]), None);
        assert_eq!(decode_nak(&encode_nak(96)), Some(96));
        assert_eq!(decode_nak(&[0; 9]), None);
        let mut body = Vec::new();
        encode_setup(1472, "alice", &mut body);
        assert_eq!(body.len(), 16);
        assert_eq!(
            decode_setup(&body),
            Some(SetupBody {
                frame_bytes_max: 1472,
                principal: "alice"
            })
        );
        body[4] = 0;
        assert_eq!(decode_setup(&body), None);
    }

    #[test]
    fn body_layouts_have_the_documented_sizes_and_offsets() {
        // DATA record header: payload_len u32, record_type u16, record_flags u16.
        assert_eq!(
            (
                RECORD_PAYLOAD_LEN_OFFSET,
                RECORD_TYPE_OFFSET,
                RECORD_FLAGS_OFFSET,
                RECORD_PAYLOAD_OFFSET
            ),
            (0, 4, 6, 8)
        );
        assert_eq!(RECORD_HEADER_BYTES, 8);
        let mut body = Vec::new();
        push_record(&mut body, 0x0102, &[0xEE; 3]);
        assert_eq!(
            body,
            [3, 0, 0, 0, 0x02, 0x01, 0, 0, 0xEE, 0xEE, 0xEE, 0, 0, 0, 0, 0]
        );
        // STATUS: durable_offset u64, window_bytes u32, reserved u32, receiver_id u64.
        assert_eq!(STATUS_BODY_BYTES, 24);
        let status = StatusBody {
            durable_offset: 0x0102_0304_0506_0708,
            window_bytes: 0x0A0B_0C0D,
            receiver_id: 0x1112_1314_1516_1718,
        }
        .encode();
        assert_eq!(
            &status[STATUS_DURABLE_OFFSET_OFFSET..][..8],
            &0x0102_0304_0506_0708u64.to_le_bytes()
        );
        assert_eq!(
            &status[STATUS_WINDOW_BYTES_OFFSET..][..4],
            &0x0A0B_0C0Du32.to_le_bytes()
        );
        assert_eq!(&status[STATUS_RESERVED_OFFSET..][..4], &[0; 4]);
        assert_eq!(
            &status[STATUS_RECEIVER_ID_OFFSET..][..8],
            &0x1112_1314_1516_1718u64.to_le_bytes()
        );
        // NAK: length_bytes u32, reserved u32.
        assert_eq!(NAK_BODY_BYTES, 8);
        assert_eq!(encode_nak(0x0102_0304), [4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(NAK_RESERVED_OFFSET, 4);
        // SETUP: frame_bytes_max u32, principal_len u16, reserved u16, principal padded to 8.
        let mut setup = Vec::new();
        encode_setup(0x0102_0304, "abc", &mut setup);
        assert_eq!(
            setup,
            [4, 3, 2, 1, 3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]
        );
        assert_eq!(
            (SETUP_FRAME_BYTES_MAX_OFFSET, SETUP_PRINCIPAL_LEN_OFFSET),
            (0, 4)
        );
        assert_eq!((SETUP_RESERVED_OFFSET, SETUP_PRINCIPAL_OFFSET), (6, 8));
        assert_eq!(SETUP_BODY_BYTES_MAX, 8 + 256);
    }

    proptest::proptest! {
        #[test]
        fn record_batch_parse_never_panics(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            off in 0u64..1024,
        ) {
            if let Ok(b) = RecordBatch::parse(&body, off * 8) {
                proptest::prop_assert_eq!(b.iter().count(), b.len());
                proptest::prop_assert_eq!(b.end_offset(), off * 8 + body.len() as u64);
            }
        }

        #[test]
        fn pushed_records_parse_back_in_order(
            records in proptest::collection::vec(
                (proptest::prelude::any::<u16>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                1..12,
            ),
            first in 0u64..1_000_000,
        ) {
            let mut body = Vec::new();
            for (record_type, payload) in &records {
                push_record(&mut body, *record_type, payload);
            }
            let batch = RecordBatch::parse(&body, first * 8).expect("pushed records are valid");
            let got: Vec<_> = batch.iter().map(|r| (r.record_type, r.payload.to_vec())).collect();
            proptest::prop_assert_eq!(got, records);
            proptest::prop_assert_eq!(batch.end_offset(), first * 8 + body.len() as u64);
        }
    }
}
