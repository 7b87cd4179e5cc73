//! Shared-memory handles: `Context`, `Publisher` and `Subscriber` over the
//! sdk's, with zero-copy record views and the GIL released while waiting.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use sdk::{IdleStrategy, Mode, OfferError, PublisherKind, StartAt};

use crate::errors;
use crate::handle::Handle;
use crate::view::{lend, Lent};

/// Records per `Subscriber.poll` call when the caller does not say.
pub const POLL_LIMIT_DEFAULT: usize = 16;
/// A wait with the GIL released comes back to check for signals (Ctrl-C
/// raises KeyboardInterrupt) at least this often.
pub const SIGNAL_CHECK_NS: u64 = 10_000_000;
const SIGNAL_CHECK: Duration = Duration::from_nanos(SIGNAL_CHECK_NS);

/// A wait's deadline from a Python timeout in seconds (None: do not wait).
pub fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => {
            Ok(Some(Instant::now() + Duration::from_secs_f64(t)))
        }
        Some(t) => Err(PyValueError::new_err(format!(
            "timeout must be a finite number of seconds >= 0 (or None not to wait), got {t}"
        ))),
    }
}

/// The bytes of a bytes-like argument: `bytes` without a copy, any other
/// buffer (bytearray, memoryview, array) copied once.
pub fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> PyResult<R>) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return f(b.as_bytes());
    }
    match pyo3::buffer::PyBuffer::<u8>::get(data) {
        Ok(buf) => f(&buf.to_vec(data.py())?),
        Err(_) => Err(PyTypeError::new_err(format!(
            "data must be bytes-like (bytes, bytearray, memoryview), not {}",
            data.get_type().name()?
        ))),
    }
}

/// TypeError unless `f` is callable; `usage` says how it is called.
pub fn require_callable(f: &Bound<'_, PyAny>, usage: &str) -> PyResult<()> {
    if f.is_callable() {
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "{usage}, not {}",
        f.get_type().name()?
    )))
}

/// What a wait does between checks (Python `idle=`): "adaptive" (spin 50
/// us, yield until 1 ms, then park; the default), "busy_spin" (a core, the
/// lowest latency), "yield" or "backoff" (the sdk's strategies).
pub fn idle_strategy(name: &str) -> PyResult<IdleStrategy> {
    match name {
        "adaptive" => Ok(IdleStrategy::adaptive()),
        "busy_spin" => Ok(IdleStrategy::busy_spin()),
        "yield" => Ok(IdleStrategy::yielding()),
        "backoff" => Ok(IdleStrategy::backoff()),
        _ => Err(PyValueError::new_err(format!(
            "idle must be 'adaptive', 'busy_spin', 'yield' or 'backoff', got {name:?}"
        ))),
    }
}

/// Settings for the rings this client creates and attaches to.
#[pyclass(module = "memstreamer", frozen)]
pub struct Context {
    inner: sdk::Context,
    idle: IdleStrategy,
}

