//! The network client: remote publishers and subscribers that talk to a node
//! (or to each other) with the UDP frames of docs/protocol.md over a kernel
//! UDP socket.
//!
//! - [`UdpPublisher`] / [`PublisherSession`]: SETUP until acknowledged, DATA
//!   batches cut from a retransmit buffer, flow control from STATUS windows,
//!   retransmission on NAK, heartbeats (tail-loss detection), END_OF_SESSION.
//! - [`UdpSubscriber`] / [`ReceiverCore`]: per-session in-order, exactly-once
//!   delivery, loss detection (gaps and heartbeat offsets) and NAK, STATUS;
//!   `subscribe` asks a node for a partition (SETUP with `FLAG_SUBSCRIBE`),
//!   `subscribe_from` from a start position ([`wire::SubscribeStart`]: latest,
//!   earliest, or a partition offset; the node serves older records from
//!   storage, then live).
//! - [`LossDetector`]: gap detection and NAK timing of one session (sans-IO),
//!   shared with the node's receiver.
//! - [`wire`]: the frame bodies, and [`frame`]: the header codec (both from
//!   the `abi` crate, which the node uses too).
//!
//! The sessions are sans-IO (`handle(now, datagram)` / `poll_transmit(now,
//! out)`), so tests drive them deterministically with a seeded lossy link;
//! the `Udp*` types are thin socket adapters.
//!
//! ```no_run
//! use sdk::net::{PublisherConfig, UdpPublisher};
//! use std::time::Duration;
//! let cfg = PublisherConfig::new(7, 0, 42, "alice");
//! let mut p = UdpPublisher::new("0.0.0.0:0".parse()?, "198.18.100.1:40100", cfg)?;
//! p.wait_connected(Duration::from_secs(1));
//! p.offer_blocking(0, b"hello", Duration::from_secs(1))?;
//! p.close(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod loss;
mod publisher;
mod subscriber;
pub use abi::{frame, wire};

pub use loss::LossDetector;
pub use publisher::{
    NetOfferError, PublisherConfig, PublisherSession, PublisherStats, Release, UdpPublisher,
    UdpPublisherCreateError, BUFFER_BYTES_DEFAULT, BUFFER_BYTES_MAX, BUFFER_BYTES_MIN,
};
pub use subscriber::{
    NetRecord, NetSubscribeError, ReceiverConfig, ReceiverCore, ReceiverStats, UdpSubscriber,
    UdpSubscriberCreateError, SESSIONS_MAX, SUBSCRIBE_RETRY_NS, SUBSCRIPTIONS_MAX,
};

/// Receive buffer size: one byte more than the largest frame, so an
/// oversized datagram is seen as such (and dropped) instead of truncated.
pub const FRAME_RECV_BYTES: usize = abi::frame_consts::FRAME_BYTES_MAX as usize + 1;

/// A network client setting out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("frame_bytes {value} must be a multiple of 8 in {min}..={max} (1472 for a 1500-byte MTU over IPv4)")]
    FrameBytes {
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("buffer_bytes {value} must be a power of two in {min}..={max}")]
    BufferBytes {
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("principal must be 1..=255 bytes of UTF-8, got {len} bytes")]
    Principal { len: usize },
    #[error("initial_offset {value} must be a multiple of 8")]
    InitialOffset { value: u64 },
    #[error("window_bytes {value} is below the minimum {min}")]
    WindowBytes { value: u32, min: u32 },
    #[error("{name} must be > 0")]
    ZeroInterval { name: &'static str },
}

#[cfg(test)]
mod tests;
