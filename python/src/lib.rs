//! The `memstreamer` Python package (its native part, `memstreamer._native`):
//! the sdk's shared-memory and network publishers and subscribers for Python.
//!
//! - `shm`: `Context`, `Publisher` (`offer`, zero-copy `claim`), `Subscriber`
//!   (`poll` with a callback that reads each record in place).
//! - `net`: `NetPublisher`, `NetSubscriber` over the sdk's UDP client.
//! - `errors`: the exception classes; messages say what to do.
//! - `view`: the only `unsafe`, the buffer protocol over ring memory (see its
//!   doc comment and docs/ARCHITECTURE.md).
//!
//! Every wait (back-pressure with a timeout, `poll` with a timeout, network
//! duty cycles) runs with the GIL released. Handles are used by one call at a
//! time: a second concurrent call gets `Busy`.
#![deny(unsafe_code)]

mod errors;
mod handle;
mod net;
mod shm;
mod view;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<shm::Context>()?;
    m.add_class::<shm::Publisher>()?;
    m.add_class::<shm::Subscriber>()?;
    m.add_class::<net::NetPublisher>()?;
    m.add_class::<net::NetSubscriber>()?;
    m.add_class::<view::RingBytes>()?;
    Ok(())
}
