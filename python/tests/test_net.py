"""Network publisher -> subscriber over 127.0.0.1 (UDP frames of docs/protocol.md)."""

import threading
import time

import memstreamer as ms

COUNT = 5_000
WAIT_S = 30.0


def test_net_publisher_to_subscriber_in_order_exactly_once(stream):
    sub = ms.NetSubscriber("127.0.0.1:0")
    # A handle serves one call at a time: the receiving thread holds it (Busy otherwise).
    addr = sub.local_addr
    got = []
    stop = threading.Event()

    def receive():
        # poll releases the GIL while it waits, so the publisher runs meanwhile.
        # It goes on until the publisher flushed: its STATUS acknowledges.
        deadline = time.monotonic() + WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            sub.poll(lambda view, offset: got.append((offset, bytes(view))), 64, timeout=0.05)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        with ms.NetPublisher(addr, stream, session_id=7) as pub:
            pub.connect(timeout=5.0)
            assert pub.is_connected
            offsets = [pub.offer(f"net-{i}".encode(), timeout=5.0) for i in range(COUNT)]
            assert pub.flush(timeout=10.0)
    finally:
        stop.set()
        receiver.join()
    sub.close()
    assert len(got) == COUNT
    assert [payload for _, payload in got] == [f"net-{i}".encode() for i in range(COUNT)]
    # Offsets are the session's byte offsets, the ones offer returned.
    assert [offset for offset, _ in got] == offsets


def test_net_view_is_invalid_after_the_callback(stream):
    sub = ms.NetSubscriber()
    addr = sub.local_addr
    kept = []
    stop = threading.Event()

    def receive():
        while not kept and not stop.is_set():
            sub.poll(lambda view, offset: kept.append(view), timeout=0.05)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        pub = ms.NetPublisher(addr, stream)
        pub.connect(timeout=5.0)
        pub.offer(b"one")
        pub.flush(timeout=5.0)
        receiver.join(WAIT_S)
    finally:
        stop.set()
        receiver.join()
    assert len(kept) == 1
    try:
        bytes(kept[0])
        raise AssertionError("the view was still usable after the callback")
    except ValueError:
        pass
