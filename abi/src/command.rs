//! Control plane -> data plane command records.
//!
//! The node creates a small shm-ring, [`COMMAND_RING_NAME`], in its ring directory; the local
//! control plane publishes fixed-width [`StreamCommand`] records into it and the data plane's
//! conductor drains them, a bounded number per duty cycle. A `Create` makes the partition rings
//! of a stream at run time, a `Drop` removes the ones the data plane made; both are idempotent
//! (the control plane re-sends its full state whenever it (re)attaches). A record that does not
//! decode is an error value ([`StreamCommandDecodeError`]) that the reader counts and skips.
//!
//! Record layout (16 bytes, little-endian):
//!
//! ```text
//!  0        2          4       6            8           12          16
//!  +--------+----------+-------+------------+-----------+-----------+
//!  | magic  | version  | kind  | partitions | stream_id | reserved  |
//!  |  u16   |   u16    |  u16  |    u16     |    u32    | u32 (= 0) |
//!  +--------+----------+-------+------------+-----------+-----------+
//! ```

use crate::le::{u16_at, u32_at};
pub use crate::ring::COMMAND_RING_NAME;

/// Data bytes of the command ring (a few thousand commands).
pub const COMMAND_RING_CAPACITY_BYTES: u64 = 64 << 10;

/// Bytes of one stream command record.
pub const STREAM_COMMAND_BYTES: usize = 16;
/// Offset of the magic (u16).
pub const CMD_OFF_MAGIC: usize = 0;
/// Offset of the record version (u16).
pub const CMD_OFF_VERSION: usize = 2;
/// Offset of the kind (u16): [`CMD_KIND_CREATE`] or [`CMD_KIND_DROP`].
pub const CMD_OFF_KIND: usize = 4;
/// Offset of the partition count (u16; 0 for a drop).
pub const CMD_OFF_PARTITIONS: usize = 6;
/// Offset of the stream id (u32).
pub const CMD_OFF_STREAM_ID: usize = 8;
/// Offset of the reserved word (u32, must be 0).
pub const CMD_OFF_RESERVED: usize = 12;
/// "MC": MemoryStreamer command.
pub const CMD_MAGIC: u16 = 0x434D;
/// Record version this build writes and accepts.
pub const CMD_VERSION: u16 = 1;
pub const CMD_KIND_CREATE: u16 = 1;
pub const CMD_KIND_DROP: u16 = 2;

const _: () = assert!(CMD_OFF_RESERVED + 4 == STREAM_COMMAND_BYTES);
const _: () = assert!(COMMAND_RING_CAPACITY_BYTES as usize >= 64 * STREAM_COMMAND_BYTES);

/// A stream change the control plane asks this node's data plane to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCommand {
    /// Make sure the rings of partitions `0..partitions` of `stream_id` exist.
    Create { stream_id: u32, partitions: u16 },
    /// Remove the rings the data plane made for `stream_id`.
    Drop { stream_id: u32 },
}

/// Why a command record was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamCommandDecodeError {
    #[error("command record of {0} bytes, expected {STREAM_COMMAND_BYTES}: control plane and data plane builds differ")]
    Length(usize),
    #[error("bad command magic {0:#06x}: something other than the control plane writes the command ring")]
    Magic(u16),
    #[error("command record version {0}, this data plane reads {CMD_VERSION}: upgrade both planes together")]
    Version(u16),
    #[error("unknown command kind {0}")]
    Kind(u16),
    #[error("invalid command: {0}")]
    Field(&'static str),
}

impl StreamCommand {
    pub fn encode(&self) -> [u8; STREAM_COMMAND_BYTES] {
        let (kind, stream_id, partitions) = match *self {
            StreamCommand::Create {
                stream_id,
                partitions,
            } => (CMD_KIND_CREATE, stream_id, partitions),
            StreamCommand::Drop { stream_id } => (CMD_KIND_DROP, stream_id, 0),
        };
        let mut b = [0u8; STREAM_COMMAND_BYTES];
        b[CMD_OFF_MAGIC..CMD_OFF_MAGIC + 2].copy_from_slice(&CMD_MAGIC.to_le_bytes());
        b[CMD_OFF_VERSION..CMD_OFF_VERSION + 2].copy_from_slice(&CMD_VERSION.to_le_bytes());
        b[CMD_OFF_KIND..CMD_OFF_KIND + 2].copy_from_slice(&kind.to_le_bytes());
        b[CMD_OFF_PARTITIONS..CMD_OFF_PARTITIONS + 2].copy_from_slice(&partitions.to_le_bytes());
        b[CMD_OFF_STREAM_ID..CMD_OFF_STREAM_ID + 4].copy_from_slice(&stream_id.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<StreamCommand, StreamCommandDecodeError> {
        if b.len() != STREAM_COMMAND_BYTES {
            return Err(StreamCommandDecodeError::Length(b.len()));
        }
        let u16_at = |o: usize| u16_at(b, o);
        let u32_at = |o: usize| u32_at(b, o);
        if u16_at(CMD_OFF_MAGIC) != CMD_MAGIC {
            return Err(StreamCommandDecodeError::Magic(u16_at(CMD_OFF_MAGIC)));
        }
        if u16_at(CMD_OFF_VERSION) != CMD_VERSION {
            return Err(StreamCommandDecodeError::Version(u16_at(CMD_OFF_VERSION)));
        }
        if u32_at(CMD_OFF_RESERVED) != 0 {
            return Err(StreamCommandDecodeError::Field("reserved word is not 0"));
        }
        let stream_id = u32_at(CMD_OFF_STREAM_ID);
        let partitions = u16_at(CMD_OFF_PARTITIONS);
        match u16_at(CMD_OFF_KIND) {
            CMD_KIND_CREATE if partitions == 0 => {
                Err(StreamCommandDecodeError::Field("create with 0 partitions"))
            }
            CMD_KIND_CREATE => Ok(StreamCommand::Create {
                stream_id,
                partitions,
            }),
            CMD_KIND_DROP if partitions != 0 => Err(StreamCommandDecodeError::Field(
                "drop with a partition count",
            )),
            CMD_KIND_DROP => Ok(StreamCommand::Drop { stream_id }),
            k => Err(StreamCommandDecodeError::Kind(k)),
        }
    }
}

/// Any record of the command ring: a stream change, or a partition assignment (#11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Stream(StreamCommand),
    Assign(Box<crate::assign::PartitionAssignment>),
}

/// Why a command ring record was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandDecodeError {
    #[error(transparent)]
    Stream(#[from] StreamCommandDecodeError),
    #[error("partition assignment: {0}")]
    Assign(#[from] crate::assign::AssignDecodeError),
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Command::Stream(c) => c.encode().to_vec(),
            Command::Assign(a) => a.encode(),
        }
    }

