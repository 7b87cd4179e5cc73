//! The subscribing handle of one stream partition, mapped lazily.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shm_ring::{PollError, Record, Ring, RingOpenError, StartAt, SubscriberAttachError};

use crate::idle::IdleStrategy;

/// While the ring does not exist, `poll` tries to open it at most this often,
/// so an idle handle costs no syscall per poll.
pub const OPEN_RETRY_NS: u64 = 1_000_000;
const OPEN_RETRY: Duration = Duration::from_nanos(OPEN_RETRY_NS);

/// Why `poll` failed. After `Ring { source: PollError::Evicted, .. }` create a
/// new subscriber (records published while it was evicted may be gone).
#[derive(Debug, thiserror::Error)]
pub enum SubscriberPollError {
    #[error(
        "ring {name:?} exists but cannot be opened: {source} (remove or recreate the ring file)"
    )]
    Open {
        name: String,
        #[source]
        source: RingOpenError,
    },
    #[error("cannot attach to ring {name:?}: {source} (raise subscribers_max or close idle subscribers)")]
    Attach {
        name: String,
        #[source]
        source: SubscriberAttachError,
    },
    #[error("ring {name:?}: {source} (a subscriber that stops polling without keepalive is evicted; create a new one)")]
    Ring {
        name: String,
        #[source]
        source: PollError,
    },
}

/// Polls one ring; created before the ring exists, it attaches when the ring appears.
///
/// An idle handle (no ring mapped) holds two small heap allocations: the ring
/// name and the optional directory override.
pub struct Subscriber {
    /// `Some` once the ring has been mapped.
    attached: Option<Attached>,
    name: Box<str>,
    dir: Option<Box<std::path::Path>>,
    start: StartAt,
    /// Earliest next open attempt. `Instant`, not the ring clock: reading
    /// the ring clock before the first open would give this process its own
    /// clock calibration instead of adopting the ring's (see shm_ring::clock).
    next_open: Option<Instant>,
}

struct Attached {
    inner: shm_ring::Subscriber,
    ring: Ring,
}

impl Subscriber {
    pub(crate) fn new(name: String, dir: Option<PathBuf>, start: StartAt) -> Self {
        Self {
            attached: None,
            name: name.into_boxed_str(),
            dir: dir.map(PathBuf::into_boxed_path),
            start,
            next_open: None,
        }
    }

    /// The ring name this handle follows.
    pub fn ring_name(&self) -> &str {
        &self.name
    }

    /// True once the ring has been mapped.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// The mapped ring, if any.
    pub fn ring(&self) -> Option<&Ring> {
        self.attached.as_ref().map(|a| &a.ring)
    }

    /// Bytes this handle holds while idle: its own size plus the heap it owns
    /// (ring name, directory). A mapped ring is not counted here.
    pub fn footprint_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.name.len()
            + self.dir.as_ref().map_or(0, |d| d.as_os_str().len())
    }

    /// Tries to map the ring now (rate-limited to one attempt per
    /// `OPEN_RETRY_NS` unless `force`). Ok(false): the ring does not exist yet.
    pub fn try_attach(&mut self, force: bool) -> Result<bool, SubscriberPollError> {
        if self.attached.is_some() {
            return Ok(true);
        }
        if !force && self.next_open.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        let ring = match Ring::open(&self.name, self.dir.as_deref()) {
            Ok(ring) => ring,
            Err(e) if ring_is_absent(&e) => {
                self.next_open = Some(Instant::now() + OPEN_RETRY);
                return Ok(false);
            }
            Err(source) => {
                return Err(SubscriberPollError::Open {
                    name: self.name.to_string(),
                    source,
                })
            }
        };
        let inner = ring
            .subscriber(self.start)
            .map_err(|source| SubscriberPollError::Attach {
                name: self.name.to_string(),
                source,
            })?;
        self.attached = Some(Attached { inner, ring });
        Ok(true)
    }

    /// Delivers up to `limit` records in order to `handler`, zero-copy; returns
    /// how many. Returns 0 while the ring does not exist.
    #[inline]
    pub fn poll<F: FnMut(&Record<'_>)>(
        &mut self,
        handler: F,
        limit: usize,
    ) -> Result<usize, SubscriberPollError> {
        let Some(a) = self.attached.as_mut() else {
            return if self.try_attach(false)? {
                self.poll(handler, limit)
            } else {
                Ok(0)
            };
        };
        match a.inner.poll(handler, limit) {
            Ok(p) => Ok(p.records),
            Err(source) => Err(SubscriberPollError::Ring {
                name: self.name.to_string(),
                source,
            }),
        }
    }

    /// Heartbeat without polling (idle strategies call it while parked).
    #[inline]
    pub fn keepalive(&mut self) {
        if let Some(a) = self.attached.as_mut() {
            a.inner.keepalive();
        }
    }

    /// One step of `idle` after a poll that returned `work` records; keeps the
    /// ring subscription alive while the strategy parks.
    #[inline]
    pub fn idle(&mut self, idle: &mut IdleStrategy, work: usize) {
        idle.idle_with(work, || self.keepalive());
    }

    /// Offset of the next record this subscriber will read (0 before attach).
    pub fn next_offset(&self) -> u64 {
        self.attached.as_ref().map_or(0, |a| a.inner.next_offset())
    }

    /// Records lost to overrun (lossy rings) or aborted claims.
    pub fn lost_records(&self) -> u64 {
        self.attached.as_ref().map_or(0, |a| a.inner.lost_records())
    }
}

fn ring_is_absent(e: &RingOpenError) -> bool {
    matches!(e, RingOpenError::NotFound { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_handle_is_small() {
        let s = Subscriber::new(
            crate::ring_name(u32::MAX, u16::MAX),
            Some(PathBuf::from("/dev/shm/memstreamer")),
            StartAt::Earliest,
        );
        assert!(!s.is_attached());
        assert!(
            s.footprint_bytes() < 1024,
            "idle handle holds {} bytes",
            s.footprint_bytes()
        );
    }
}
