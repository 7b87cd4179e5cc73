//! `ms_idle_strategy_t`: what a polling loop does after a duty cycle with no work.

use std::ffi::c_int;

use sdk::{Adaptive, Backoff, IdleStrategy};

use crate::error::{guard, write_out, Error};
use crate::handle::{self, Handle};

/// The idle strategies (Aeron's): see sdk::idle for the phases.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ms_idle_kind_t {
    /// Spin-loop hint: lowest wake-up latency, one core busy.
    MS_IDLE_BUSY_SPIN = 0,
    /// sched_yield.
    MS_IDLE_YIELD = 1,
    /// Spin, then yield, then park with a doubling sleep (Aeron's defaults).
    MS_IDLE_BACKOFF = 2,
    /// Spin, yield, then park for a share of the idle time (defaults).
    MS_IDLE_ADAPTIVE = 3,
}

/// An idle strategy (opaque). Create with `ms_idle_strategy_new*`, free with
/// `ms_idle_strategy_close`.
/// Threading: one thread at a time (normally the thread of the polling loop).
pub struct ms_idle_strategy_t {
    h: Handle<IdleStrategy>,
}

opaque!(
    ms_idle_strategy_t,
    IdleStrategy,
    c"the idle strategy is NULL (not created, or closed)"
);

/// # Safety
/// `out` is NULL or writable.
unsafe fn create(
    strategy: IdleStrategy,
    out: *mut *mut ms_idle_strategy_t,
) -> Result<c_int, Error> {
    if out.is_null() {
        return Err(Error::invalid("out is NULL"));
    }
    let ptr = handle::into_raw::<ms_idle_strategy_t>(strategy);
    // SAFETY: `out` is non-NULL (checked) and writable (caller's contract).
    unsafe { write_out(out, c"out is NULL", ptr) }?;
    Ok(0)
}

/// Creates a strategy of `kind` (an ms_idle_kind_t) with default settings.
/// Ownership: `*out` belongs to the caller; free it with `ms_idle_strategy_close`.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_new(
    kind: c_int,
    out: *mut *mut ms_idle_strategy_t,
) -> c_int {
    guard(|| {
        let strategy = match kind {
            k if k == ms_idle_kind_t::MS_IDLE_BUSY_SPIN as c_int => IdleStrategy::busy_spin(),
            k if k == ms_idle_kind_t::MS_IDLE_YIELD as c_int => IdleStrategy::yielding(),
            k if k == ms_idle_kind_t::MS_IDLE_BACKOFF as c_int => IdleStrategy::backoff(),
            k if k == ms_idle_kind_t::MS_IDLE_ADAPTIVE as c_int => IdleStrategy::adaptive(),
            k => return Err(Error::invalid(format!("kind {k} is not an ms_idle_kind_t"))),
        };
        // SAFETY: forwarded caller's contract.
        unsafe { create(strategy, out) }
    })
}

/// A backoff strategy: spin `spins_max` times, yield `yields_max` times, then
/// park, sleeping from `park_ns_min` doubling up to `park_ns_max`.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_new_backoff(
    spins_max: u32,
    yields_max: u32,
    park_ns_min: u64,
    park_ns_max: u64,
    out: *mut *mut ms_idle_strategy_t,
) -> c_int {
    guard(|| {
        let b = Backoff::new(spins_max, yields_max, park_ns_min, park_ns_max);
        // SAFETY: forwarded caller's contract.
        unsafe { create(IdleStrategy::Backoff(b), out) }
    })
}

/// An adaptive strategy: spin while idle < `spin_ns`, yield while idle <
/// `yield_ns`, then park for 1/16 of the idle time within
/// [`park_ns_min`, `park_ns_max`].
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_new_adaptive(
    spin_ns: u64,
    yield_ns: u64,
    park_ns_min: u64,
    park_ns_max: u64,
    out: *mut *mut ms_idle_strategy_t,
) -> c_int {
    guard(|| {
        let a = Adaptive::new(spin_ns, yield_ns, park_ns_min, park_ns_max);
        // SAFETY: forwarded caller's contract.
        unsafe { create(IdleStrategy::Adaptive(a), out) }
    })
}

/// One idle step after a duty cycle that did `work` units of work (`work >
/// 0` resets the strategy and returns at once). For a subscriber prefer
/// `ms_subscriber_idle`, which also keeps it alive while parked.
///
/// # Safety
/// `idle` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_idle(
    idle: *mut ms_idle_strategy_t,
    work: c_int,
) -> c_int {
    guard(|| {
        let work = usize::try_from(work).unwrap_or(0);
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(idle, |i| {
                i.idle(work);
                Ok(0)
            })
        }
    })
}

/// Back to the strategy's first phase.
///
/// # Safety
/// `idle` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_reset(idle: *mut ms_idle_strategy_t) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(idle, |i| {
                i.reset();
                Ok(0)
            })
        }
    })
}

/// Frees the strategy and sets `*idle` to NULL (MS_OK when already NULL).
///
/// # Safety
/// `idle` is NULL or points to NULL or to a live strategy.
#[no_mangle]
pub unsafe extern "C" fn ms_idle_strategy_close(idle: *mut *mut ms_idle_strategy_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::close(idle, |_| Ok(())) }.map(|()| 0))
}
