//! AF_XDP backend: one AF_XDP socket per RX queue (xsk-rs 0.11 over libxdp),
//! fed by the xdp-programs XDP program through its XSKMAP.
//!
//! ```text
//!  NIC/veth RX queue q --XDP program (policy, rate limit)--> ms_xsks[q] --> RX ring
//!        ^                                                                   |
//!        |  fill ring  <-- fill stash <-- frames after poll_rx -------------+
//!  UMEM (per queue): frames [0, n/2) circulate RX (fill -> RX -> fill),
//!                    frames [n/2, n) circulate TX (free -> TX ring -> completion -> free)
//!  TX: send() writes Ethernet+IPv4+UDP+payload into a free frame; flush_tx()
//!      produces the batch on queue 0's TX ring and kicks the kernel (copy mode
//!      always needs the sendto kick).
//! ```
//!
//! - Zero-copy is asked for first; when the driver refuses (veth: EOPNOTSUPP)
//!   the socket binds in copy mode, and [`XskPort::describe`] says which and why.
//! - The UMEM is mapped on 2 MiB hugepages when the pool allows (its length is
//!   a multiple of 2 MiB), else on 4 KiB pages; `describe` says which.
//! - Fill-ring rule (docs/PLATFORM): at most half the fill ring is posted
//!   (fill ring = 2 x RX frames); frames that do not fit wait in a stash.
//! - Peer MACs are learned from frames they sent; for a peer that never spoke
//!   the kernel neighbour table (`/proc/thread-self/net/arp`, cold path) is read once.
//! - [`XskPort::open_tx`] binds a TX-only socket (every UMEM frame for TX, nothing
//!   on the fill ring, no XSKMAP slot) for the sender agent, on the queue after the
//!   receiver's; it sends with [`XskPort::send_to_mac`] to MACs the conductor
//!   resolved from the neighbour table when the subscriber arrived (it refuses a
//!   subscriber it cannot resolve), so the TX path does no lookup. In copy mode `flush_tx` kicks until the kernel took every
//!   descriptor (a kick sends at most 32), bounded by `TX_KICKS_MAX`.
//! - Every buffer is sized at `open`; the duty cycle does not allocate.

pub mod packet;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};

use xdp_programs::{PolicyMaps, PolicyMapsError};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use self::packet::{parse_udp_ipv4, write_headers, RxDrop, TxAddrs, TX_HEADERS_BYTES};
use super::NetPortStats;

/// UMEM frame size: one 4 KiB page (the largest aligned-mode chunk).
pub const FRAME_BYTES: u32 = 4096;
/// Smallest and largest UMEM (frames per queue); a multiple of
/// `FRAMES_PER_HUGEPAGE` so the mapping is a whole number of 2 MiB pages.
pub const FRAMES_PER_QUEUE_MIN: u32 = 1024;
pub const FRAMES_PER_QUEUE_MAX: u32 = 65_536;
pub const FRAMES_PER_HUGEPAGE: u32 = (2 << 20) / FRAME_BYTES;
/// Frames handled per ring operation (RX consume, TX produce, completions).
pub const BATCH_MAX: usize = 256;
/// sendto() kicks per flush at most (copy mode sends up to 32 frames per kick).
pub const TX_KICKS_MAX: usize = BATCH_MAX / 32 + 1;
/// Peers whose MAC address is remembered.
pub const NEIGHBOURS_MAX: usize = 64;
/// Largest UDP payload this backend carries: the frame minus the kernel's
/// XDP headroom (256) and the 42 header bytes. Bigger frames need the UDP
/// backend (AF_XDP multi-buffer is not used).
pub const PAYLOAD_BYTES_MAX: usize = FRAME_BYTES as usize - 256 - TX_HEADERS_BYTES;

const _: () = assert!(FRAMES_PER_QUEUE_MIN.is_multiple_of(FRAMES_PER_HUGEPAGE));
const _: () = assert!(FRAMES_PER_QUEUE_MAX.is_multiple_of(FRAMES_PER_HUGEPAGE));
const _: () =
    assert!(FRAMES_PER_QUEUE_MIN.is_power_of_two() && FRAMES_PER_QUEUE_MAX.is_power_of_two());
