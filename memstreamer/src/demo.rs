//! `memstreamer demo`: a node in its own network namespace, a remote publisher in another, a
//! local SDK subscriber; prints throughput and latency, and removes everything it created.
//!
//! ```text
//!   netns <..>-p (peer)                          netns <..>-n (node)
//!   sdk::net::UdpPublisher  --veth 198.18.S.2 -> 198.18.S.1:40100 --> `memstreamer dataplane` (child)
//!                                                                        | ring (shm, /dev/shm)
//!   demo process (root netns): sdk::Subscriber <------------------------+
//! ```
//! Latency: the publisher stamps `sdk::clock::now_ns()` into each payload just before `offer`; the
//! subscriber subtracts it on receipt (same host clock). Figures are hdrhistogram percentiles.
//! Cleanup on every path: the node child gets SIGTERM (SIGKILL after 5 s), the namespaces (and
//! with them the veth pair and the XDP attachment) and the temporary directories are removed by
//! Drop guards; Ctrl-C sets a flag that ends every loop.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dataplane::counters::{Counter, CountersSnapshot};
use dataplane::testnet::TestNet;
use dataplane::Backend;
use hdrhistogram::Histogram;
use sdk::net::{PublisherConfig, UdpPublisher};

/// Data port of the demo node.
const DATA_PORT: u16 = 40100;
/// Waits for the node child to come up.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Grace period for the node child after SIGTERM.
const NODE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STREAM: u32 = 7;
/// Smallest payload: sequence number + timestamp.
const PAYLOAD_BYTES_MIN: usize = 16;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Node backend: afxdp (XDP + AF_XDP on the veth), udp (kernel sockets) or dpdk (DPDK's
    /// net_af_packet vdev on the veth; needs a build with `--features dpdk` and hugepages).
    #[arg(long, default_value = "afxdp")]
    backend: Backend,
    /// Messages the remote publisher sends.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Payload bytes per message (>= 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Publisher rate in messages/s (0 = as fast as flow control allows).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
    /// Third octet of 198.18.S.0/30 (pick another one if a concurrent run uses it).
    #[arg(long, default_value_t = 100)]
    subnet: u32,
}

/// Stops the node child on drop: SIGTERM, then SIGKILL after the grace period.
struct NodeChild {
    child: Child,
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + NODE_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a directory tree on drop.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the client thread measured.
struct ClientReport {
    connected: bool,
    sent: u64,
    received: u64,
    out_of_order: u64,
    retransmits: u64,
    elapsed_s: f64,
    hist: Histogram<u64>,
}

fn write_config(
    path: &Path,
    args: &DemoArgs,
    net: &TestNet,
    shm: &Path,
    counters: &Path,
) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    writeln!(f, "backend = \"{}\"", args.backend)?;
    writeln!(f, "listen = \"{}:{DATA_PORT}\"", net.node_ip)?;
    writeln!(f, "interface = \"{}\"", net.node_if)?;
    writeln!(f, "xdp_default_allow = true")?;
    if args.backend == Backend::Dpdk {
        // DPDK's af_packet vdev on the node's veth end (the kernel has no address there: the
        // port answers ARP and sends every frame itself), 64 MiB of EAL memory from the pool.
        writeln!(
            f,
            "dpdk_device = \"net_af_packet0,iface={},qpairs=2\"",
            net.node_if
        )?;
        writeln!(f, "dpdk_memory_mb = 64")?;
        writeln!(f, "dpdk_file_prefix = \"msdemo-{}\"", std::process::id())?;
    }
    // The low-latency profile (busy-spin), with the agents on one shared thread: this demo
    // runs on machines with 2 cores, one for the node and one for the client.
    writeln!(f, "profile = \"low-latency\"")?;
    writeln!(f, "threading = \"shared\"")?;
    // The demo measures the network path; nothing needs to survive it.
    writeln!(f, "storage_dir = false")?;
    writeln!(f, "shm_dir = \"{}\"", shm.display())?;
    writeln!(f, "counters_file = \"{}\"", counters.display())?;
    writeln!(f, "[[streams]]\nid = {STREAM}\npartitions = 1")?;
    Ok(())
}

