//! `ms-bench net`: the network path of a node, AF_XDP backend vs kernel UDP
//! backend (and, built with `--features dpdk`, the DPDK backend on DPDK's
//! `net_af_packet` vdev), measured in the same run on a veth pair between two
//! network namespaces (`dataplane::testnet`, 198.18.0.0/15 addresses only).
//! DPDK's EAL starts once per process, so every DPDK phase (the node of the
//! latency and throughput runs, the drain) runs in a child `ms-bench child net`
//! process started in the node namespace (`net_dpdk.rs`); the af_packet vdev goes
//! through the kernel (a PACKET_MMAP socket), so its end-to-end figures are the
//! kernel's path, not a poll-mode NIC's (docs/dpdk.md).
//!
//! ```text
//!  peer netns                          node netns: the real node (NodeParts,       local (this process)
//!  sdk::net::UdpPublisher  --veth-->   low-latency profile, shared, no storage)    sdk::Subscriber
//!  (stamps clock::now_ns()             data port (afxdp: XDP -> AF_XDP | udp:  -->  (reads the ring,
//!   into each payload)                 kernel socket) -> receiver -> shm ring       records now - stamp)
//!                       <----------- STATUS / NAK from the receiver
//! ```
//!
//! Figures:
//! - **latency**: one 64-byte record per message, one message every 50 us.
//!   The publisher and the local subscriber run in ONE client thread pinned to
//!   core 0 (the send is paced by spinning on the clock, and the subscriber is
//!   polled in the same loop); the node's agents run in shared threading on
//!   the last core. So the two busy pollers each have a core of this 2-vCPU
//!   VM, and no thread sleeps (a wake-up alone costs ~10 us here). The
//!   subscriber records `now_ns() - stamp` per record in an hdrhistogram (3
//!   significant digits, warm-up not recorded); both ends read the same clock
//!   (`sdk::clock`, TSC-based). The node attaches the XDP program for the
//!   AF_XDP backend; the UDP backend runs without XDP (as a node with
//!   `--backend udp` does). `MS_BENCH_NET_PIN=0` leaves every thread unpinned.
//! - **throughput**: records/s at the subscriber (first to last record) with
//!   the publisher offering as fast as flow control allows.
//! - **drain**: the receiver's cost per core. A raw sender fills the RX ring
//!   (AF_XDP) or socket buffer (UDP) with DATA frames of `DRAIN_RECORDS_PER_FRAME`
//!   16-byte records while the receiver does not poll; then one thread drains
//!   it with the receiver core (`SessionTable`, not the whole node, so the
//!   drain can be held back): RX ring -> parse Ethernet/IP/UDP -> frame decode
//!   (CRC32C) -> record validation -> shm ring append (the ring's pages are
//!   warmed first). Records/s over that thread's wall time. A breakdown
//!   without the network (decode per frame, append per record) follows.
//!
//! Benchmarks measure, they never assert. Needs root (netns, XDP, AF_XDP).

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dataplane::net::afxdp::{XskConfig, XskPort};
use dataplane::net::udp::UdpPort;
use dataplane::net::NetPort;
use dataplane::session::{AppendRefusal, RecordSink, SessionConfig, SessionTable};
use dataplane::testnet::TestNet;
use dataplane::NodeParts;
use sdk::net::wire::{encode_setup, push_record};
use sdk::net::{NetOfferError, PublisherConfig, UdpPublisher};
use sdk::{clock, Context, Mode, StartAt};
use serde_json::json;
use xdp_programs::abi_consts::CONFIG_FLAG_DEFAULT_ALLOW;
use xdp_programs::frame::{FrameHeader, FrameType};
use xdp_programs::{AttachMode, Config, XdpProgram};

use crate::report::{self, latency_histogram, Latency};
use crate::SuiteArgs;

pub(crate) const PORT: u16 = 7447;
pub(crate) const STREAM: u32 = 1;
const PAYLOAD_BYTES: usize = 64;
/// Pause between latency-phase messages (the publisher sleeps this long).
const LATENCY_INTERVAL: Duration = Duration::from_micros(50);
const WARMUP_MESSAGES: u64 = 2_000;
const DRAIN_RECORDS_PER_FRAME: usize = 32;
const DRAIN_PAYLOAD_BYTES: usize = 16;
/// Every wait in this suite gives up after this long.
pub(crate) const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
const RING_CAPACITY_BYTES: u64 = 64 << 20;
/// AF_XDP frames per queue: the RX ring holds half (the drain pre-fill).
const XSK_FRAMES: u32 = 32_768;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    AfXdp,
    Udp,
    Dpdk,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::AfXdp => "afxdp",
            Backend::Udp => "udp",
            Backend::Dpdk => "dpdk",
        }
    }
}

