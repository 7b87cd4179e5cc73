"""A network publisher and subscriber over 127.0.0.1 (MemoryStreamer's UDP frames).

    python net_pubsub.py
"""

import threading

import memstreamer as ms

COUNT = 10_000
sub = ms.NetSubscriber("127.0.0.1:0")
addr = sub.local_addr  # one call at a time per handle: read it before the receiving thread starts
received = []
stop = threading.Event()


def receive() -> None:
    # poll releases the GIL while it waits, so the publisher below runs meanwhile.
    while not stop.is_set():
        sub.poll(lambda view, offset: received.append(bytes(view)), 64, timeout=0.05)


receiver = threading.Thread(target=receive)
receiver.start()
with ms.NetPublisher(addr, stream=7, session_id=1) as pub:
    pub.connect(timeout=2.0)  # NotConnected if nobody answers
    for i in range(COUNT):
        pub.offer(f"message {i}".encode(), timeout=2.0)
    pub.flush(timeout=5.0)  # until the subscriber acknowledged everything
stop.set()
receiver.join()
sub.close()
print(f"received {len(received)} of {COUNT}, in order: {received == [f'message {i}'.encode() for i in range(COUNT)]}")
