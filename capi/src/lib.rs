//! The C ABI of the client SDK (`libmemstreamer`): every exported symbol
//! starts with `ms_`, results are `int` codes ([`ms_result_t`]) plus a
//! thread-local message ([`ms_errmsg`]), like Aeron's C client. The header
//! `include/memstreamer.h` is generated from this source by cbindgen
//! (build.rs); `tests/header.rs` fails when the committed header is stale.
//!
//! This crate is the FFI edge, the one place besides shm-ring, the AF_XDP
//! edge of the data plane and storage I/O where `unsafe` is allowed: C hands
//! us raw pointers, and turning them into references cannot be done without
//! it. Each block names the contract that makes it sound in a `// SAFETY:`
//! comment; the contracts are the ones the header states (a handle is NULL or
//! came from its `open` and is not closed yet; a buffer of `len` bytes is
//! readable/writable; a handle is used by one thread at a time).
//!
//! Bad input never reaches undefined behaviour where the ABI can see it:
//! NULL handles and pointers, zero or oversized lengths, a second claim,
//! commit without a claim, re-entrant calls from callbacks, and double close
//! are error codes; every entry point runs inside `catch_unwind`, so a panic
//! is `MS_ERR_PANIC`, never an unwind into C.
#![allow(non_camel_case_types)]

#[macro_use]
mod handle;
mod context;
mod error;
mod idle;
mod net;
mod publisher;
mod subscriber;

pub use context::*;
pub use error::*;
pub use idle::*;
pub use net::*;
pub use publisher::*;
pub use subscriber::*;

/// The ring clock now, in nanoseconds: the time base of record timestamps
/// (`ms_record_header_t.timestamp_ns`), shared by every process mapping a
/// ring. Never fails. Thread-safe.
#[no_mangle]
pub extern "C" fn ms_clock_now_ns() -> u64 {
    std::panic::catch_unwind(sdk::clock::now_ns).unwrap_or(0)
}

/// The library version as a NUL-terminated static string (e.g. "0.1.0").
/// Never NULL; the caller must not free it. Thread-safe.
#[no_mangle]
pub extern "C" fn ms_version() -> *const std::ffi::c_char {
    const VERSION: &std::ffi::CStr = {
        match std::ffi::CStr::from_bytes_with_nul(
            concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
        ) {
            Ok(v) => v,
            Err(_) => panic!("the package version has no NUL"),
        }
    };
    VERSION.as_ptr()
}
