//! DPDK backend (`--backend dpdk`, cargo feature `dpdk`): the same receiver and sender agents
//! over a DPDK poll-mode port, with the XDP program's policy enforced in user space.
//!
//! ```text
//!  NIC / vdev RX queues 0..=n (all polled) --rte_eth_rx_burst--> receiver's DpdkPort::poll_rx
//!        classify (net::policy, the XDP verdicts) -> ARP: answer / learn
//!                                                 -> UDP to the sender's port: mbuf -> feedback queue
//!                                                 -> data frame: policy + token bucket -> agent
//!  sender's DpdkPort: TX queue n (its own), STATUS/NAK from the feedback queue (mbufs, no copy)
//!  receiver's STATUS/NAK answers: TX queue 0
//!  mbufs: one pool on hugepages (EAL memory), RX fills it, TX allocates from it
//!  policy mirror thread: pinned maps (the control plane writes them) -> PolicyTable -> receiver;
//!        verdict counts -> the pinned counters map; rte_eth_stats + pool use -> atomics
//! ```
//!
//! - Ports: a vdev (`net_af_packet0,iface=veth0`, `net_tap0,iface=dtap0`) or a PCI address of
//!   a NIC bound to vfio-pci (`0000:01:00.0`); docs/dpdk.md has the steps.
//! - No kernel on the path of a vfio NIC: neighbours are learned from received frames and ARP,
//!   ARP requests for our address are answered here, and a subscriber whose MAC is unknown gets
//!   an ARP request (its frame is counted as `tx_no_neighbour`, the protocol retransmits).
//! - Every mbuf is returned to the pool on every path (TX failures included); nothing the port
//!   receives can make it panic: bad frames are counted verdicts.
//! - `unsafe` lives in this module tree only, each block with a `// SAFETY:` comment.

pub mod eal;
mod sys;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use xdp_programs::{PolicyMaps, Verdict, VerdictCounts};

use self::eal::{Eal, EalConfig, EalInitError};
use super::afxdp::packet::{write_headers, TxAddrs, TX_HEADERS_BYTES};
use super::policy::{arp, classify, Classified, PolicySnapshot, PolicyTable, VerdictTally};
use super::NetPortStats;

/// Frames per rte_eth_rx_burst / tx_burst.
pub const BURST_MAX: usize = 64;
/// Frames the sender's port may hold before a flush (its TX batch).
pub const TX_PENDING_MAX: usize = 256;
/// mbufs in the pool: limits.
pub const MBUFS_MIN: u32 = 1023;
pub const MBUFS_MAX: u32 = 1 << 20;
/// Per-lcore mbuf cache (only EAL threads use it; agents' threads go to the ring).
pub const MBUF_CACHE: u32 = 256;
/// Data room of each mbuf: 2048 B + the 128 B headroom (RTE_MBUF_DEFAULT_BUF_SIZE).
pub const MBUF_DATA_ROOM_BYTES: u16 = 2048 + 128;
/// Largest UDP payload one mbuf carries (single segment, no jumbo frames).
pub const PAYLOAD_BYTES_MAX: usize = 2048 - TX_HEADERS_BYTES;
/// RX / TX descriptors per queue (adjusted to the port's limits).
pub const RX_DESCRIPTORS: u16 = 1024;
pub const TX_DESCRIPTORS: u16 = 1024;
/// Most RX queues (RSS spreads flows over them where the port supports it).
pub const RX_QUEUES_MAX: u16 = 16;
/// STATUS/NAK mbufs in flight from the receiver's queue to the sender.
pub const FEEDBACK_QUEUE_MAX: usize = 1024;
/// Neighbours remembered (shared table, learned by the receiver).
pub const NEIGHBOURS_MAX: usize = 64;
/// How often the policy mirror re-reads the pinned maps and refreshes the port figures.
pub const POLICY_REFRESH: Duration = Duration::from_micros(500);
/// Policy tables in flight from the mirror to the receiver (and back, to be freed).
const POLICY_QUEUE_MAX: usize = 2;

const _: () = assert!(MBUF_CACHE * 4 <= MBUFS_MIN + 1);
const _: () =
    assert!(PAYLOAD_BYTES_MAX >= xdp_programs::abi_consts::FRAME_BYTES_MTU1500_IPV4 as usize);
const _: () = assert!(BURST_MAX <= TX_PENDING_MAX);

/// What to open (built from the node's config).
#[derive(Clone, Debug)]
pub struct DpdkConfig {
    /// A vdev (`net_af_packet0,iface=veth0`) or a PCI address (`0000:01:00.0`).
    pub device: String,
    /// Our IPv4 address and data port.
    pub local: SocketAddrV4,
    /// UDP port the sender's STATUS/NAK come back to (not the data port).
    pub feedback_port: u16,
    /// The name the policy maps are pinned under (`/sys/fs/bpf/memstreamer/<name>`), the one
    /// the control plane writes (the node's `interface`).
    pub policy_name: String,
    /// Sources without a policy entry pass (labs and tests only).
    pub default_allow: bool,
    pub rx_queues: u16,
    pub mbufs: u32,
    pub eal: EalConfig,
}

