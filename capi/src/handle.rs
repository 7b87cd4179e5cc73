//! Opaque handles: a boxed state behind a raw pointer C owns, with a busy
//! flag so a call made from inside one of the handle's own callbacks gets
//! `MS_ERR_STATE` instead of a second `&mut` to the state.

use std::cell::{Cell, UnsafeCell};
use std::ffi::CStr;

use crate::error::{ms_result_t, Error};

/// A handle's state and its busy flag (not `Sync`: the header says one
/// thread at a time per handle). Aligned to two cache lines (adjacent-line
/// prefetch), so handles that live on different threads, such as a
/// publisher and a subscriber of one ring, never share a line: the busy
/// flag and the state are written on every call.
#[repr(align(128))]
pub(crate) struct Handle<T> {
    busy: Cell<bool>,
    state: UnsafeCell<T>,
}

impl<T> Handle<T> {
    pub(crate) fn new(state: T) -> Self {
        Self {
            busy: Cell::new(false),
            state: UnsafeCell::new(state),
        }
    }
}

/// `T` on cache lines of its own (see [`Handle`]).
#[repr(align(128))]
pub(crate) struct CacheAligned<T>(pub(crate) T);

/// An opaque C type wrapping one [`Handle`].
pub(crate) trait Opaque: Sized {
    type State;
    /// "publisher", "subscriber", ... for messages.
    const NULL_MSG: &'static CStr;
    fn wrap(h: Handle<Self::State>) -> Self;
    fn handle(&self) -> &Handle<Self::State>;
}

/// `impl Opaque` for an opaque C type `struct $ty { h: Handle<$state> }`
/// whose NULL handle is reported with `$null_msg`. (The struct itself is
/// written out, so cbindgen sees it and declares it in the header.)
macro_rules! opaque {
    ($ty:ident, $state:ty, $null_msg:expr) => {
        impl $crate::handle::Opaque for $ty {
            type State = $state;
            const NULL_MSG: &'static std::ffi::CStr = $null_msg;
            fn wrap(h: $crate::handle::Handle<$state>) -> Self {
                Self { h }
            }
            fn handle(&self) -> &$crate::handle::Handle<$state> {
                &self.h
            }
        }
    };
}

/// Clears the busy flag on every exit path, unwinding included.
struct Busy<'a>(&'a Cell<bool>);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Boxes `state` as a new handle and returns the pointer C will own.
pub(crate) fn into_raw<O: Opaque>(state: O::State) -> *mut O {
    Box::into_raw(Box::new(O::wrap(Handle::new(state))))
}

/// Runs `f` on the state of the handle `ptr`.
///
/// # Safety
/// `ptr` is NULL or was returned by [`into_raw`] and not yet passed to
/// [`close`]; no other thread uses the handle during the call.
pub(crate) unsafe fn with<O: Opaque, R>(
    ptr: *const O,
    f: impl FnOnce(&mut O::State) -> Result<R, Error>,
) -> Result<R, Error> {
    // SAFETY: NULL or a live box from `into_raw` (the caller's contract);
    // only shared references to the handle itself are ever made.
    let o = unsafe { ptr.as_ref() }
        .ok_or(Error::fixed(ms_result_t::MS_ERR_NULL_HANDLE, O::NULL_MSG))?;
    let h = o.handle();
    if h.busy.replace(true) {
        return Err(Error::state(
            c"the handle is in use by a call that is running (a call from inside its own callback): return from the callback first",
        ));
    }
    let _busy = Busy(&h.busy);
    // SAFETY: the busy flag was false, so no other `&mut` to the state exists
    // on this thread (and the caller guarantees no other thread uses it);
    // the flag stays set until this reference is gone.
    f(unsafe { &mut *h.state.get() })
}

/// Frees the handle `*pp` and sets `*pp` to NULL; a NULL `*pp` is a no-op,
/// so closing twice is harmless. `before_drop` runs on the state first.
///
/// # Safety
/// `pp` is NULL or points to a handle pointer that is NULL or was returned by
/// [`into_raw`] and not yet closed; no other thread uses the handle.
pub(crate) unsafe fn close<O: Opaque>(
    pp: *mut *mut O,
    before_drop: impl FnOnce(&mut O::State) -> Result<(), Error>,
) -> Result<(), Error> {
    if pp.is_null() {
        return Err(Error::fixed(
            ms_result_t::MS_ERR_INVALID_ARGUMENT,
            c"close takes the address of the handle pointer (&handle), not NULL",
        ));
    }
    // SAFETY: non-NULL and points to a handle pointer (caller's contract).
    let ptr = unsafe { *pp };
    if ptr.is_null() {
        return Ok(());
    }
    // Refuses to free a handle whose callback is running (busy flag set).
    // SAFETY: `ptr` is a live handle (caller's contract).
    let r = unsafe { with(ptr, before_drop) };
    if let Err(e) = &r {
        if e.code == ms_result_t::MS_ERR_STATE {
            return r;
        }
    }
    // SAFETY: `ptr` came from `Box::into_raw` in `into_raw`, is not borrowed
    // (the busy flag was clear) and is freed once: `*pp` is cleared next.
    drop(unsafe { Box::from_raw(ptr) });
    // SAFETY: `pp` is non-NULL and writable (caller's contract).
    unsafe { pp.write(std::ptr::null_mut()) };
    r
}