struct Sizes {
    latency_messages: u64,
    throughput_messages: u64,
    drain_frames_afxdp: u64,
    drain_frames_udp: u64,
    rounds: usize,
}

fn open_port(backend: Backend, iface: &str, local: SocketAddrV4) -> anyhow::Result<NetPort> {
    Ok(match backend {
        Backend::AfXdp => {
            let mut cfg = XskConfig::new(iface, local);
            cfg.frames_per_queue = XSK_FRAMES;
            NetPort::AfXdp(XskPort::open(&cfg)?)
        }
        Backend::Udp => NetPort::Udp(UdpPort::bind(SocketAddr::V4(local), 64, 1024)?),
        Backend::Dpdk => bail!("the DPDK port is opened in its child process (net_dpdk.rs)"),
    })
}

pub(crate) fn session_config() -> SessionConfig {
    SessionConfig {
        sessions_max: 4,
        window_bytes: 16 << 20,
        nak_delay_ns: 100_000,
        nak_retry_ns: 2_000_000,
        status_interval_ns: 1_000_000,
        session_timeout_ns: 10_000_000_000,
        receiver_id: 1,
    }
}

/// The ring of the node: SessionTable appends through this.
pub(crate) struct RingSink(pub(crate) sdk::Publisher);

impl RecordSink for RingSink {
    fn append(
        &mut self,
        _partition: usize,
        record_type: u16,
        payload: &[u8],
    ) -> Result<u64, AppendRefusal> {
        match self.0.offer_typed(record_type, payload) {
            Ok(offset) => Ok(offset),
            Err(shm_ring::OfferError::MessageTooLarge { .. }) => Err(AppendRefusal::TooLarge),
            Err(_) => Err(AppendRefusal::BackPressured),
        }
    }
}

pub(crate) fn ring_context(dir: &std::path::Path) -> Context {
    Context::builder()
        .dir(dir)
        .capacity_bytes(RING_CAPACITY_BYTES)
        .mode(Mode::Reliable)
        .start_at(StartAt::Earliest)
        .build()
}

/// Writes one full lap of records into a fresh ring so its pages are
/// mapped: the timed drain then measures steady-state appends, not first-touch
/// page faults of the shm file.
pub(crate) fn warm_ring(ring: &mut sdk::Publisher) {
    let payload = [0u8; DRAIN_PAYLOAD_BYTES];
    let laps = RING_CAPACITY_BYTES / (8 + DRAIN_PAYLOAD_BYTES as u64) + 1;
    for _ in 0..laps {
        let _ = ring.offer_typed(0, &payload);
    }
}

/// One node duty cycle: receive, decode, append, answer.
pub(crate) fn node_cycle(
    port: &mut NetPort,
    table: &mut SessionTable,
    sink: &mut RingSink,
    out: &mut Vec<u8>,
    max: usize,
) -> usize {
    let now = clock::now_ns();
    let n = port.poll_rx(max, &mut |src, bytes| table.handle(now, src, bytes, sink));
    while let Some(dst) = table.poll_transmit(now, None, out) {
        port.send(dst, out);
    }
    port.flush_tx();
    n
}

struct E2e {
    /// The node's largest receiver duty cycle (ns), from its counters file.
    receiver_duty_max_ns: u64,
    latency: Latency,
    records_per_s: f64,
    received: u64,
}

