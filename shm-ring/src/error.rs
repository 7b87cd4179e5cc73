//! Error types. Hot-path outcomes (back-pressure, expired claims, eviction)
//! are plain values; cold-path errors say what to do about them.

use std::path::PathBuf;

/// Why `Ring::create` failed.
#[derive(Debug, thiserror::Error)]
pub enum RingCreateError {
    #[error("invalid ring name {name:?}: use 1 to 64 characters from [A-Za-z0-9._-], not starting with '.'")]
    InvalidName { name: String },
    #[error("invalid ring configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("ring {path} is in use by live process {pid}: pick another name, or stop that process first")]
    Exists { path: PathBuf, pid: u32 },
    #[error("{path} exists and is not a usable MemoryStreamer ring ({reason}); it was left alone: remove it if it is not someone else's file")]
    Foreign { path: PathBuf, reason: String },
    #[error("no hugepages for {path}: {reason}; reserve some (`scripts/hugepages.sh reserve 512` or /proc/sys/vm/nr_hugepages) or use Backing::Auto / Backing::DevShm")]
    NoHugepages { path: PathBuf, reason: String },
    #[error("not enough space in {dir} for a {bytes}-byte ring file: free space there (e.g. remove stale files in /dev/shm) or choose a smaller capacity_bytes")]
    NoSpace { dir: PathBuf, bytes: u64 },
    #[error("permission denied on {path}: run as a user who may write there, or set RingConfig::dir to a writable directory")]
    PermissionDenied { path: PathBuf },
    #[error(
        "{path} is not a directory: set RingConfig::dir to a directory (it is created if missing)"
    )]
    NotADirectory { path: PathBuf },
    #[error(
        "128-bit atomics (cmpxchg16b) are not lock-free on this CPU: shared-memory rings need them"
    )]
    AtomicsNotLockFree,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why `Ring::open` failed.
#[derive(Debug, thiserror::Error)]
pub enum RingOpenError {
    #[error("invalid ring name {name:?}: use 1 to 64 characters from [A-Za-z0-9._-], not starting with '.'")]
    InvalidName { name: String },
    #[error("no ring named {name:?} in {dirs:?}: create it first (Ring::create) or pass the directory it was created in")]
    NotFound { name: String, dirs: Vec<PathBuf> },
    #[error("permission denied opening {path}: run as the ring creator's user (ring files are mode 0600)")]
    PermissionDenied { path: PathBuf },
    #[error("{path} is not a MemoryStreamer ring ({reason}): check the name and directory")]
    Foreign { path: PathBuf, reason: String },
    #[error("{path} has ring layout version {found}, this build reads version {expected}: recreate the ring with this build")]
    VersionMismatch {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{path} is corrupt: {field} {reason}; remove it and recreate the ring")]
    Corrupt {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error(
        "128-bit atomics (cmpxchg16b) are not lock-free on this CPU: shared-memory rings need them"
    )]
    AtomicsNotLockFree,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why `Ring::publisher` failed.
#[derive(Debug, thiserror::Error)]
pub enum PublisherAttachError {
    #[error("the ring has an exclusive publisher already (process {pid}): use one publisher per exclusive ring, or create the ring with PublisherKind::Shared")]
    Busy { pid: u32 },
}

/// Why `Ring::subscriber` failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberAttachError {
    #[error("all {max} subscriber slots are in use by live subscribers: drop one, or create the ring with a larger subscribers_max")]
    TableFull { max: u32 },
}

/// Outcome of `claim`/`offer` other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// Reliable mode: the slowest live subscriber has not freed enough room. Retry.
    #[error("back-pressured by the slowest live subscriber: retry later")]
    BackPressured,
    #[error("message of {len} bytes exceeds this ring's max_payload_len {max}: split it or use a larger ring")]
    MessageTooLarge { len: usize, max: usize },
    /// Exclusive ring: another publisher took the owner slot (this one was
    /// declared dead). Drop this publisher.
    #[error(
        "this exclusive publisher was replaced by another one (it was considered dead): drop it"
    )]
    PublisherEvicted,
}

/// Outcome of `Claim::commit` other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The claim was held longer than claim_timeout_ns and a subscriber aborted it
    /// (or, in lossy mode, the ring lapped it). The record is lost; offer it again.
    #[error("claim expired: it was held past claim_timeout_ns and aborted by a subscriber; offer the record again")]
    ClaimExpired,
}

/// Why `poll` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    /// This subscriber missed heartbeats for liveness_timeout_ns and was dropped
    /// from the subscriber table. Attach a new subscriber.
    #[error("subscriber was evicted after missing heartbeats for liveness_timeout_ns: attach a new one (and poll or keepalive more often)")]
    Evicted,
    #[error("ring data is corrupt at position {position}: {reason}; the ring was written by a faulty or hostile process, recreate it")]
    Corrupt { position: u64, reason: &'static str },
}
