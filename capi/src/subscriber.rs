//! `ms_subscriber_t`: poll with a callback and a fragment limit.

use std::ffi::{c_int, c_void};

use sdk::{PollError, SubscriberPollError};

use crate::context::{context_of, ms_context_t};
use crate::error::{guard, ms_result_t, write_out, Error};
use crate::handle::{self, Handle};
use crate::idle::ms_idle_strategy_t;

/// The largest `fragment_limit` of one poll call (the count is returned as an int).
pub const MS_FRAGMENT_LIMIT_MAX: usize = 1 << 20;

/// What a poll callback learns about a record besides its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ms_record_header_t {
    /// The record's offset in the ring's stream of records.
    pub offset: u64,
    /// Ring clock when the record was claimed (`ms_clock_now_ns` time base).
    pub timestamp_ns: u64,
    /// Application type id (0 from `ms_publisher_offer`).
    pub type_id: u16,
}

/// Called once per record, in order. `payload` (`len` bytes) and `header`
/// point into the ring and are valid only until the callback returns: copy
/// what you keep. Must return normally; calling this subscriber's functions
/// from inside it returns MS_ERR_STATE.
pub type ms_fragment_handler_t = Option<
    unsafe extern "C" fn(
        clientd: *mut c_void,
        payload: *const u8,
        len: usize,
        header: *const ms_record_header_t,
    ),
>;

/// A subscriber on one ring (opaque). Open with `ms_subscriber_open`, free
/// with `ms_subscriber_close`.
/// Threading: one thread at a time; it may move between threads. Each
/// subscriber of a ring reads every record independently.
pub struct ms_subscriber_t {
    h: Handle<sdk::Subscriber>,
}

opaque!(
    ms_subscriber_t,
    sdk::Subscriber,
    c"the subscriber is NULL (not opened, or closed)"
);

fn poll_error(e: SubscriberPollError) -> Error {
    let code = match &e {
        SubscriberPollError::Ring {
            source: PollError::Evicted,
            ..
        } => ms_result_t::MS_ERR_EVICTED,
        SubscriberPollError::Ring {
            source: PollError::Corrupt { .. },
            ..
        } => ms_result_t::MS_ERR_CORRUPT,
        _ => ms_result_t::MS_ERR_IO,
    };
    Error::new(code, e.to_string())
}

/// Opens a subscriber on `stream`/`partition`. It may be opened before the
/// ring exists: it maps the ring when it appears (polls return 0 until
/// then). Ownership: `*out` belongs to the caller; free it with
/// `ms_subscriber_close`. The context may be closed afterwards.
///
/// # Safety
/// `ctx` is NULL or a live context; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_open(
    ctx: *const ms_context_t,
    stream: u32,
    partition: u16,
    out: *mut *mut ms_subscriber_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller's contract.
        let ctx = unsafe { context_of(ctx) }?;
        let ptr = handle::into_raw::<ms_subscriber_t>(ctx.subscriber(stream, partition));
        // SAFETY: `out` is non-NULL (checked) and writable (caller's contract).
        unsafe { write_out(out, c"out is NULL", ptr) }?;
        Ok(0)
    })
}

/// Frees the subscriber (leaving the ring) and sets `*subscriber` to NULL.
/// MS_OK when `*subscriber` is already NULL; MS_ERR_STATE from inside its
/// own poll callback.
///
/// # Safety
/// `subscriber` is NULL or points to NULL or to a live subscriber.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_close(subscriber: *mut *mut ms_subscriber_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::close(subscriber, |_| Ok(())) }.map(|()| 0))
}

/// Delivers up to `fragment_limit` records in order to `handler` (zero
/// copy: it sees the ring's bytes), passing `clientd` through. Returns the
/// number of records delivered (>= 0; 0 while the ring does not exist), or
/// a negative code: MS_ERR_EVICTED (open a new subscriber), MS_ERR_CORRUPT,
/// MS_ERR_IO, MS_ERR_INVALID_ARGUMENT (NULL handler, fragment_limit 0 or
/// above MS_FRAGMENT_LIMIT_MAX), MS_ERR_NULL_HANDLE, MS_ERR_STATE.
///
/// # Safety
/// `subscriber` is NULL or live; `handler` is NULL or a function that is
/// safe to call with `clientd` and returns normally.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_poll(
    subscriber: *mut ms_subscriber_t,
    handler: ms_fragment_handler_t,
    clientd: *mut c_void,
    fragment_limit: usize,
) -> c_int {
    guard(|| {
        let handler = handler.ok_or(Error::fixed(
            ms_result_t::MS_ERR_INVALID_ARGUMENT,
            c"handler is NULL",
        ))?;
        if fragment_limit == 0 || fragment_limit > MS_FRAGMENT_LIMIT_MAX {
            return Err(Error::invalid(format!(
                "fragment_limit {fragment_limit} is not in 1..={MS_FRAGMENT_LIMIT_MAX}"
            )));
        }
        let deliver = |r: &sdk::Record<'_>| {
            let header = ms_record_header_t {
                offset: r.offset,
                timestamp_ns: r.timestamp_ns,
                type_id: r.type_id,
            };
            // SAFETY: `handler` is safe to call with `clientd` (caller's
            // contract); payload and header are valid for the call, which is
            // all the header promises.
            unsafe { handler(clientd, r.payload.as_ptr(), r.payload.len(), &header) };
        };
        let poll = |s: &mut sdk::Subscriber| s.poll(deliver, fragment_limit).map_err(poll_error);
        // SAFETY: forwarded caller's contract.
        let n = unsafe { handle::with(subscriber, poll) }?;
        Ok(n as c_int)
    })
}

/// 1 once the ring is mapped, 0 before (or a negative code).
///
/// # Safety
/// `subscriber` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_is_attached(subscriber: *mut ms_subscriber_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::with(subscriber, |s| Ok(c_int::from(s.is_attached()))) })
}

/// Writes the number of records this subscriber lost (lossy-ring overrun,
/// aborted claims) to `*lost`.
///
/// # Safety
/// `subscriber` is NULL or live; `lost` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_lost_records(
    subscriber: *mut ms_subscriber_t,
    lost: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let n = unsafe { handle::with(subscriber, |s| Ok(s.lost_records())) }?;
        // SAFETY: `lost` is NULL or writable (caller's contract).
        unsafe { write_out(lost, c"lost is NULL", n) }?;
        Ok(0)
    })
}

/// One step of `idle` after a poll that returned `work` records: resets on
/// work, otherwise spins/yields/parks per the strategy, and keeps this
/// subscriber alive in the ring while it parks.
///
/// # Safety
/// `subscriber` and `idle` are NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_subscriber_idle(
    subscriber: *mut ms_subscriber_t,
    idle: *mut ms_idle_strategy_t,
    work: c_int,
) -> c_int {
    guard(|| {
        let work = usize::try_from(work).unwrap_or(0);
        let step = |s: &mut sdk::Subscriber| {
            // SAFETY: forwarded caller's contract (`idle` is a different handle).
            unsafe {
                handle::with(idle, |i| {
                    s.idle(i, work);
                    Ok(0)
                })
            }
        };
        // SAFETY: forwarded caller's contract.
        unsafe { handle::with(subscriber, step) }
    })
}
