//! `ms_context_t`: the settings rings are created with, and ring names.

use std::ffi::{c_char, c_int};

use sdk::{Context, ContextBuilder, Mode, PublisherKind, StartAt};

use crate::error::{guard, ms_result_t, str_arg, write_out, Error};
use crate::handle::{self, Handle};

/// Reliable rings back-pressure publishers; lossy rings overwrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ms_mode_t {
    MS_MODE_RELIABLE = 0,
    MS_MODE_LOSSY = 1,
}

/// One publisher at a time (no CAS on claim), or many.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ms_publisher_kind_t {
    MS_PUBLISHER_EXCLUSIVE = 0,
    MS_PUBLISHER_SHARED = 1,
}

/// Where a new subscriber starts reading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ms_start_at_t {
    /// The oldest record still safely in the ring (default).
    MS_START_EARLIEST = 0,
    /// Only records published after the subscriber attached.
    MS_START_TAIL = 1,
}

/// Settings for the rings of one client (opaque). Create with
/// `ms_context_new`, free with `ms_context_close`.
/// Threading: one thread at a time (setters and opens included); the handles
/// opened from it are independent of it and of each other.
pub struct ms_context_t {
    h: Handle<ContextBuilder>,
}

opaque!(
    ms_context_t,
    ContextBuilder,
    c"the context is NULL (not created, or closed)"
);

/// The context of the handle `ctx`, for opening handles.
///
/// # Safety
/// `ctx` is NULL or a live context.
pub(crate) unsafe fn context_of(ctx: *const ms_context_t) -> Result<Context, Error> {
    // SAFETY: forwarded caller's contract.
    unsafe { handle::with(ctx, |b| Ok(b.clone().build())) }
}

/// A ring-name buffer of this many bytes holds every name and its NUL.
pub const MS_RING_NAME_BYTES_MAX: usize = 24;
const _: () = assert!(MS_RING_NAME_BYTES_MAX == sdk::RING_NAME_BYTES_MAX + 1);

/// Creates a context with the default settings (shm-ring's defaults: ring
/// directory on hugetlbfs or /dev/shm, reliable, shared publishers, start at
/// earliest). Ownership: `*out` belongs to the caller; free it with
/// `ms_context_close`. Handles opened from it copy its settings and do not
/// borrow it, so it may be closed while they live.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_context_new(out: *mut *mut ms_context_t) -> c_int {
    guard(|| {
        let ptr = handle::into_raw::<ms_context_t>(Context::builder());
        // SAFETY: `out` is NULL or writable (caller's contract).
        if let Err(e) = unsafe { write_out(out, c"out is NULL", ptr) } {
            let mut p = ptr;
            // SAFETY: `p` was just created by into_raw and is closed once.
            let _ = unsafe { handle::close(&mut p, |_| Ok(())) };
            return Err(e);
        }
        Ok(0)
    })
}

/// Frees the context and sets `*ctx` to NULL; MS_OK when `*ctx` is already NULL.
///
/// # Safety
/// `ctx` is NULL or points to a context pointer from `ms_context_new` (or NULL).
#[no_mangle]
pub unsafe extern "C" fn ms_context_close(ctx: *mut *mut ms_context_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::close(ctx, |_| Ok(())) }.map(|()| 0))
}

/// Runs `f` on the builder of `ctx` and stores the result.
///
/// # Safety
/// `ctx` is NULL or a live context.
unsafe fn update(
    ctx: *mut ms_context_t,
    f: impl FnOnce(ContextBuilder) -> Result<ContextBuilder, Error>,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(ctx, |b| {
                *b = f(b.clone())?;
                Ok(0)
            })
        }
    })
}

/// Directory of the ring files (NUL-terminated path). Default: shm-ring's
/// hugetlbfs or /dev/shm directory.
///
/// # Safety
/// `ctx` is NULL or a live context; `dir` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_dir(ctx: *mut ms_context_t, dir: *const c_char) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| {
            // SAFETY: `dir` is NULL or NUL-terminated (caller's contract).
            let d = str_arg(dir, "dir")?;
            if d.is_empty() {
                return Err(Error::invalid("dir is empty"));
            }
            Ok(b.dir(d))
        })
    }
}

