//! The Kafka listener of `memstreamer node`, as real processes on loopback: kcat round trips
//! with every codec; CreateTopics/DeleteTopics through the control plane with ACL checks;
//! produce, long-poll fetch and list offsets on the wire; and bad input — malformed,
//! oversized, unknown API or version, a client leaving mid-request — answered with Kafka's
//! error code or a clean close, with no connection left behind. Ephemeral ports only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_memstreamer");
/// Upper bound of every wait in these tests.
const WAIT_MAX: Duration = Duration::from_secs(60);

struct Node {
    child: Child,
    lines: Receiver<String>,
    dir: tempfile::TempDir,
    cp_listen: String,
    kafka: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        support::stop_or_kill(&mut self.child);
    }
}

fn msctl_bin() -> PathBuf {
    let path = Path::new(BIN).with_file_name("msctl");
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "controlplane", "--bin", "msctl"])
            .status()
            .unwrap();
        assert!(status.success(), "building msctl");
    });
    path
}

impl Node {
    /// A node whose Kafka listener is on a free port; waits until the control plane serves.
    fn start() -> Node {
        let _ = msctl_bin();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dataplane.toml");
        std::fs::write(
            &config,
            format!(
                "backend = \"udp\"\nlisten = \"127.0.0.1:0\"\nidle = \"backoff\"\nstorage_dir = false\nring_capacity_bytes = 1048576\nshm_dir = \"{}\"\ncounters_file = \"{}\"\n",
                dir.path().join("shm").display(),
                dir.path().join("counters").display()
            ),
        )
        .unwrap();
        let cp_listen = format!("127.0.0.1:{}", support::free_port());
        let mut child = Command::new(BIN)
            .arg("node")
            .arg("--config")
            .arg(&config)
            .args(["--control-listen", &cp_listen, "--http-listen", ""])
            .arg("--control-data-dir")
            .arg(dir.path().join("cp"))
            .args(["--kafka-listen", "127.0.0.1:0"])
            .arg("--kafka-data-dir")
            .arg(dir.path().join("kafka"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = support::stdout_lines(&mut child);
        let deadline = Instant::now() + WAIT_MAX;
        let kafka = loop {
            assert!(Instant::now() < deadline, "no Kafka listener line");
            let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            if let Some(rest) = line.strip_prefix("memstreamer kafka: listening on ") {
                break rest.split(' ').next().unwrap().to_string();
            }
        };
        let node = Node {
            child,
            lines,
            dir,
            cp_listen,
            kafka,
        };
        // A first Raft write (the principal Kafka clients are) also waits out the election.
        wait_for("the control plane to take writes", || {
            node.msctl(&["principal", "create", "ANONYMOUS"])
                .status
                .success()
        });
        node
    }

    fn msctl(&self, args: &[&str]) -> Output {
        let certs = controlplane::certs::DevCerts::paths(&self.dir.path().join("cp").join("certs"));
        Command::new(msctl_bin())
            .args(["--endpoint", &self.cp_listen])
            .arg("--cert")
            .arg(&certs.admin.cert)
            .arg("--key")
            .arg(&certs.admin.key)
            .arg("--ca")
            .arg(&certs.ca.cert)
            .args(args)
            .output()
            .unwrap()
    }

    fn msctl_ok(&self, args: &[&str]) -> String {
        // A stream create right after start can come before this node's first heartbeat has
        // made it live ("... live nodes"): retry that, as an operator would.
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            let out = self.msctl(args);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if !out.status.success() && err.contains("are live") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert!(out.status.success(), "msctl {args:?}: {err}");
            return String::from_utf8(out.stdout).unwrap();
        }
    }

    /// Lets Kafka clients (principal ANONYMOUS) do everything on every topic.
    fn allow_anonymous(&self) {
        self.msctl_ok(&[
            "acl",
            "put",
            "--principal",
            "ANONYMOUS",
            "--resource",
            "*",
            "--op",
            "read",
            "--op",
            "write",
            "--op",
            "create",
            "--op",
            "delete",
            "--op",
            "describe",
        ]);
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.kafka).unwrap();
        s.set_read_timeout(Some(WAIT_MAX)).unwrap();
        s
    }