#[pymethods]
impl Context {
    #[new]
    #[pyo3(signature = (*, dir=None, capacity_bytes=None, mode="reliable", shared_publishers=false, subscribers_max=None, liveness_timeout_ms=None, start="earliest", idle="adaptive"))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        dir: Option<PathBuf>,
        capacity_bytes: Option<u64>,
        mode: &str,
        shared_publishers: bool,
        subscribers_max: Option<u32>,
        liveness_timeout_ms: Option<u64>,
        start: &str,
        idle: &str,
    ) -> PyResult<Self> {
        let idle = idle_strategy(idle)?;
        let mut b = sdk::Context::builder();
        if let Some(d) = dir {
            b = b.dir(d);
        }
        if let Some(c) = capacity_bytes {
            b = b.capacity_bytes(c);
        }
        b = b.mode(match mode {
            "reliable" => Mode::Reliable,
            "lossy" => Mode::Lossy,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "mode must be 'reliable' or 'lossy', got {mode:?}"
                )))
            }
        });
        if shared_publishers {
            b = b.publisher_kind(PublisherKind::Shared);
        }
        if let Some(n) = subscribers_max {
            b = b.subscribers_max(n);
        }
        if let Some(ms) = liveness_timeout_ms {
            b = b.liveness_timeout_ns(ms.saturating_mul(1_000_000));
        }
        b = b.start_at(match start {
            "earliest" => StartAt::Earliest,
            "tail" => StartAt::Tail,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "start must be 'earliest' or 'tail', got {start:?}"
                )))
            }
        });
        Ok(Self {
            inner: b.build(),
            idle,
        })
    }

    /// A publisher on (stream, partition): opens the ring, or creates it.
    #[pyo3(signature = (stream, partition=0))]
    fn publisher(&self, stream: u32, partition: u16) -> PyResult<Publisher> {
        let p = self
            .inner
            .publisher(stream, partition)
            .map_err(errors::create)?;
        Ok(Publisher {
            inner: Handle::new("Publisher", p),
            idle: self.idle.clone(),
        })
    }

    /// A subscriber on (stream, partition); the ring may not exist yet.
    #[pyo3(signature = (stream, partition=0))]
    fn subscriber(&self, stream: u32, partition: u16) -> Subscriber {
        Subscriber {
            inner: Handle::new("Subscriber", self.inner.subscriber(stream, partition)),
            idle: self.idle.clone(),
        }
    }

    /// Removes the ring file of (stream, partition), if any.
    #[pyo3(signature = (stream, partition=0))]
    fn remove(&self, stream: u32, partition: u16) -> PyResult<()> {
        self.inner
            .remove(stream, partition)
            .map_err(|e| errors::RingError::new_err(format!("cannot remove the ring file: {e}")))
    }
}

/// Publishes records on one ring.
#[pyclass(module = "memstreamer", frozen)]
pub struct Publisher {
    inner: Handle<sdk::Publisher>,
    idle: IdleStrategy,
}

#[pymethods]
impl Publisher {
    /// Copies `data` into the ring; returns the record's offset.
    #[pyo3(signature = (data, timeout=None))]
    fn offer(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        let deadline = deadline(timeout)?;
        self.inner.with(|p| {
            with_bytes(data, |bytes| {
                let mut idle = self.idle.clone();
                loop {
                    match p.offer(bytes) {
                        Err(OfferError::BackPressured) => wait_step(py, deadline, &mut idle)?,
                        r => return r.map_err(errors::offer),
                    }
                }
            })
        })
    }

    /// Claims `length` bytes in the ring, calls `writer(view)` with a writable
    /// memoryview over them, then commits; returns the record's offset. If
    /// `writer` raises, the claim is aborted.
    #[pyo3(signature = (length, writer, timeout=None))]
    fn claim(
        &self,
        py: Python<'_>,
        length: usize,
        writer: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        require_callable(writer, "writer must be callable: writer(view) fills view")?;
        let deadline = deadline(timeout)?;
        self.inner.with(|p| {
            let ring = p.ring().clone();
            let mut idle = self.idle.clone();
            loop {
                match p.claim(length) {
                    Ok(mut claim) => {
                        lend(py, &ring, Lent::Write(claim.buffer()), |view| {
                            writer.call1((view,))
                        })?;
                        return claim.commit().map_err(errors::commit);
                    }
                    Err(OfferError::BackPressured) => {}
                    Err(e) => return Err(errors::offer(e)),
                }
                wait_step(py, deadline, &mut idle)?;
            }
        })
    }

    /// The largest record this ring takes, in bytes.
    #[getter]
    fn max_payload_len(&self) -> PyResult<usize> {
        self.inner.with(|p| Ok(p.max_payload_len()))
    }

    /// "hugetlbfs (2 MiB pages)" or "/dev/shm (4 KiB pages)".
    #[getter]
    fn backing(&self) -> PyResult<&'static str> {
        self.inner.with(|p| Ok(p.backing_name()))
    }

    /// Detaches from the ring (the ring file stays; see Context.remove).
    fn close(&self) -> PyResult<()> {
        self.inner.take().map(drop)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close().map(|()| false)
    }
}

