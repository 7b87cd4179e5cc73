"""MemoryStreamer client for Python.

Shared memory (same host): ``Context`` makes ``Publisher`` and ``Subscriber``
handles on the ring of a (stream, partition). Network: ``NetPublisher`` and
``NetSubscriber`` speak MemoryStreamer's UDP frames.

Reads are zero-copy: ``Subscriber.poll(handler)`` calls ``handler(view, offset)``
with a read-only ``memoryview`` over the record in the ring, valid only while the
handler runs (copy with ``bytes(view)`` to keep it). Every wait releases the GIL.
"""

from ._native import (
    BackPressured,
    Busy,
    ClaimExpired,
    Closed,
    Context,
    MemstreamerError,
    NetPublisher,
    NetSubscriber,
    NetworkError,
    NotConnected,
    Publisher,
    RecordBytes,
    RecordTooLarge,
    RecordViewEscaped,
    RingError,
    Subscriber,
    Evicted,
)

__all__ = [
    "BackPressured",
    "Busy",
    "ClaimExpired",
    "Closed",
    "Context",
    "Evicted",
    "MemstreamerError",
    "NetPublisher",
    "NetSubscriber",
    "NetworkError",
    "NotConnected",
    "Publisher",
    "RecordBytes",
    "RecordTooLarge",
    "RecordViewEscaped",
    "RingError",
    "Subscriber",
]