/// The configuration of [`e2e`]'s node.
pub(crate) fn node_config(
    backend: Backend,
    (node_ip, node_if): (std::net::Ipv4Addr, &str),
    dir: &std::path::Path,
    node_core: Option<usize>,
) -> dataplane::Config {
    dataplane::Config {
        backend: match backend {
            Backend::AfXdp => dataplane::Backend::Afxdp,
            Backend::Udp => dataplane::Backend::Udp,
            Backend::Dpdk => dataplane::Backend::Dpdk,
        },
        listen: SocketAddr::V4(SocketAddrV4::new(node_ip, PORT)),
        interface: Some(node_if.to_string()),
        dpdk_device: Some(crate::net_dpdk::vdev(node_if)),
        dpdk_memory_mb: crate::net_dpdk::MEMORY_MB,
        dpdk_mbufs: crate::net_dpdk::MBUFS,
        dpdk_file_prefix: Some(format!("ms-bench-{}", std::process::id())),
        shm_dir: Some(dir.join("node-shm")),
        counters_file: dir.join("node-counters"),
        ring_capacity_bytes: RING_CAPACITY_BYTES,
        window_bytes: 16 << 20,
        xdp_default_allow: true,
        streams: vec![dataplane::config::StreamConfig {
            id: STREAM,
            partitions: 1,
        }],
        // The low-latency profile (busy-spin), with every agent on one shared thread: each
        // busy poller gets its own core, the node's agents on one, the subscriber on the
        // other; the paced publisher sleeps between messages. No storage: this measures the
        // network path.
        threading: dataplane::config::Threading::Shared,
        cores: node_core.into_iter().collect(),
        storage_dir: None,
        ..dataplane::Config::low_latency()
    }
}

/// Runs the node of `cfg` (on the calling thread's namespace) until `stop`; says on `ready`
/// whether it started.
pub(crate) fn run_node(
    cfg: &dataplane::Config,
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let handle = match NodeParts::build(cfg).and_then(|p| p.start(cfg)) {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            bail!("node: {e}");
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let panicked = handle.stop();
    if panicked > 0 {
        bail!("{panicked} node agent thread(s) panicked");
    }
    Ok(())
}

/// Remote publisher -> the real node (`NodeParts`, the low-latency profile: busy spin, here on
/// one shared thread; no storage) with `backend` -> its ring -> local subscriber.
fn e2e(
    backend: Backend,
    net: &TestNet,
    dir: &std::path::Path,
    messages: u64,
    paced: bool,
    layout: CoreLayout,
) -> anyhow::Result<E2e> {
    let node = SocketAddrV4::new(net.node_ip, PORT);
    let cfg = node_config(backend, (net.node_ip, &net.node_if), dir, layout.node_core);
    let mut subscriber = Context::builder()
        .dir(dir.join("node-shm"))
        .start_at(StartAt::Earliest)
        .build()
        .subscriber(STREAM, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop_node = stop.clone();
    let node_thread = if backend == Backend::Dpdk {
        let child = crate::net_dpdk::NodeChild::start(net, dir, layout.node_core)?;
        TestNet::spawn_in(&net.node_ns, move || {
            while !stop_node.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            child.stop()
        })
    } else {
        let t = TestNet::spawn_in(&net.node_ns, move || run_node(&cfg, &ready_tx, &stop_node));
        ready_rx
            .recv_timeout(PHASE_TIMEOUT)
            .context("node thread did not answer")?
            .map_err(|e| anyhow::anyhow!("node start ({}): {e}", backend.name()))?;
        t
    };
    // Publisher and subscriber run in ONE client thread pinned to its own core (paced runs
    // spin on the clock between sends: a wake-up from sleep costs this VM ~10 us), so the two
    // busy pollers (node, client) each have a core, as in `memstreamer demo`.
    let stop_client = stop.clone();
    let interval_ns = if paced {
        LATENCY_INTERVAL.as_nanos() as u64
    } else {
        0
    };
    let client = TestNet::spawn_in(&net.peer_ns, move || {
        if let Some(core) = layout.client_core {
            report::pin_current_thread(core);
        }
        client_loop(node, &mut subscriber, messages, interval_ns, &stop_client)
    });
    let (hist, received, first, last) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??
        .context("client")?;
    let counters_file = dir.join("node-counters");
    let receiver_duty_max_ns = dataplane::counters::CountersSnapshot::read(&counters_file)
        .ok()
        .and_then(|c| c.get(dataplane::counters::Counter::DutyCycleMaxReceiverNs))
        .unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    node_thread
        .join()
        .map_err(|_| anyhow::anyhow!("node thread panicked"))??
        .context("node")?;
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    Ok(E2e {
        receiver_duty_max_ns,
        latency: Latency::from_histogram(&hist),
        records_per_s: if span > 0.0 {
            received as f64 / span
        } else {
            0.0
        },
        received,
    })
}

/// The client: sends stamped messages, one every `interval_ns` (spinning on the clock between
/// sends; 0 = as fast as flow control allows), and polls the local subscriber in the same loop.
/// After the publisher sent everything it keeps serving NAKs until the subscriber has all.
fn client_loop(
    node: SocketAddrV4,
    subscriber: &mut sdk::Subscriber,
    messages: u64,
    interval_ns: u64,
    stop: &AtomicBool,
) -> anyhow::Result<SubResult> {
    let mut cfg = PublisherConfig::new(STREAM, 0, 77, "bench");
    cfg.buffer_bytes = 16 << 20;
    let any: SocketAddr = "0.0.0.0:0".parse()?;
    let mut p = UdpPublisher::new(any, SocketAddr::V4(node), cfg)?;
    if !p.wait_connected(Duration::from_secs(10)) {
        bail!("node did not acknowledge SETUP within 10 s");
    }
    let mut hist = latency_histogram();
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut first, mut last) = (None, Instant::now());
    let mut payload = [0u8; PAYLOAD_BYTES];
    let mut next_send = clock::now_ns();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while received < messages && !stop.load(Ordering::Relaxed) {
        let now = clock::now_ns();
        // Unpaced: offer a burst until back-pressured, then serve the subscriber.
        let burst = if interval_ns == 0 { 64 } else { 1 };
        for _ in 0..burst {
            if sent >= messages || now < next_send {
                break;
            }
            payload[..8].copy_from_slice(&clock::now_ns().to_le_bytes());
            match p.offer(0, &payload) {
                Ok(_) => {
                    sent += 1;
                    // After a stall, resume the pace instead of sending a burst.
                    next_send = (next_send + interval_ns).max(now);
                }
                Err(NetOfferError::BackPressured) => break,
                Err(e) => bail!("offer: {e}"),
            }
        }
        p.do_work();
        let n = subscriber.poll(
            |r| {
                let now = clock::now_ns();
                let mut stamp = [0u8; 8];
                stamp.copy_from_slice(&r.payload[..8]);
                if received >= WARMUP_MESSAGES {
                    let _ = hist.record(now.saturating_sub(u64::from_le_bytes(stamp)).max(1));
                }
                received += 1;
            },
            256,
        )?;
        if n > 0 {
            last = Instant::now();
            first.get_or_insert(last);
        }
        if Instant::now() > deadline {
            break;
        }
    }
    Ok((hist, received, first, last))
}

/// Which core the node's agents and the client are pinned to (None: unpinned).
#[derive(Clone, Copy, Debug)]
struct CoreLayout {
    node_core: Option<usize>,
    client_core: Option<usize>,
}

impl CoreLayout {
    /// Node agents (shared threading) on the last core, the client on core 0.
    /// `MS_BENCH_NET_PIN=0` leaves both unpinned.
    fn pick() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 || std::env::var("MS_BENCH_NET_PIN").as_deref() == Ok("0") {
            return Self {
                node_core: None,
                client_core: None,
            };
        }
        Self {
            node_core: Some(cpus - 1),
            client_core: Some(0),
        }
    }

    fn describe(&self) -> String {
        let c = |o: Option<usize>| o.map_or("unpinned".to_string(), |c| format!("core {c}"));
        format!(
            "node agents (one shared thread) {}, client (publisher + subscriber, one thread) {}",
            c(self.node_core),
            c(self.client_core)
        )
    }
}