/// Why the DPDK port could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DpdkPortOpenError {
    #[error(transparent)]
    Eal(#[from] EalInitError),
    #[error(
        "rx_queues {rx} must be in 1..={RX_QUEUES_MAX}, mbufs {mbufs} in {MBUFS_MIN}..={MBUFS_MAX}"
    )]
    Limits { rx: u16, mbufs: u32 },
    #[error("DPDK port `{name}` does not exist after EAL init ({available} port(s) available): check the vdev arguments (e.g. net_af_packet0,iface=<an existing interface>) or that the PCI device is bound to vfio-pci (docs/dpdk.md)")]
    NoSuchPort { name: String, available: u16 },
    #[error("DPDK port `{name}` ({driver}) has {max_rx} RX / {max_tx} TX queues, {rx} RX and {tx} TX are needed (the sender transmits on its own queue): for net_af_packet add qpairs={tx} to the vdev")]
    Queues {
        name: String,
        driver: String,
        max_rx: u16,
        max_tx: u16,
        rx: u16,
        tx: u16,
    },
    #[error("cannot create the mbuf pool ({mbufs} mbufs): {detail}; raise dpdk_memory_mb or lower dpdk_mbufs")]
    Mempool { mbufs: u32, detail: String },
    #[error("cannot start DPDK port `{name}` at {stage}: {detail}")]
    Start {
        name: String,
        stage: &'static str,
        detail: String,
    },
    #[error("cannot pin the policy maps for `{name}`: {detail} (needs CAP_BPF and bpffs)")]
    Policy { name: String, detail: String },
}

/// Port-level figures for `stat` and `/metrics` (refreshed by the policy mirror).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub rx_nombuf: u64,
    pub tx_errors: u64,
    pub mbufs_in_use: u64,
    pub mbufs: u64,
    pub feedback_dropped: u64,
    pub tx_no_mbuf: u64,
}

/// Events only this backend has (on top of [`NetPortStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpdkPortStats {
    /// Frames with more than one segment (never produced with our mbuf size): dropped.
    pub rx_multi_segment: u64,
    pub arp_replies_sent: u64,
    pub arp_requests_sent: u64,
    pub tx_no_neighbour: u64,
    pub tx_unsupported: u64,
}

/// An mbuf handed from the receiver's thread to the sender's.
struct Mbuf(NonNull<sys::rte_mbuf>);
// SAFETY: an mbuf is owned by exactly one holder at a time (the queue moves it); DPDK mbufs and
// their pool may be used and freed from any thread.
unsafe impl Send for Mbuf {}

/// The mempool pointer, shared by both ports' threads.
struct Pool(NonNull<sys::rte_mempool>);
// SAFETY: DPDK mempools are multi-producer/multi-consumer safe (ring-backed, default ops).
unsafe impl Send for Pool {}
// SAFETY: as above; `&Pool` only reaches thread-safe DPDK calls.
unsafe impl Sync for Pool {}

/// Neighbours learned by the receiver, read by the sender: one writer, seqlocked slots.
struct Neighbours {
    slots: Vec<NeighbourSlot>,
    next: AtomicU32,
}

#[derive(Default)]
struct NeighbourSlot {
    /// Odd while the writer changes the slot.
    seq: AtomicU32,
    ip: AtomicU32,
    /// MAC in the low 48 bits; 0 = empty.
    mac: AtomicU64,
}

fn mac_u64(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_le_bytes(b)
}

fn u64_mac(v: u64) -> [u8; 6] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

impl Neighbours {
    fn new() -> Neighbours {
        Neighbours {
            slots: (0..NEIGHBOURS_MAX)
                .map(|_| NeighbourSlot::default())
                .collect(),
            next: AtomicU32::new(0),
        }
    }

    /// Reader side; bounded retries against a concurrent write.
    fn get(&self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        let want = u32::from(ip);
        for s in &self.slots {
            for _ in 0..4 {
                // Acquire pairs with the writer's Release of the even (stable) seq.
                let s1 = s.seq.load(Ordering::Acquire);
                if s1 & 1 == 1 {
                    continue;
                }
                let (sip, mac) = (s.ip.load(Ordering::Relaxed), s.mac.load(Ordering::Relaxed));
                std::sync::atomic::fence(Ordering::Acquire);
                if s.seq.load(Ordering::Relaxed) == s1 {
                    if sip == want && mac != 0 {
                        return Some(u64_mac(mac));
                    }
                    break;
                }
            }
        }
        None
    }

