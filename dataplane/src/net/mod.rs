//! The network edge of the data plane: one enum over the backends (never `Box<dyn>` on the packet path).
//!
//! * [`NetPort::Udp`]: kernel UDP socket, `recvmmsg`/`sendmmsg` batches ([`udp`]).
//! * [`NetPort::AfXdp`]: AF_XDP sockets fed by the XDP program ([`afxdp`]).
//! * `NetPort::Dpdk` (cargo feature `dpdk`): a DPDK poll-mode port (`dpdk`), with the XDP
//!   program's policy enforced in user space ([`policy`]).
//!
//! Adding a backend (engineer D, AF_XDP): put it in `src/net/afxdp.rs` (or `src/net/afxdp/`), add
//! `pub mod afxdp;` below, a variant `AfXdp(afxdp::XskPort)` to [`NetPort`] and one arm per method
//! in the `match`es of `impl NetPort`; [`Backend`] already names it and the node refuses it with
//! [`NetPortOpenError::BackendUnavailable`] until the variant exists. Payloads handed to `poll_rx`'s
//! callback are UDP payloads (the Ethernet/IP/UDP headers are the backend's business).
//!
//! `unsafe` is allowed in this module tree only (socket syscalls, AF_XDP rings); each block has a
//! `// SAFETY:` comment.

use std::net::SocketAddr;

pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod policy;
pub mod udp;

/// Which backend the node uses; chosen explicitly (`--backend afxdp|udp`), never a silent fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Udp,
    Afxdp,
    /// Needs the `dpdk` cargo feature; a build without it refuses it at start.
    Dpdk,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Backend::Udp),
            "afxdp" => Ok(Backend::Afxdp),
            "dpdk" => Ok(Backend::Dpdk),
            other => Err(format!(
                "unknown backend {other:?}: use `udp`, `afxdp` or `dpdk`"
            )),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Udp => "udp",
            Backend::Afxdp => "afxdp",
            Backend::Dpdk => "dpdk",
        })
    }
}

/// Counted events of a port (drops, truncations, syscall errors); read by the owning agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetPortStats {
    pub rx_datagrams: u64,
    pub rx_truncated: u64,
    pub rx_errors: u64,
    pub tx_datagrams: u64,
    pub tx_errors: u64,
    pub tx_queue_full: u64,
}

/// Figures of a port that has a NIC of its own (DPDK): counters of the device and its pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Packets the NIC dropped for lack of RX descriptors (`imissed`).
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub rx_nombuf: u64,
    pub tx_errors: u64,
    pub mbufs_in_use: u64,
    pub mbufs: u64,
    pub feedback_dropped: u64,
    pub tx_no_mbuf: u64,
}

/// Errors opening a port.
#[derive(Debug, thiserror::Error)]
pub enum NetPortOpenError {
    #[error(transparent)]
    Udp(#[from] udp::UdpPortOpenError),
    #[error(transparent)]
    AfXdp(#[from] afxdp::XskPortOpenError),
    #[cfg(feature = "dpdk")]
    #[error(transparent)]
    Dpdk(#[from] dpdk::DpdkPortOpenError),
    #[error("backend {0} is not built into this data plane: rebuild with `--features dpdk` (needs libdpdk-dev, see docs/dpdk.md), or use --backend afxdp|udp")]
    BackendUnavailable(Backend),
}

/// A network port of the node: receives and sends UDP payloads in batches.
pub enum NetPort {
    Udp(udp::UdpPort),
    AfXdp(afxdp::XskPort),
    #[cfg(feature = "dpdk")]
    Dpdk(Box<dpdk::DpdkPort>),
}

impl NetPort {
    /// Calls `f(src, udp_payload)` for up to `max` received datagrams; returns how many.
    #[inline]
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        match self {
            NetPort::Udp(p) => p.poll_rx(max, f),
            NetPort::AfXdp(p) => p.poll_rx(max, f),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.poll_rx(max, f),
        }
    }

    /// Queues one UDP payload to `dst`; false when the TX queue is full (caller counts a drop / retries).
    #[inline]
    pub fn send(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        match self {
            NetPort::Udp(p) => p.send(dst, payload),
            NetPort::AfXdp(p) => p.send(dst, payload),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.send(dst, payload),
        }
    }

    /// Pushes queued frames to the kernel/NIC (sendmmsg / AF_XDP TX kick); returns frames sent.
    #[inline]
    pub fn flush_tx(&mut self) -> usize {
        match self {
            NetPort::Udp(p) => p.flush_tx(),
            NetPort::AfXdp(p) => p.flush_tx(),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.flush_tx(),
        }
    }

    /// One line for logs and `stat`, e.g. "udp 198.18.100.1:7447 batch 32".
    pub fn describe(&self) -> String {
        match self {
            NetPort::Udp(p) => p.describe(),
            NetPort::AfXdp(p) => p.describe(),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.describe(),
        }
    }

    /// Counted events so far.
    pub fn stats(&self) -> NetPortStats {
        match self {
            NetPort::Udp(p) => p.stats(),
            NetPort::AfXdp(p) => p.stats(),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.stats(),
        }
    }

    /// Port-level figures of a DPDK port (rx/tx, imissed, mbuf pool use); None for the others.
    pub fn nic_stats(&self) -> Option<NicStats> {
        match self {
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => {
                let n = p.nic_stats();
                Some(NicStats {
                    rx_packets: n.rx_packets,
                    tx_packets: n.tx_packets,
                    rx_missed: n.rx_missed,
                    rx_errors: n.rx_errors,
                    rx_nombuf: n.rx_nombuf,
                    tx_errors: n.tx_errors,
                    mbufs_in_use: n.mbufs_in_use,
                    mbufs: n.mbufs,
                    feedback_dropped: n.feedback_dropped,
                    tx_no_mbuf: n.tx_no_mbuf,
                })
            }
            _ => None,
        }
    }

    /// The local address datagrams arrive on.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            NetPort::Udp(p) => p.local_addr(),
            NetPort::AfXdp(p) => p.local_addr(),
            #[cfg(feature = "dpdk")]
            NetPort::Dpdk(p) => p.local_addr(),
        }
    }
}

