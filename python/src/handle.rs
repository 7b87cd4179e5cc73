//! What every handle class shares: its state behind a lock that one call at a
//! time takes (a callback that calls its own handle, or a second thread, gets
//! `Busy`, not a deadlock), and `None` once closed.

use std::sync::{Mutex, TryLockError};

use pyo3::prelude::*;

use crate::errors;

pub struct Handle<T> {
    state: Mutex<Option<T>>,
    /// The Python class name, for messages.
    what: &'static str,
}

impl<T> Handle<T> {
    pub fn new(what: &'static str, value: T) -> Self {
        Self {
            state: Mutex::new(Some(value)),
            what,
        }
    }

    /// Runs `f` on the open handle: `Busy` while another call has it, `Closed` after close.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> PyResult<R>) -> PyResult<R> {
        let mut guard = match self.state.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Err(errors::busy(self.what)),
            // A panic inside a call poisoned it; the state is still consistent
            // (every call leaves it between records).
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        f(guard.as_mut().ok_or_else(|| errors::closed(self.what))?)
    }

    /// Closes the handle and returns what it held (None if it was closed).
    pub fn take(&self) -> PyResult<Option<T>> {
        match self.state.try_lock() {
            Ok(mut g) => Ok(g.take()),
            Err(TryLockError::WouldBlock) => Err(errors::busy(self.what)),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner().take()),
        }
    }
}
