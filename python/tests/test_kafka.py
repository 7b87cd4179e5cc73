"""The node's Kafka listener with real Kafka clients: kafka-python and confluent-kafka
(librdkafka) produce and consume with every codec, and create topics.

A `memstreamer node` runs for this module on loopback with ephemeral ports (its Kafka port is
read from its start-up line), with an ACL letting Kafka clients (principal ANONYMOUS) do
everything; it is stopped and its directory removed at the end.
"""

import os
import signal
import socket
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "debug")
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
WAIT_S = 60


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KafkaNode:
    def __init__(self, tmp):
        subprocess.run(
            ["cargo", "build", "--quiet", "--locked", "-p", "memstreamer", "-p", "controlplane", "--bins"],
            cwd=ROOT,
            check=True,
        )
        self.tmp = tmp
        config = tmp / "dataplane.toml"
        config.write_text(
            'backend = "udp"\nlisten = "127.0.0.1:0"\nidle = "backoff"\nstorage_dir = false\n'
            f'ring_capacity_bytes = 1048576\nshm_dir = "{tmp / "shm"}"\n'
            f'counters_file = "{tmp / "counters"}"\n'
        )
        self.cp = f"127.0.0.1:{_free_port()}"
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "memstreamer"), "node", "--config", str(config),
             "--control-listen", self.cp, "--http-listen", "",
             "--control-data-dir", str(tmp / "cp"),
             "--kafka-listen", "127.0.0.1:0", "--kafka-data-dir", str(tmp / "kafka")],
            stdout=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + WAIT_S
        self.bootstrap = None
        while self.bootstrap is None:
            assert time.monotonic() < deadline, "no Kafka listener line"
            line = self.proc.stdout.readline()
            assert line, "the node exited"
            if line.startswith("memstreamer kafka: listening on "):
                self.bootstrap = line.split()[4]
        # The first Raft write (the principal Kafka clients are) also waits out the election.
        while self.msctl("principal", "create", "ANONYMOUS", check=False).returncode != 0:
            assert time.monotonic() < deadline, "the control plane did not take writes"
            time.sleep(0.05)
        ops = [a for op in ["read", "write", "create", "delete", "describe"] for a in ("--op", op)]
        self.msctl("acl", "put", "--principal", "ANONYMOUS", "--resource", "*", *ops)

    def msctl(self, *args, check=True):
        certs = self.tmp / "cp" / "certs"
        return subprocess.run(
            [os.path.join(BIN, "msctl"), "--endpoint", self.cp,
             "--cert", str(certs / "admin.pem"), "--key", str(certs / "admin.key"),
             "--ca", str(certs / "ca.pem"), *args],
            capture_output=True, text=True, check=check,
        )

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = KafkaNode(tmp_path_factory.mktemp("kafka-node"))
    yield n
    n.stop()


def _topic(node, name, partitions=1):
    # Right after start the node may not be live yet (its first heartbeat): a create is then
    # refused with "... are live"; retry that, as an operator would.
    deadline = time.monotonic() + WAIT_S
    while True:
        r = node.msctl("stream", "create", name, "--partitions", str(partitions), check=False)
        if r.returncode == 0:
            return name
        assert "are live" in r.stderr and time.monotonic() < deadline, r.stderr
        time.sleep(0.1)


def _messages(codec, n=20):
    return [(f"key-{i}".encode(), f"{codec}-value-{i}".encode() * (i + 1)) for i in range(n)]


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip(node, codec):
    topic = _topic(node, f"kp-{codec}")
    sent = _messages(codec)
    producer = KafkaProducer(
        bootstrap_servers=node.bootstrap,
        compression_type=None if codec == "none" else codec,
        acks="all",
        linger_ms=5,
        # Idempotent produce needs InitProducerId, which comes with replication (#11).
        enable_idempotence=False,
    )
    futures = [producer.send(topic, key=k, value=v, partition=0,
                             headers=[("h", b"1")]) for k, v in sent]
    offsets = [f.get(timeout=WAIT_S).offset for f in futures]
    producer.close()
    assert offsets == list(range(len(sent)))
    consumer = KafkaConsumer(bootstrap_servers=node.bootstrap, enable_auto_commit=False,
                             consumer_timeout_ms=WAIT_S * 1000)
    tp = KpTopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    for m in consumer:
        got.append((m.offset, m.key, m.value, m.headers))
        if len(got) == len(sent):
            break
    consumer.close()
    assert got == [(i, k, v, [("h", b"1")]) for i, (k, v) in enumerate(sent)]


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_kafka_round_trip(node, codec):
    topic = _topic(node, f"ck-{codec}")
    sent = _messages(codec)
    producer = Producer({"bootstrap.servers": node.bootstrap, "compression.type": codec,
                         "acks": "all", "linger.ms": 5})
    delivered = []
    for k, v in sent:
        producer.produce(topic, key=k, value=v, partition=0,
                         on_delivery=lambda err, msg: delivered.append((err, msg.offset())))
    assert producer.flush(WAIT_S) == 0
    assert [e for e, _ in delivered] == [None] * len(sent)
    assert sorted(o for _, o in delivered) == list(range(len(sent)))
    # A consumer with an explicit assignment: no group coordinator is needed.
    consumer = Consumer({"bootstrap.servers": node.bootstrap, "group.id": "unused",
                         "enable.auto.commit": False, "enable.auto.offset.store": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < len(sent) and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        assert m.error() is None, m.error()
        got.append((m.offset(), m.key(), m.value()))
    consumer.close()
    assert got == [(i, k, v) for i, (k, v) in enumerate(sent)]


def test_kafka_python_creates_topics(node):
    admin = KafkaAdminClient(bootstrap_servers=node.bootstrap)
    admin.create_topics([NewTopic("kp-created", num_partitions=3, replication_factor=1)])
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic("kp-created", num_partitions=3, replication_factor=1)])
    admin.close()
    listed = node.msctl("stream", "list", "--json").stdout
    assert '"kp-created"' in listed
    # The new topic takes records at once, in each partition.
    producer = KafkaProducer(bootstrap_servers=node.bootstrap, acks=1, enable_idempotence=False)
    offsets = [producer.send("kp-created", value=b"x", partition=p).get(timeout=WAIT_S).offset
               for p in range(3)]
    producer.close()
    assert offsets == [0, 0, 0]