    fn port(&self) -> u16 {
        self.kafka.rsplit(':').next().unwrap().parse().unwrap()
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn frame(api: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Vec<u8> {
    let mut b = BytesMut::new();
    let mut h = RequestHeader::default();
    h.request_api_key = api as i16;
    h.request_api_version = version;
    h.correlation_id = correlation_id;
    h.client_id = Some(StrBytes::from_static_str("memstreamer-test"));
    h.encode(&mut b, api.request_header_version(version))
        .unwrap();
    body.encode(&mut b, version).unwrap();
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

/// The next response frame's body (after checking its correlation id), or `None` at EOF.
fn response(s: &mut TcpStream, api: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).unwrap();
    let mut b = Bytes::from(body);
    let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
    assert_eq!(h.correlation_id, correlation_id);
    Some(b)
}

fn call<R: Decodable>(s: &mut TcpStream, api: ApiKey, version: i16, body: &impl Encodable) -> R {
    s.write_all(&frame(api, version, 7, body)).unwrap();
    let mut b = response(s, api, version, 7).expect("a response");
    R::decode(&mut b, version).unwrap()
}

/// Whether the server closed the connection (EOF within the wait).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(s.read(&mut byte), Ok(0))
}

/// Server-side connections of the listener still open (ESTABLISHED or CLOSE_WAIT).
fn server_connections(port: u16) -> usize {
    let local = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&local) && (f[3] == "01" || f[3] == "08")
        })
        .count()
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn create_topic(s: &mut TcpStream, name: &str, partitions: i32) -> CreateTopicsResponse {
    let mut t = CreatableTopic::default();
    t.name = topic_name(name);
    t.num_partitions = partitions;
    t.replication_factor = -1;
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 10_000;
    call(s, ApiKey::CreateTopics, 4, &r)
}

