//! Settings shared by the handles of one client. Ring names (stream ->
//! ring file) come from `abi::ring`.

use std::path::{Path, PathBuf};

use shm_ring::{
    Backing, Mode, PublisherKind, Ring, RingConfig, RingCreateError, RingOpenError, StartAt,
};

use crate::publisher::{Publisher, PublisherCreateError};
use crate::subscriber::Subscriber;

pub use abi::ring::{ring_name, RING_NAME_BYTES_MAX};

/// How this client creates and attaches to rings. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    pub(crate) dir: Option<PathBuf>,
    capacity_bytes: u64,
    mode: Mode,
    publisher_kind: PublisherKind,
    subscribers_max: u32,
    liveness_timeout_ns: u64,
    claim_timeout_ns: u64,
    backing: Backing,
    pub(crate) start_at: StartAt,
}

impl Default for Context {
    fn default() -> Self {
        let d = RingConfig::default();
        Self {
            dir: d.dir,
            capacity_bytes: d.capacity_bytes,
            mode: d.mode,
            publisher_kind: d.publishers,
            subscribers_max: d.subscribers_max,
            liveness_timeout_ns: d.liveness_timeout_ns,
            claim_timeout_ns: d.claim_timeout_ns,
            backing: d.backing,
            start_at: StartAt::Earliest,
        }
    }
}

impl Context {
    pub fn builder() -> ContextBuilder {
        ContextBuilder {
            ctx: Context::default(),
        }
    }

    /// The ring configuration new rings of this context are created with.
    pub fn ring_config(&self) -> RingConfig {
        RingConfig {
            capacity_bytes: self.capacity_bytes,
            mode: self.mode,
            publishers: self.publisher_kind,
            subscribers_max: self.subscribers_max,
            liveness_timeout_ns: self.liveness_timeout_ns,
            claim_timeout_ns: self.claim_timeout_ns,
            backing: self.backing,
            dir: self.dir.clone(),
        }
    }

    /// The directory override, if any (else shm-ring's default directories).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Opens the ring of `stream`/`partition`, or creates it when there is
    /// none. Opening first matters: it makes this process adopt the clock
    /// calibration stored in the ring (publisher timestamps and subscriber
    /// clocks then agree exactly), and with `Backing::Auto` it finds a ring
    /// another process created on hugetlbfs even when the pool has no room
    /// left for a second one. The ring stays mapped while the caller holds it.
    pub fn create_ring(&self, stream: u32, partition: u16) -> Result<Ring, PublisherCreateError> {
        let name = ring_name(stream, partition);
        match Ring::open(&name, self.dir()) {
            Ok(ring) => return Ok(ring),
            Err(RingOpenError::NotFound { .. }) => {}
            Err(source) => return Err(PublisherCreateError::Open { name, source }),
        }
        match Ring::create(&name, &self.ring_config()) {
            Ok(ring) => Ok(ring),
            // Lost a creation race with another live process: use its ring.
            Err(RingCreateError::Exists { .. }) => Ring::open(&name, self.dir())
                .map_err(|source| PublisherCreateError::Open { name, source }),
            Err(source) => Err(PublisherCreateError::Create { name, source }),
        }
    }

    /// A publisher on `stream`/`partition`; opens the ring, or creates it
    /// with this context's settings when there is none.
    pub fn publisher(
        &self,
        stream: u32,
        partition: u16,
    ) -> Result<Publisher, PublisherCreateError> {
        let ring = self.create_ring(stream, partition)?;
        Publisher::attach(ring)
    }

    /// A subscriber on `stream`/`partition`. Never fails: the ring is mapped
    /// lazily by `poll` once it exists.
    pub fn subscriber(&self, stream: u32, partition: u16) -> Subscriber {
        Subscriber::new(
            ring_name(stream, partition),
            self.dir.clone(),
            self.start_at,
        )
    }

    /// Removes the ring file of `stream`/`partition` (the owner does this on
    /// shutdown; mapped handles keep working until they are dropped).
    pub fn remove(&self, stream: u32, partition: u16) -> std::io::Result<()> {
        match Ring::open(&ring_name(stream, partition), self.dir()) {
            Ok(ring) => ring.unlink(),
            Err(_) => Ok(()),
        }
    }
}

/// Builds a [`Context`]; unset fields keep shm-ring's `RingConfig::default()`.
#[derive(Clone, Debug)]
pub struct ContextBuilder {
    ctx: Context,
}

impl ContextBuilder {
    /// Directory of the ring files (tests); default: shm-ring's hugetlbfs or /dev/shm dir.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ctx.dir = Some(dir.into());
        self
    }
    /// Ring size, a power of two within shm-ring's limits.
    pub fn capacity_bytes(mut self, capacity_bytes: u64) -> Self {
        self.ctx.capacity_bytes = capacity_bytes;
        self
    }
    /// Reliable (back-pressure) or lossy (overwrite) rings.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.ctx.mode = mode;
        self
    }
    /// One exclusive publisher (no CAS on claim) or many shared publishers.
    pub fn publisher_kind(mut self, kind: PublisherKind) -> Self {
        self.ctx.publisher_kind = kind;
        self
    }
    pub fn subscribers_max(mut self, subscribers_max: u32) -> Self {
        self.ctx.subscribers_max = subscribers_max;
        self
    }
    /// A handle whose heartbeat is older than this is dropped by the ring.
    pub fn liveness_timeout_ns(mut self, ns: u64) -> Self {
        self.ctx.liveness_timeout_ns = ns;
        self
    }
    pub fn claim_timeout_ns(mut self, ns: u64) -> Self {
        self.ctx.claim_timeout_ns = ns;
        self
    }
    /// hugetlbfs, /dev/shm, or Auto (hugetlbfs when it has room).
    pub fn backing(mut self, backing: Backing) -> Self {
        self.ctx.backing = backing;
        self
    }
    /// Where a subscriber starts when it maps the ring: Earliest (default: a
    /// subscriber that appears shortly after the publisher sees its first
    /// records) or Tail (only records published after it attached).
    pub fn start_at(mut self, start_at: StartAt) -> Self {
        self.ctx.start_at = start_at;
        self
    }
    pub fn build(self) -> Context {
        self.ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_overrides_only_what_it_sets() {
        let ctx = Context::builder().capacity_bytes(1 << 16).dir("/x").build();
        let cfg = ctx.ring_config();
        assert_eq!(cfg.capacity_bytes, 1 << 16);
        assert_eq!(cfg.dir.as_deref(), Some(Path::new("/x")));
        assert_eq!(cfg.subscribers_max, RingConfig::default().subscribers_max);
    }
}
