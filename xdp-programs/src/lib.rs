//! xdp-programs: the kernel edge of the MemoryStreamer data plane.
//!
//! - `src/memstreamer_xdp.c`: the XDP program (built by `build.rs` with
//!   `clang -O2 -g -target bpf`): parses Ethernet/IPv4/IPv6/UDP, drops
//!   malformed frames, enforces the source -> stream policy and per-source
//!   token buckets, redirects accepted frames to the RX queue's AF_XDP socket
//!   and counts every verdict per CPU.
//! - [`abi`]: the `#[repr(C)]` map key/value types and verdict ids shared with
//!   the C program (one list of numbers: `abi_consts.rs`, plus the frame
//!   header's numbers from the `abi` crate).
//! - [`frame`]: the wire frame header of docs/protocol.md, re-exported from
//!   the `abi` crate (the C program checks the same header).
//! - `loader` (feature `loader`, on by default): aya loader (`XdpProgram::load_and_attach`), pins under
//!   `/sys/fs/bpf/memstreamer/<iface>/`, and `PolicyMaps` for other processes.
//! - `src/link_loss.c` + [`link_loss`] (feature `loader`): a tc program that
//!   drops a seeded share of a link's IPv4/UDP packets (netem-style loss for
//!   kernels without `sch_netem`), used by the lossy-link tests.
//! - `ms-xdp` (src/bin): operator tool: attach, counters, allow, deny,
//!   ratelimit, config, and a bounded frame sender / receiver for tests.
#![forbid(unsafe_code)]

/// Numbers shared with C; see the file header. The frame header's numbers
/// come from the `abi` crate.
pub mod abi_consts {
    pub use ::abi::frame_consts::*;
    include!("abi_consts.rs");
}
pub mod abi;
/// The wire frame header codec (the `abi` crate's, which every process shares).
pub use ::abi::frame;
#[cfg(feature = "loader")]
pub mod link_loss;
#[cfg(feature = "loader")]
pub mod loader;

pub use abi::{Config, RateBucket, Verdict, VerdictCounts};
#[cfg(feature = "loader")]
pub use loader::{
    AttachMode, PolicyMaps, PolicyMapsError, TestRunError, TestRunOutcome, TestRunProgram,
    XdpHandle, XdpLoadError, XdpProgram,
};
