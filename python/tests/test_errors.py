"""Bad arguments and misuse raise the documented exceptions, never crash."""

import pytest

import memstreamer as ms


def test_wrong_types(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    with pytest.raises(TypeError, match="bytes-like"):
        pub.offer(123)
    with pytest.raises(TypeError, match="bytes-like"):
        pub.offer("text is not bytes")
    with pytest.raises(TypeError):
        ctx.publisher("seven")
    with pytest.raises(OverflowError):
        ctx.publisher(-1)
    with pytest.raises(OverflowError):
        ctx.subscriber(1, 70000)
    with pytest.raises(TypeError, match="callable"):
        sub.poll("not a function")
    with pytest.raises(TypeError, match="callable"):
        pub.claim(8, None)
    with pytest.raises(TypeError):
        pub.offer(b"x", timeout="soon")


def test_bad_values(ring_dir, stream):
    with pytest.raises(ValueError, match="'reliable' or 'lossy'"):
        ms.Context(mode="sometimes")
    with pytest.raises(ValueError, match="'earliest' or 'tail'"):
        ms.Context(start="middle")
    with pytest.raises(ValueError, match="'busy_spin'"):
        ms.Context(idle="nap")
    with pytest.raises(ValueError, match="'adaptive'"):
        ms.NetSubscriber(idle="nap")
    with pytest.raises(ms.RingError, match="capacity"):
        ms.Context(dir=ring_dir, capacity_bytes=1000).publisher(stream)
    ctx = ms.Context(dir=ring_dir, capacity_bytes=1 << 16)
    pub = ctx.publisher(stream)
    with pytest.raises(ValueError, match="timeout"):
        pub.offer(b"x", timeout=-1.0)
    with pytest.raises(ValueError, match="timeout"):
        pub.offer(b"x", timeout=float("nan"))


def test_record_larger_than_the_ring_takes(ctx, stream):
    pub = ctx.publisher(stream)
    too_big = pub.max_payload_len + 1
    with pytest.raises(ms.RecordTooLarge, match="larger ring"):
        pub.offer(b"x" * too_big)
    with pytest.raises(ms.RecordTooLarge):
        pub.claim(too_big, lambda view: None)
    assert pub.offer(b"x" * pub.max_payload_len) == 0
    assert issubclass(ms.RecordTooLarge, ms.MemstreamerError)
    with pytest.raises(OverflowError):
        pub.claim(-1, lambda view: None)


def test_network_record_larger_than_a_frame(stream):
    sub = ms.NetSubscriber()
    pub = ms.NetPublisher(sub.local_addr, stream)
    with pytest.raises(ms.RecordTooLarge, match="frame"):
        pub.offer(b"x" * 70_000)
    pub.close(timeout=0.0)
    sub.close()


def test_use_after_close(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    pub.close()
    sub.close()
    pub.close()  # closing twice is fine
    for call in (
        lambda: pub.offer(b"x"),
        lambda: pub.claim(1, lambda view: None),
        lambda: pub.max_payload_len,
        lambda: sub.poll(lambda view, offset: None),
        lambda: sub.next_offset,
        lambda: sub.keepalive(),
    ):
        with pytest.raises(ms.Closed, match="create a new one"):
            call()
    net_sub = ms.NetSubscriber()
    net_pub = ms.NetPublisher(net_sub.local_addr, stream)
    net_sub.close()
    net_pub.close(timeout=0.0)
    with pytest.raises(ms.Closed):
        net_sub.poll(lambda view, offset: None)
    with pytest.raises(ms.Closed):
        net_pub.offer(b"x")


def test_calling_a_handle_from_its_own_callback_is_busy(ctx, stream):
    pub = ctx.publisher(stream)
    sub = ctx.subscriber(stream)
    pub.offer(b"x")
    with pytest.raises(ms.Busy, match="one Subscriber per thread"):
        sub.poll(lambda view, offset: sub.poll(lambda v, o: None), timeout=1.0)
    with pytest.raises(ms.Busy):
        pub.claim(4, lambda view: pub.offer(b"inner"))


def test_network_arguments(stream):
    with pytest.raises(ValueError, match="IP:port"):
        ms.NetPublisher("nowhere", stream)
    with pytest.raises(ValueError, match="IP:port"):
        ms.NetSubscriber("127.0.0.1")
    with pytest.raises(ms.NetworkError, match="buffer_bytes"):
        ms.NetPublisher("127.0.0.1:9", stream, buffer_bytes=1000)
    with pytest.raises(ValueError, match="principal"):
        ms.NetSubscriber().subscribe("127.0.0.1:9", stream, principal="")


def test_not_connected_when_nobody_answers(stream):
    # A bound socket that never answers SETUP (nobody polls it).
    silent = ms.NetSubscriber()
    pub = ms.NetPublisher(silent.local_addr, stream)
    with pytest.raises(ms.NotConnected, match="connect again"):
        pub.connect(timeout=0.2)
    assert not pub.is_connected
    silent.close()