/// The client: the remote publisher (its socket lives in the peer namespace) and the local
/// subscriber (shared memory needs no namespace) on ONE thread, so that on a small machine the
/// node's busy-polling thread and this one each have a core.
fn run_client(
    node: SocketAddr,
    shm: PathBuf,
    args: (u64, usize, u64, Duration),
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ClientReport> {
    let (messages, size, rate, timeout) = args;
    let mut subscriber = sdk::Context::builder()
        .dir(shm)
        .build()
        .subscriber(STREAM, 0);
    let cfg = PublisherConfig::new(STREAM, 0, std::process::id(), "demo");
    let mut p = UdpPublisher::new("0.0.0.0:0".parse().expect("address"), node, cfg)?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let mut report = ClientReport {
        connected: false,
        sent: 0,
        received: 0,
        out_of_order: 0,
        retransmits: 0,
        elapsed_s: 0.0,
        hist: hist.clone(),
    };
    if !p.wait_connected(Duration::from_secs(5)) {
        return Ok(report);
    }
    report.connected = true;
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let mut payload = vec![0u8; size];
    let (mut sent, mut received, mut out_of_order) = (0u64, 0u64, 0u64);
    while received < messages && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let due = sent
            .saturating_mul(1_000_000_000)
            .checked_div(rate)
            .map(Duration::from_nanos);
        if sent < messages && due.is_none_or(|d| start.elapsed() >= d) {
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            payload[8..16].copy_from_slice(&sdk::clock::now_ns().to_le_bytes());
            match p.offer(1, &payload) {
                Ok(_) => sent += 1,
                Err(sdk::net::NetOfferError::BackPressured) => {}
                Err(e) => return Err(e.into()),
            }
        }
        p.do_work();
        subscriber.poll(
            |r| {
                let now = sdk::clock::now_ns();
                let seq = u64::from_le_bytes(r.payload[..8].try_into().expect("8 bytes"));
                let ts = u64::from_le_bytes(r.payload[8..16].try_into().expect("8 bytes"));
                if seq != received {
                    out_of_order += 1;
                }
                let _ = hist.record(now.saturating_sub(ts).max(1));
                received += 1;
            },
            256,
        )?;
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    p.close(Duration::from_secs(2));
    report.sent = sent;
    report.received = received;
    report.out_of_order = out_of_order;
    report.retransmits = p.session().stats().retransmit_frames;
    report.hist = hist;
    Ok(report)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.size < PAYLOAD_BYTES_MIN || args.size > 1400 {
        bail!("--size must be in {PAYLOAD_BYTES_MIN}..=1400 (one record per 1500-byte MTU frame)");
    }
    let stop = crate::stop_flag()?;
    let net = TestNet::create("msdemo", args.subnet)
        .context("creating the demo namespaces (run as root)")?;
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let shm = DirGuard(PathBuf::from(format!(
        "/dev/shm/memstreamer-demo-{}",
        std::process::id()
    )));
    if args.backend == Backend::Dpdk {
        // The DPDK port is the only host on the node's end (as on a vfio NIC): no kernel
        // address there, so the kernel neither answers ARP nor sends ICMP for our frames.
        dataplane::testnet::ip(&["-n", &net.node_ns, "addr", "flush", "dev", &net.node_if])
            .context("removing the kernel's address from the node's veth end")?;
    }
    let counters = tmp.path().join("counters");
    let config = tmp.path().join("node.toml");
    write_config(&config, &args, &net, &shm.0, &counters)?;
    let log = tmp.path().join("node.log");
    println!(
        "demo: {} ({}) <-veth-> {} ({}), backend {}",
        net.node_ns, net.node_ip, net.peer_ns, net.peer_ip, args.backend
    );
    let node = start_node(&net, &config, &log, &stop)?;
    let node_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let node_addr = SocketAddr::from((net.node_ip, DATA_PORT));
    let timeout = Duration::from_secs(args.timeout_s);
    let client_stop = stop.clone();
    let client_args = (args.messages, args.size, args.rate, timeout);
    let shm_dir = shm.0.clone();
    let client = TestNet::spawn_in(&net.peer_ns, move || {
        run_client(node_addr, shm_dir, client_args, client_stop)
    });
    let report = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))???;
    if !report.connected {
        bail!(
            "the publisher got no SETUP acknowledgement from the node within 5 s:\n{}",
            node_log()
        );
    }
    print_report(&report, &args);
    print_node_counters(&counters, report.received);
    drop(node);
    drop(net);
    if report.received != args.messages {
        bail!("received {} of {} messages", report.received, args.messages);
    }
    Ok(())
}