    /// Decodes one record, dispatching on its kind.
    pub fn decode(b: &[u8]) -> Result<Command, CommandDecodeError> {
        if b.len() >= CMD_OFF_KIND + 2 && u16_at(b, CMD_OFF_KIND) == crate::assign::CMD_KIND_ASSIGN
        {
            return Ok(Command::Assign(Box::new(
                crate::assign::PartitionAssignment::decode(b)?,
            )));
        }
        Ok(Command::Stream(StreamCommand::decode(b)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_commands_round_trip_and_bad_records_are_refused() {
        for c in [
            StreamCommand::Create {
                stream_id: u32::MAX,
                partitions: 3,
            },
            StreamCommand::Drop { stream_id: 9 },
        ] {
            assert_eq!(StreamCommand::decode(&c.encode()), Ok(c));
        }
        let good = StreamCommand::Drop { stream_id: 1 }.encode();
        let with = |off: usize, v: u8| {
            let mut b = good;
            b[off] = v;
            b
        };
        assert_eq!(
            StreamCommand::decode(&good[..8]),
            Err(StreamCommandDecodeError::Length(8))
        );
        assert!(matches!(
            StreamCommand::decode(&with(CMD_OFF_MAGIC, 0)),
            Err(StreamCommandDecodeError::Magic(_))
        ));
        assert_eq!(
            StreamCommand::decode(&with(CMD_OFF_VERSION, 9)),
            Err(StreamCommandDecodeError::Version(9))
        );
        assert_eq!(
            StreamCommand::decode(&with(CMD_OFF_KIND, 7)),
            Err(StreamCommandDecodeError::Kind(7))
        );
        assert!(StreamCommand::decode(&with(CMD_OFF_RESERVED, 1)).is_err());
        assert!(StreamCommand::decode(&with(CMD_OFF_PARTITIONS, 1)).is_err());
        let create0 = StreamCommand::Create {
            stream_id: 1,
            partitions: 1,
        }
        .encode();
        let mut b = create0;
        b[CMD_OFF_PARTITIONS] = 0;
        assert!(StreamCommand::decode(&b).is_err());
    }

    #[test]
    fn record_fields_sit_at_their_documented_offsets() {
        let b = StreamCommand::Create {
            stream_id: 0x0A0B_0C0D,
            partitions: 0x0102,
        }
        .encode();
        assert_eq!(b.len(), STREAM_COMMAND_BYTES);
        assert_eq!(&b[CMD_OFF_MAGIC..][..2], b"MC");
        assert_eq!(&b[CMD_OFF_VERSION..][..2], &CMD_VERSION.to_le_bytes());
        assert_eq!(&b[CMD_OFF_KIND..][..2], &CMD_KIND_CREATE.to_le_bytes());
        assert_eq!(&b[CMD_OFF_PARTITIONS..][..2], &[0x02, 0x01]);
        assert_eq!(&b[CMD_OFF_STREAM_ID..][..4], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(&b[CMD_OFF_RESERVED..][..4], &[0; 4]);
        assert_eq!(
            (
                CMD_OFF_MAGIC,
                CMD_OFF_VERSION,
                CMD_OFF_KIND,
                CMD_OFF_PARTITIONS
            ),
            (0, 2, 4, 6)
        );
        assert_eq!((CMD_OFF_STREAM_ID, CMD_OFF_RESERVED), (8, 12));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_what_it_accepts_re_encodes(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..32),
        ) {
            if let Ok(c) = StreamCommand::decode(&b) {
                proptest::prop_assert_eq!(&c.encode()[..], &b[..]);
            }
        }

        #[test]
        fn every_command_round_trips(stream_id: u32, partitions in 1u16..) {
            for c in [StreamCommand::Create { stream_id, partitions }, StreamCommand::Drop { stream_id }] {
                proptest::prop_assert_eq!(StreamCommand::decode(&c.encode()), Ok(c));
            }
        }
    }
}