    /// Writer side (the receiver's thread only).
    fn learn(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        let (want, m) = (u32::from(ip), mac_u64(mac));
        let slot = self
            .slots
            .iter()
            .find(|s| s.ip.load(Ordering::Relaxed) == want && s.mac.load(Ordering::Relaxed) != 0);
        let slot = match slot {
            Some(s) if s.mac.load(Ordering::Relaxed) == m => return,
            Some(s) => s,
            None => {
                let i = self.next.load(Ordering::Relaxed) as usize % NEIGHBOURS_MAX;
                self.next.store((i + 1) as u32, Ordering::Relaxed);
                &self.slots[i]
            }
        };
        let seq = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        slot.ip.store(want, Ordering::Relaxed);
        slot.mac.store(m, Ordering::Relaxed);
        // Release pairs with the reader's Acquire load of seq.
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

/// State both ports share; the last one dropped closes the port and ends EAL.
struct Device {
    port_id: u16,
    name: String,
    driver: String,
    local_mac: [u8; 6],
    feedback_port: u16,
    rx_queues: u16,
    rss: bool,
    pool: Pool,
    mbufs: u32,
    feedback: ArrayQueue<Mbuf>,
    neighbours: Neighbours,
    nic: NicCells,
    /// The mirror thread and its stop flag; joined before the port closes.
    mirror: std::sync::Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    eal: std::sync::Mutex<Option<Eal>>,
    /// The pinned maps (unpinned on drop).
    pins: std::sync::Mutex<Option<xdp_programs::XdpHandle>>,
    eal_args: String,
}

#[derive(Default)]
struct NicCells {
    values: [AtomicU64; 10],
}

impl NicCells {
    fn store(&self, s: &NicStats) {
        let v = [
            s.rx_packets,
            s.tx_packets,
            s.rx_missed,
            s.rx_errors,
            s.rx_nombuf,
            s.tx_errors,
            s.mbufs_in_use,
            s.mbufs,
        ];
        for (cell, x) in self.values.iter().zip(v) {
            cell.store(x, Ordering::Relaxed);
        }
    }

    fn load(&self) -> NicStats {
        let v = |i: usize| self.values[i].load(Ordering::Relaxed);
        NicStats {
            rx_packets: v(0),
            tx_packets: v(1),
            rx_missed: v(2),
            rx_errors: v(3),
            rx_nombuf: v(4),
            tx_errors: v(5),
            mbufs_in_use: v(6),
            mbufs: v(7),
            feedback_dropped: v(8),
            tx_no_mbuf: v(9),
        }
    }

    fn add(&self, i: usize, n: u64) {
        self.values[i].fetch_add(n, Ordering::Relaxed);
    }
}

const NIC_FEEDBACK_DROPPED: usize = 8;
const NIC_TX_NO_MBUF: usize = 9;

impl Device {
    /// Reads the port's counters and the pool's use (any thread).
    fn refresh_nic(&self) {
        let mut s = sys::rte_eth_stats::zeroed();
        // SAFETY: port_id names a started port (the device lives); `s` is a valid out-struct.
        let rc = unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) };
        // SAFETY: the pool lives as long as the device.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.pool.0.as_ptr()) };
        let prev = self.nic.load();
        let mut n = NicStats {
            mbufs_in_use: u64::from(in_use),
            mbufs: u64::from(self.mbufs),
            ..prev
        };
        if rc == 0 {
            n.rx_packets = s.ipackets;
            n.tx_packets = s.opackets;
            n.rx_missed = s.imissed;
            n.rx_errors = s.ierrors;
            n.rx_nombuf = s.rx_nombuf;
            n.tx_errors = s.oerrors;
        }
        self.nic.store(&n);
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.mirror.get_mut().ok().and_then(|m| m.take()) {
            stop.store(true, Ordering::Release);
            // The mirror may hold the last reference for a moment (it upgrades its Weak to
            // refresh the figures): then this runs on its own thread, which must not join itself.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        while let Some(m) = self.feedback.pop() {
            // SAFETY: the queue owned this mbuf; nothing else refers to it.
            unsafe { sys::ms_dpdk_mbuf_free(m.0.as_ptr()) };
        }
        // SAFETY: both ports are gone (the last Arc is being dropped), so no thread bursts on
        // the port any more; stop/close once, then the pool no mbuf refers to is freed.
        unsafe {
            sys::rte_eth_dev_stop(self.port_id);
            sys::rte_eth_dev_close(self.port_id);
            sys::rte_mempool_free(self.pool.0.as_ptr());
        }
        if let Some(eal) = self.eal.get_mut().ok().and_then(|e| e.take()) {
            eal.cleanup();
        }
        self.pins.get_mut().ok().and_then(|p| p.take());
    }
}

/// Which queues a port uses.
enum Role {
    /// Every RX queue, TX queue 0 (STATUS/NAK answers, ARP replies).
    Receiver,
    /// The last TX queue (its own); STATUS/NAK arrive over the feedback queue.
    Sender,
}

/// A DPDK port of the node: the [`NetPort::Dpdk`](super::NetPort) backend (receiver) or the
/// sender's port ([`SenderPort::Dpdk`](super::SenderPort)).
pub struct DpdkPort {
    dev: Arc<Device>,
    role: Role,
    tx_queue: u16,
    next_rx_queue: u16,
    local: SocketAddrV4,
    rx: Box<[*mut sys::rte_mbuf; BURST_MAX]>,
    tx_pending: Vec<*mut sys::rte_mbuf>,
    /// Receiver only: the policy in force, and the mirror's hand-over queues.
    policy: PolicyTable,
    policy_in: Arc<ArrayQueue<Box<PolicyTable>>>,
    policy_out: Arc<ArrayQueue<Box<PolicyTable>>>,
    verdicts: Arc<VerdictCells>,
    tally: VerdictTally,
    ip_id: u16,
    epoch: Instant,
    stats: NetPortStats,
    dpdk_stats: DpdkPortStats,
}

// SAFETY: the raw mbuf pointers in `rx` / `tx_pending` are owned by this port alone (taken from
// the pool or an RX burst, returned by TX or free); moving the port to the agent's thread moves
// that ownership with it.
unsafe impl Send for DpdkPort {}

