//! Network handles over the sdk's UDP client: `NetPublisher` and
//! `NetSubscriber` (docs/protocol.md frames over a kernel UDP socket).
//!
//! A network record is already a copy (the kernel copies each datagram into
//! the socket's buffer), so the subscriber stages the records of one receive
//! batch in one reused buffer while the GIL is released, then lends each to
//! the handler as a memoryview over a `bytes`, released when the handler
//! returns. No `unsafe` here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyMemoryView, PyTuple};
use sdk::net::{NetOfferError, PublisherConfig, ReceiverConfig, UdpPublisher, UdpSubscriber};
use sdk::IdleStrategy;

use crate::errors;
use crate::handle::Handle;
use crate::shm::{deadline, idle_strategy, require_callable, with_bytes};

/// Datagrams one `NetSubscriber.poll` receives per batch (the sdk caps it at
/// its RECV_BATCH_MAX).
pub const NET_RECV_FRAMES_MAX: usize = 64;
/// Records per `NetSubscriber.poll` call when the caller does not say.
pub const NET_POLL_LIMIT_DEFAULT: usize = 64;

fn socket_addr(what: &str, s: &str) -> PyResult<SocketAddr> {
    s.parse().map_err(|e| {
        PyValueError::new_err(format!(
            "{what} must be an IP:port such as \"127.0.0.1:40100\", got {s:?} ({e})"
        ))
    })
}

/// Publishes records to a subscriber or node over UDP, with retransmission
/// and flow control.
#[pyclass(module = "memstreamer", frozen)]
pub struct NetPublisher {
    inner: Handle<UdpPublisher>,
    idle: IdleStrategy,
}

#[pymethods]
impl NetPublisher {
    #[new]
    #[pyo3(signature = (node, stream, partition=0, *, session_id=1, principal="python", local="0.0.0.0:0", buffer_bytes=None, idle="adaptive"))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn new(
        node: &str,
        stream: u32,
        partition: u16,
        session_id: u32,
        principal: &str,
        local: &str,
        buffer_bytes: Option<usize>,
        idle: &str,
    ) -> PyResult<Self> {
        let idle = idle_strategy(idle)?;
        let node = socket_addr("node", node)?;
        let local = socket_addr("local", local)?;
        let mut cfg = PublisherConfig::new(stream, partition, session_id, principal);
        if let Some(b) = buffer_bytes {
            cfg.buffer_bytes = b;
        }
        let p = UdpPublisher::new(local, node, cfg).map_err(errors::net_publisher)?;
        Ok(Self {
            inner: Handle::new("NetPublisher", p),
            idle,
        })
    }

    /// Sends SETUP until the receiver answers; NotConnected after `timeout` seconds.
    #[pyo3(signature = (timeout=1.0))]
    fn connect(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let wait = wait_for(timeout)?;
        if self
            .inner
            .with(|p| Ok(py.detach(|| p.wait_connected(wait))))?
        {
            return Ok(());
        }
        Err(errors::NotConnected::new_err(format!(
            "no answer to SETUP within {timeout} s: check that the subscriber or node runs at the \
             address given and that nothing filters UDP, then call connect again"
        )))
    }

    #[getter]
    fn is_connected(&self) -> PyResult<bool> {
        self.inner.with(|p| Ok(p.session().is_connected()))
    }

    /// Queues `data` for sending and sends what is due; returns the record's
    /// session offset. With `timeout`, waits (GIL released) while the
    /// retransmit buffer is full.
    #[pyo3(signature = (data, record_type=0, timeout=None))]
    fn offer(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        record_type: u16,
        timeout: Option<f64>,
    ) -> PyResult<u64> {
        let deadline = deadline(timeout)?;
        self.inner.with(|p| {
            let offset = with_bytes(data, |bytes| {
                let mut idle = self.idle.clone();
                loop {
                    match p.offer(record_type, bytes) {
                        Err(NetOfferError::BackPressured)
                            if deadline.is_some_and(|d| Instant::now() < d) =>
                        {
                            py.detach(|| {
                                let work = p.do_work();
                                idle.idle(work);
                            });
                            py.check_signals()?;
                        }
                        r => return r.map_err(errors::net_offer),
                    }
                }
            })?;
            py.detach(|| p.do_work());
            Ok(offset)
        })
    }

    /// One duty cycle (receive STATUS/NAK, send DATA, retransmissions and
    /// heartbeats that are due); returns the work done. Call it in your loop
    /// while you have nothing to offer.
    fn do_work(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.with(|p| Ok(py.detach(|| p.do_work())))
    }

    /// Runs duty cycles (GIL released) until every offered record is
    /// acknowledged; False if `timeout` seconds passed first.
    #[pyo3(signature = (timeout=1.0))]
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let d = Instant::now() + wait_for(timeout)?;
        self.inner.with(|p| {
            Ok(py.detach(|| {
                let mut idle = self.idle.clone();
                while !p.session().is_drained() && Instant::now() < d {
                    let work = p.do_work();
                    idle.idle(work);
                }
                p.session().is_drained()
            }))
        })
    }

    /// Sends what is left, ends the session (END_OF_SESSION) and closes the
    /// socket; False if `timeout` seconds passed before the receiver had everything.
    #[pyo3(signature = (timeout=1.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let wait = wait_for(timeout)?;
        match self.inner.take()? {
            Some(mut p) => Ok(py.detach(|| p.close(wait))),
            None => Ok(true),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py, 1.0).map(|_| false)
    }
}

