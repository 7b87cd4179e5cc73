//! `ms_publisher_t`: offer, and zero-copy claim -> write -> commit/abort.

use std::ffi::c_int;
use std::ptr::NonNull;

use sdk::{Claim, CommitError, OfferError};

use crate::context::{context_of, ms_context_t};
use crate::error::{bytes, guard, ms_result_t, write_opt, write_out, Error};
use crate::handle::{self, CacheAligned, Handle};

/// A publisher on one ring (opaque). Open with `ms_publisher_open`, free
/// with `ms_publisher_close`.
/// Threading: one thread at a time; it may move between threads. To publish
/// from several threads, open one publisher per thread on a shared ring.
pub struct ms_publisher_t {
    h: Handle<PublisherState>,
}

opaque!(
    ms_publisher_t,
    PublisherState,
    c"the publisher is NULL (not opened, or closed)"
);

/// The publisher and its outstanding claim. The claim borrows the publisher,
/// so the publisher lives in its own allocation (`publisher`, from
/// `Box::leak`) that is neither moved nor touched while `claim` is
/// `Some`, and is freed only after the claim is gone (`Drop`).
pub struct PublisherState {
    publisher: NonNull<CacheAligned<sdk::Publisher>>,
    claim: Option<Claim<'static>>,
    max_payload_len: usize,
}

impl PublisherState {
    fn new(p: sdk::Publisher) -> Self {
        let max_payload_len = p.max_payload_len();
        Self {
            publisher: NonNull::from(Box::leak(Box::new(CacheAligned(p)))),
            claim: None,
            max_payload_len,
        }
    }

    /// The publisher, when no claim borrows it.
    fn publisher(&mut self) -> Result<&mut sdk::Publisher, Error> {
        if self.claim.is_some() {
            return Err(Error::state(
                c"a claim is outstanding on this publisher: commit or abort it first",
            ));
        }
        // SAFETY: `publisher` is the live allocation this state owns; no claim
        // borrows it (checked above), and the returned borrow is tied to
        // `&mut self`, so it ends before any new claim can be made.
        Ok(unsafe { &mut self.publisher.as_mut().0 })
    }
}

impl Drop for PublisherState {
    fn drop(&mut self) {
        // An uncommitted claim is aborted (its slot padded) before the
        // publisher it borrows goes away.
        self.claim = None;
        // SAFETY: `publisher` came from `Box::leak` in `new`, nothing borrows
        // it any more (the claim is dropped), and it is freed only here.
        drop(unsafe { Box::from_raw(self.publisher.as_ptr()) });
    }
}

/// Maps an offer outcome to a code (fixed messages: no allocation on the
/// back-pressure path).
fn offer_error(e: OfferError) -> Error {
    match e {
        OfferError::BackPressured => Error::fixed(
            ms_result_t::MS_ERR_BACK_PRESSURED,
            c"back-pressured by the slowest live subscriber: retry later",
        ),
        e @ OfferError::MessageTooLarge { .. } => {
            Error::new(ms_result_t::MS_ERR_TOO_LARGE, e.to_string())
        }
        e @ OfferError::PublisherEvicted => Error::new(ms_result_t::MS_ERR_EVICTED, e.to_string()),
    }
}

/// Opens a publisher on `stream`/`partition`: opens the ring, or creates it
/// with the context's settings. Ownership: `*out` belongs to the caller;
/// free it with `ms_publisher_close`. The context may be closed afterwards.
///
/// Errors: MS_ERR_NULL_HANDLE, MS_ERR_INVALID_ARGUMENT (out is NULL),
/// MS_ERR_IO (ring cannot be created/opened, or an exclusive ring already
/// has a publisher).
///
/// # Safety
/// `ctx` is NULL or a live context; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_open(
    ctx: *const ms_context_t,
    stream: u32,
    partition: u16,
    out: *mut *mut ms_publisher_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller's contract.
        let ctx = unsafe { context_of(ctx) }?;
        let p = ctx
            .publisher(stream, partition)
            .map_err(|e| Error::new(ms_result_t::MS_ERR_IO, e.to_string()))?;
        let ptr = handle::into_raw::<ms_publisher_t>(PublisherState::new(p));
        // SAFETY: `out` is non-NULL (checked) and writable (caller's contract).
        unsafe { write_out(out, c"out is NULL", ptr) }?;
        Ok(0)
    })
}

/// Closes the publisher (aborting an outstanding claim), frees it and sets
/// `*publisher` to NULL. MS_OK when `*publisher` is already NULL.
///
/// # Safety
/// `publisher` is NULL or points to NULL or to a live publisher.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_close(publisher: *mut *mut ms_publisher_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::close(publisher, |_| Ok(())) }.map(|()| 0))
}

/// Copies `len` bytes at `buf` into the ring as one record (type id 0);
/// writes its offset to `*offset` when `offset` is not NULL.
///
/// Errors: MS_ERR_BACK_PRESSURED (retry), MS_ERR_TOO_LARGE (larger than
/// `ms_publisher_max_payload_len`), MS_ERR_STATE (a claim is outstanding),
/// MS_ERR_EVICTED, MS_ERR_NULL_HANDLE, MS_ERR_INVALID_ARGUMENT (buf NULL with len > 0).
///
/// # Safety
/// `publisher` is NULL or live; `buf` is NULL or readable for `len` bytes;
/// `offset` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_offer(
    publisher: *mut ms_publisher_t,
    buf: *const u8,
    len: usize,
    offset: *mut u64,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe { ms_publisher_offer_typed(publisher, 0, buf, len, offset) }
}

