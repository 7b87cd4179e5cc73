"""Publishes COUNT records on stream 7 of this host's shared memory.

    python shm_publisher.py [COUNT]        (run shm_subscriber.py first, in another shell)
"""

import struct
import sys
import time

import memstreamer as ms

count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ctx = ms.Context(capacity_bytes=1 << 20)  # rings in /dev/hugepages/memstreamer or /dev/shm/memstreamer
with ctx.publisher(7) as pub:
    print(f"publishing {count} records on {pub.backing}")
    for i in range(count):
        # offer copies the bytes in; back-pressure waits up to 5 s with the GIL released.
        pub.offer(struct.pack("<QQ", i, time.perf_counter_ns()), timeout=5.0)
    # Zero-copy: write the record in place, committed when the writer returns.
    pub.claim(16, lambda view: struct.pack_into("<QQ", view, 0, 2**64 - 1, time.perf_counter_ns()))
print("done")
