//! abi: what crosses a process boundary in MemoryStreamer, and nothing else.
//!
//! Every type here is a byte layout that two processes (or a process and the
//! kernel) must agree on, with its codec. The crate links no data plane, no
//! control plane and no kernel loader, so a process that only needs to speak
//! one of these formats (the SDK, the control plane) links only this (the
//! pattern of aya's `-common` crates).
//!
//! - [`frame`] / [`frame_consts`]: the fixed 40-byte UDP frame header of
//!   docs/protocol.md with its CRC32C; the XDP program (xdp-programs) checks
//!   the same numbers, written into its C header from [`FRAME_CONSTS_SOURCE`].
//! - [`wire`]: the frame bodies: DATA record batches (the one parser,
//!   [`wire::RecordBatch`]), STATUS, NAK, SETUP and SUBSCRIBE.
//! - [`replication`]: the follower <-> leader bodies FETCH, REPORT and
//!   EPOCH_END (codecs only: no node sends them yet, #11).
//! - [`ring`]: how a (stream, partition) names its shm-ring file, and the
//!   name of the command ring.
//! - [`command`]: the control plane -> data plane command records
//!   ([`command::StreamCommand`]) written into that command ring.
//! - [`assign`]: partition placement (#11): the control plane -> data plane
//!   [`assign::PartitionAssignment`] (on the command ring, read through
//!   [`command::Command`]) and the data plane -> control plane
//!   [`assign::ReplicaStatus`] (on the status ring).
//! - [`counters`]: the data plane's counters file: the closed set of counter
//!   ids and labels, the file layout, and the seqlocked reader used by
//!   `memstreamer stat` and the control plane's `/metrics`.
//!
//! Bad input is an error value, never a panic: every parser here has a
//! `cargo fuzz` target in `abi/fuzz`.
#![forbid(unsafe_code)]

pub mod assign;
pub mod command;
pub mod counters;
pub mod frame;
pub mod frame_consts;
mod le;
pub mod replication;
pub mod ring;
pub mod wire;

/// The text of `frame_consts.rs`: xdp-programs' build script writes each of
/// its constants into the C header of the XDP program, so C and Rust check
/// the frame header against one list of numbers.
pub const FRAME_CONSTS_SOURCE: &str = include_str!("frame_consts.rs");
