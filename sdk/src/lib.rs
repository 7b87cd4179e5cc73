//! MemoryStreamer client SDK for local publishers and subscribers.
//!
//! A *stream* (id `u32`) has *partitions* (`u16`); each partition on this node is
//! one shm-ring file named [`ring_name`]`(stream, partition)`, e.g. `stream-7-0`.
//! A [`Context`] holds the settings used to create those rings (directory,
//! capacity, reliable or lossy mode, exclusive or shared publishers) and hands
//! out handles:
//!
//! - [`Publisher`]: creates the ring (or opens it when it already exists) and
//!   publishes with `claim(len) -> write -> commit()` or `offer(bytes)`.
//! - [`Subscriber`]: can be created before the ring exists; it maps the ring
//!   lazily when it appears (`poll` returns 0 until then). An idle handle with
//!   no ring mapped costs [`Subscriber::footprint_bytes`] (< 1 KiB).
//! - [`IdleStrategy`]: what a polling loop does when there is no work
//!   (busy-spin, yield, backoff, adaptive park that keeps the subscriber alive).
//! - [`typed`]: rkyv-archived messages, read in place and validated.
//!
//! ```no_run
//! let ctx = sdk::Context::builder().capacity_bytes(1 << 20).build();
//! let mut publisher = ctx.publisher(7, 0)?;
//! let mut subscriber = ctx.subscriber(7, 0);
//! publisher.offer(b"hello")?;
//! subscriber.poll(|r| println!("{} bytes at offset {}", r.payload.len(), r.offset), 16)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod context;
mod idle;
pub mod net;
mod publisher;
mod subscriber;
pub mod typed;

pub use context::{ring_name, Context, ContextBuilder, RING_NAME_BYTES_MAX};
pub use idle::{Adaptive, Backoff, IdleStrategy};
pub use publisher::{Publisher, PublisherCreateError};
pub use subscriber::{Subscriber, SubscriberPollError};

/// The ring clock: cheap, one time base for every process mapping a ring.
pub use shm_ring::clock;
/// The ring types an SDK user meets (records, claims, modes, errors).
pub use shm_ring::{
    BackingKind, Claim, CommitError, Mode, OfferError, PollError, PublisherKind, Record, Ring,
    StartAt,
};
