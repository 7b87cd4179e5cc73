//! Every atomic the ring algorithm uses, in one place.
//!
//! Under `cfg(loom)` the same names resolve to loom's model-checked types, so
//! `tests/loom.rs` runs the real claim/commit/poll code on a small heap buffer.
//!
//! [`AtomicPair`] is the one 128-bit atomic: two `u64` words at a 16-byte
//! aligned address, updated together (`lock cmpxchg16b` / `vmovdqa` through
//! `portable-atomic`). Word 0 is at the lower address. Every access to a
//! pair's 16 bytes goes through this type: the ring never mixes 64-bit and
//! 128-bit accesses to the same bytes. Under loom, a pair is packed into one
//! model-checked `AtomicU64` (both words must fit in 32 bits, which the tiny
//! loom rings guarantee and `pack` asserts), so memory orderings are checked
//! exactly as written.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};

/// Two `u64` words read and written as one 16-byte atomic.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct AtomicPair(portable_atomic::AtomicU128);

#[cfg(not(loom))]
impl AtomicPair {
    /// True when 128-bit atomics are lock-free on this CPU (cmpxchg16b). A
    /// lock-based fallback would use a process-local lock, which does not
    /// protect shared memory, so rings refuse to run without it.
    pub(crate) fn is_lock_free() -> bool {
        portable_atomic::AtomicU128::is_lock_free()
    }

    #[cfg(test)]
    pub(crate) fn new(w: (u64, u64)) -> Self {
        Self(portable_atomic::AtomicU128::new(join(w)))
    }

    #[inline(always)]
    pub(crate) fn load(&self, order: Ordering) -> (u64, u64) {
        split(self.0.load(order))
    }

    #[inline(always)]
    pub(crate) fn store(&self, w: (u64, u64), order: Ordering) {
        self.0.store(join(w), order)
    }

    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        current: (u64, u64),
        new: (u64, u64),
        success: Ordering,
        failure: Ordering,
    ) -> Result<(u64, u64), (u64, u64)> {
        self.0
            .compare_exchange(join(current), join(new), success, failure)
            .map(split)
            .map_err(split)
    }
}

#[cfg(not(loom))]
#[inline(always)]
fn join((w0, w1): (u64, u64)) -> u128 {
    u128::from(w0) | (u128::from(w1) << 64)
}

#[cfg(not(loom))]
#[inline(always)]
fn split(v: u128) -> (u64, u64) {
    (v as u64, (v >> 64) as u64)
}

/// Loom stand-in: both words packed into one model-checked 64-bit atomic.
#[cfg(loom)]
pub(crate) struct AtomicPair(loom::sync::atomic::AtomicU64);

#[cfg(loom)]
impl AtomicPair {
    pub(crate) fn new(w: (u64, u64)) -> Self {
        Self(loom::sync::atomic::AtomicU64::new(pack(w)))
    }

    pub(crate) fn load(&self, order: Ordering) -> (u64, u64) {
        unpack(self.0.load(order))
    }

    pub(crate) fn store(&self, w: (u64, u64), order: Ordering) {
        self.0.store(pack(w), order)
    }

    pub(crate) fn compare_exchange(
        &self,
        current: (u64, u64),
        new: (u64, u64),
        success: Ordering,
        failure: Ordering,
    ) -> Result<(u64, u64), (u64, u64)> {
        self.0
            .compare_exchange(pack(current), pack(new), success, failure)
            .map(unpack)
            .map_err(unpack)
    }
}

#[cfg(loom)]
fn pack((w0, w1): (u64, u64)) -> u64 {
    assert!(
        w0 <= u64::from(u32::MAX) && w1 <= u64::from(u32::MAX),
        "loom rings must stay tiny"
    );
    w0 | (w1 << 32)
}

#[cfg(loom)]
fn unpack(v: u64) -> (u64, u64) {
    (v & 0xffff_ffff, v >> 32)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn pair_round_trips_and_cas_reports_current() {
        let p = AtomicPair::new((1, 2));
        assert_eq!(p.load(Ordering::Acquire), (1, 2));
        assert_eq!(
            p.compare_exchange((1, 3), (5, 6), Ordering::AcqRel, Ordering::Acquire),
            Err((1, 2))
        );
        assert_eq!(
            p.compare_exchange((1, 2), (5, u64::MAX), Ordering::AcqRel, Ordering::Acquire),
            Ok((1, 2))
        );
        assert_eq!(p.load(Ordering::Acquire), (5, u64::MAX));
        assert!(AtomicPair::is_lock_free(), "this machine has cmpxchg16b");
    }
}
