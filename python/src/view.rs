//! The one module with `unsafe`: a Python buffer over ring memory, so a poll
//! callback reads a record in place (`memoryview`) and a claim callback writes
//! one in place.
//!
//! PyO3's safe API cannot make a `memoryview` over memory Python does not own:
//! the buffer protocol (`__getbuffer__`) hands CPython a raw pointer. The rules
//! that keep that sound:
//!
//! - A [`RingBytes`] holds a clone of the [`sdk::Ring`] the bytes lie in, so the
//!   mapping outlives every buffer CPython got from it, whatever Python code
//!   keeps; the address is inside that mapping (it came from a `Record` payload
//!   or a `Claim` buffer of that ring).
//! - [`lend`] gives the callback a `memoryview` and releases it when the callback
//!   returns, so the view raises `ValueError` when used afterwards, and the
//!   exporter refuses new buffers. A slice or other buffer taken from the view
//!   and still alive then is counted (`exports`); the caller raises
//!   `RecordViewEscaped`. Such a buffer can only see bytes change (the ring
//!   moved on), never unmapped memory.
#![allow(unsafe_code)]

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyMemoryView;
use pyo3::{ffi, PyErr};

use crate::errors::RecordViewEscaped;

/// The exporter behind a record's `memoryview` (`view.obj`).
#[pyclass(module = "memstreamer", name = "RecordBytes", frozen)]
pub struct RingBytes {
    addr: usize,
    len: usize,
    writable: bool,
    /// Keeps the mapping that `addr..addr + len` lies in alive.
    _ring: sdk::Ring,
    live: AtomicBool,
    exports: AtomicUsize,
}

#[pymethods]
impl RingBytes {
    /// # Safety
    /// Called by CPython with a `Py_buffer` to fill (the buffer protocol).
    unsafe fn __getbuffer__(
        slf: PyRef<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        let filled = if slf.live.load(Ordering::Acquire) {
            let readonly = c_int::from(!slf.writable);
            // SAFETY: `view` is the non-null Py_buffer CPython passed us; the
            // memory `addr..addr + len` lies in the ring mapping that
            // `slf._ring` keeps alive for as long as this object lives, and
            // PyBuffer_FillInfo takes a reference to `slf` into `view.obj`, so
            // the object (and the mapping) outlives the buffer. `len` came from
            // a Rust slice, so it fits isize. FillInfo refuses a write request
            // on a read-only record.
            let rc = unsafe {
                ffi::PyBuffer_FillInfo(
                    view,
                    slf.as_ptr(),
                    slf.addr as *mut std::ffi::c_void,
                    slf.len as ffi::Py_ssize_t,
                    readonly,
                    flags,
                )
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(PyErr::fetch(slf.py()))
            }
        } else {
            Err(PyBufferError::new_err(
                "a record view is valid only inside its callback: copy with bytes(view) there",
            ))
        };
        match filled {
            Ok(()) => {
                slf.exports.fetch_add(1, Ordering::AcqRel);
            }
            // SAFETY: `view` is non-null (checked above) and CPython's Py_buffer
            // for this call; an exporter that fails must leave `obj` NULL.
            Err(_) => unsafe { (*view).obj = std::ptr::null_mut() },
        }
        filled
    }

    /// # Safety
    /// Called by CPython when a buffer from `__getbuffer__` is released.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Bytes of a ring lent to a callback: a record to read, or a claim to write.
pub enum Lent<'a> {
    Read(&'a [u8]),
    Write(&'a mut [u8]),
}

/// Calls `call` with a `memoryview` over `bytes` and invalidates the view when
/// it returns. `bytes` must lie in `ring`'s mapping.
pub fn lend<'py, R>(
    py: Python<'py>,
    ring: &sdk::Ring,
    bytes: Lent<'_>,
    call: impl FnOnce(&Bound<'py, PyMemoryView>) -> PyResult<R>,
) -> PyResult<R> {
    let (addr, len, writable) = match bytes {
        Lent::Read(b) => (b.as_ptr() as usize, b.len(), false),
        Lent::Write(b) => (b.as_mut_ptr() as usize, b.len(), true),
    };
    let exporter = Bound::new(
        py,
        RingBytes {
            addr,
            len,
            writable,
            _ring: ring.clone(),
            live: AtomicBool::new(true),
            exports: AtomicUsize::new(0),
        },
    )?;
    let view = PyMemoryView::from(exporter.as_any())?;
    let called = call(&view);
    exporter.get().live.store(false, Ordering::Release);
    // release() fails only while the view itself lends a buffer (e.g. a numpy
    // array made from it is alive): then that buffer escaped.
    let released = view.call_method0("release");
    let escaped = exporter.get().exports.load(Ordering::Acquire);
    let value = called?;
    if released.is_err() || escaped != 0 {
        return Err(RecordViewEscaped::new_err(
            "a slice or buffer of a record view is still alive after the callback returned; \
             the ring may overwrite those bytes: copy what you keep with bytes(view[...])",
        ));
    }
    Ok(value)
}
