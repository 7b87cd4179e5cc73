//! # storage-nvme: the partition log on disk
//!
//! One directory per stream partition holds **segment files** named by their base offset
//! (`00000000000000000000.log`), each preallocated to `segment_bytes` and written with
//! **O_DIRECT through io_uring** from an aligned write ring (huge pages when the pool allows;
//! a synchronous `pwrite` backend is used only when io_uring cannot be set up, and says so on
//! stderr). Each segment has a sparse offset index (`.index`) and timestamp index
//! (`.timeindex`), written when the segment is sealed or the log is closed; they double as the
//! recovery checkpoint and are rebuilt when missing or damaged. Byte layouts: [`layout`].
//!
//! ## Writing (the archiver agent)
//! ```no_run
//! use storage_nvme::{Log, LogConfig, Record};
//! let (mut log, report) = Log::open("/var/lib/memstreamer/s1-p0", LogConfig::default())?;
//! eprintln!("recovered up to offset {}: {:?}", report.next_offset, report.actions);
//! let next = log.next_offset();
//! log.append_batch(next, &[Record { timestamp_ns: 1, payload: b"hello" }])?; // appended
//! log.flush()?;                              // group commit: one fdatasync for all appended
//! while log.poll()? < next + 1 {}            // durable: now the record may be acknowledged
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//! * [`Log::append_batch`] copies a batch into the write ring (no allocation) and returns its
//!   [`AppendPosition`]: the record is **appended**. Offsets are assigned by the caller (the
//!   partition leader) and must be dense. When the ring or the pending-batch limit is full it
//!   returns [`AppendError::BackPressured`]: call [`Log::poll`] and retry.
//! * [`Log::flush`] requests a group commit; [`Log::poll`] reaps completions and returns the
//!   **durable** offset: every offset below it has been written and fdatasync'ed. Only those
//!   may be acknowledged. [`Log::sync`] blocks until everything appended is durable.
//!   The fdatasync is submitted only after the writes it covers completed (io_uring does not
//!   order them otherwise); writes keep flowing while it runs. When a commit's last write has
//!   no other write in flight it is submitted with RWF_DSYNC instead, durable by itself
//!   (`LogConfig::dsync_commits`).
//! * A helper thread preallocates the next segment and writes the indexes of sealed segments
//!   (`prepare.rs`), so a segment roll does not stall appends on file creation and index
//!   fsyncs; a sealed segment whose index was not written yet is scanned at the next open.
//! * While every appended byte is submitted, the log zeroes the active segment up to
//!   `LogConfig::zero_ahead_bytes` past the append position: commits then overwrite written
//!   blocks, and an fdatasync is a device cache flush without a file-system journal commit.
//! * [`Log::wait`] / [`Log::wait_timeout`] block in the kernel until an operation completes
//!   (use them when back-pressured or idle, instead of spinning on `poll`); [`Log::stats`]
//!   counts writes, syncs (with their durations), back-pressure and segment rolls.
//! * A write or sync error stops the log ([`LogIoError`], naming file and offset); nothing
//!   more is acknowledged. Reopen it: recovery keeps everything that was durable.
//! * [`Log::enforce_retention`] deletes the oldest sealed segments beyond the size/age limits,
//!   never the active one.
//!
//! ## Recovery ([`Log::open`])
//! Verifies (CRC32C) every batch of the active segment after its last checkpoint, cuts a torn
//! or never-acknowledged tail (zeroing it so stale bytes can never come back), rebuilds missing
//! or damaged indexes of sealed segments, and reports each action with file, position and bytes
//! in a [`RecoveryReport`]. A directory with files that are not ours, a segment of another
//! partition, or a gap between segments is a [`LogOpenError`].
//!
//! ## Replica state: leader epochs and truncation ([`epoch`], [`truncate`])
//! The directory also holds the replica's **leader-epoch history** (`leader-epoch`: epoch ->
//! first offset, Kafka's KIP-101/279), opened with the log and trimmed to the recovered log;
//! [`Log::assign_epoch`] records an epoch, [`Log::end_offset_for`] answers a follower's
//! "where does my epoch end?". [`Log::close_and_truncate`] cuts a divergent suffix and the
//! epochs with it, crash-safe through a durable intent file that the next open finishes.
//! These exist as a library; wiring them into the data path is planned (#11).
//!
//! ## Reading
//! [`Log::reader`] follows the durable tail of a live log; [`Reader::open`] reads a snapshot of
//! a log on disk. [`Reader::seek_offset`], [`Reader::seek_timestamp`], then
//! [`Reader::read_batch`] into a caller-provided [`AlignedBuf`] returns a [`BatchView`] whose
//! records borrow the buffer, or `None` at the tail. Bad bytes below the durable offset are a
//! [`ReadError::Corrupt`] naming file and position; they are never served.
//!
//! ## Structure
//! Sans-IO cores: [`codec`] (batch encode/decode), [`index`] (sparse index math and files),
//! [`scan`] (batch walking for recovery), [`retention`] (deletion decisions). Thin adapters:
//! [`segment`] (files), [`io`] (the [`IoBackend`] seam: io_uring and pwrite), `log` (the
//! writer: `log/recover.rs` has the steps of opening, `log/write.rs` the write pipeline of
//! iovecs, submissions and completions), `reader`. `unsafe` is denied everywhere except `io`,
//! `log/write.rs` and the test-only fault-injecting backend.

// `unsafe` lives only where bytes meet the kernel: `io` (aligned buffers, io_uring and pwritev
// backends, preallocation), the log's write pipeline (`log/write.rs`, iovecs into the write
// ring) and the test-only fault-injecting backend. Everything else is checked by the compiler.
#![deny(unsafe_code)]

pub mod codec;
pub mod epoch;
pub mod index;
#[allow(unsafe_code)]
pub mod io;
pub mod layout;
mod log;
mod prepare;
mod reader;
pub mod retention;
pub mod scan;
pub mod segment;
pub mod truncate;

#[cfg(test)]
#[allow(unsafe_code)]
mod fault;

pub use codec::{BatchDecodeError, BatchEncodeError, BatchView, Record, RecordView};
pub use epoch::{EpochEntry, EpochFile, EpochFileError, EpochHistory};
pub use io::{AlignedBuf, BufBacking, IoBackend, IoMode, PwriteIo, SysIo, UringIo, Wait};
pub use log::*;
pub use reader::{ReadError, Reader, SeekError};
pub use retention::RetentionPolicy;
pub use truncate::LogTruncateError;

/// Deterministic record contents used by `ms-log append` (a disk smoke test) and the crash
/// tests: given a seed and an offset, anyone can recompute the exact bytes and timestamp.
pub mod pattern {
    /// Payload length of the record at `offset` (0..=len_max).
    pub fn payload_len(seed: u64, offset: u64, len_max: usize) -> usize {
        (mix(seed ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % (len_max as u64 + 1)) as usize
    }
    /// Fills `out` with the payload of the record at `offset`.
    pub fn fill(seed: u64, offset: u64, out: &mut [u8]) {
        let mut x = mix(seed.wrapping_add(offset) | 1);
        for chunk in out.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
    /// Timestamp of the record at `offset`.
    pub fn timestamp_ns(offset: u64) -> u64 {
        1_000_000_000 + offset * 1_000
    }
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