type SubResult = (hdrhistogram::Histogram<u64>, u64, Option<Instant>, Instant);

pub(crate) struct Drain {
    pub(crate) describe: String,
    pub(crate) frames: u64,
    pub(crate) records: u64,
    pub(crate) seconds: f64,
    pub(crate) kernel_note: String,
}

/// Pre-fills the RX ring / socket buffer, then drains it on one thread.
fn drain(
    backend: Backend,
    net: &TestNet,
    dir: &std::path::Path,
    frames: u64,
) -> anyhow::Result<Drain> {
    if backend == Backend::Dpdk {
        return crate::net_dpdk::drain(net, dir, frames);
    }
    let ctx = ring_context(dir);
    let _ = ctx.remove(STREAM, 1);
    let mut ring = ctx.publisher(STREAM, 1)?;
    warm_ring(&mut ring);
    let node = SocketAddrV4::new(net.node_ip, PORT);
    let ready = Arc::new(AtomicBool::new(false));
    let filled = Arc::new(AtomicBool::new(false));
    let (node_if, ready_n, filled_n) = (net.node_if.clone(), ready.clone(), filled.clone());
    let node_thread = TestNet::spawn_in(&net.node_ns, move || {
        drain_node(
            backend,
            (&node_if, node),
            RingSink(ring),
            (&ready_n, &filled_n),
            frames,
        )
    });
    let sender = TestNet::spawn_in(&net.peer_ns, move || {
        drain_sender(node, (&ready, &filled), frames)
    });
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??
        .context("drain sender")?;
    let d = node_thread
        .join()
        .map_err(|_| anyhow::anyhow!("node thread panicked"))??
        .context("drain node")?;
    let _ = ctx.remove(STREAM, 1);
    Ok(d)
}