/// Verdict counts, written by the receiver's thread, read by the mirror's.
#[derive(Default)]
struct VerdictCells([AtomicU64; xdp_programs::abi_consts::VERDICT_COUNT as usize]);

impl VerdictCells {
    fn load(&self) -> VerdictCounts {
        let mut c = VerdictCounts::default();
        for (i, cell) in self.0.iter().enumerate() {
            c.0[i] = cell.load(Ordering::Relaxed);
        }
        c
    }
}

fn queue_error(
    name: &str,
    driver: &str,
    info: &sys::ms_dpdk_port_info,
    rx: u16,
    tx: u16,
) -> DpdkPortOpenError {
    DpdkPortOpenError::Queues {
        name: name.to_string(),
        driver: driver.to_string(),
        max_rx: info.max_rx_queues,
        max_tx: info.max_tx_queues,
        rx,
        tx,
    }
}

/// The ethdev name of `device`: the vdev name before its arguments, or the PCI address.
pub fn port_name(device: &str) -> &str {
    device.split(',').next().unwrap_or(device).trim()
}

/// Whether `device` is a vdev (`net_*`), else a PCI address.
pub fn is_vdev(device: &str) -> bool {
    port_name(device).starts_with("net_")
}

fn c_text(bytes: &[std::os::raw::c_char]) -> String {
    let b: Vec<u8> = bytes
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&b).into_owned()
}