/// One step of waiting for room, with the GIL released; BackPressured once
/// the deadline passed (or at once without one).
fn wait_step(py: Python<'_>, deadline: Option<Instant>, idle: &mut IdleStrategy) -> PyResult<()> {
    match deadline {
        Some(d) if Instant::now() < d => {
            py.detach(|| idle.idle(0));
            py.check_signals()
        }
        _ => Err(errors::offer(OfferError::BackPressured)),
    }
}

/// Reads the records of one ring, in order, zero-copy.
#[pyclass(module = "memstreamer", frozen)]
pub struct Subscriber {
    inner: Handle<sdk::Subscriber>,
    idle: IdleStrategy,
}

#[pymethods]
impl Subscriber {
    /// Calls `handler(view, offset)` for up to `limit` records; returns how
    /// many. `view` is a read-only memoryview valid only during the call.
    /// With `timeout` (seconds), waits with the GIL released until a record
    /// arrives or the timeout passes (then returns 0).
    #[pyo3(signature = (handler, limit=POLL_LIMIT_DEFAULT, timeout=None))]
    fn poll(
        &self,
        py: Python<'_>,
        handler: &Bound<'_, PyAny>,
        limit: usize,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        require_callable(handler, "handler must be callable: handler(view, offset)")?;
        let deadline = deadline(timeout)?;
        let mut idle = self.idle.clone();
        self.inner.with(|s| loop {
            let n = poll_some(py, s, handler, limit)?;
            match deadline {
                Some(d) if n == 0 && Instant::now() < d => {
                    wait_records(py, s, d.min(Instant::now() + SIGNAL_CHECK), &mut idle);
                    py.check_signals()?;
                }
                _ => return Ok(n),
            }
        })
    }

    /// Heartbeat without polling (a subscriber that neither polls nor calls
    /// this for the ring's liveness timeout is evicted from a reliable ring).
    fn keepalive(&self) -> PyResult<()> {
        self.inner.with(|s| {
            s.keepalive();
            Ok(())
        })
    }

    /// Offset of the next record this subscriber reads.
    #[getter]
    fn next_offset(&self) -> PyResult<u64> {
        self.inner.with(|s| Ok(s.next_offset()))
    }

    /// Records lost to overrun (lossy rings) or aborted claims.
    #[getter]
    fn lost_records(&self) -> PyResult<u64> {
        self.inner.with(|s| Ok(s.lost_records()))
    }

    /// True once the ring exists and is mapped.
    #[getter]
    fn is_attached(&self) -> PyResult<bool> {
        self.inner.with(|s| Ok(s.is_attached()))
    }

    /// Leaves the ring (frees its subscriber slot at once).
    fn close(&self) -> PyResult<()> {
        self.inner.take().map(drop)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close().map(|()| false)
    }
}

/// Delivers up to `limit` records one at a time, so a handler that raises
/// stops the call right after its record (the rest stay for the next poll).
fn poll_some(
    py: Python<'_>,
    s: &mut sdk::Subscriber,
    handler: &Bound<'_, PyAny>,
    limit: usize,
) -> PyResult<usize> {
    if !s.try_attach(false).map_err(errors::poll)? {
        return Ok(0);
    }
    let Some(ring) = s.ring().cloned() else {
        return Ok(0);
    };
    let mut delivered = 0;
    while delivered < limit {
        let mut called = Ok(());
        let got = s
            .poll(
                |r| {
                    called = lend(py, &ring, Lent::Read(r.payload), |view| {
                        handler.call1((view, r.offset)).map(drop)
                    });
                },
                1,
            )
            .map_err(errors::poll)?;
        if got == 0 {
            break;
        }
        delivered += 1;
        called?;
    }
    Ok(delivered)
}

/// Waits with the GIL released until the ring has a record past this
/// subscriber's position (or the ring appears), or `deadline` passes.
fn wait_records(
    py: Python<'_>,
    s: &mut sdk::Subscriber,
    deadline: Instant,
    idle: &mut IdleStrategy,
) {
    py.detach(|| loop {
        let ready = match s.ring() {
            Some(ring) => ring.tail().1 > s.next_offset(),
            None => s.try_attach(false).unwrap_or(true),
        };
        if ready || Instant::now() >= deadline {
            return;
        }
        s.idle(idle, 0);
    });
}
