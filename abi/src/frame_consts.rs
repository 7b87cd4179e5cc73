// The numbers of the wire frame header (docs/protocol.md) that the C XDP
// program shares with Rust. Only plain `pub const NAME: u32|u64 = LITERAL;`
// items here: `xdp-programs/build.rs` reads this file as text
// ([`crate::FRAME_CONSTS_SOURCE`]) and writes each constant into the
// generated C header `memstreamer_abi.h` as `MS_<NAME>`, next to the map
// numbers of `xdp-programs/src/abi_consts.rs`.

// ---- Wire frame header (docs/protocol.md) ----------------------------------

/// "MSTR" on the wire: bytes 0x4D 0x53 0x54 0x52, read as a little-endian u32.
pub const FRAME_MAGIC: u32 = 0x5254_534D;
/// Frame format version carried in every frame; bumped on incompatible change.
pub const FRAME_VERSION: u32 = 1;
/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: u32 = 40;
/// Largest frame (header + body) any node accepts: a 9000-byte jumbo MTU
/// minus a 20-byte IPv4 and an 8-byte UDP header.
pub const FRAME_BYTES_MAX: u32 = 8972;
/// Largest frame that fits a standard 1500-byte MTU over IPv4 (default for senders).
pub const FRAME_BYTES_MTU1500_IPV4: u32 = 1472;
/// Largest frame that fits a standard 1500-byte MTU over IPv6.
pub const FRAME_BYTES_MTU1500_IPV6: u32 = 1452;

pub const FRAME_MAGIC_OFFSET: u32 = 0;
pub const FRAME_VERSION_OFFSET: u32 = 4;
pub const FRAME_TYPE_OFFSET: u32 = 5;
pub const FRAME_FLAGS_OFFSET: u32 = 6;
pub const FRAME_STREAM_ID_OFFSET: u32 = 8;
pub const FRAME_PARTITION_OFFSET: u32 = 12;
pub const FRAME_RESERVED_OFFSET: u32 = 14;
pub const FRAME_SESSION_ID_OFFSET: u32 = 16;
pub const FRAME_LENGTH_OFFSET: u32 = 20;
pub const FRAME_OFFSET_OFFSET: u32 = 24;
pub const FRAME_EPOCH_OFFSET: u32 = 32;
pub const FRAME_CRC32C_OFFSET: u32 = 36;

pub const FRAME_TYPE_DATA: u32 = 1;
pub const FRAME_TYPE_STATUS: u32 = 2;
pub const FRAME_TYPE_NAK: u32 = 3;
pub const FRAME_TYPE_SETUP: u32 = 4;
pub const FRAME_TYPE_HEARTBEAT: u32 = 5;
/// Replication (#11): a follower asks its partition leader for records (body: `abi::replication::FetchBody`).
pub const FRAME_TYPE_FETCH: u32 = 6;
/// Replication (#11): a follower tells its leader what it holds (body: `abi::replication::ReportBody`).
pub const FRAME_TYPE_REPORT: u32 = 7;
/// Highest frame type id the XDP program accepts (types are 1..=FRAME_TYPE_MAX).
pub const FRAME_TYPE_MAX: u32 = 7;

/// Bytes of the header in front of each record inside a DATA frame.
pub const RECORD_HEADER_BYTES: u32 = 8;
/// Records inside a DATA frame start at multiples of this.
pub const RECORD_ALIGNMENT_BYTES: u32 = 8;