/// A timeout argument as a Duration (finite, >= 0).
fn wait_for(timeout: f64) -> PyResult<Duration> {
    Ok(deadline(Some(timeout))?.map_or(Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
    }))
}

/// A UDP socket that receives publishers' sessions, in order and exactly once.
#[pyclass(module = "memstreamer", frozen)]
pub struct NetSubscriber {
    inner: Handle<NetInner>,
    idle: IdleStrategy,
}

struct NetInner {
    socket: UdpSubscriber,
    /// Payload bytes of the staged records, reused.
    staged: Vec<u8>,
    /// (offset, start, len) in `staged`, in delivery order.
    records: VecDeque<(u64, usize, usize)>,
}

#[pymethods]
impl NetSubscriber {
    #[new]
    #[pyo3(signature = (local="127.0.0.1:0", *, window_bytes=None, idle="adaptive"))]
    fn new(local: &str, window_bytes: Option<u32>, idle: &str) -> PyResult<Self> {
        let idle = idle_strategy(idle)?;
        let local = socket_addr("local", local)?;
        let mut cfg = ReceiverConfig::default();
        if let Some(w) = window_bytes {
            cfg.window_bytes = w;
        }
        let socket = UdpSubscriber::bind(local, cfg).map_err(errors::net_subscriber)?;
        let inner = NetInner {
            socket,
            staged: Vec::new(),
            records: VecDeque::new(),
        };
        Ok(Self {
            inner: Handle::new("NetSubscriber", inner),
            idle,
        })
    }

    /// The bound address ("IP:port"): give it to publishers.
    #[getter]
    fn local_addr(&self) -> PyResult<String> {
        self.inner.with(|s| {
            s.socket
                .local_addr()
                .map(|a| a.to_string())
                .map_err(|e| errors::NetworkError::new_err(format!("socket address: {e}")))
        })
    }

    /// Asks the node at `node` to send (stream, partition) to this socket as
    /// session `session_id`; repeated by `poll` until the node answers.
    #[pyo3(signature = (node, stream, partition=0, *, session_id=1, principal="python"))]
    fn subscribe(
        &self,
        node: &str,
        stream: u32,
        partition: u16,
        session_id: u32,
        principal: &str,
    ) -> PyResult<()> {
        let node = socket_addr("node", node)?;
        self.inner.with(|s| {
            s.socket
                .subscribe(node, stream, partition, session_id, principal)
                .map_err(|e| PyValueError::new_err(e.to_string()))
        })
    }

    /// Calls `handler(view, offset)` for up to `limit` records; returns how
    /// many. `view` is valid only during the call. With `timeout` (seconds),
    /// receives with the GIL released until a record arrives or it passes.
    #[pyo3(signature = (handler, limit=NET_POLL_LIMIT_DEFAULT, timeout=None))]
    fn poll(
        &self,
        py: Python<'_>,
        handler: &Bound<'_, PyAny>,
        limit: usize,
        timeout: Option<f64>,
    ) -> PyResult<usize> {
        require_callable(handler, "handler must be callable: handler(view, offset)")?;
        let deadline = deadline(timeout)?;
        self.inner.with(|s| {
            let mut idle = self.idle.clone();
            loop {
                if s.records.is_empty() {
                    py.detach(|| s.receive());
                }
                let n = s.deliver(py, handler, limit)?;
                if n > 0 || deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(n);
                }
                py.detach(|| idle.idle(0));
                py.check_signals()?;
            }
        })
    }

    /// Closes the socket.
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

impl NetInner {
    /// One receive batch into the staging buffer (runs without the GIL).
    fn receive(&mut self) {
        self.staged.clear();
        let (staged, records) = (&mut self.staged, &mut self.records);
        self.socket.poll(
            |r| {
                records.push_back((r.offset, staged.len(), r.payload.len()));
                staged.extend_from_slice(r.payload);
            },
            NET_RECV_FRAMES_MAX,
        );
    }

    /// Lends up to `limit` staged records to `handler`; a record whose
    /// handler raised counts as delivered.
    fn deliver(
        &mut self,
        py: Python<'_>,
        handler: &Bound<'_, PyAny>,
        limit: usize,
    ) -> PyResult<usize> {
        let mut delivered = 0;
        while delivered < limit {
            let Some((offset, start, len)) = self.records.pop_front() else {
                break;
            };
            delivered += 1;
            let bytes = PyBytes::new(py, &self.staged[start..start + len]);
            let view = PyMemoryView::from(bytes.as_any())?;
            let called = handler.call1((&view, offset));
            view.call_method0("release")?;
            called?;
        }
        Ok(delivered)
    }
}
