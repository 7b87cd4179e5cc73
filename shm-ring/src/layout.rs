//! Byte layout of a ring file. Every offset is from the start of the mapping;
//! every field is a fixed-width little-endian integer. Written once by the
//! creator (before the file is renamed into place) unless marked "live".
//!
//! ```text
//!  0x0000 ┌──────────────────────────── line 0: identity and geometry ───────┐
//!         │ magic u64 "MSRING\0\x01"   │ version u32   │ header_bytes u32     │
//!  0x0010 │ capacity_bytes u64         │ descriptors u64 (capacity / 64)      │
//!  0x0020 │ file_bytes u64             │ mode u32      │ publisher_kind u32   │
//!  0x0030 │ subscribers_max u32│flags u32 (bit0 hugetlbfs) │ reserved u64     │
//!  0x0040 ├──────────────────────────── line 1: timeouts and creator ────────┤
//!         │ liveness_timeout_ns u64    │ claim_timeout_ns u64                 │
//!  0x0050 │ creator_pid u64            │ creator_start_ticks u64 (/proc stat) │
//!  0x0060 │ created_unix_ns u64        │ reserved (24 bytes)                  │
//!  0x0080 ├──────────────────────────── line 2: ring clock calibration ──────┤
//!         │ clock_tsc_base u64         │ clock_ns_base u64                    │
//!  0x0090 │ clock_mult u64 (ns/tick, 32.32 fixed; 0 = CLOCK_MONOTONIC)        │
//!  0x0098 │ padding to 0x100 (cache line 3 unused: keeps tail off the         │
//!         │ adjacent-line prefetch pair of the read-mostly lines)             │
//!  0x0100 ├──────────────────────────── line 4: TAIL (live) ────────────────┤
//!         │ tail_position u64          │ tail_sequence u64   (one 16 B atomic)│
//!  0x0110 │ padding to 0x180                                                  │
//!  0x0180 ├──────────────────────────── line 6: EXCLUSIVE OWNER slot (live) ──┤
//!         │ one Slot (64 B, see below); unused in Shared publisher rings      │
//!  0x01c0 │ padding to 0x200                                                  │
//!  0x0200 ├──────────────────────────── SUBSCRIBER TABLE (live) ─────────────┤
//!         │ SUBSCRIBERS_MAX slots × 64 B, one cache line each                 │
//!  0x1200 │ reserved, zero, to HEADER_BYTES                                   │
//!  0x2000 ├──────────────────────────── DESCRIPTORS (live) ──────────────────┤
//!         │ descriptors × 16 B: [tag u64 = sequence][position | state]        │
//!         │ (COMMITTED: the record's start; ABORTED: its end, or 0 if unknown)│
//!         │ descriptor i holds sequence s where s % descriptors == i          │
//!  D_END  ├──────────────────────────── DATA (live) ─────────────────────────┤
//!         │ capacity_bytes of records, each 16 B aligned:                     │
//!         │   [sequence u64][payload_len u32 | type u16 | reserved u16]       │
//!         │   [timestamp_ns u64][session u32 | reserved u32][payload ...]     │
//!         └───────────────────────────────────────────────────────────────────┘
//!  file_bytes = DATA offset + capacity_bytes, rounded up to 2 MiB on hugetlbfs.
//!
//!  Slot (64 B, owner slot and each subscriber slot):
//!  +0x00 state u64 (generation << 8 | FREE/ATTACHING/ACTIVE/EVICTED) ┐ one 16 B
//!  +0x08 heartbeat_ns u64 (ring clock)                                ┘ atomic
//!  +0x10 pid u64   +0x18 start_ticks u64   +0x20 next_sequence u64
//!  +0x28 position u64   +0x30 reserved (16 B)
//! ```

/// "MSRING\0\x01" read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MSRING\0\x01");
/// Bumped on every incompatible change of this file.
pub const VERSION: u32 = 1;
/// Bytes before the descriptor array.
pub const HEADER_BYTES: u64 = 0x2000;
/// Cache line size assumed for padding.
pub const CACHE_LINE_BYTES: u64 = 64;

pub const MAGIC_OFFSET: usize = 0x00;
pub const VERSION_OFFSET: usize = 0x08;
pub const HEADER_BYTES_OFFSET: usize = 0x0c;
pub const CAPACITY_BYTES_OFFSET: usize = 0x10;
pub const DESCRIPTORS_OFFSET: usize = 0x18;
pub const FILE_BYTES_OFFSET: usize = 0x20;
pub const MODE_OFFSET: usize = 0x28;
pub const PUBLISHER_KIND_OFFSET: usize = 0x2c;
pub const SUBSCRIBERS_MAX_OFFSET: usize = 0x30;
pub const FLAGS_OFFSET: usize = 0x34;
pub const LIVENESS_TIMEOUT_NS_OFFSET: usize = 0x40;
pub const CLAIM_TIMEOUT_NS_OFFSET: usize = 0x48;
pub const CREATOR_PID_OFFSET: usize = 0x50;
pub const CREATOR_START_TICKS_OFFSET: usize = 0x58;
pub const CREATED_UNIX_NS_OFFSET: usize = 0x60;
pub const CLOCK_TSC_BASE_OFFSET: usize = 0x80;
pub const CLOCK_NS_BASE_OFFSET: usize = 0x88;
pub const CLOCK_MULT_OFFSET: usize = 0x90;
/// Tail: (position, next sequence), one 16-byte atomic.
pub const TAIL_OFFSET: usize = 0x100;
/// Exclusive publisher's owner slot.
pub const OWNER_SLOT_OFFSET: usize = 0x180;
/// First subscriber slot.
pub const SUBSCRIBER_TABLE_OFFSET: usize = 0x200;
/// Descriptor array.
pub const DESCRIPTOR_TABLE_OFFSET: usize = HEADER_BYTES as usize;