const _: () = assert!(BATCH_MAX <= (FRAMES_PER_QUEUE_MIN / 4) as usize);
const _: () =
    assert!(PAYLOAD_BYTES_MAX >= xdp_programs::abi_consts::FRAME_BYTES_MTU1500_IPV4 as usize);

/// What to open.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Interface in the caller's network namespace (e.g. "veth0").
    pub interface: String,
    /// Our IPv4 address and data port on that interface.
    pub local: SocketAddrV4,
    /// RX queues 0..queues get a socket each (veth has 1 unless `ethtool -L`).
    pub queues: u32,
    /// UMEM frames per queue: a power of two in FRAMES_PER_QUEUE_MIN..=MAX.
    pub frames_per_queue: u32,
    /// Try to map the UMEM on hugepages (falls back to 4 KiB pages, reported).
    pub hugepages: bool,
}

impl XskConfig {
    pub fn new(interface: &str, local: SocketAddrV4) -> Self {
        Self {
            interface: interface.to_string(),
            local,
            queues: 1,
            frames_per_queue: 8192,
            hugepages: true,
        }
    }
}

/// Why the AF_XDP port could not start. Each message says what to do;
/// `--backend udp` always works where XDP does not.
#[derive(Debug, thiserror::Error)]
pub enum XskPortOpenError {
    #[error("frames_per_queue {value} must be a power of two in {FRAMES_PER_QUEUE_MIN}..={FRAMES_PER_QUEUE_MAX}; queues {queues} in 1..={max_queues}", max_queues = xdp_programs::abi_consts::XSK_QUEUES_MAX)]
    Limits { value: u32, queues: u32 },
    #[error("interface `{iface}` not found or has no MAC address ({source}): check `ip link` in this namespace, or use --backend udp")]
    Interface { iface: String, source: io::Error },
    #[error("the XDP program is not attached to `{iface}`: {source} (the node attaches it for --backend afxdp; or use --backend udp)")]
    Maps {
        iface: String,
        source: Box<PolicyMapsError>,
    },
    #[error("cannot create the UMEM for queue {queue}: {detail} (raise `ulimit -l` / run as root, or use --backend udp)")]
    Umem { queue: u32, detail: String },
    #[error("cannot bind an AF_XDP socket to `{iface}` queue {queue} (zero-copy: {zero_copy}; copy mode: {copy}): needs CAP_NET_ADMIN + CAP_BPF, kernel CONFIG_XDP_SOCKETS and an existing queue; or use --backend udp")]
    Bind {
        iface: String,
        queue: u32,
        zero_copy: String,
        copy: String,
    },
    #[error("cannot bind the sender's TX-only AF_XDP socket to `{iface}` queue {queue} ({detail}): the AF_XDP sender transmits on the queue after the receiver's, so the interface needs at least {} TX queues (`ethtool -L {iface} combined|tx N`; veth: `numtxqueues`), or use --backend udp", queue + 1)]
    TxQueue {
        iface: String,
        queue: u32,
        detail: String,
    },
    #[error("cannot register queue {queue}'s socket in the XSKMAP of `{iface}`: {source}")]
    Register {
        iface: String,
        queue: u32,
        source: Box<PolicyMapsError>,
    },
}

/// Events only this backend has (on top of [`NetPortStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames that reached the socket but are not IPv4/UDP (or are fragments).
    pub rx_not_udp_ipv4: u64,
    /// Bad IHL or lengths that disagree.
    pub rx_malformed: u64,
    /// UDP to another port.
    pub rx_other_port: u64,
    /// Sends to a peer whose MAC is unknown (never spoke, not in the neighbour table).
    pub tx_no_neighbour: u64,
    /// Sends larger than PAYLOAD_BYTES_MAX or to a non-IPv4 address.
    pub tx_unsupported: u64,
    /// TX kicks (sendto) the kernel refused; the frames stay queued.
    pub tx_kick_errors: u64,
}