fn kcat(node: &Node, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("kcat")
        .args(["-b", &node.kafka])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kcat_produces_and_consumes_with_every_codec() {
    testkit::require!(testkit::tool("kcat", "-V", "kcat"));
    let node = Node::start();
    node.allow_anonymous();
    node.msctl_ok(&["stream", "create", "kcat-codecs"]);
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let mut expected = String::new();
    for (i, codec) in codecs.iter().enumerate() {
        let input = format!("k{i}a:{codec}-one\nk{i}b:{codec}-two\n");
        kcat(
            &node,
            &["-P", "-t", "kcat-codecs", "-p", "0", "-K:", "-z", codec],
            input.as_bytes(),
        );
        expected += &format!(
            "{} k{i}a={codec}-one\n{} k{i}b={codec}-two\n",
            2 * i,
            2 * i + 1
        );
    }
    let got = kcat(
        &node,
        &[
            "-C",
            "-t",
            "kcat-codecs",
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o %k=%s\n",
        ],
        b"",
    );
    assert_eq!(got, expected);
    // From the middle: the listener serves the whole batch holding the offset, kcat skips
    // what is below it.
    let got = kcat(
        &node,
        &[
            "-C",
            "-t",
            "kcat-codecs",
            "-p",
            "0",
            "-o",
            "3",
            "-e",
            "-q",
            "-f",
            "%o %s\n",
        ],
        b"",
    );
    assert_eq!(
        got,
        "3 gzip-two\n4 snappy-one\n5 snappy-two\n6 lz4-one\n7 lz4-two\n8 zstd-one\n9 zstd-two\n"
    );
}

#[test]
fn topics_are_created_and_deleted_through_the_control_plane_with_acl_checks() {
    let node = Node::start();
    let mut s = node.connect();
    let r = create_topic(&mut s, "kafka-made", 3);
    assert_eq!(
        r.topics[0].error_code, 29,
        "no ACL: TOPIC_AUTHORIZATION_FAILED"
    );
    assert!(!node.msctl_ok(&["stream", "list"]).contains("kafka-made"));
    node.allow_anonymous();
    wait_for("the ACL to reach the listener", || {
        create_topic(&mut s, "kafka-made", 3).topics[0].error_code == 0
    });
    assert!(node.msctl_ok(&["stream", "list"]).contains("kafka-made"));
    let mut m = MetadataRequest::default();
    let mut t = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
    t.name = Some(topic_name("kafka-made"));
    m.topics = Some(vec![t]);
    let md: MetadataResponse = call(&mut s, ApiKey::Metadata, 8, &m);
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(md.topics[0].partitions.len(), 3);
    assert!(md.topics[0]
        .partitions
        .iter()
        .all(|p| p.leader_id.0 == 1 && p.isr_nodes.len() == 1));
    assert_eq!(md.brokers.len(), 1);
    assert_eq!(md.brokers[0].port as u16, node.port());
    assert_eq!(
        create_topic(&mut s, "kafka-made", 3).topics[0].error_code,
        36,
        "TOPIC_ALREADY_EXISTS"
    );
    assert_eq!(
        create_topic(&mut s, "kafka-bad", 0).topics[0].error_code,
        37,
        "INVALID_PARTITIONS"
    );
    let mut d = DeleteTopicsRequest::default();
    d.topic_names = vec![topic_name("kafka-made"), topic_name("never-made")];
    d.timeout_ms = 10_000;
    let r: DeleteTopicsResponse = call(&mut s, ApiKey::DeleteTopics, 3, &d);
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(r.responses[1].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert!(!node.msctl_ok(&["stream", "list"]).contains("kafka-made"));
}

fn produce_request(topic: &str, records: Vec<u8>) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records.into());
    let mut t = TopicProduceData::default();
    t.name = topic_name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    let mut p = FetchPartition::default();
    p.partition = 0;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = topic_name(topic);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.replica_id = BrokerId(-1);
    r.max_wait_ms = max_wait_ms;
    r.min_bytes = 1;
    r.max_bytes = 1 << 20;
    r.session_epoch = -1;
    r.topics = vec![t];
    r
}

#[test]
fn produce_long_poll_fetch_and_list_offsets_on_the_wire() {
    let node = Node::start();
    node.allow_anonymous();
    node.msctl_ok(&["stream", "create", "wire"]);
    let mut s = node.connect();
    wait_for("the topic in the listener's metadata", || {
        let r: ProduceResponse = call(
            &mut s,
            ApiKey::Produce,
            7,
            &produce_request("wire", kafka::batch::build_for_tests(&[b"a"], 1_000)),
        );
        r.responses[0].partition_responses[0].error_code != 3
    });
    // The wait above produced offset 0. A corrupted batch is refused with CORRUPT_MESSAGE.
    let mut bad = kafka::batch::build_for_tests(&[b"x"], 1_000);
    *bad.last_mut().unwrap() ^= 0xff;
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 7, &produce_request("wire", bad));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);
    // A long poll at the end is answered by the next produce (from another connection).
    let mut poller = node.connect();
    let waiting = std::thread::spawn(move || -> FetchResponse {
        call(
            &mut poller,
            ApiKey::Fetch,
            11,
            &fetch_request("wire", 1, 30_000),
        )
    });
    let r: ProduceResponse = call(
        &mut s,
        ApiKey::Produce,
        7,
        &produce_request("wire", kafka::batch::build_for_tests(&[b"b", b"c"], 2_000)),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 1);
    let f = waiting.join().unwrap();
    let p = &f.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 3));
    let records = p.records.clone().unwrap();
    assert_eq!(kafka::batch::stored_range(&records), Some((1, 2)));
    // Out of range, and list offsets.
    let f: FetchResponse = call(&mut s, ApiKey::Fetch, 11, &fetch_request("wire", 9, 0));
    assert_eq!(
        f.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE"
    );
    let offsets = |ts: i64, s: &mut TcpStream| -> i64 {
        let mut p = ListOffsetsPartition::default();
        p.timestamp = ts;
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name("wire");
        t.partitions = vec![p];
        let mut r = ListOffsetsRequest::default();
        r.replica_id = BrokerId(-1);
        r.topics = vec![t];
        let r: ListOffsetsResponse = call(s, ApiKey::ListOffsets, 4, &r);
        assert_eq!(r.topics[0].partitions[0].error_code, 0);
        r.topics[0].partitions[0].offset
    };
    assert_eq!(offsets(-2, &mut s), 0);
    assert_eq!(offsets(-1, &mut s), 3);
    assert_eq!(offsets(1_500, &mut s), 1);
    assert_eq!(offsets(9_999, &mut s), -1);
    // A stream deleted outside Kafka has its open partition log closed.
    node.msctl_ok(&["stream", "delete", "wire"]);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        assert!(
            Instant::now() < deadline,
            "the deleted stream's log was not closed"
        );
        if let Ok(line) = node.lines.recv_timeout(Duration::from_millis(100)) {
            if line == "memstreamer kafka: closed 1 partition logs of deleted streams" {
                break;
            }
        }
    }
}

