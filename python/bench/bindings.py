"""The Python peers of `ms-bench bindings` (benches/src/bindings/mod.rs): one role per process.

    bindings.py sub  IMPL MODE COUNT WARMUP NAME CORE   subscriber: prints "ready" once attached, then
                                                         one JSON line of figures
    bindings.py pub  IMPL MODE COUNT PACE_NS NAME CORE  publisher: prints one JSON line {"sent": N},
                                                         then stays until its stdin closes

IMPL is "memstreamer" (ring directory NAME, made by the parent) or "iceoryx2" (service NAME,
lossless: safe overflow off, the publisher retries until delivered, the same depth). MODE is
"throughput" (unpaced) or "latency" (one message every PACE_NS, busy-waited).

Each message is 64 bytes: the send time (time.perf_counter_ns, CLOCK_MONOTONIC on Linux, the
same clock in both processes), a sequence number, zeros. The subscriber records
receive time - send time per message after WARMUP messages; msgs/s counts from the first to the
last message received. Both subscribers busy-poll from Python: ours calls poll(handler, 64) without
a timeout, iceoryx2 receive(), in a loop (a poll timeout would wait in Rust with the GIL released,
spinning 50 us and then yielding the core, which on a busy machine hands it to another process).
"""

import ctypes
import json
import os
import struct
import sys
import time

MSG_BYTES = 64
# Messages in flight, equal for both: one lap of our 128 KiB ring (32-byte header + 64-byte
# payload per record), iceoryx2's subscriber buffer.
DEPTH_MSGS = (128 << 10) // (32 + MSG_BYTES)
RING_CAPACITY_BYTES = 128 << 10
RUN_TIMEOUT_S = 60.0
HEAD = struct.Struct("<QQ")
now_ns = time.perf_counter_ns


class Msg(ctypes.Structure):
    _fields_ = [("sent_ns", ctypes.c_uint64), ("seq", ctypes.c_uint64), ("pad", ctypes.c_uint64 * 6)]


assert ctypes.sizeof(Msg) == MSG_BYTES


def figures(lat, first_ns, last_ns, received):
    lat.sort()
    n = len(lat)
    q = lambda p: lat[min(n - 1, int(p * n))] if n else 0
    span = max(last_ns - first_ns, 1)
    return {
        "received": received,
        "recorded": n,
        "msgs_per_s": (received - 1) * 1e9 / span if received > 1 else 0.0,
        "p50_ns": q(0.50),
        "p99_ns": q(0.99),
        "p999_ns": q(0.999),
        "max_ns": lat[-1] if n else 0,
    }


def send_all(count, pace_ns, send):
    """Calls send(seq) for seq in 0..count, one call every pace_ns (busy-waited) unless 0."""
    next_ns = now_ns()
    for seq in range(count):
        if pace_ns:
            while now_ns() < next_ns:
                pass
            next_ns += pace_ns
        send(seq)
    return {"sent": count}


def ms_sub(count, warmup, ring_dir):
    import memstreamer as ms

    sub = ms.Context(dir=ring_dir, capacity_bytes=RING_CAPACITY_BYTES).subscriber(1)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not sub.is_attached and time.monotonic() < deadline:
        sub.poll(lambda view, offset: None, 1, timeout=0.01)
    print("ready", flush=True)
    lat = []
    state = [0, 0, 0]  # received, first_ns, last_ns
    unpack = HEAD.unpack_from

    def on_record(view, offset):
        t = now_ns()
        sent, seq = unpack(view)
        if state[0] == 0:
            state[1] = t
        state[0] += 1
        state[2] = t
        if seq >= warmup:
            lat.append(t - sent)

    poll = sub.poll
    while state[0] < count:
        if poll(on_record, 64) == 0 and time.monotonic() > deadline:
            break
    return figures(lat, state[1], state[2], state[0])


def ms_pub(count, pace_ns, ring_dir):
    import memstreamer as ms

    pub = ms.Context(dir=ring_dir, capacity_bytes=RING_CAPACITY_BYTES).publisher(1)
    pack = struct.Struct("<QQ48x").pack
    offer = pub.offer
    return send_all(count, pace_ns, lambda seq: offer(pack(now_ns(), seq), RUN_TIMEOUT_S))


def iox_service(name):
    import iceoryx2 as iox2

    iox2.set_log_level_from_env_or(iox2.LogLevel.Warn)
    node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
    service = (
        node.service_builder(iox2.ServiceName.new(name))
        .publish_subscribe(Msg)
        .enable_safe_overflow(False)
        .subscriber_max_buffer_size(DEPTH_MSGS)
        .history_size(0)
        .max_publishers(1)
        .max_subscribers(1)
        .open_or_create()
    )
    return iox2, node, service


def iox_sub(count, warmup, name):
    iox2, node, service = iox_service(name)
    sub = service.subscriber_builder().buffer_size(DEPTH_MSGS).create()
    print("ready", flush=True)
    lat = []
    received = first = last = 0
    deadline = time.monotonic() + RUN_TIMEOUT_S
    receive = sub.receive
    while received < count:
        sample = receive()
        if sample is None:
            if time.monotonic() > deadline:
                break
            continue
        t = now_ns()
        msg = sample.payload().contents
        sent, seq = msg.sent_ns, msg.seq
        sample.delete()
        if received == 0:
            first = t
        received += 1
        last = t
        if seq >= warmup:
            lat.append(t - sent)
    return figures(lat, first, last, received)


def iox_pub(count, pace_ns, name):
    iox2, node, service = iox_service(name)
    pub = service.publisher_builder().backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create()
    msg = Msg()
    send_copy = pub.send_copy

    def send(seq):
        msg.sent_ns = now_ns()
        msg.seq = seq
        send_copy(msg)

    return send_all(count, pace_ns, send)


def main():
    role, impl, mode, count, arg, name, core = sys.argv[1:8]
    count, arg, core = int(count), int(arg), int(core)
    try:
        os.sched_setaffinity(0, {core})
    except OSError as e:
        print(f"note: could not pin to core {core}: {e}", file=sys.stderr)
    roles = {
        ("sub", "memstreamer"): ms_sub,
        ("sub", "iceoryx2"): iox_sub,
        ("pub", "memstreamer"): ms_pub,
        ("pub", "iceoryx2"): iox_pub,
    }
    out = roles[(role, impl)](count, arg, name)
    out.update({"impl": impl, "mode": mode, "role": role})
    print(json.dumps(out), flush=True)
    if role == "pub":
        # An iceoryx2 subscriber loses the samples it has not taken yet when the
        # publisher goes away: stay until the parent saw the subscriber finish.
        sys.stdin.read()


if __name__ == "__main__":
    main()
