//! The network edge of the data plane: one enum over the backends (never `Box<dyn>` on the packet path).
//!
//! * [`NetPort::Udp`]: kernel UDP socket, `recvmmsg`/`sendmmsg` batches ([`udp`]).
//! * [`NetPort::AfXdp`]: AF_XDP sockets fed by the XDP program ([`afxdp`]).
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
pub mod udp;

/// Which backend the node uses; chosen explicitly (`--backend afxdp|udp`), never a silent fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Udp,
    Afxdp,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Backend::Udp),
            "afxdp" => Ok(Backend::Afxdp),
            other => Err(format!("unknown backend {other:?}: use `udp` or `afxdp`")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Udp => "udp",
            Backend::Afxdp => "afxdp",
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

/// Errors opening a port.
#[derive(Debug, thiserror::Error)]
pub enum NetPortOpenError {
    #[error(transparent)]
    Udp(#[from] udp::UdpPortOpenError),
    #[error(transparent)]
    AfXdp(#[from] afxdp::XskPortOpenError),
    #[error("backend {0} is not built into this data plane yet: use --backend udp")]
    BackendUnavailable(Backend),
}

/// A network port of the node: receives and sends UDP payloads in batches.
pub enum NetPort {
    Udp(udp::UdpPort),
    AfXdp(afxdp::XskPort),
}

impl NetPort {
    /// Calls `f(src, udp_payload)` for up to `max` received datagrams; returns how many.
    #[inline]
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        match self {
            NetPort::Udp(p) => p.poll_rx(max, f),
            NetPort::AfXdp(p) => p.poll_rx(max, f),
        }
    }

    /// Queues one UDP payload to `dst`; false when the TX queue is full (caller counts a drop / retries).
    #[inline]
    pub fn send(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        match self {
            NetPort::Udp(p) => p.send(dst, payload),
            NetPort::AfXdp(p) => p.send(dst, payload),
        }
    }

    /// Pushes queued frames to the kernel/NIC (sendmmsg / AF_XDP TX kick); returns frames sent.
    #[inline]
    pub fn flush_tx(&mut self) -> usize {
        match self {
            NetPort::Udp(p) => p.flush_tx(),
            NetPort::AfXdp(p) => p.flush_tx(),
        }
    }

    /// One line for logs and `stat`, e.g. "udp 198.18.100.1:7447 batch 32".
    pub fn describe(&self) -> String {
        match self {
            NetPort::Udp(p) => p.describe(),
            NetPort::AfXdp(p) => p.describe(),
        }
    }

    /// Counted events so far.
    pub fn stats(&self) -> NetPortStats {
        match self {
            NetPort::Udp(p) => p.stats(),
            NetPort::AfXdp(p) => p.stats(),
        }
    }

    /// The local address datagrams arrive on.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            NetPort::Udp(p) => p.local_addr(),
            NetPort::AfXdp(p) => p.local_addr(),
        }
    }
}