/// The drain's node side (in the node namespace): accepts the sender's SETUP, says `ready`,
/// waits until the sender has `filled` the RX ring, then drains it and times that.
fn drain_node(
    backend: Backend,
    (node_if, node): (&str, SocketAddrV4),
    mut sink: RingSink,
    (ready, filled): (&AtomicBool, &AtomicBool),
    frames: u64,
) -> anyhow::Result<Drain> {
    // AF_XDP needs the XDP program (redirect into the XSKMAP); the UDP backend runs without it.
    let _xdp = match backend {
        Backend::AfXdp => Some(XdpProgram::load_and_attach(
            node_if,
            AttachMode::Native,
            Config {
                data_port: PORT,
                reserved: 0,
                flags: CONFIG_FLAG_DEFAULT_ALLOW,
            },
        )?),
        Backend::Udp | Backend::Dpdk => None,
    };
    let mut port = open_port(backend, node_if, node)?;
    let describe = port.describe();
    let mut table = SessionTable::new(session_config(), &[(STREAM, 1)]);
    let mut out = Vec::with_capacity(2048);
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while table.sessions_active() == 0 && Instant::now() < deadline {
        node_cycle(&mut port, &mut table, &mut sink, &mut out, 64);
    }
    if table.sessions_active() == 0 {
        bail!("no SETUP arrived");
    }
    ready.store(true, Ordering::Release);
    while !filled.load(Ordering::Acquire) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Let the kernel finish moving the last frames into the ring.
    std::thread::sleep(Duration::from_millis(200));
    let before = table.stats().records_appended;
    let (got, seconds) = drain_rx(&mut port, &mut table, &mut sink, frames);
    Ok(Drain {
        describe,
        frames: got,
        records: table.stats().records_appended - before,
        seconds,
        kernel_note: kernel_note(&port),
    })
}

/// Polls until `frames` arrived or nothing arrives for 20 ms; returns the frames and the
/// seconds from the start to the last frame.
pub(crate) fn drain_rx(
    port: &mut NetPort,
    table: &mut SessionTable,
    sink: &mut RingSink,
    frames: u64,
) -> (u64, f64) {
    let mut got = 0u64;
    let start = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        let now = clock::now_ns();
        let n = port.poll_rx(256, &mut |src, bytes| table.handle(now, src, bytes, sink));
        got += n as u64;
        if n == 0 {
            // The ring is empty once nothing arrives for a while.
            let t = *idle_since.get_or_insert_with(Instant::now);
            if got >= frames || t.elapsed() > Duration::from_millis(20) {
                break;
            }
        } else {
            idle_since = None;
        }
    }
    let end = idle_since.unwrap_or_else(Instant::now);
    (got, end.duration_since(start).as_secs_f64())
}