/// Kernel counters of the sockets (XDP_STATISTICS), summed over queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

struct XskQueue {
    id: u32,
    umem: Umem,
    fill: FillQueue,
    comp: CompQueue,
    rx: RxQueue,
    tx: TxQueue,
    /// RX frames waiting to go back on the fill ring.
    fill_stash: Vec<FrameDesc>,
    /// TX frames free for `send`.
    tx_free: Vec<FrameDesc>,
    /// Written by `send`, not yet on the TX ring.
    tx_pending: Vec<FrameDesc>,
    /// Scratch for consume calls (BATCH_MAX).
    batch: Vec<FrameDesc>,
    /// Frames this queue's RX ring delivered.
    rx_frames: u64,
    /// Descriptors the TX ring holds.
    tx_ring_size: u32,
}

/// An AF_XDP port: the [`NetPort::AfXdp`](super::NetPort::AfXdp) backend.
pub struct XskPort {
    iface: String,
    local: SocketAddrV4,
    local_mac: [u8; 6],
    queues: Vec<XskQueue>,
    next_queue: usize,
    /// The XSKMAP owner (None: a TX-only port, registered nowhere).
    maps: Option<Box<PolicyMaps>>,
    zero_copy: bool,
    zero_copy_refusal: Option<String>,
    hugepages: bool,
    hugepage_refusal: Option<String>,
    neighbours: Box<[(Ipv4Addr, [u8; 6]); NEIGHBOURS_MAX]>,
    neighbours_len: usize,
    neighbours_next: usize,
    ip_id: u16,
    frames_per_queue: u32,
    stats: NetPortStats,
    xsk_stats: XskStats,
}

/// The MAC address of `iface` in the calling thread's network namespace
/// (netlink via getifaddrs; /sys/class/net would show the mounting process's).
fn read_mac(iface: &str) -> io::Result<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    for ifa in addrs {
        if ifa.interface_name != iface {
            continue;
        }
        if let Some(mac) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_link_addr())
            .and_then(|l| l.addr())
        {
            return Ok(mac);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no such interface with a link-layer address",
    ))
}

/// ATF_COM in the flags column of /proc/net/arp: the entry has a link-layer address (a
/// reachable, stale or permanent neighbour; permanent ones also carry ATF_PERM).
const ATF_COM: u32 = 0x2;

/// The resolved entry for `ip` on `iface` in the kernel neighbour table (ARP cache) of the
/// calling thread's network namespace; None when there is none or it is incomplete.
/// Cold path: it reads a /proc file.
pub fn kernel_neighbour(iface: &str, ip: Ipv4Addr) -> Option<[u8; 6]> {
    // thread-self: the namespace of this thread (setns is per thread).
    let table = std::fs::read_to_string("/proc/thread-self/net/arp").ok()?;
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device
        let complete = cols.len() == 6
            && u32::from_str_radix(cols[2].trim_start_matches("0x"), 16)
                .is_ok_and(|f| f & ATF_COM != 0);
        if complete && cols[5] == iface && cols[0].parse() == Ok(ip) {
            let mut mac = [0u8; 6];
            for (b, part) in mac.iter_mut().zip(cols[3].split(':')) {
                *b = u8::from_str_radix(part, 16).ok()?;
            }
            return Some(mac);
        }
    }
    None
}