#[test]
fn bad_requests_get_an_error_code_or_a_clean_close_and_leave_no_connection() {
    let node = Node::start();
    // ApiVersions of a version we cannot parse: UNSUPPORTED_VERSION in a v0 answer.
    let mut s = node.connect();
    let mut f = frame(ApiKey::ApiVersions, 3, 11, &ApiVersionsRequest::default());
    f[6..8].copy_from_slice(&9i16.to_be_bytes());
    s.write_all(&f).unwrap();
    let mut b = response(&mut s, ApiKey::ApiVersions, 0, 11).unwrap();
    let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
    assert_eq!(r.error_code, 35);
    let produce = r.api_keys.iter().find(|k| k.api_key == 0).unwrap();
    assert_eq!(
        produce.min_version, 0,
        "Produce advertised from v0 (librdkafka compression)"
    );
    // The same connection still serves.
    let r: ApiVersionsResponse = call(
        &mut s,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(r.error_code, 0);
    // Each of these closes its connection.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut unknown = frame(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
    unknown[4..6].copy_from_slice(&999i16.to_be_bytes());
    cases.push(("unknown API key", unknown));
    let mut produce_v2 = frame(ApiKey::Metadata, 1, 1, &MetadataRequest::default());
    produce_v2[4..8].copy_from_slice(&[0, 0, 0, 2]);
    cases.push(("Produce v2 (advertised, not decodable)", produce_v2));
    let mut huge_array = frame(ApiKey::Metadata, 1, 1, &MetadataRequest::default());
    let n = huge_array.len();
    huge_array[n - 4..].copy_from_slice(&0x7fff_fff0i32.to_be_bytes());
    cases.push(("Metadata declaring 2^31 topics", huge_array));
    cases.push(("oversized frame", i32::MAX.to_be_bytes().to_vec()));
    cases.push(("negative size", (-5i32).to_be_bytes().to_vec()));
    cases.push(("garbage header", vec![0, 0, 0, 3, 1, 2, 3]));
    for (what, bytes) in cases {
        let mut c = node.connect();
        c.write_all(&bytes).unwrap();
        assert!(
            closed_by_server(&mut c),
            "{what}: the listener closes the connection"
        );
    }
    // Clients leaving mid-request (size sent, half a body) and mid-size.
    for partial in [&[0u8, 0, 1, 0, 0, 18, 0, 3][..], &[0, 0][..]] {
        let mut c = node.connect();
        c.write_all(partial).unwrap();
        drop(c);
    }
    drop(s);
    // The listener is alive, and no server-side connection is left behind.
    let mut c = node.connect();
    let r: ApiVersionsResponse = call(
        &mut c,
        ApiKey::ApiVersions,
        0,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(r.error_code, 0);
    drop(c);
    wait_for("every server-side connection to close", || {
        server_connections(node.port()) == 0
    });
}