/// Bytes of one slot (owner or subscriber).
pub const SLOT_BYTES: usize = 64;
pub const SLOT_STATE_OFFSET: usize = 0x00;
pub const SLOT_HEARTBEAT_NS_OFFSET: usize = 0x08;
pub const SLOT_PID_OFFSET: usize = 0x10;
pub const SLOT_START_TICKS_OFFSET: usize = 0x18;
pub const SLOT_NEXT_SEQUENCE_OFFSET: usize = 0x20;
pub const SLOT_POSITION_OFFSET: usize = 0x28;

/// Subscriber slots in every ring file (the table is always this big).
pub const SUBSCRIBERS_MAX: u32 = 64;

/// Flag bit: the file lives on hugetlbfs.
pub const FLAG_HUGETLBFS: u32 = 1;

/// Bytes of one descriptor.
pub const DESCRIPTOR_BYTES: u64 = 16;
/// One descriptor per this many data bytes (a 32-byte payload record is 64 B).
pub const DATA_BYTES_PER_DESCRIPTOR: u64 = 64;
/// Descriptor state, low 4 bits of word 1. EMPTY is the all-zero initial value.
pub const DESC_EMPTY: u64 = 0;
pub const DESC_COMMITTED: u64 = 1;
pub const DESC_ABORTED: u64 = 2;
pub const DESC_STATE_MASK: u64 = 0xf;

/// Record header in the data region.
pub const RECORD_HEADER_BYTES: u64 = 32;
pub const RECORD_ALIGN_BYTES: u64 = 16;
pub const RECORD_SEQUENCE_OFFSET: usize = 0;
pub const RECORD_LEN_TYPE_OFFSET: usize = 8;
pub const RECORD_TIMESTAMP_OFFSET: usize = 16;
pub const RECORD_SESSION_OFFSET: usize = 24;

/// Mode and publisher-kind codes stored in the header.
pub const MODE_RELIABLE: u32 = 1;
pub const MODE_LOSSY: u32 = 2;
pub const KIND_EXCLUSIVE: u32 = 1;
pub const KIND_SHARED: u32 = 2;

/// Slot states (low 8 bits of the state word; the rest is a generation).
pub const SLOT_FREE: u64 = 0;
pub const SLOT_ATTACHING: u64 = 1;
pub const SLOT_ACTIVE: u64 = 2;
pub const SLOT_EVICTED: u64 = 3;

/// Hugetlbfs page size: mapping and file lengths are rounded up to it.
pub const HUGE_PAGE_BYTES: u64 = 2 << 20;

/// Descriptor table length for a capacity.
pub const fn descriptors_for(capacity_bytes: u64) -> u64 {
    capacity_bytes / DATA_BYTES_PER_DESCRIPTOR
}

/// Offset of the data region for a capacity.
pub const fn data_offset(capacity_bytes: u64) -> u64 {
    HEADER_BYTES + descriptors_for(capacity_bytes) * DESCRIPTOR_BYTES
}

/// File length before rounding to the backing's page size.
pub const fn file_bytes_min(capacity_bytes: u64) -> u64 {
    data_offset(capacity_bytes) + capacity_bytes
}

const _: () = assert!(
    SUBSCRIBER_TABLE_OFFSET + SUBSCRIBERS_MAX as usize * SLOT_BYTES <= HEADER_BYTES as usize
);
const _: () = assert!(OWNER_SLOT_OFFSET + SLOT_BYTES <= SUBSCRIBER_TABLE_OFFSET);
const _: () = assert!(TAIL_OFFSET.is_multiple_of(128) && OWNER_SLOT_OFFSET.is_multiple_of(128));
const _: () = assert!(CLOCK_MULT_OFFSET + 8 <= TAIL_OFFSET);
const _: () = assert!(HEADER_BYTES.is_multiple_of(4096));
const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(
    RECORD_ALIGN_BYTES > DESC_STATE_MASK,
    "state bits live in the position's alignment bits"
);
const _: () = assert!(DATA_BYTES_PER_DESCRIPTOR >= RECORD_HEADER_BYTES);
const _: () = assert!(SLOT_BYTES as u64 == CACHE_LINE_BYTES);
