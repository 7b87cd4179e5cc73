"""A peer process for the multi-process tests: one role per run.

    peer.py publish DIR STREAM COUNT        offers COUNT records "rec-<i>", prints "published COUNT"
    peer.py subscribe DIR STREAM COUNT      attaches (prints "ready"), reads COUNT records,
                                            prints "received COUNT FIRST LAST OK"
    peer.py hold DIR STREAM                 attaches, reads one record, prints "attached", then sleeps
"""

import sys
import time

import memstreamer as ms

TIMEOUT_S = 20.0


def publish(ctx, stream, count):
    with ctx.publisher(stream) as pub:
        for i in range(count):
            pub.offer(f"rec-{i}".encode(), timeout=TIMEOUT_S)
    print(f"published {count}", flush=True)


def subscribe(ctx, stream, count):
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    with ctx.subscriber(stream) as sub:
        while not sub.is_attached and time.monotonic() < deadline:
            sub.poll(lambda view, offset: got.append((offset, bytes(view))), 64, timeout=0.1)
        print("ready", flush=True)
        while len(got) < count and time.monotonic() < deadline:
            sub.poll(lambda view, offset: got.append((offset, bytes(view))), 64, timeout=0.1)
    ok = all(payload == f"rec-{i}".encode() and offset == i for i, (offset, payload) in enumerate(got))
    first = got[0][1].decode() if got else "-"
    last = got[-1][1].decode() if got else "-"
    print(f"received {len(got)} {first} {last} {'OK' if ok else 'BAD'}", flush=True)


def hold(ctx, stream):
    sub = ctx.subscriber(stream)
    while sub.poll(lambda view, offset: None, 1, timeout=1.0) == 0:
        pass
    print("attached", flush=True)
    time.sleep(TIMEOUT_S)


def main():
    role, ring_dir, stream = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = ms.Context(dir=ring_dir, capacity_bytes=1 << 16, liveness_timeout_ms=300)
    if role == "publish":
        publish(ctx, stream, int(sys.argv[4]))
    elif role == "subscribe":
        subscribe(ctx, stream, int(sys.argv[4]))
    elif role == "hold":
        hold(ctx, stream)
    else:
        sys.exit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