/// The sender agent's port. With the UDP backend it is a kernel UDP socket of its own. With the
/// AF_XDP backend, DATA/HEARTBEAT/SETUP frames to remote subscribers leave through a TX-only
/// AF_XDP socket (Ethernet/IPv4/UDP headers built here, peers' MACs from the neighbour table,
/// UMEM frames reclaimed from the completion ring) whose source port is a kernel UDP socket's:
/// the subscribers' STATUS and NAK come back to that port, which the XDP program passes to
/// the kernel (it is not the data port), so they arrive on the UDP socket.
pub enum SenderPort {
    Udp(udp::UdpPort),
    AfXdp {
        tx: Box<afxdp::XskPort>,
        feedback: udp::UdpPort,
    },
    /// Its own TX queue of the DPDK port; STATUS/NAK handed over by the receiver's queues.
    #[cfg(feature = "dpdk")]
    Dpdk(Box<dpdk::DpdkPort>),
}

impl SenderPort {
    /// Calls `f(src, udp_payload)` for up to `max` received datagrams (STATUS, NAK).
    #[inline]
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        match self {
            SenderPort::Udp(p) => p.poll_rx(max, f),
            SenderPort::AfXdp { feedback, .. } => feedback.poll_rx(max, f),
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(p) => p.poll_rx(max, f),
        }
    }

    /// Queues one UDP payload to `dst` (AF_XDP: to link-layer address `mac`, resolved by the
    /// conductor; without one the neighbour table is asked); false when it cannot be sent now
    /// (counted).
    #[inline]
    pub fn send(&mut self, dst: SocketAddr, mac: Option<[u8; 6]>, payload: &[u8]) -> bool {
        match (self, dst, mac) {
            (SenderPort::Udp(p), _, _) => p.send(dst, payload),
            (SenderPort::AfXdp { tx, .. }, SocketAddr::V4(v4), Some(mac)) => {
                tx.send_to_mac(v4, mac, payload)
            }
            (SenderPort::AfXdp { tx, .. }, _, _) => tx.send(dst, payload),
            #[cfg(feature = "dpdk")]
            (SenderPort::Dpdk(p), SocketAddr::V4(v4), Some(mac)) => p.send_to_mac(v4, mac, payload),
            #[cfg(feature = "dpdk")]
            (SenderPort::Dpdk(p), _, _) => p.send(dst, payload),
        }
    }

    /// Pushes queued frames out (sendmmsg / AF_XDP TX ring + kick, completion reclaim).
    #[inline]
    pub fn flush_tx(&mut self) -> usize {
        match self {
            SenderPort::Udp(p) => p.flush_tx(),
            SenderPort::AfXdp { tx, .. } => tx.flush_tx(),
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(p) => p.flush_tx(),
        }
    }

    /// The interface whose neighbour table must know a subscriber before frames can reach it
    /// (AF_XDP only).
    pub fn neighbour_interface(&self) -> Option<String> {
        match self {
            SenderPort::Udp(_) => None,
            SenderPort::AfXdp { tx, .. } => Some(tx.interface().to_string()),
            // No kernel neighbour table on a DPDK port: the port resolves (learned, ARP).
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(_) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SenderPort::Udp(p) => p.describe(),
            SenderPort::AfXdp { tx, feedback } => format!(
                "{} (TX only; STATUS/NAK on {})",
                tx.describe(),
                feedback.describe()
            ),
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(p) => p.describe(),
        }
    }

    /// Counted events: TX from the sending socket, RX from the feedback socket.
    pub fn stats(&self) -> NetPortStats {
        match self {
            SenderPort::Udp(p) => p.stats(),
            SenderPort::AfXdp { tx, feedback } => {
                let (t, f, x) = (tx.stats(), feedback.stats(), tx.xsk_stats());
                NetPortStats {
                    rx_datagrams: f.rx_datagrams,
                    rx_truncated: f.rx_truncated,
                    rx_errors: f.rx_errors,
                    tx_datagrams: t.tx_datagrams,
                    // A frame to a peer without a neighbour entry is a send error, counted.
                    tx_errors: t.tx_errors
                        + f.tx_errors
                        + x.tx_no_neighbour
                        + x.tx_unsupported
                        + x.tx_kick_errors,
                    tx_queue_full: t.tx_queue_full,
                }
            }
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(p) => {
                let (s, d) = (p.stats(), p.dpdk_stats());
                NetPortStats {
                    tx_errors: s.tx_errors + d.tx_unsupported,
                    ..s
                }
            }
        }
    }

    /// Where subscribers send STATUS and NAK (the source address of our frames).
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            SenderPort::Udp(p) => p.local_addr(),
            SenderPort::AfXdp { feedback, .. } => feedback.local_addr(),
            #[cfg(feature = "dpdk")]
            SenderPort::Dpdk(p) => p.local_addr(),
        }
    }
}
