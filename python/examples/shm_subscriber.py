"""Reads stream 7 until the publisher's last record (sequence 2**64 - 1) and prints latency.

    python shm_subscriber.py
"""

import struct
import time

import memstreamer as ms

ctx = ms.Context(capacity_bytes=1 << 20)
latencies = []
done = False


def on_record(view: memoryview, offset: int) -> None:
    # `view` reads the record in the ring, without a copy; it is released when this returns.
    global done
    seq, sent_ns = struct.unpack_from("<QQ", view)
    latencies.append(time.perf_counter_ns() - sent_ns)
    done = seq == 2**64 - 1


with ctx.subscriber(7) as sub:  # may start before the publisher: the ring is mapped when it appears
    while not done:
        sub.poll(on_record, 64, timeout=1.0)  # waits with the GIL released
    print(f"{len(latencies)} records, lost {sub.lost_records}")
latencies.sort()
print(f"one-way latency p50 {latencies[len(latencies) // 2]} ns, p99 {latencies[len(latencies) * 99 // 100]} ns")
ms.Context().remove(7)
