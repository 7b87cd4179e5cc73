"""Two real processes on one ring, and a subscriber killed with SIGKILL."""

import signal
import subprocess

import memstreamer as ms

from conftest import peer_cmd

COUNT = 20_000
WAIT_S = 60


def test_publisher_process_to_subscriber_process(ring_dir, stream):
    # 20k records of ~10 bytes lap the 64 KiB ring many times: the publisher
    # is back-pressured by the subscriber process and waits for it.
    # The ring exists first, so the subscriber attaches before anything is published.
    ms.Context(dir=ring_dir, capacity_bytes=1 << 16, liveness_timeout_ms=300).publisher(stream).close()
    sub = subprocess.Popen(peer_cmd("subscribe", ring_dir, stream, COUNT), stdout=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == "ready"
    pub = subprocess.Popen(peer_cmd("publish", ring_dir, stream, COUNT), stdout=subprocess.PIPE, text=True)
    pub_out, _ = pub.communicate(timeout=WAIT_S)
    sub_out, _ = sub.communicate(timeout=WAIT_S)
    assert (pub.returncode, pub_out.strip()) == (0, f"published {COUNT}")
    assert (sub.returncode, sub_out.strip()) == (0, f"received {COUNT} rec-0 rec-{COUNT - 1} OK")


def test_subscriber_killed_with_sigkill_does_not_wedge_the_publisher(ring_dir, stream):
    ctx = ms.Context(dir=ring_dir, capacity_bytes=1 << 16, liveness_timeout_ms=300)
    pub = ctx.publisher(stream)
    pub.offer(b"hello")
    holder = subprocess.Popen(peer_cmd("hold", ring_dir, stream), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "attached"
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The dead subscriber held the ring at offset 1; ten laps of records later
    # the publisher is still going (it waits out the liveness timeout once).
    record = b"r" * 200
    laps = 10 * (1 << 16) // len(record)
    last = 0
    for _ in range(laps):
        last = pub.offer(record, timeout=10.0)
    assert last == laps
    # A new subscriber reads what comes next.
    sub = ms.Context(dir=ring_dir, start="tail").subscriber(stream)
    assert sub.poll(lambda view, offset: None) == 0
    for i in range(3):
        pub.offer(f"after the kill {i}".encode())
    got = []
    while len(got) < 3:
        assert sub.poll(lambda view, offset: got.append((offset, bytes(view))), timeout=2.0) > 0
    assert got == [(laps + 1 + i, f"after the kill {i}".encode()) for i in range(3)]