/// Like `ms_publisher_offer`, tagging the record with an application type id.
///
/// # Safety
/// As `ms_publisher_offer`.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_offer_typed(
    publisher: *mut ms_publisher_t,
    type_id: u16,
    buf: *const u8,
    len: usize,
    offset: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let payload = unsafe { bytes(buf, len) }?;
        // SAFETY: forwarded caller's contract.
        let at = unsafe {
            handle::with(publisher, |s| {
                s.publisher()?
                    .offer_typed(type_id, payload)
                    .map_err(offer_error)
            })
        }?;
        // SAFETY: `offset` is NULL or writable (caller's contract).
        unsafe { write_opt(offset, at) };
        Ok(0)
    })
}

/// Reserves `len` bytes in the ring and writes their address to `*buffer`:
/// write exactly `len` bytes there, then `ms_publisher_commit` (publish) or
/// `ms_publisher_abort`. The buffer is valid until that commit/abort (or
/// close); one claim per publisher at a time. Holding a claim longer than the
/// ring's claim timeout lets subscribers abort it (MS_ERR_CLAIM_EXPIRED at
/// commit).
///
/// Errors: MS_ERR_BACK_PRESSURED, MS_ERR_TOO_LARGE, MS_ERR_STATE (a claim is
/// already outstanding), MS_ERR_EVICTED, MS_ERR_NULL_HANDLE,
/// MS_ERR_INVALID_ARGUMENT (buffer is NULL).
///
/// # Safety
/// `publisher` is NULL or live; `buffer` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_claim(
    publisher: *mut ms_publisher_t,
    len: usize,
    buffer: *mut *mut u8,
) -> c_int {
    guard(|| {
        if buffer.is_null() {
            return Err(Error::invalid("buffer (the out-pointer) is NULL"));
        }
        let claim = |s: &mut PublisherState| {
            let p: *mut sdk::Publisher = s.publisher()?;
            // SAFETY: the claim borrows the publisher's own allocation, which
            // lives until `PublisherState::drop` has dropped the claim, is
            // never moved, and is not accessed while the claim is stored
            // (`publisher()` refuses), so extending the borrow to 'static
            // never outlives or aliases it.
            let p: &'static mut sdk::Publisher = unsafe { &mut *p };
            let mut claim = p.claim(len).map_err(offer_error)?;
            let ptr = claim.buffer().as_mut_ptr();
            s.claim = Some(claim);
            Ok(ptr)
        };
        // SAFETY: forwarded caller's contract.
        let ptr = unsafe { handle::with(publisher, claim) }?;
        // SAFETY: `buffer` is non-NULL (checked) and writable (caller's contract).
        unsafe { buffer.write(ptr) };
        Ok(0)
    })
}

/// Publishes the outstanding claim; writes its offset to `*offset` when
/// `offset` is not NULL. The claim's buffer is invalid afterwards.
///
/// Errors: MS_ERR_STATE (no claim), MS_ERR_CLAIM_EXPIRED (the record is
/// lost: offer it again), MS_ERR_NULL_HANDLE.
///
/// # Safety
/// `publisher` is NULL or live; `offset` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_commit(
    publisher: *mut ms_publisher_t,
    offset: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let at = unsafe {
            handle::with(publisher, |s| {
                let claim = s.claim.take().ok_or(Error::state(
                    c"no claim to commit: call ms_publisher_claim first",
                ))?;
                claim.commit().map_err(|e| match e {
                    CommitError::ClaimExpired => {
                        Error::new(ms_result_t::MS_ERR_CLAIM_EXPIRED, e.to_string())
                    }
                })
            })
        }?;
        // SAFETY: `offset` is NULL or writable (caller's contract).
        unsafe { write_opt(offset, at) };
        Ok(0)
    })
}

/// Aborts the outstanding claim: subscribers skip its slot. The claim's
/// buffer is invalid afterwards.
///
/// Errors: MS_ERR_STATE (no claim), MS_ERR_NULL_HANDLE.
///
/// # Safety
/// `publisher` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_abort(publisher: *mut ms_publisher_t) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(publisher, |s| {
                let claim = s.claim.take().ok_or(Error::state(
                    c"no claim to abort: call ms_publisher_claim first",
                ))?;
                claim.abort();
                Ok(0)
            })
        }
    })
}

/// Writes the largest payload one record of this ring takes to `*len`.
///
/// # Safety
/// `publisher` is NULL or live; `len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_publisher_max_payload_len(
    publisher: *mut ms_publisher_t,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let max = unsafe { handle::with(publisher, |s| Ok(s.max_payload_len)) }?;
        // SAFETY: `len` is NULL or writable (caller's contract).
        unsafe { write_out(len, c"len is NULL", max) }?;
        Ok(0)
    })
}