/// Ring size in bytes for rings this context creates: a power of two (the
/// ring checks its limits when it is created).
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_capacity_bytes(
    ctx: *mut ms_context_t,
    bytes: u64,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| {
            if !bytes.is_power_of_two() {
                return Err(Error::invalid(format!(
                    "capacity_bytes {bytes} is not a power of two"
                )));
            }
            Ok(b.capacity_bytes(bytes))
        })
    }
}

/// Reliable (default) or lossy rings.
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_mode(ctx: *mut ms_context_t, mode: c_int) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| match mode {
            m if m == ms_mode_t::MS_MODE_RELIABLE as c_int => Ok(b.mode(Mode::Reliable)),
            m if m == ms_mode_t::MS_MODE_LOSSY as c_int => Ok(b.mode(Mode::Lossy)),
            m => Err(Error::invalid(format!("mode {m} is not an ms_mode_t"))),
        })
    }
}

/// Exclusive (one publisher, fastest) or shared (default) publishers.
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_publisher_kind(
    ctx: *mut ms_context_t,
    kind: c_int,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| match kind {
            k if k == ms_publisher_kind_t::MS_PUBLISHER_EXCLUSIVE as c_int => {
                Ok(b.publisher_kind(PublisherKind::Exclusive))
            }
            k if k == ms_publisher_kind_t::MS_PUBLISHER_SHARED as c_int => {
                Ok(b.publisher_kind(PublisherKind::Shared))
            }
            k => Err(Error::invalid(format!(
                "publisher kind {k} is not an ms_publisher_kind_t"
            ))),
        })
    }
}

/// Where subscribers opened from this context start (default earliest).
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_start_at(ctx: *mut ms_context_t, start: c_int) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| match start {
            s if s == ms_start_at_t::MS_START_EARLIEST as c_int => {
                Ok(b.start_at(StartAt::Earliest))
            }
            s if s == ms_start_at_t::MS_START_TAIL as c_int => Ok(b.start_at(StartAt::Tail)),
            s => Err(Error::invalid(format!("start {s} is not an ms_start_at_t"))),
        })
    }
}

/// Subscriber slots of rings this context creates (> 0).
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_subscribers_max(ctx: *mut ms_context_t, n: u32) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| {
            if n == 0 {
                return Err(Error::invalid("subscribers_max must be > 0"));
            }
            Ok(b.subscribers_max(n))
        })
    }
}

/// A handle whose heartbeat is older than this is dropped by the ring (> 0).
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_set_liveness_timeout_ns(
    ctx: *mut ms_context_t,
    ns: u64,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    unsafe {
        update(ctx, |b| {
            if ns == 0 {
                return Err(Error::invalid("liveness_timeout_ns must be > 0"));
            }
            Ok(b.liveness_timeout_ns(ns))
        })
    }
}

/// Writes the ring file name of `stream`/`partition` (e.g. "stream-7-0")
/// into `buf` with its NUL; `MS_RING_NAME_BYTES_MAX` bytes always suffice.
/// Returns the name's length without the NUL. Thread-safe.
///
/// # Safety
/// `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ms_ring_name(
    stream: u32,
    partition: u16,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    guard(|| {
        let name = sdk::ring_name(stream, partition);
        if buf.is_null() || len < name.len() + 1 {
            return Err(Error::invalid(format!(
                "buf must hold {} bytes (MS_RING_NAME_BYTES_MAX always does)",
                name.len() + 1
            )));
        }
        // SAFETY: `buf` is writable for `len` >= name.len() + 1 bytes (checked
        // above, writability is the caller's contract); the regions are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), buf.cast::<u8>(), name.len());
            buf.add(name.len()).write(0);
        }
        Ok(name.len() as c_int)
    })
}

/// Removes the ring file of `stream`/`partition` (the owner does this at
/// shutdown; handles that have it mapped keep working until closed).
///
/// # Safety
/// `ctx` is NULL or a live context.
#[no_mangle]
pub unsafe extern "C" fn ms_context_remove_ring(
    ctx: *mut ms_context_t,
    stream: u32,
    partition: u16,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(ctx, |b| {
                b.clone().build().remove(stream, partition).map_err(|e| {
                    Error::new(
                        ms_result_t::MS_ERR_IO,
                        format!("cannot remove the ring file: {e}"),
                    )
                })?;
                Ok(0)
            })
        }
    })
}