/// "reason: cause" (xsk-rs puts the errno in the source, e.g. EOPNOTSUPP).
fn error_chain(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

struct BoundQueue {
    queue: XskQueue,
    zero_copy: bool,
    zero_copy_refusal: Option<String>,
    hugepages: bool,
    hugepage_refusal: Option<String>,
}

/// Binds the socket of queue `id`. `tx_only`: every UMEM frame is for TX and none is posted to
/// the fill ring (the sender's port: it receives nothing on this socket).
fn open_queue(cfg: &XskConfig, id: u32, tx_only: bool) -> Result<BoundQueue, XskPortOpenError> {
    let frames = cfg.frames_per_queue;
    let umem_err = |detail: String| XskPortOpenError::Umem { queue: id, detail };
    let size = |n: u32| QueueSize::new(n).map_err(|e| umem_err(e.to_string()));
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_BYTES).map_err(|e| umem_err(e.to_string()))?)
        // Fill ring = 2 x the RX frames posted (the copy-mode fill-ring rule).
        .fill_queue_size(size(frames)?)
        .comp_queue_size(size(frames / 2)?)
        .build()
        .map_err(|e| umem_err(e.to_string()))?;
    let sock_cfg = |flags: BindFlags| {
        SocketConfig::builder()
            .rx_queue_size(QueueSize::new(frames / 2).expect("power of two"))
            .tx_queue_size(QueueSize::new(frames / 2).expect("power of two"))
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
            .build()
    };
    let iface: Interface = cfg
        .interface
        .parse()
        .map_err(|_| XskPortOpenError::Interface {
            iface: cfg.interface.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"),
        })?;
    let count = NonZeroU32::new(frames).expect("validated non-zero");
    let mut zero_copy_refusal = None;
    for zero_copy in [true, false] {
        let (umem, descs, hugepages, hugepage_refusal) = if cfg.hugepages {
            match Umem::new(umem_cfg, count, true) {
                Ok((u, d)) => (u, d, true, None),
                Err(e) => {
                    let (u, d) =
                        Umem::new(umem_cfg, count, false).map_err(|e| umem_err(error_chain(&e)))?;
                    let why = error_chain(&e);
                    (u, d, false, Some(format!("hugepage UMEM refused: {why}")))
                }
            }
        } else {
            let (u, d) =
                Umem::new(umem_cfg, count, false).map_err(|e| umem_err(error_chain(&e)))?;
            (u, d, false, Some("hugepages not requested".to_string()))
        };
        let flags = if zero_copy {
            BindFlags::XDP_ZEROCOPY
        } else {
            BindFlags::XDP_COPY
        };
        // SAFETY: the UMEM was created just above and is not shared with any
        // other socket, so no (interface, queue) pair is bound from it yet;
        // INHIBIT_PROG_LOAD is set, so libxdp never loads or detaches a program.
        let bound = unsafe { xsk_rs::Socket::new(sock_cfg(flags), &umem, &iface, id) };
        match bound {
            Ok((tx, rx, Some((mut fill, comp)))) => {
                let half = if tx_only { 0 } else { frames as usize / 2 };
                let (rx_frames, tx_frames) = descs.split_at(half);
                // SAFETY: these frames belong to `umem` and are handed to the
                // kernel once; we touch them again only after the RX ring
                // returns them.
                let posted = unsafe { fill.produce(rx_frames) };
                let mut fill_stash = Vec::with_capacity(half);
                fill_stash.extend_from_slice(&rx_frames[posted..]);
                let mut tx_free = Vec::with_capacity(tx_frames.len());
                tx_free.extend_from_slice(tx_frames);
                return Ok(BoundQueue {
                    queue: XskQueue {
                        id,
                        umem,
                        fill,
                        comp,
                        rx,
                        tx,
                        fill_stash,
                        tx_free,
                        tx_pending: Vec::with_capacity(tx_frames.len()),
                        batch: vec![FrameDesc::default(); BATCH_MAX],
                        rx_frames: 0,
                        tx_ring_size: frames / 2,
                    },
                    zero_copy,
                    zero_copy_refusal,
                    hugepages,
                    hugepage_refusal,
                });
            }
            Ok(_) => {
                return Err(umem_err(
                    "libxdp returned no fill/completion ring for an unshared UMEM".into(),
                ))
            }
            Err(e) if zero_copy => zero_copy_refusal = Some(error_chain(&e)),
            Err(e) => {
                return Err(XskPortOpenError::Bind {
                    iface: cfg.interface.clone(),
                    queue: id,
                    zero_copy: zero_copy_refusal.unwrap_or_default(),
                    copy: error_chain(&e),
                })
            }
        }
    }
    unreachable!("the copy-mode attempt returns")
}