/// The AF_XDP socket's kernel drop counters (empty for UDP).
fn kernel_note(port: &NetPort) -> String {
    match port {
        NetPort::AfXdp(x) => x
            .kernel_stats()
            .map(|k| {
                format!(
                    "kernel rx_dropped {} rx_ring_full {} fill_ring_empty {}",
                    k.rx_dropped, k.rx_ring_full, k.rx_fill_ring_empty
                )
            })
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The drain's sender (in the peer namespace): SETUP until the node is `ready`, then
/// `frames` DATA frames as fast as the socket takes them, then `filled`.
pub(crate) fn drain_sender(
    node: SocketAddrV4,
    (ready, filled): (&AtomicBool, &AtomicBool),
    frames: u64,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let mut buf = Vec::new();
    let mut body = Vec::new();
    encode_setup(1472, "bench", &mut body);
    let header = |frame_type, offset| FrameHeader {
        frame_type,
        flags: 0,
        stream_id: STREAM,
        partition: 1,
        session_id: 9,
        offset,
        epoch: 0,
    };
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while !ready.load(Ordering::Acquire) && Instant::now() < deadline {
        header(FrameType::Setup, 0).encode(&body, &mut buf)?;
        socket.send_to(&buf, node)?;
        std::thread::sleep(Duration::from_millis(5));
    }
    body.clear();
    for _ in 0..DRAIN_RECORDS_PER_FRAME {
        push_record(&mut body, 0, &[0x5A; DRAIN_PAYLOAD_BYTES]);
    }
    for i in 0..frames {
        header(FrameType::Data, i * body.len() as u64).encode(&body, &mut buf)?;
        while socket.send_to(&buf, node).is_err() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
    filled.store(true, Ordering::Release);
    Ok(())
}

/// Where the drain time goes, measured without the network on this thread:
/// (receiver core decode + validation ns per frame with a discarding sink,
/// ring append ns per record).
fn drain_breakdown(dir: &std::path::Path, frames: u64) -> anyhow::Result<(f64, f64)> {
    struct Discard;
    impl RecordSink for Discard {
        fn append(&mut self, _: usize, _: u16, _: &[u8]) -> Result<u64, AppendRefusal> {
            Ok(0)
        }
    }
    let src: SocketAddr = "198.18.230.2:40000".parse()?;
    let header = |frame_type, offset| FrameHeader {
        frame_type,
        flags: 0,
        stream_id: STREAM,
        partition: 2,
        session_id: 9,
        offset,
        epoch: 0,
    };
    let mut body = Vec::new();
    encode_setup(1472, "bench", &mut body);
    let mut setup = Vec::new();
    header(FrameType::Setup, 0).encode(&body, &mut setup)?;
    body.clear();
    for _ in 0..DRAIN_RECORDS_PER_FRAME {
        push_record(&mut body, 0, &[0x5A; DRAIN_PAYLOAD_BYTES]);
    }
    let encoded: Vec<Vec<u8>> = (0..frames)
        .map(|i| {
            let mut f = Vec::new();
            header(FrameType::Data, i * body.len() as u64)
                .encode(&body, &mut f)
                .map(|()| f)
        })
        .collect::<Result<_, _>>()?;
    let mut table = SessionTable::new(session_config(), &[(STREAM, 2)]);
    table.handle(clock::now_ns(), src, &setup, &mut Discard);
    let start = Instant::now();
    for f in &encoded {
        table.handle(0, src, f, &mut Discard);
    }
    let decode_ns = start.elapsed().as_nanos() as f64 / frames as f64;
    let ctx = ring_context(dir);
    let _ = ctx.remove(STREAM, 3);
    let mut ring = ctx.publisher(STREAM, 3)?;
    warm_ring(&mut ring);
    let records = frames * DRAIN_RECORDS_PER_FRAME as u64;
    let payload = [0x5Au8; DRAIN_PAYLOAD_BYTES];
    let start = Instant::now();
    for _ in 0..records {
        let _ = ring.offer_typed(0, &payload);
    }
    let append_ns = start.elapsed().as_nanos() as f64 / records as f64;
    let _ = ctx.remove(STREAM, 3);
    Ok((decode_ns, append_ns))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

impl Sizes {
    fn for_run(quick: bool) -> Sizes {
        if quick {
            Sizes {
                latency_messages: 40_000,
                throughput_messages: 500_000,
                drain_frames_afxdp: 8_000,
                drain_frames_udp: 2_000,
                rounds: 3,
            }
        } else {
            Sizes {
                latency_messages: 200_000,
                throughput_messages: 2_000_000,
                drain_frames_afxdp: 16_000,
                drain_frames_udp: 3_000,
                rounds: 5,
            }
        }
    }
}

/// The backends every round measures, in the order of [`Rounds`]' arrays (afxdp, udp, dpdk).
#[cfg(feature = "dpdk")]
const BACKENDS: &[Backend] = &[Backend::AfXdp, Backend::Udp, Backend::Dpdk];
#[cfg(not(feature = "dpdk"))]
const BACKENDS: &[Backend] = &[Backend::AfXdp, Backend::Udp];

/// Every round's figures per backend (index as in [`BACKENDS`]; dpdk's stay empty without the
/// `dpdk` feature).
#[derive(Default)]
struct Rounds {
    lat: [Vec<E2e>; 3],
    tput: [Vec<E2e>; 3],
    drains: [Vec<Drain>; 3],
}

/// What one run compares: the best (or median) round of each backend.
struct Summary {
    lat: [Latency; 3],
    tput: [f64; 3],
    drain: [f64; 3],
    p99_ratio_per_round: crate::report::Spread,
}

pub fn run(args: &SuiteArgs) -> anyhow::Result<serde_json::Value> {
    if !nix_is_root() {
        bail!("ms-bench net needs root (network namespaces, XDP, AF_XDP): run it with sudo");
    }
    let sizes = Sizes::for_run(args.quick);
    let net = TestNet::create("msbench-net", 230)?;
    let dir = std::path::PathBuf::from(format!("/dev/shm/ms-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _dir_guard = RemoveDir(dir.clone());
    println!(
        "net: veth {} ({}) <-> {} ({}), payload {PAYLOAD_BYTES} B, latency pacing {} us",
        net.node_if,
        net.node_ip,
        net.peer_if,
        net.peer_ip,
        LATENCY_INTERVAL.as_micros()
    );
    let layout = CoreLayout::pick();
    println!("cores: {}", layout.describe());
    let mut rounds = Rounds::default();
    for round in 0..sizes.rounds {
        for (b, &backend) in BACKENDS.iter().enumerate() {
            run_round(round, backend, (&net, &dir, &sizes, layout), &mut rounds, b)?;
        }
    }
    let summary = summarize(&rounds);
    let (decode_ns, append_ns) = drain_breakdown(&dir, sizes.drain_frames_afxdp)?;
    println!(
        "drain breakdown (no network): receiver core decode+validate {decode_ns:.0} ns/frame \
         ({DRAIN_RECORDS_PER_FRAME} records, CRC32C over {} B), ring append {append_ns:.1} ns/record",
        40 + DRAIN_RECORDS_PER_FRAME * (8 + DRAIN_PAYLOAD_BYTES)
    );
    print_summary(&summary);
    let describe = rounds.drains[0]
        .first()
        .map(|d| d.describe.clone())
        .unwrap_or_default();
    let [la, lu, ld] = summary.lat;
    let [ta, tu, td] = summary.tput;
    let [da, du, dd] = summary.drain;
    let dpdk = BACKENDS.contains(&Backend::Dpdk);
    let measured = |v: f64| dpdk.then_some(v);
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(json!({
        "suite": "net",
        "quick": args.quick,
        "backend": describe,
        "payload_bytes": PAYLOAD_BYTES,
        "afxdp_p50_us": us(la.p50_ns),
        "afxdp_p99_us": us(la.p99_ns),
        "afxdp_p999_us": us(la.p999_ns),
        "udp_p50_us": us(lu.p50_ns),
        "udp_p99_us": us(lu.p99_ns),
        "udp_p999_us": us(lu.p999_ns),
        "afxdp_msgs_per_s": ta,
        "udp_msgs_per_s": tu,
        "drain_mpps": da / 1e6,
        "udp_drain_mpps": du / 1e6,
        "drain_records_per_frame": DRAIN_RECORDS_PER_FRAME,
        "drain_decode_ns_per_frame": decode_ns,
        "drain_ring_append_ns_per_record": append_ns,
        "p99_ratio_afxdp_over_udp": ratio(la.p99_ns as f64, lu.p99_ns as f64),
        "p99_ratio_afxdp_over_udp_per_round": summary.p99_ratio_per_round,
        "rounds": sizes.rounds,
        "cores": layout.describe(),
        "throughput_ratio_afxdp_over_udp": ratio(ta, tu),
        "drain_ratio_afxdp_over_udp": ratio(da, du),
        // null when ms-bench was built without the `dpdk` feature.
        "dpdk_p50_us": measured(us(ld.p50_ns)),
        "dpdk_p99_us": measured(us(ld.p99_ns)),
        "dpdk_p999_us": measured(us(ld.p999_ns)),
        "dpdk_msgs_per_s": measured(td),
        "dpdk_drain_mpps": measured(dd / 1e6),
        "dpdk_backend": dpdk.then(|| rounds.drains[2].first().map(|d| d.describe.clone())),
        "drain_ratio_dpdk_over_afxdp": measured(ratio(dd, da)),
    }))
}

/// One round of one backend: paced latency, throughput, then the receive drain; each printed.
fn run_round(
    round: usize,
    backend: Backend,
    (net, dir, sizes, layout): (&TestNet, &std::path::Path, &Sizes, CoreLayout),
    rounds: &mut Rounds,
    b: usize,
) -> anyhow::Result<()> {
    let name = backend.name();
    let l = e2e(backend, net, dir, sizes.latency_messages, true, layout)?;
    println!(
        "{}",
        l.latency.line(&format!("round {round} {name} latency"))
    );
    println!(
        "round {round} {name:<5} node receiver duty cycle max {} ns",
        l.receiver_duty_max_ns
    );
    rounds.lat[b].push(l);
    let t = e2e(backend, net, dir, sizes.throughput_messages, false, layout)?;
    println!(
        "round {round} {name:<5} throughput {:>12.0} records/s ({} of {} received)",
        t.records_per_s, t.received, sizes.throughput_messages
    );
    rounds.tput[b].push(t);
    let frames = match backend {
        Backend::AfXdp | Backend::Dpdk => sizes.drain_frames_afxdp,
        Backend::Udp => sizes.drain_frames_udp,
    };
    let d = drain(backend, net, dir, frames)?;
    if round == 0 {
        println!("{name} backend: {}", d.describe);
    }
    println!(
        "round {round} {name:<5} drain {:>8} frames {:>9} records in {:.4} s: {:.2} M records/s, {:.3} M frames/s per core {}",
        d.frames,
        d.records,
        d.seconds,
        ratio(d.records as f64, d.seconds) / 1e6,
        ratio(d.frames as f64, d.seconds) / 1e6,
        d.kernel_note
    );
    rounds.drains[b].push(d);
    Ok(())
}

/// The median round by p99 for latency (this VM's speed drifts between rounds; the per-round
/// lines show the spread), the best round for throughput and drain.
fn summarize(rounds: &Rounds) -> Summary {
    let median_lat = |v: &Vec<E2e>| -> Latency {
        let mut l: Vec<Latency> = v.iter().map(|e| e.latency).collect();
        l.sort_by_key(|l| l.p99_ns);
        l.get(l.len() / 2).copied().unwrap_or_default()
    };
    let round_ratios: Vec<f64> = rounds.lat[0]
        .iter()
        .zip(&rounds.lat[1])
        .map(|(a, u)| ratio(a.latency.p99_ns as f64, u.latency.p99_ns as f64))
        .collect();
    for (round, r) in round_ratios.iter().enumerate() {
        println!("round {round} afxdp p99 / udp p99 = {r:.2}");
    }
    let best_tput = |v: &Vec<E2e>| v.iter().map(|e| e.records_per_s).fold(0.0, f64::max);
    let best_drain = |v: &Vec<Drain>| {
        v.iter()
            .map(|d| ratio(d.records as f64, d.seconds))
            .fold(0.0, f64::max)
    };
    Summary {
        lat: [0, 1, 2].map(|b| median_lat(&rounds.lat[b])),
        tput: [0, 1, 2].map(|b| best_tput(&rounds.tput[b])),
        drain: [0, 1, 2].map(|b| best_drain(&rounds.drains[b])),
        p99_ratio_per_round: crate::report::Spread::of(&round_ratios),
    }
}

fn print_summary(s: &Summary) {
    let [la, lu, ld] = s.lat;
    let us = |ns: u64| ns as f64 / 1000.0;
    println!("{}", la.line("afxdp latency (median round)"));
    println!("{}", lu.line("udp latency (median round)"));
    if BACKENDS.contains(&Backend::Dpdk) {
        println!("{}", ld.line("dpdk latency (median round, af_packet vdev)"));
        println!(
            "dpdk drain {:.2} M records/s vs afxdp {:.2} (target dpdk >= afxdp); dpdk throughput {:.0} records/s",
            s.drain[2] / 1e6,
            s.drain[0] / 1e6,
            s.tput[2]
        );
    }
    println!(
        "afxdp p99 / udp p99 = {:.2} (median rounds; per-round median {:.2}) (target <= 0.5); afxdp p99 {:.1} us (target < 10 us); drain {:.2} M records/s (target >= 20)",
        ratio(la.p99_ns as f64, lu.p99_ns as f64),
        s.p99_ratio_per_round.median,
        us(la.p99_ns),
        s.drain[0] / 1e6
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Removes the bench's ring directory on every path.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
