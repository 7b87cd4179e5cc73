"""Type hints of memstreamer's native module (PyO3)."""

import os
from types import TracebackType
from typing import Any, Callable, Literal, Self

BytesLike = bytes | bytearray | memoryview
Handler = Callable[[memoryview, int], Any]
Idle = Literal["adaptive", "busy_spin", "yield", "backoff"]

class MemstreamerError(Exception):
    """Base class of every error this package raises."""

class BackPressured(MemstreamerError):
    """The ring or retransmit buffer is full until subscribers catch up: retry, or pass a timeout."""

class NotConnected(MemstreamerError):
    """A network publisher got no answer from its subscriber or node in time."""

class Closed(MemstreamerError):
    """The handle was closed (or its session ended): create a new one."""

class RecordTooLarge(MemstreamerError):
    """A record larger than the ring (or the frame) takes: split it or use a larger ring."""

class RingError(MemstreamerError):
    """A ring could not be created, opened or attached to."""

class Evicted(MemstreamerError):
    """The subscriber missed heartbeats and lost its place: create a new Subscriber."""

class ClaimExpired(MemstreamerError):
    """A claim was held past the ring's claim timeout and aborted: offer the record again."""

class RecordViewEscaped(MemstreamerError):
    """A buffer taken from a record view outlived the callback: copy with bytes(view) instead."""

class Busy(MemstreamerError):
    """The handle is in use by another call (its own callback, or another thread)."""

class NetworkError(MemstreamerError):
    """A socket could not be set up (address, port, configuration)."""

class RecordBytes:
    """The exporter behind a record's memoryview (``view.obj``); refuses new buffers after the callback."""

class Context:
    """Settings for the rings this client creates and attaches to."""

    def __init__(
        self,
        *,
        dir: str | os.PathLike[str] | None = None,
        capacity_bytes: int | None = None,
        mode: Literal["reliable", "lossy"] = "reliable",
        shared_publishers: bool = False,
        subscribers_max: int | None = None,
        liveness_timeout_ms: int | None = None,
        start: Literal["earliest", "tail"] = "earliest",
        idle: Idle = "adaptive",
    ) -> None:
        """`idle`: what waits do between checks (GIL released): "adaptive" spins 50 us,
        yields until 1 ms, then parks; "busy_spin" keeps a core for the lowest latency."""
    def publisher(self, stream: int, partition: int = 0) -> Publisher:
        """Opens the ring of (stream, partition), or creates it. Raises RingError."""
    def subscriber(self, stream: int, partition: int = 0) -> Subscriber:
        """A subscriber; the ring may not exist yet (it is mapped when it appears)."""
    def remove(self, stream: int, partition: int = 0) -> None:
        """Removes the ring file of (stream, partition), if any."""

class Publisher:
    """Publishes records on one ring."""

    def offer(self, data: BytesLike, timeout: float | None = None) -> int:
        """Copies data into the ring; returns its offset. Raises BackPressured (after
        `timeout` seconds, waited with the GIL released), RecordTooLarge, Closed."""
    def claim(
        self, length: int, writer: Callable[[memoryview], Any], timeout: float | None = None
    ) -> int:
        """Zero-copy publish: writer(view) fills a writable memoryview of `length` bytes
        in the ring, then the record is committed; if writer raises, it is aborted."""
    @property
    def max_payload_len(self) -> int: ...
    @property
    def backing(self) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class Subscriber:
    """Reads the records of one ring, in order, zero-copy."""

    def poll(self, handler: Handler, limit: int = 16, timeout: float | None = None) -> int:
        """Calls handler(view, offset) for up to `limit` records; returns how many. The
        view is valid only during the call. With `timeout` seconds, waits (GIL released)."""
    def keepalive(self) -> None: ...
    @property
    def next_offset(self) -> int: ...
    @property
    def lost_records(self) -> int: ...
    @property
    def is_attached(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class NetPublisher:
    """Publishes records over UDP to a NetSubscriber or a node."""

    def __init__(
        self,
        node: str,
        stream: int,
        partition: int = 0,
        *,
        session_id: int = 1,
        principal: str = "python",
        local: str = "0.0.0.0:0",
        buffer_bytes: int | None = None,
        idle: Idle = "adaptive",
    ) -> None: ...
    def connect(self, timeout: float = 1.0) -> None:
        """Waits for the receiver's answer to SETUP; raises NotConnected after `timeout`."""
    @property
    def is_connected(self) -> bool: ...
    def offer(self, data: BytesLike, record_type: int = 0, timeout: float | None = None) -> int: ...
    def do_work(self) -> int: ...
    def flush(self, timeout: float = 1.0) -> bool: ...
    def close(self, timeout: float = 1.0) -> bool: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...

class NetSubscriber:
    """A UDP socket that receives publishers' sessions, in order and exactly once."""

    def __init__(
        self, local: str = "127.0.0.1:0", *, window_bytes: int | None = None, idle: Idle = "adaptive"
    ) -> None: ...
    @property
    def local_addr(self) -> str: ...
    def subscribe(
        self,
        node: str,
        stream: int,
        partition: int = 0,
        *,
        session_id: int = 1,
        principal: str = "python",
    ) -> None: ...
    def poll(self, handler: Handler, limit: int = 64, timeout: float | None = None) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