/// How the sockets of a port bound (for `describe`).
struct BoundModes {
    zero_copy: bool,
    zero_copy_refusal: Option<String>,
    hugepages: bool,
    hugepage_refusal: Option<String>,
}

/// Checks the UMEM size and `queues` against the limits; the interface's MAC address.
fn check_and_read_mac(cfg: &XskConfig, queues: u32) -> Result<[u8; 6], XskPortOpenError> {
    let max_queues = xdp_programs::abi_consts::XSK_QUEUES_MAX;
    if !cfg.frames_per_queue.is_power_of_two()
        || !(FRAMES_PER_QUEUE_MIN..=FRAMES_PER_QUEUE_MAX).contains(&cfg.frames_per_queue)
        || !(1..=max_queues).contains(&queues)
    {
        return Err(XskPortOpenError::Limits {
            value: cfg.frames_per_queue,
            queues,
        });
    }
    read_mac(&cfg.interface).map_err(|source| XskPortOpenError::Interface {
        iface: cfg.interface.clone(),
        source,
    })
}

impl XskPort {
    /// Binds one AF_XDP socket per queue and registers it in the XSKMAP of the
    /// XDP program attached to `cfg.interface` (attach it first).
    pub fn open(cfg: &XskConfig) -> Result<XskPort, XskPortOpenError> {
        let local_mac = check_and_read_mac(cfg, cfg.queues)?;
        let mut maps =
            PolicyMaps::open(&cfg.interface).map_err(|source| XskPortOpenError::Maps {
                iface: cfg.interface.clone(),
                source: Box::new(source),
            })?;
        let mut queues = Vec::with_capacity(cfg.queues as usize);
        let (mut zero_copy, mut zc_refusal, mut hugepages, mut hp_refusal) =
            (true, None, true, None);
        for id in 0..cfg.queues {
            let b = open_queue(cfg, id, false)?;
            zero_copy &= b.zero_copy;
            hugepages &= b.hugepages;
            zc_refusal = zc_refusal.or(b.zero_copy_refusal);
            hp_refusal = hp_refusal.or(b.hugepage_refusal);
            let raw = b.queue.rx.fd().as_raw_fd();
            // SAFETY: `raw` is the fd of the socket owned by `b.queue`, which
            // outlives this borrow (it is used only for the map update below).
            let fd = unsafe { BorrowedFd::borrow_raw(raw) };
            maps.set_xsk(id, &fd)
                .map_err(|source| XskPortOpenError::Register {
                    iface: cfg.interface.clone(),
                    queue: id,
                    source: Box::new(source),
                })?;
            queues.push(b.queue);
        }
        let modes = BoundModes {
            zero_copy,
            zero_copy_refusal: zc_refusal,
            hugepages,
            hugepage_refusal: hp_refusal,
        };
        Ok(Self::assemble(
            cfg,
            local_mac,
            queues,
            Some(Box::new(maps)),
            modes,
        ))
    }

    fn assemble(
        cfg: &XskConfig,
        local_mac: [u8; 6],
        queues: Vec<XskQueue>,
        maps: Option<Box<PolicyMaps>>,
        modes: BoundModes,
    ) -> XskPort {
        XskPort {
            iface: cfg.interface.clone(),
            local: cfg.local,
            local_mac,
            queues,
            next_queue: 0,
            maps,
            zero_copy: modes.zero_copy,
            zero_copy_refusal: modes.zero_copy_refusal,
            hugepages: modes.hugepages,
            hugepage_refusal: modes.hugepage_refusal,
            neighbours: Box::new([(Ipv4Addr::UNSPECIFIED, [0; 6]); NEIGHBOURS_MAX]),
            neighbours_len: 0,
            neighbours_next: 0,
            ip_id: 0,
            frames_per_queue: cfg.frames_per_queue,
            stats: NetPortStats::default(),
            xsk_stats: XskStats::default(),
        }
    }

