"""Shared-memory round trips, the record view's lifetime, waits with the GIL released."""

import threading
import time

import pytest

import memstreamer as ms


def test_offer_poll_round_trip(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    sent = [f"record {i}".encode() * (i % 7 + 1) for i in range(200)]
    offsets = [pub.offer(p) for p in sent]
    assert offsets == list(range(200))
    got = []
    while len(got) < len(sent):
        n = sub.poll(lambda view, offset: got.append((offset, bytes(view))), 64, timeout=1.0)
        assert n > 0
    assert got == list(enumerate(sent))
    assert sub.next_offset == 200
    assert sub.lost_records == 0


def test_any_bytes_like_is_accepted(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    pub.offer(bytearray(b"ba"))
    pub.offer(memoryview(b"xmvx")[1:3])
    got = []
    sub.poll(lambda view, offset: got.append(bytes(view)), timeout=1.0)
    assert got == [b"ba", b"mv"]


def test_claim_writes_in_place_and_a_raising_writer_aborts(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)

    def fill(view):
        assert not view.readonly and len(view) == 8
        view[:] = b"12345678"

    assert pub.claim(8, fill) == 0

    def fail(view):
        view[:2] = b"xx"
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        pub.claim(4, fail)
    pub.offer(b"after")
    got = []
    sub.poll(lambda view, offset: got.append(bytes(view)), timeout=1.0)
    assert got == [b"12345678", b"after"]


def test_view_is_read_only_and_invalid_after_the_callback(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    pub.offer(b"zero-copy")
    kept = []

    def handler(view, offset):
        assert view.readonly
        assert bytes(view) == b"zero-copy"
        with pytest.raises(TypeError):
            view[0] = 1
        kept.append(view)

    assert sub.poll(handler, timeout=1.0) == 1
    view = kept[0]
    with pytest.raises(ValueError, match="released"):
        bytes(view)
    with pytest.raises(ValueError):
        view[0]


def test_a_slice_kept_past_the_callback_raises_record_view_escaped(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    pub.offer(b"abcdef")
    pub.offer(b"ghijkl")
    kept = []
    with pytest.raises(ms.RecordViewEscaped, match="bytes"):
        sub.poll(lambda view, offset: kept.append(view[1:3]), timeout=1.0)
    # The exporter refuses new buffers once the callback returned.
    with pytest.raises(BufferError, match="only inside its callback"):
        memoryview(kept[0].obj)
    kept.clear()
    got = []
    sub.poll(lambda view, offset: got.append(bytes(view)), timeout=1.0)
    assert got == [b"ghijkl"]


def test_a_raising_handler_stops_the_poll_after_its_record(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    for i in range(5):
        pub.offer(bytes([i]))

    def handler(view, offset):
        if offset == 2:
            raise KeyError("stop")

    with pytest.raises(KeyError):
        sub.poll(handler, 16)
    got = []
    sub.poll(lambda view, offset: got.append(offset), 16)
    assert got == [3, 4]


def test_poll_waits_with_the_gil_released(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)

    def later():
        time.sleep(0.2)
        pub.offer(b"late")

    t = threading.Thread(target=later)
    t.start()
    got = []
    # If poll held the GIL while waiting, the thread could not publish before
    # the timeout and poll would return 0.
    n = sub.poll(lambda view, offset: got.append(bytes(view)), timeout=10.0)
    t.join()
    assert (n, got) == (1, [b"late"])


def test_subscriber_before_the_ring_exists(ring_dir, stream):
    ctx = ms.Context(dir=ring_dir, capacity_bytes=1 << 16)
    sub = ctx.subscriber(stream)
    assert sub.poll(lambda view, offset: None) == 0
    assert not sub.is_attached
    pub = ctx.publisher(stream)
    pub.offer(b"first")
    got = []
    assert sub.poll(lambda view, offset: got.append(bytes(view)), timeout=2.0) == 1
    assert got == [b"first"] and sub.is_attached


def test_back_pressure_is_an_exception_and_a_timeout_waits(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    assert sub.poll(lambda view, offset: None) == 0  # attach: the ring now waits for it
    record = b"x" * 1000
    sent = 0
    with pytest.raises(ms.BackPressured, match="retry"):
        while sent < 1000:
            pub.offer(record)
            sent += 1
    assert 0 < sent < 1000
    with pytest.raises(ms.BackPressured):
        pub.offer(record, timeout=0.05)
    drained = []
    while len(drained) < sent:
        sub.poll(lambda view, offset: drained.append(offset), 64)
    assert drained == list(range(sent))
    assert pub.offer(record, timeout=1.0) == sent


def test_context_managers_close(ctx, stream):
    with ctx.publisher(stream) as pub, ctx.subscriber(stream) as sub:
        pub.offer(b"x")
        assert sub.poll(lambda view, offset: None, timeout=1.0) == 1
    with pytest.raises(ms.Closed):
        pub.offer(b"y")
    with pytest.raises(ms.Closed):
        sub.poll(lambda view, offset: None)


def test_a_signal_interrupts_a_waiting_poll(ctx, stream):
    import signal

    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted()

    sub = ctx.subscriber(stream)
    ctx.publisher(stream)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        # Without signal checks while waiting, this would sit out the whole timeout.
        with pytest.raises(Interrupted):
            sub.poll(lambda view, offset: None, timeout=600.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    sub.poll(lambda view, offset: None)  # still usable


def test_offer_waits_for_room_with_the_gil_released(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    assert sub.poll(lambda view, offset: None) == 0  # attach: the ring now waits for it
    record = b"y" * 1000
    sent = 0
    with pytest.raises(ms.BackPressured):
        while True:
            pub.offer(record)
            sent += 1
    drained = []

    def drain_later():
        time.sleep(0.2)
        while len(drained) < sent:
            sub.poll(lambda view, offset: drained.append(offset), 64)

    t = threading.Thread(target=drain_later)
    t.start()
    # If offer held the GIL while it waited, the thread could not drain the ring
    # and offer would raise BackPressured at the timeout.
    offset = pub.offer(record, timeout=10.0)
    t.join()
    assert offset == sent
    assert drained == list(range(sent))


@pytest.mark.parametrize("idle", ["adaptive", "busy_spin", "yield", "backoff"])
def test_every_idle_strategy_waits_and_delivers(ring_dir, stream, idle):
    ctx = ms.Context(dir=ring_dir, capacity_bytes=1 << 16, idle=idle)
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)

    def later():
        time.sleep(0.05)
        pub.offer(idle.encode())

    t = threading.Thread(target=later)
    t.start()
    got = []
    n = sub.poll(lambda view, offset: got.append(bytes(view)), timeout=10.0)
    t.join()
    assert (n, got) == (1, [idle.encode()])
