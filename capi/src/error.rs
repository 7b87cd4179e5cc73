//! Result codes, the thread-local error message, and the panic guard every
//! entry point runs in.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result codes. Functions return `MS_OK` (0), a documented count >= 0, or
/// one of the negative codes below; after a negative code `ms_errmsg()` says
/// what happened and what to do.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ms_result_t {
    /// Success.
    MS_OK = 0,
    /// The ring (or the network retransmit buffer) is full until a
    /// subscriber catches up: retry, usually after an idle step.
    MS_ERR_BACK_PRESSURED = -1,
    /// The network publisher has no acknowledged session yet: run
    /// `ms_net_publisher_do_work` (or `ms_net_publisher_wait_connected`) and retry.
    MS_ERR_NOT_CONNECTED = -2,
    /// The session was closed (by close, or by the node): open a new handle.
    MS_ERR_CLOSED = -3,
    /// An argument is out of range (NULL buffer with a length, zero limit,
    /// bad enum value, bad address, capacity not a power of two, ...).
    MS_ERR_INVALID_ARGUMENT = -4,
    /// The handle is NULL (never opened, or closed: close sets it to NULL).
    MS_ERR_NULL_HANDLE = -5,
    /// The record is larger than the ring (or the network frame) takes:
    /// split it or use a larger ring.
    MS_ERR_TOO_LARGE = -6,
    /// An operating-system error: ring file, mapping, socket.
    MS_ERR_IO = -7,
    /// Not allowed in the handle's current state: a claim is outstanding
    /// (commit or abort it), there is no claim to commit, or the handle is in
    /// use by a callback that is running.
    MS_ERR_STATE = -8,
    /// The claim was held past the ring's claim timeout and aborted by a
    /// subscriber: the record is lost, offer it again.
    MS_ERR_CLAIM_EXPIRED = -9,
    /// This handle was evicted from the ring (a subscriber that stopped
    /// polling, or an exclusive publisher that was replaced): close it and
    /// open a new one.
    MS_ERR_EVICTED = -10,
    /// The ring holds bytes a faulty or hostile process wrote: recreate it.
    MS_ERR_CORRUPT = -11,
    /// A wait ran out of time.
    MS_ERR_TIMED_OUT = -12,
    /// The node refused a record and ended the session.
    MS_ERR_REFUSED = -13,
    /// A bug inside the library (a Rust panic, caught): close the handle.
    MS_ERR_PANIC = -14,
}

/// What `ms_errmsg` shows: a static text on hot paths (no allocation for
/// back-pressure), a formatted one elsewhere.
pub(crate) struct Error {
    pub(crate) code: ms_result_t,
    msg: Cow<'static, CStr>,
}

impl Error {
    /// An error with a fixed message (no allocation).
    pub(crate) const fn fixed(code: ms_result_t, msg: &'static CStr) -> Self {
        Self {
            code,
            msg: Cow::Borrowed(msg),
        }
    }

    pub(crate) fn new(code: ms_result_t, msg: impl Into<String>) -> Self {
        let bytes = msg.into().into_bytes();
        // An interior NUL would cut the message short; replace it.
        let bytes: Vec<u8> = bytes
            .into_iter()
            .map(|b| if b == 0 { b'?' } else { b })
            .collect();
        let msg = CString::new(bytes).unwrap_or_default();
        Self {
            code,
            msg: Cow::Owned(msg),
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::new(ms_result_t::MS_ERR_INVALID_ARGUMENT, msg)
    }

    pub(crate) fn state(msg: &'static CStr) -> Self {
        Self::fixed(ms_result_t::MS_ERR_STATE, msg)
    }
}

thread_local! {
    static LAST: RefCell<Cow<'static, CStr>> = const { RefCell::new(Cow::Borrowed(c"no error")) };
    static LAST_CODE: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

fn record(code: c_int, msg: Cow<'static, CStr>) {
    // try_with: a call during thread teardown must not panic.
    let _ = LAST_CODE.try_with(|c| c.set(code));
    let _ = LAST.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            *m = msg;
        }
    });
}

/// Runs one entry point: its `Ok` value is returned as is, an `Err` becomes
/// its (negative) code with the message recorded, a panic becomes
/// `MS_ERR_PANIC`.
pub(crate) fn guard(f: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let code = e.code as c_int;
            record(code, e.msg);
            code
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let e = Error::new(
                ms_result_t::MS_ERR_PANIC,
                format!("internal error (a bug in libmemstreamer, please report it): {what}; close this handle"),
            );
            let code = e.code as c_int;
            record(code, e.msg);
            code
        }
    }
}