    /// Binds one TX-only AF_XDP socket on queue `queue` of `cfg.interface` (the sender's port:
    /// frames go out through its TX ring with `cfg.local` as their source; it is registered in
    /// no XSKMAP slot, so it receives nothing). The queue must exist as a TX queue and must not
    /// be one of the receiver's: the node uses the queue after the receiver's last one.
    pub fn open_tx(cfg: &XskConfig, queue: u32) -> Result<XskPort, XskPortOpenError> {
        let local_mac = check_and_read_mac(cfg, 1)?;
        let b = open_queue(cfg, queue, true).map_err(|e| match e {
            XskPortOpenError::Bind {
                iface,
                queue,
                zero_copy,
                copy,
            } => XskPortOpenError::TxQueue {
                iface,
                queue,
                detail: format!("zero-copy: {zero_copy}; copy mode: {copy}"),
            },
            other => other,
        })?;
        let modes = BoundModes {
            zero_copy: b.zero_copy,
            zero_copy_refusal: b.zero_copy_refusal,
            hugepages: b.hugepages,
            hugepage_refusal: b.hugepage_refusal,
        };
        Ok(Self::assemble(cfg, local_mac, vec![b.queue], None, modes))
    }

    /// Remembers `mac` as the link-layer address of `ip`.
    fn learn_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        learn_into(
            &mut self.neighbours,
            &mut self.neighbours_len,
            &mut self.neighbours_next,
            ip,
            mac,
        );
    }

    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::V4(self.local)
    }

    /// The interface the sockets are bound to.
    pub fn interface(&self) -> &str {
        &self.iface
    }
    pub fn stats(&self) -> NetPortStats {
        self.stats
    }
    pub fn xsk_stats(&self) -> XskStats {
        self.xsk_stats
    }
    /// True when the sockets run in zero-copy mode (false: copy mode).
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }
    /// True when every UMEM is on hugepages.
    pub fn is_on_hugepages(&self) -> bool {
        self.hugepages
    }

    /// Frames received per RX queue (index = queue id).
    pub fn rx_frames_per_queue(&self) -> Vec<u64> {
        self.queues.iter().map(|q| q.rx_frames).collect()
    }

    /// Kernel socket statistics summed over the queues.
    pub fn kernel_stats(&self) -> io::Result<XskKernelStats> {
        let mut k = XskKernelStats::default();
        for q in &self.queues {
            let s = q.rx.fd().xdp_statistics()?;
            k.rx_dropped += s.rx_dropped();
            k.rx_ring_full += s.rx_ring_full();
            k.rx_fill_ring_empty += s.rx_fill_ring_empty_descs();
            k.rx_invalid_descs += s.rx_invalid_descs();
            k.tx_invalid_descs += s.tx_invalid_descs();
        }
        Ok(k)
    }

    /// E.g. "afxdp veth0 198.18.100.1:7447 1 queue(s) copy-mode (zero-copy
    /// refused: ...) umem 8192 x 4096 B on hugepages".
    pub fn describe(&self) -> String {
        let mode = if self.zero_copy {
            "zero-copy".to_string()
        } else {
            format!(
                "copy-mode (zero-copy refused: {})",
                self.zero_copy_refusal.as_deref().unwrap_or("unknown")
            )
        };
        let pages = if self.hugepages {
            "on 2 MiB hugepages".to_string()
        } else {
            format!(
                "on 4 KiB pages ({})",
                self.hugepage_refusal.as_deref().unwrap_or("unknown")
            )
        };
        format!(
            "afxdp {} {} {} queue(s) {mode} umem {} x {FRAME_BYTES} B per queue {pages}",
            self.iface,
            self.local,
            self.queues.len(),
            self.frames_per_queue
        )
    }

    fn neighbour(&mut self, ip: Ipv4Addr) -> Option<[u8; 6]> {
        if let Some((_, mac)) = self.neighbours[..self.neighbours_len]
            .iter()
            .find(|(i, _)| *i == ip)
        {
            return Some(*mac);
        }
        // Cold path: a peer that never sent us a frame.
        let mac = kernel_neighbour(&self.iface, ip)?;
        self.learn_neighbour(ip, mac);
        Some(mac)
    }

    /// Calls `f(src, udp_payload)` for up to `max` received datagrams; returns how many.
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        let mut delivered = 0;
        let n_queues = self.queues.len();
        for step in 0..n_queues {
            if delivered >= max {
                break;
            }
            let qi = (self.next_queue + step) % n_queues;
            let port = self.local.port();
            let q = &mut self.queues[qi];
            let want = (max - delivered).min(BATCH_MAX);
            // SAFETY: `batch` only receives descriptors; the frames they name
            // belong to `q.umem` and are ours until we put them back on the
            // fill ring below.
            let got = unsafe { q.rx.consume(&mut q.batch[..want]) };
            q.rx_frames += got as u64;
            for desc in &q.batch[..got] {
                // SAFETY: the RX ring handed this frame to us; nothing else
                // (kernel or user space) writes it until it is re-filled.
                let data = unsafe { q.umem.data(desc) };
                match parse_udp_ipv4(data.contents(), port) {
                    Ok(d) => {
                        delivered += 1;
                        f(SocketAddr::V4(d.src), d.payload);
                        let (ip, mac) = (*d.src.ip(), d.src_mac);
                        // Learn after the callback so the borrow of the frame ends first.
                        let known = self.neighbours[..self.neighbours_len]
                            .iter()
                            .any(|(i, m)| *i == ip && *m == mac);
                        if !known {
                            learn_into(
                                &mut self.neighbours,
                                &mut self.neighbours_len,
                                &mut self.neighbours_next,
                                ip,
                                mac,
                            );
                        }
                    }
                    Err(RxDrop::Truncated) => self.stats.rx_truncated += 1,
                    Err(RxDrop::NotUdpIpv4) => self.xsk_stats.rx_not_udp_ipv4 += 1,
                    Err(RxDrop::Malformed) => {
                        self.xsk_stats.rx_malformed += 1;
                        self.stats.rx_errors += 1;
                    }
                    Err(RxDrop::OtherPort) => self.xsk_stats.rx_other_port += 1,
                }
            }
            q.fill_stash.extend_from_slice(&q.batch[..got]);
            refill(q);
        }
        self.next_queue = (self.next_queue + 1) % n_queues;
        self.stats.rx_datagrams += delivered as u64;
        delivered
    }

    /// Queues one UDP payload to `dst`; false when it cannot be sent now (no
    /// free TX frame, unknown neighbour, not IPv4, too large): counted.
    pub fn send(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        let SocketAddr::V4(dst) = dst else {
            self.xsk_stats.tx_unsupported += 1;
            return false;
        };
        let Some(dst_mac) = self.neighbour(*dst.ip()) else {
            self.xsk_stats.tx_no_neighbour += 1;
            return false;
        };
        self.send_to_mac(dst, dst_mac, payload)
    }

    /// Like [`XskPort::send`] to a peer whose MAC address the caller resolved (no lookup).
    pub fn send_to_mac(&mut self, dst: SocketAddrV4, dst_mac: [u8; 6], payload: &[u8]) -> bool {
        if payload.len() > PAYLOAD_BYTES_MAX {
            self.xsk_stats.tx_unsupported += 1;
            return false;
        }
        let q = &mut self.queues[0];
        if q.tx_free.is_empty() {
            reclaim(q);
        }
        let Some(mut desc) = q.tx_free.pop() else {
            self.stats.tx_queue_full += 1;
            return false;
        };
        self.ip_id = self.ip_id.wrapping_add(1);
        let headers = write_headers(
            &TxAddrs {
                src_mac: self.local_mac,
                dst_mac,
                src: self.local,
                dst,
                ip_id: self.ip_id,
            },
            payload.len(),
        );
        {
            // SAFETY: `desc` came from the free list: it belongs to `q.umem`
            // and is neither on the TX ring nor the completion ring.
            let mut data = unsafe { q.umem.data_mut(&mut desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            use std::io::Write;
            let written = cursor
                .write_all(&headers)
                .and_then(|()| cursor.write_all(payload));
            debug_assert!(written.is_ok(), "PAYLOAD_BYTES_MAX fits a frame");
        }
        q.tx_pending.push(desc);
        true
    }

    /// Moves queued frames to the TX ring and kicks the kernel; returns frames handed over.
    pub fn flush_tx(&mut self) -> usize {
        let zero_copy = self.zero_copy;
        let q = &mut self.queues[0];
        let mut sent = 0;
        while !q.tx_pending.is_empty() {
            let room = q.tx.nb_free(q.tx_pending.len() as u32) as usize;
            let n = room.min(q.tx_pending.len()).min(BATCH_MAX);
            if n == 0 {
                break;
            }
            // SAFETY: the pending frames belong to `q.umem` and were written
            // by `send`; we do not touch them again until the completion ring
            // returns them.
            let produced = unsafe { q.tx.produce(&q.tx_pending[..n]) };
            q.tx_pending.drain(..produced);
            sent += produced;
            if produced < n {
                break;
            }
        }
        if !zero_copy {
            // Copy mode transmits only inside sendto(), at most a kernel batch (32) per call:
            // kick until the kernel took every descriptor (bounded), not only once per flush.
            for _ in 0..TX_KICKS_MAX {
                if q.tx.nb_free_exact() == q.tx_ring_size {
                    break;
                }
                if q.tx.wakeup().is_err() {
                    self.xsk_stats.tx_kick_errors += 1;
                    break;
                }
            }
        } else if sent > 0 && q.tx.needs_wakeup() && q.tx.wakeup().is_err() {
            self.xsk_stats.tx_kick_errors += 1;
        }
        reclaim(q);
        self.stats.tx_datagrams += sent as u64;
        sent
    }
}

fn learn_into(
    table: &mut [(Ipv4Addr, [u8; 6]); NEIGHBOURS_MAX],
    len: &mut usize,
    next: &mut usize,
    ip: Ipv4Addr,
    mac: [u8; 6],
) {
    if let Some(entry) = table[..*len].iter_mut().find(|(i, _)| *i == ip) {
        entry.1 = mac;
    } else if *len < NEIGHBOURS_MAX {
        table[*len] = (ip, mac);
        *len += 1;
    } else {
        table[*next] = (ip, mac);
        *next = (*next + 1) % NEIGHBOURS_MAX;
    }
}

/// Puts stashed RX frames back on the fill ring, as many as it has room for.
fn refill(q: &mut XskQueue) {
    if q.fill_stash.is_empty() {
        return;
    }
    let room = q.fill.nb_free(q.fill_stash.len() as u32) as usize;
    let n = room.min(q.fill_stash.len());
    if n > 0 {
        // SAFETY: stashed frames belong to `q.umem` and were released by the
        // RX callback; the kernel owns them from here until the RX ring.
        let produced = unsafe { q.fill.produce(&q.fill_stash[..n]) };
        q.fill_stash.drain(..produced);
    }
    if q.fill.needs_wakeup() {
        let _ = q.fill.wakeup(q.rx.fd_mut(), 0);
    }
}

/// Returns completed TX frames to the free list.
fn reclaim(q: &mut XskQueue) {
    loop {
        // SAFETY: the completion ring returns frames of `q.umem` that the
        // kernel finished sending; they become ours again.
        let n = unsafe { q.comp.consume(&mut q.batch[..]) };
        q.tx_free.extend_from_slice(&q.batch[..n]);
        if n < BATCH_MAX {
            break;
        }
    }
}

impl Drop for XskPort {
    fn drop(&mut self) {
        if let Some(maps) = &mut self.maps {
            for q in &self.queues {
                let _ = maps.clear_xsk(q.id);
            }
        }
    }
}

impl std::fmt::Debug for XskPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}