impl DpdkPort {
    /// Starts EAL, the port (RX queues + one TX queue per agent), the mbuf pool, the pinned
    /// policy maps and the policy mirror; returns the receiver's port and the sender's.
    pub fn open(cfg: &DpdkConfig) -> Result<(DpdkPort, DpdkPort), DpdkPortOpenError> {
        if !(1..=RX_QUEUES_MAX).contains(&cfg.rx_queues)
            || !(MBUFS_MIN..=MBUFS_MAX).contains(&cfg.mbufs)
        {
            return Err(DpdkPortOpenError::Limits {
                rx: cfg.rx_queues,
                mbufs: cfg.mbufs,
            });
        }
        let eal = Eal::init(&cfg.eal)?;
        let eal_args = eal.args().to_string();
        // From here on every failure ends EAL (and with it the hugepage mappings).
        let fail = |eal: Eal, e: DpdkPortOpenError| {
            eal.cleanup();
            Err(e)
        };
        let name = port_name(&cfg.device).to_string();
        let port_id = match find_port(&name) {
            Ok(p) => p,
            Err(e) => return fail(eal, e),
        };
        let (info, driver) = match port_info(port_id) {
            Some(i) => i,
            None => {
                return fail(
                    eal,
                    DpdkPortOpenError::NoSuchPort {
                        name,
                        available: available_ports(),
                    },
                )
            }
        };
        // As many RX queues as TX queues: a PMD may spread received packets over every queue
        // pair it has (net_af_packet's qpairs form one PACKET_FANOUT group), so the receiver
        // polls them all; the extra RX queue is simply empty on a NIC without RSS to it.
        let tx_queues = cfg.rx_queues + 1;
        let rx_queues = tx_queues;
        if info.max_rx_queues < rx_queues || info.max_tx_queues < tx_queues {
            return fail(
                eal,
                queue_error(&name, &driver, &info, rx_queues, tx_queues),
            );
        }
        let pool = match create_pool(cfg.mbufs, info.socket_id) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: the port was probed by EAL but never started; close releases it.
                unsafe { sys::rte_eth_dev_close(port_id) };
                return fail(eal, e);
            }
        };
        let rss = info.rss_offloads != 0;
        if let Err(e) = start_port(port_id, &name, rx_queues, tx_queues, &pool) {
            // SAFETY: nothing uses the port or the pool yet; close, then free the pool.
            unsafe {
                sys::rte_eth_dev_stop(port_id);
                sys::rte_eth_dev_close(port_id);
                sys::rte_mempool_free(pool.0.as_ptr());
            }
            return fail(eal, e);
        }
        let mut local_mac = [0u8; 6];
        // SAFETY: port_id is a started port; the out-array has 6 bytes.
        unsafe { sys::ms_dpdk_port_mac(port_id, local_mac.as_mut_ptr()) };
        let dev = Arc::new(Device {
            port_id,
            name: name.clone(),
            driver,
            local_mac,
            feedback_port: cfg.feedback_port,
            rx_queues,
            rss,
            pool,
            mbufs: cfg.mbufs,
            feedback: ArrayQueue::new(FEEDBACK_QUEUE_MAX),
            neighbours: Neighbours::new(),
            nic: NicCells::default(),
            mirror: std::sync::Mutex::new(None),
            eal: std::sync::Mutex::new(Some(eal)),
            pins: std::sync::Mutex::new(None),
            eal_args,
        });
        // The Device owns EAL now: an error below drops it, which closes everything.
        Self::finish_open(cfg, dev)
    }

    fn finish_open(
        cfg: &DpdkConfig,
        dev: Arc<Device>,
    ) -> Result<(DpdkPort, DpdkPort), DpdkPortOpenError> {
        let flags = if cfg.default_allow {
            xdp_programs::abi_consts::CONFIG_FLAG_DEFAULT_ALLOW
        } else {
            0
        };
        let pins = xdp_programs::XdpProgram::pin_maps(
            &cfg.policy_name,
            xdp_programs::Config {
                data_port: cfg.local.port(),
                reserved: 0,
                flags,
            },
        )
        .map_err(|e| DpdkPortOpenError::Policy {
            name: cfg.policy_name.clone(),
            detail: e.to_string(),
        })?;
        if let Ok(mut p) = dev.pins.lock() {
            *p = Some(pins);
        }
        let maps = PolicyMaps::open(&cfg.policy_name).map_err(|e| DpdkPortOpenError::Policy {
            name: cfg.policy_name.clone(),
            detail: e.to_string(),
        })?;
        let first = read_snapshot(&maps).map_err(|detail| DpdkPortOpenError::Policy {
            name: cfg.policy_name.clone(),
            detail,
        })?;
        let policy_in = Arc::new(ArrayQueue::new(POLICY_QUEUE_MAX));
        let policy_out = Arc::new(ArrayQueue::new(POLICY_QUEUE_MAX));
        let verdicts = Arc::new(VerdictCells::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mirror = PolicyMirror {
            maps,
            dev: Arc::downgrade(&dev),
            last: first.clone(),
            to_port: policy_in.clone(),
            from_port: policy_out.clone(),
            verdicts: verdicts.clone(),
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("ms-dpdk-policy".into())
            .spawn(move || mirror.run())
            .map_err(|e| DpdkPortOpenError::Policy {
                name: cfg.policy_name.clone(),
                detail: format!("cannot start the policy mirror thread: {e}"),
            })?;
        if let Ok(mut m) = dev.mirror.lock() {
            *m = Some((stop, thread));
        }
        dev.refresh_nic();
        let mut receiver = DpdkPort::new(dev.clone(), Role::Receiver, 0, cfg.local);
        receiver.policy = PolicyTable::from_snapshot(&first);
        receiver.policy_in = policy_in;
        receiver.policy_out = policy_out;
        receiver.verdicts = verdicts;
        let sender_local = SocketAddrV4::new(*cfg.local.ip(), cfg.feedback_port);
        // The sender's TX queue is the last one (the receiver answers on queue 0).
        let sender = DpdkPort::new(dev.clone(), Role::Sender, dev.rx_queues - 1, sender_local);
        Ok((receiver, sender))
    }

    fn new(dev: Arc<Device>, role: Role, tx_queue: u16, local: SocketAddrV4) -> DpdkPort {
        DpdkPort {
            dev,
            role,
            tx_queue,
            next_rx_queue: 0,
            local,
            rx: Box::new([std::ptr::null_mut(); BURST_MAX]),
            tx_pending: Vec::with_capacity(TX_PENDING_MAX),
            policy: PolicyTable::default(),
            policy_in: Arc::new(ArrayQueue::new(1)),
            policy_out: Arc::new(ArrayQueue::new(1)),
            verdicts: Arc::new(VerdictCells::default()),
            tally: VerdictTally::default(),
            ip_id: 0,
            epoch: Instant::now(),
            stats: NetPortStats::default(),
            dpdk_stats: DpdkPortStats::default(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.local)
    }
    pub fn stats(&self) -> NetPortStats {
        self.stats
    }
    pub fn dpdk_stats(&self) -> DpdkPortStats {
        self.dpdk_stats
    }
    /// Port figures (rte_eth_stats, pool use), as of the mirror's last refresh.
    pub fn nic_stats(&self) -> NicStats {
        self.dev.nic.load()
    }
    /// Verdict counts of this port's receive path (receiver port; zero for the sender's).
    pub fn verdicts(&self) -> VerdictCounts {
        self.tally.0
    }

    /// E.g. "dpdk net_af_packet0 (net_af_packet) 198.18.160.1:7447 1 RX queue(s) ...".
    pub fn describe(&self) -> String {
        let d = &self.dev;
        let role = match self.role {
            Role::Receiver => format!(
                "{} RX queue(s){} + TX queue 0",
                d.rx_queues,
                if d.rss { " (RSS)" } else { "" }
            ),
            Role::Sender => format!(
                "TX queue {} (STATUS/NAK port {} via the receiver's queues)",
                self.tx_queue, d.feedback_port
            ),
        };
        format!(
            "dpdk {} ({}) {} {role}, {} mbufs on hugepages, policy in user space; EAL: {}",
            d.name, d.driver, self.local, d.mbufs, d.eal_args
        )
    }

    /// Takes a new policy table from the mirror, if one is waiting (no allocation here: the
    /// old table goes back to the mirror thread to be freed).
    #[inline]
    fn take_policy(&mut self) {
        if let Some(mut fresh) = self.policy_in.pop() {
            fresh.carry_buckets_from(&self.policy);
            let old = std::mem::replace(&mut self.policy, *fresh);
            // The queue has room: the mirror sends a table only after taking the last one back.
            let _ = self.policy_out.push(Box::new(old));
        }
    }

    /// Calls `f(src, udp_payload)` for up to `max` received datagrams; returns how many.
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        match self.role {
            Role::Receiver => self.poll_receiver(max, f),
            Role::Sender => self.poll_feedback(max, f),
        }
    }

    fn poll_receiver(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        self.take_policy();
        let (mut delivered, mut any) = (0, false);
        let queues = self.dev.rx_queues;
        for step in 0..queues {
            if delivered >= max {
                break;
            }
            let q = (self.next_rx_queue + step) % queues;
            let want = (max - delivered).min(BURST_MAX) as u16;
            // SAFETY: `rx` has room for BURST_MAX >= want pointers; the port and queue exist;
            // each RX queue is polled by this thread only.
            let got =
                unsafe { sys::ms_dpdk_rx_burst(self.dev.port_id, q, self.rx.as_mut_ptr(), want) };
            if got == 0 {
                continue;
            }
            any = true;
            let now_ns = self.epoch.elapsed().as_nanos() as u64 + 1;
            for i in 0..usize::from(got) {
                let m = self.rx[i];
                delivered += self.handle_frame(m, now_ns, f);
            }
        }
        self.next_rx_queue = (self.next_rx_queue + 1) % queues;
        if any {
            self.flush_tx();
            self.publish_verdicts();
        }
        self.stats.rx_datagrams += delivered as u64;
        delivered
    }

    /// One received mbuf: classify, policy, deliver or hand over; the mbuf is freed or moved.
    fn handle_frame(
        &mut self,
        m: *mut sys::rte_mbuf,
        now_ns: u64,
        f: &mut impl FnMut(SocketAddr, &[u8]),
    ) -> usize {
        let (mut len, mut segs) = (0u16, 0u16);
        // SAFETY: `m` came from rx_burst and is ours until freed; data/len describe its first
        // segment, valid while we hold it.
        let frame = unsafe {
            let data = sys::ms_dpdk_mbuf_data(m, &mut len, &mut segs);
            std::slice::from_raw_parts(data, usize::from(len))
        };
        let mut delivered = 0;
        let mut keep = false;
        if segs != 1 {
            self.dpdk_stats.rx_multi_segment += 1;
            self.stats.rx_errors += 1;
            self.tally.count(Verdict::DropBadLength);
        } else {
            match classify(frame, self.local.port()) {
                Classified::Data {
                    datagram,
                    stream_id,
                } => {
                    let v = self.policy.judge(*datagram.src.ip(), stream_id, now_ns);
                    self.tally.count(v);
                    if v == Verdict::Redirect {
                        self.dev
                            .neighbours
                            .learn(*datagram.src.ip(), datagram.src_mac);
                        f(SocketAddr::V4(datagram.src), datagram.payload);
                        delivered = 1;
                    }
                }
                Classified::OtherPort(d) => {
                    self.tally.count(Verdict::PassOtherPort);
                    if d.dst_port == self.dev.feedback_port && self.dev.feedback_port != 0 {
                        self.dev.neighbours.learn(*d.src.ip(), d.src_mac);
                        keep = true;
                    }
                }
                Classified::Arp(body) => {
                    self.tally.count(Verdict::PassNotIp);
                    if let Some(a) = arp::parse(body) {
                        self.answer_arp(a);
                    }
                }
                Classified::Done(v) => {
                    self.tally.count(v);
                    if matches!(
                        v,
                        Verdict::DropTruncated | Verdict::DropBadHeader | Verdict::DropBadLength
                    ) {
                        self.stats.rx_errors += 1;
                    }
                }
            }
        }
        if keep {
            if let Some(nn) = NonNull::new(m) {
                if let Err(back) = self.dev.feedback.push(Mbuf(nn)) {
                    self.dev.nic.add(NIC_FEEDBACK_DROPPED, 1);
                    // SAFETY: the queue refused it, so we still own the mbuf.
                    unsafe { sys::ms_dpdk_mbuf_free(back.0.as_ptr()) };
                }
            }
        } else {
            // SAFETY: `m` is ours (from rx_burst) and `frame` is not used after this.
            unsafe { sys::ms_dpdk_mbuf_free(m) };
        }
        delivered
    }

    /// Learns the sender of every ARP packet; answers requests for our address.
    fn answer_arp(&mut self, a: arp::Arp) {
        if a.sender_ip != Ipv4Addr::UNSPECIFIED {
            self.dev.neighbours.learn(a.sender_ip, a.sender_mac);
        }
        if a.op == arp::OP_REQUEST && a.target_ip == *self.local.ip() {
            let reply = arp::frame(
                arp::OP_REPLY,
                self.dev.local_mac,
                *self.local.ip(),
                a.sender_mac,
                a.sender_mac,
                a.sender_ip,
            );
            if self.queue_frame(&[&reply]) {
                self.dpdk_stats.arp_replies_sent += 1;
            }
        }
    }

    /// Asks the link who has `ip` (the reply is learned by the receiver).
    fn request_arp(&mut self, ip: Ipv4Addr) {
        let req = arp::frame(
            arp::OP_REQUEST,
            self.dev.local_mac,
            *self.local.ip(),
            [0xFF; 6],
            [0; 6],
            ip,
        );
        if self.queue_frame(&[&req]) {
            self.dpdk_stats.arp_requests_sent += 1;
        }
    }

    /// Counts into the shared cells once per burst (the mirror copies them to the maps).
    fn publish_verdicts(&mut self) {
        for (cell, &v) in self.verdicts.0.iter().zip(self.tally.0 .0.iter()) {
            cell.store(v, Ordering::Relaxed);
        }
    }

    /// The sender's STATUS/NAK: mbufs the receiver's queues took for our port.
    fn poll_feedback(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        let mut delivered = 0;
        while delivered < max {
            let Some(m) = self.dev.feedback.pop() else {
                break;
            };
            let (mut len, mut segs) = (0u16, 0u16);
            // SAFETY: the queue moved ownership of this single-segment mbuf to us.
            let frame = unsafe {
                let data = sys::ms_dpdk_mbuf_data(m.0.as_ptr(), &mut len, &mut segs);
                std::slice::from_raw_parts(data, usize::from(len))
            };
            if let Classified::OtherPort(d) = classify(frame, 0) {
                f(SocketAddr::V4(d.src), d.payload);
                delivered += 1;
            }
            // SAFETY: we own the mbuf; `frame` is not used after this.
            unsafe { sys::ms_dpdk_mbuf_free(m.0.as_ptr()) };
        }
        self.stats.rx_datagrams += delivered as u64;
        delivered
    }

    /// Copies `parts` into a fresh mbuf queued for TX; false when the pool is empty or the
    /// batch is full (counted).
    fn queue_frame(&mut self, parts: &[&[u8]]) -> bool {
        if self.tx_pending.len() >= TX_PENDING_MAX {
            self.flush_tx();
            if self.tx_pending.len() >= TX_PENDING_MAX {
                self.stats.tx_queue_full += 1;
                return false;
            }
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: the pool lives as long as the device; a NULL result is handled.
        let m = unsafe { sys::ms_dpdk_mbuf_alloc(self.dev.pool.0.as_ptr()) };
        if m.is_null() {
            self.dev.nic.add(NIC_TX_NO_MBUF, 1);
            self.stats.tx_queue_full += 1;
            return false;
        }
        // SAFETY: `m` is a fresh mbuf we own; append returns room for `total` bytes or NULL.
        let dst = unsafe { sys::ms_dpdk_mbuf_append(m, total as u16) };
        if dst.is_null() {
            // SAFETY: still ours; nothing was queued.
            unsafe { sys::ms_dpdk_mbuf_free(m) };
            self.dpdk_stats.tx_unsupported += 1;
            return false;
        }
        // SAFETY: `dst` points to `total` writable bytes inside the mbuf's data room.
        let out = unsafe { std::slice::from_raw_parts_mut(dst, total) };
        let mut at = 0;
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.tx_pending.push(m);
        true
    }

    /// Queues one UDP payload to `dst` (MAC from the neighbour table; unknown: an ARP request
    /// goes out and the send is counted as `tx_no_neighbour`).
    pub fn send(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        let SocketAddr::V4(dst) = dst else {
            self.dpdk_stats.tx_unsupported += 1;
            return false;
        };
        let Some(mac) = self.dev.neighbours.get(*dst.ip()) else {
            self.dpdk_stats.tx_no_neighbour += 1;
            self.stats.tx_errors += 1;
            self.request_arp(*dst.ip());
            return false;
        };
        self.send_to_mac(dst, mac, payload)
    }

    /// Like [`DpdkPort::send`] to a MAC the caller resolved.
    pub fn send_to_mac(&mut self, dst: SocketAddrV4, dst_mac: [u8; 6], payload: &[u8]) -> bool {
        if payload.len() > PAYLOAD_BYTES_MAX {
            self.dpdk_stats.tx_unsupported += 1;
            self.stats.tx_errors += 1;
            return false;
        }
        self.ip_id = self.ip_id.wrapping_add(1);
        let headers = write_headers(
            &TxAddrs {
                src_mac: self.dev.local_mac,
                dst_mac,
                src: self.local,
                dst,
                ip_id: self.ip_id,
            },
            payload.len(),
        );
        self.queue_frame(&[&headers, payload])
    }

    /// Hands queued frames to the port's TX queue; frames it does not take are freed (counted).
    pub fn flush_tx(&mut self) -> usize {
        let mut sent = 0;
        while !self.tx_pending.is_empty() {
            let n = self.tx_pending.len().min(BURST_MAX) as u16;
            // SAFETY: the first n pending mbufs are ours, filled by queue_frame; the TX queue
            // is used by this thread only. tx_burst takes ownership of the first `took`.
            let took = unsafe {
                sys::ms_dpdk_tx_burst(
                    self.dev.port_id,
                    self.tx_queue,
                    self.tx_pending.as_mut_ptr(),
                    n,
                )
            };
            sent += usize::from(took);
            if took < n {
                // The NIC queue is full: drop the rest of this batch (the protocol retransmits).
                let rest = &mut self.tx_pending[usize::from(took)..usize::from(n)];
                // SAFETY: the port did not take these mbufs; they are still ours.
                unsafe { sys::ms_dpdk_mbuf_free_bulk(rest.as_mut_ptr(), rest.len() as u32) };
                self.stats.tx_queue_full += u64::from(n - took);
            }
            self.tx_pending.drain(..usize::from(n));
        }
        self.stats.tx_datagrams += sent as u64;
        sent
    }
}

impl Drop for DpdkPort {
    fn drop(&mut self) {
        if !self.tx_pending.is_empty() {
            // SAFETY: pending mbufs are ours and were never handed to the port.
            unsafe {
                sys::ms_dpdk_mbuf_free_bulk(
                    self.tx_pending.as_mut_ptr(),
                    self.tx_pending.len() as u32,
                )
            };
            self.tx_pending.clear();
        }
    }
}

impl std::fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn available_ports() -> u16 {
    // SAFETY: EAL is running (callers hold an Eal or a Device).
    unsafe { sys::rte_eth_dev_count_avail() }
}

fn find_port(name: &str) -> Result<u16, DpdkPortOpenError> {
    let not_found = || DpdkPortOpenError::NoSuchPort {
        name: name.to_string(),
        available: available_ports(),
    };
    let c = std::ffi::CString::new(name).map_err(|_| not_found())?;
    let mut id = 0u16;
    // SAFETY: `c` is NUL-terminated and outlives the call; `id` is a valid out-parameter.
    let rc = unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    if rc == 0 {
        Ok(id)
    } else {
        Err(not_found())
    }
}

fn port_info(port_id: u16) -> Option<(sys::ms_dpdk_port_info, String)> {
    let mut info = sys::ms_dpdk_port_info::zeroed();
    // SAFETY: `info` is a valid out-struct; an invalid port id returns an error code.
    let rc = unsafe { sys::ms_dpdk_port_info(port_id, &mut info) };
    (rc == 0).then(|| {
        let driver = c_text(&info.driver);
        (info, driver)
    })
}

/// Pools are named per process (DPDK names are global within the EAL instance).
fn create_pool(mbufs: u32, socket: i32) -> Result<Pool, DpdkPortOpenError> {
    let name =
        std::ffi::CString::new(format!("ms_mbufs_{}", std::process::id())).map_err(|_| {
            DpdkPortOpenError::Mempool {
                mbufs,
                detail: "bad pool name".into(),
            }
        })?;
    // SAFETY: EAL is running; `name` outlives the call; the sizes are in range (checked).
    let p = unsafe {
        sys::rte_pktmbuf_pool_create(
            name.as_ptr(),
            mbufs,
            MBUF_CACHE,
            0,
            MBUF_DATA_ROOM_BYTES,
            socket.max(-1),
        )
    };
    NonNull::new(p)
        .map(Pool)
        .ok_or_else(|| DpdkPortOpenError::Mempool {
            mbufs,
            detail: eal::errno_text(),
        })
}

fn start_port(
    port_id: u16,
    name: &str,
    rx: u16,
    tx: u16,
    pool: &Pool,
) -> Result<(), DpdkPortOpenError> {
    let mut stage = 0i32;
    // SAFETY: the port exists and is stopped; the pool lives as long as the device; `stage`
    // is a valid out-parameter.
    let rc = unsafe {
        sys::ms_dpdk_port_start(
            port_id,
            rx,
            tx,
            RX_DESCRIPTORS,
            TX_DESCRIPTORS,
            pool.0.as_ptr(),
            1,
            &mut stage,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    Err(DpdkPortOpenError::Start {
        name: name.to_string(),
        stage: match stage {
            0 => "configure",
            1 => "RX queue set-up",
            2 => "TX queue set-up",
            _ => "start",
        },
        detail: eal::code_text(rc),
    })
}

/// Reads the pinned maps into a snapshot (the mirror's cold path).
fn read_snapshot(maps: &PolicyMaps) -> Result<PolicySnapshot, String> {
    let config = maps.config().map_err(|e| e.to_string())?;
    let mut snap = PolicySnapshot {
        default_allow: config.default_allow(),
        policy: maps.policy_entries().map_err(|e| e.to_string())?,
        rate: maps
            .rate_entries()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|(src, b)| PolicySnapshot::rate_entry(*src, b))
            .collect(),
    };
    snap.normalize();
    Ok(snap)
}

/// The thread that keeps the receiver's policy in line with the pinned maps, copies its verdict
/// counts into them and refreshes the port figures, every [`POLICY_REFRESH`].
struct PolicyMirror {
    maps: PolicyMaps,
    dev: std::sync::Weak<Device>,
    last: PolicySnapshot,
    to_port: Arc<ArrayQueue<Box<PolicyTable>>>,
    from_port: Arc<ArrayQueue<Box<PolicyTable>>>,
    verdicts: Arc<VerdictCells>,
    stop: Arc<AtomicBool>,
}

impl PolicyMirror {
    fn run(mut self) {
        let mut stored = VerdictCounts::default();
        let mut pending: Option<PolicySnapshot> = None;
        while !self.stop.load(Ordering::Acquire) {
            // Tables the port gave back are freed here, off its thread.
            while self.from_port.pop().is_some() {}
            if let Ok(snap) = read_snapshot(&self.maps) {
                if snap != self.last {
                    pending = Some(snap);
                }
            }
            // One table in flight at a time: the next waits until the port took the last.
            if let Some(snap) = pending.take() {
                if self.to_port.is_empty() {
                    let table = Box::new(PolicyTable::from_snapshot(&snap));
                    let _ = self.to_port.push(table);
                    self.last = snap;
                } else {
                    pending = Some(snap);
                }
            }
            let counts = self.verdicts.load();
            if counts != stored && self.maps.store_counters(&counts).is_ok() {
                stored = counts;
            }
            if let Some(dev) = self.dev.upgrade() {
                dev.refresh_nic();
            }
            std::thread::sleep(POLICY_REFRESH);
        }
        let counts = self.verdicts.load();
        let _ = self.maps.store_counters(&counts);
    }
}
