//! The publishing handle of one stream partition.

use shm_ring::{
    BackingKind, Claim, OfferError, PublisherAttachError, Ring, RingCreateError, RingOpenError,
};

/// Why a publisher could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PublisherCreateError {
    #[error("cannot create ring {name:?}: {source} (check the ring directory, its free space and the capacity)")]
    Create {
        name: String,
        #[source]
        source: RingCreateError,
    },
    #[error("ring {name:?} exists but cannot be opened: {source} (remove a stale file or fix the ring directory)")]
    Open {
        name: String,
        #[source]
        source: RingOpenError,
    },
    #[error("cannot attach a publisher: {0} (an exclusive ring allows one publisher at a time; close the other one or use a shared ring)")]
    Attach(#[from] PublisherAttachError),
}

/// Publishes records on one ring: `claim(len) -> write -> commit()` (zero
/// copy) or `offer(bytes)` (one copy). Back-pressure is a value
/// (`OfferError::BackPressured`): the caller retries, usually after an
/// [`IdleStrategy`](crate::IdleStrategy) step.
pub struct Publisher {
    inner: shm_ring::Publisher,
    ring: Ring,
}

impl Publisher {
    pub(crate) fn attach(ring: Ring) -> Result<Self, PublisherCreateError> {
        let inner = ring.publisher()?;
        Ok(Self { inner, ring })
    }

    /// Reserves `len` bytes in the ring; write them with `buffer()`, then `commit()`.
    /// Dropping the claim without commit aborts it.
    #[inline]
    pub fn claim(&mut self, len: usize) -> Result<Claim<'_>, OfferError> {
        self.inner.claim(len)
    }

    /// Copies `payload` into the ring; returns the record's offset.
    #[inline]
    pub fn offer(&mut self, payload: &[u8]) -> Result<u64, OfferError> {
        self.inner.offer(payload)
    }

    /// Like `offer`, tagging the record with an application type id.
    #[inline]
    pub fn offer_typed(&mut self, type_id: u16, payload: &[u8]) -> Result<u64, OfferError> {
        self.inner.offer_typed(type_id, payload)
    }

    pub fn max_payload_len(&self) -> usize {
        self.inner.max_payload_len()
    }

    /// hugetlbfs or /dev/shm: what the ring file actually lives on.
    pub fn backing(&self) -> BackingKind {
        self.ring.backing()
    }

    /// The human name of the backing, for reports.
    pub fn backing_name(&self) -> &'static str {
        match self.ring.backing() {
            BackingKind::Hugetlbfs => "hugetlbfs (2 MiB pages)",
            BackingKind::DevShm => "/dev/shm (4 KiB pages)",
        }
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }
}