/// Runs `memstreamer dataplane --config CONFIG` in the node namespace, its output in `log`;
/// returns once its start-up lines are there (and prints them).
fn start_node(
    net: &TestNet,
    config: &Path,
    log: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<NodeChild> {
    let exe = std::env::current_exe().context("locating the memstreamer binary")?;
    let log_file = std::fs::File::create(log)?;
    let child = Command::new("ip")
        .args(["netns", "exec", &net.node_ns])
        .arg(&exe)
        .args(["dataplane", "--config"])
        .arg(config)
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file))
        .spawn()
        .context("starting the node (ip netns exec)")?;
    let mut node = NodeChild { child };
    let started = Instant::now();
    let node_log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(status) = node.child.try_wait()? {
            bail!(
                "the node exited ({status}) before it was ready:\n{}",
                node_log()
            );
        }
        if node_log().contains(crate::DATAPLANE_READY_LINE) {
            break;
        }
        if started.elapsed() > NODE_START_TIMEOUT || stop.load(Ordering::Relaxed) {
            bail!(
                "the node did not come up within {NODE_START_TIMEOUT:?}:\n{}",
                node_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for line in node_log().lines() {
        println!("  {line}");
    }
    Ok(node)
}

fn print_report(report: &ClientReport, args: &DemoArgs) {
    let hist = &report.hist;
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "demo: sent {} received {} out-of-order {} retransmitted frames {}",
        report.sent, report.received, report.out_of_order, report.retransmits
    );
    println!(
        "demo: {:.0} msgs/s ({} B payload, publisher rate {}), latency publisher->subscriber p50 {:.1} us p99 {:.1} us p99.9 {:.1} us max {:.1} us",
        report.received as f64 / report.elapsed_s.max(1e-9),
        args.size,
        if args.rate == 0 { "unlimited".to_string() } else { format!("{}/s", args.rate) },
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0
    );
}

/// The node's appended records, NAKs and drops from its counters file. The conductor
/// refreshes the file on its duty cycle: this waits up to a second for it to show every record
/// the subscriber `received` (bounded; a short count is printed as it is).
fn print_node_counters(counters: &Path, received: u64) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut snap = CountersSnapshot::read(counters);
    while Instant::now() < deadline
        && snap
            .as_ref()
            .is_ok_and(|s| s.get(Counter::RxRecordsAppended).unwrap_or(0) < received)
    {
        std::thread::sleep(Duration::from_millis(10));
        snap = CountersSnapshot::read(counters);
    }
    if let Ok(snap) = snap {
        let drops: u64 = snap
            .values
            .iter()
            .filter(|(c, _)| c.label().contains("drop"))
            .map(|(_, v)| v)
            .sum();
        println!(
            "demo: node counters: appended {} NAKs sent {} drops {}",
            snap.get(Counter::RxRecordsAppended).unwrap_or(0),
            snap.get(Counter::RxNaksSent).unwrap_or(0),
            drops
        );
    }
}