/// The message of the last error on this thread, NUL-terminated. Never NULL.
/// Valid until the next `ms_` call on this thread; the caller must not free
/// it. Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn ms_errmsg() -> *const c_char {
    catch_unwind(|| {
        LAST.try_with(|m| m.try_borrow().map_or(c"".as_ptr(), |m| m.as_ptr()))
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}

/// The code of the last error on this thread (`MS_OK` if none yet).
/// Thread-safe (each thread has its own).
#[no_mangle]
pub extern "C" fn ms_errcode() -> c_int {
    catch_unwind(|| LAST_CODE.try_with(|c| c.get()).unwrap_or(0)).unwrap_or(0)
}

/// A static, NUL-terminated name of a result code (e.g. "MS_ERR_TOO_LARGE");
/// "MS_UNKNOWN" for a value that is not a code. Never NULL. Thread-safe.
#[no_mangle]
pub extern "C" fn ms_result_name(code: c_int) -> *const c_char {
    use ms_result_t::*;
    const ALL: [(ms_result_t, &CStr); 15] = [
        (MS_OK, c"MS_OK"),
        (MS_ERR_BACK_PRESSURED, c"MS_ERR_BACK_PRESSURED"),
        (MS_ERR_NOT_CONNECTED, c"MS_ERR_NOT_CONNECTED"),
        (MS_ERR_CLOSED, c"MS_ERR_CLOSED"),
        (MS_ERR_INVALID_ARGUMENT, c"MS_ERR_INVALID_ARGUMENT"),
        (MS_ERR_NULL_HANDLE, c"MS_ERR_NULL_HANDLE"),
        (MS_ERR_TOO_LARGE, c"MS_ERR_TOO_LARGE"),
        (MS_ERR_IO, c"MS_ERR_IO"),
        (MS_ERR_STATE, c"MS_ERR_STATE"),
        (MS_ERR_CLAIM_EXPIRED, c"MS_ERR_CLAIM_EXPIRED"),
        (MS_ERR_EVICTED, c"MS_ERR_EVICTED"),
        (MS_ERR_CORRUPT, c"MS_ERR_CORRUPT"),
        (MS_ERR_TIMED_OUT, c"MS_ERR_TIMED_OUT"),
        (MS_ERR_REFUSED, c"MS_ERR_REFUSED"),
        (MS_ERR_PANIC, c"MS_ERR_PANIC"),
    ];
    ALL.iter()
        .find(|(c, _)| *c as c_int == code)
        .map_or(c"MS_UNKNOWN".as_ptr(), |(_, n)| n.as_ptr())
}

/// Writes `value` through `out` when `out` is not NULL (optional out-params).
///
/// # Safety
/// `out` is NULL or valid for a write of one `T`.
pub(crate) unsafe fn write_opt<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-NULL, and the caller guarantees it is writable.
        unsafe { out.write(value) };
    }
}

/// Writes `value` through a required out-pointer.
///
/// # Safety
/// `out` is NULL or valid for a write of one `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, what: &'static CStr, value: T) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::fixed(ms_result_t::MS_ERR_INVALID_ARGUMENT, what));
    }
    // SAFETY: non-NULL, and the caller guarantees it is writable.
    unsafe { out.write(value) };
    Ok(())
}

/// The bytes of a (buffer, length) pair; NULL is allowed only with length 0.
///
/// # Safety
/// `buf` is NULL or valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(buf: *const u8, len: usize) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(Error::fixed(
            ms_result_t::MS_ERR_INVALID_ARGUMENT,
            c"the buffer is NULL but its length is not 0",
        ));
    }
    if len > isize::MAX as usize {
        return Err(Error::fixed(
            ms_result_t::MS_ERR_INVALID_ARGUMENT,
            c"the length is larger than any buffer can be",
        ));
    }
    // SAFETY: non-NULL, len <= isize::MAX, and the caller guarantees `len`
    // readable bytes that nothing writes for 'a.
    Ok(unsafe { std::slice::from_raw_parts(buf, len) })
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `s` is NULL or a NUL-terminated string valid for `'a`.
pub(crate) unsafe fn str_arg<'a>(s: *const c_char, what: &'static str) -> Result<&'a str, Error> {
    if s.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_code_and_a_message() {
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, ms_result_t::MS_ERR_PANIC as c_int);
        assert_eq!(ms_errcode(), rc);
        // SAFETY: ms_errmsg returns a NUL-terminated string valid until the next call.
        let msg = unsafe { CStr::from_ptr(ms_errmsg()) }
            .to_string_lossy()
            .into_owned();
        assert!(
            msg.contains("boom") && msg.contains("close this handle"),
            "{msg}"
        );
    }

    #[test]
    fn errors_keep_their_code_and_interior_nuls_do_not_cut_the_message() {
        let rc = guard(|| Err(Error::new(ms_result_t::MS_ERR_IO, "a\0b")));
        assert_eq!(rc, ms_result_t::MS_ERR_IO as c_int);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(ms_errmsg()) };
        assert_eq!(msg.to_bytes(), b"a?b");
        assert_eq!(guard(|| Ok(7)), 7);
    }
}
