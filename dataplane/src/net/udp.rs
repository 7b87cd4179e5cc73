//! Kernel UDP backend: one non-blocking socket, `recvmmsg` / `sendmmsg` in batches.
//!
//! Every buffer is allocated once in [`UdpPort::bind`]: `batch_max` receive slots of
//! `FRAME_BYTES_MAX` bytes and `tx_queue_max` send slots. The `mmsghdr`/`iovec` arrays handed to the
//! kernel point into those boxed slices, which never move or grow after `bind`, so the duty cycle does
//! not allocate.

use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use xdp_programs::abi_consts::FRAME_BYTES_MAX;

use super::NetPortStats;

/// Largest datagram this backend receives or sends (bytes): the protocol's jumbo frame limit.
pub const DATAGRAM_BYTES_MAX: usize = FRAME_BYTES_MAX as usize;
/// Largest `recvmmsg` / `sendmmsg` batch (datagrams).
pub const UDP_BATCH_MAX: usize = 1024;
/// Largest TX queue (datagrams).
pub const UDP_TX_QUEUE_MAX: usize = 65_536;
/// Requested socket buffer size (bytes), so bursts are not dropped by the kernel before we poll.
pub const UDP_SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Errors opening the UDP port.
#[derive(Debug, thiserror::Error)]
pub enum UdpPortOpenError {
    #[error("cannot bind UDP {addr}: {source} (is another node on this port? pick `listen` in the config)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot configure UDP socket on {addr}: {source}")]
    Configure {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("batch_max {batch_max} must be in 1..={UDP_BATCH_MAX}; tx_queue_max {tx_queue_max} in 1..={UDP_TX_QUEUE_MAX}")]
    Limits {
        batch_max: usize,
        tx_queue_max: usize,
    },
}

/// A kernel UDP socket with pre-sized batch buffers.
pub struct UdpPort {
    socket: UdpSocket,
    local: SocketAddr,
    batch_max: usize,
    rx_buf: Box<[u8]>,
    rx_names: Box<[libc::sockaddr_storage]>,
    rx_iov: Box<[libc::iovec]>,
    rx_msgs: Box<[libc::mmsghdr]>,
    tx_buf: Box<[u8]>,
    tx_names: Box<[libc::sockaddr_storage]>,
    tx_iov: Box<[libc::iovec]>,
    tx_msgs: Box<[libc::mmsghdr]>,
    /// Queued datagrams are `tx_head..tx_len` of the TX slots.
    tx_head: usize,
    tx_len: usize,
    stats: NetPortStats,
}

// SAFETY: the raw pointers inside the iovec/mmsghdr arrays point only into heap slices owned by this
// same struct (boxed, never reallocated after `bind`), so moving the struct to another thread moves
// their targets with it; nothing else aliases them.
unsafe impl Send for UdpPort {}

impl UdpPort {
    /// Binds `addr` (port 0 picks one) with room for `batch_max` datagrams per receive batch and
    /// `tx_queue_max` queued sends.
    pub fn bind(
        addr: SocketAddr,
        batch_max: usize,
        tx_queue_max: usize,
    ) -> Result<UdpPort, UdpPortOpenError> {
        if !(1..=UDP_BATCH_MAX).contains(&batch_max)
            || !(1..=UDP_TX_QUEUE_MAX).contains(&tx_queue_max)
        {
            return Err(UdpPortOpenError::Limits {
                batch_max,
                tx_queue_max,
            });
        }
        let socket =
            UdpSocket::bind(addr).map_err(|source| UdpPortOpenError::Bind { addr, source })?;
        let configure = |source| UdpPortOpenError::Configure { addr, source };
        socket.set_nonblocking(true).map_err(configure)?;
        set_buffer(&socket, libc::SO_RCVBUF).map_err(configure)?;
        set_buffer(&socket, libc::SO_SNDBUF).map_err(configure)?;
        let local = socket.local_addr().map_err(configure)?;

        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero bytes are
        // a valid value (null pointers, zero lengths).
        let zero_name: libc::sockaddr_storage = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_iov: libc::iovec = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_msg: libc::mmsghdr = unsafe { zeroed() };
        let mut port = UdpPort {
            socket,
            local,
            batch_max,
            rx_buf: vec![0u8; batch_max * DATAGRAM_BYTES_MAX].into_boxed_slice(),
            rx_names: vec![zero_name; batch_max].into_boxed_slice(),
            rx_iov: vec![zero_iov; batch_max].into_boxed_slice(),
            rx_msgs: vec![zero_msg; batch_max].into_boxed_slice(),
            tx_buf: vec![0u8; tx_queue_max * DATAGRAM_BYTES_MAX].into_boxed_slice(),
            tx_names: vec![zero_name; tx_queue_max].into_boxed_slice(),
            tx_iov: vec![zero_iov; tx_queue_max].into_boxed_slice(),
            tx_msgs: vec![zero_msg; tx_queue_max].into_boxed_slice(),
            tx_head: 0,
            tx_len: 0,
            stats: NetPortStats::default(),
        };
        link(
            &mut port.rx_buf,
            &mut port.rx_names,
            &mut port.rx_iov,
            &mut port.rx_msgs,
        );
        link(
            &mut port.tx_buf,
            &mut port.tx_names,
            &mut port.tx_iov,
            &mut port.tx_msgs,
        );
        Ok(port)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> NetPortStats {
        self.stats
    }

    pub fn describe(&self) -> String {
        format!(
            "udp {} (kernel sockets, recvmmsg/sendmmsg batch {})",
            self.local, self.batch_max
        )
    }

    /// Receives up to `max` (capped at the batch size) datagrams with one `recvmmsg`.
    pub fn poll_rx(&mut self, max: usize, f: &mut impl FnMut(SocketAddr, &[u8])) -> usize {
        let n = max.min(self.batch_max);
        if n == 0 {
            return 0;
        }
        for i in 0..n {
            let hdr = &mut self.rx_msgs[i].msg_hdr;
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_flags = 0;
            self.rx_iov[i].iov_len = DATAGRAM_BYTES_MAX;
        }
        // SAFETY: rx_msgs[..n] point at n valid iovecs and sockaddr_storage slots in boxed slices owned
        // by self (set up by `link`), each iovec covering DATAGRAM_BYTES_MAX bytes of rx_buf; the
        // kernel writes at most that much. MSG_DONTWAIT never blocks; a null timeout is allowed.
        let got = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.rx_msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            if got < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::Interrupted
                {
                    self.stats.rx_errors += 1;
                }
            }
            return 0;
        }
        let got = got as usize;
        let mut delivered = 0;
        for i in 0..got {
            let msg = &self.rx_msgs[i];
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.rx_truncated += 1;
                continue;
            }
            let Some(src) = from_storage(&self.rx_names[i], msg.msg_hdr.msg_namelen) else {
                self.stats.rx_errors += 1;
                continue;
            };
            let len = (msg.msg_len as usize).min(DATAGRAM_BYTES_MAX);
            let start = i * DATAGRAM_BYTES_MAX;
            f(src, &self.rx_buf[start..start + len]);
            delivered += 1;
        }
        self.stats.rx_datagrams += delivered as u64;
        delivered
    }

    /// Queues one datagram; false when the queue is full or the payload is larger than a datagram.
    pub fn send(&mut self, dst: SocketAddr, payload: &[u8]) -> bool {
        if self.tx_len == self.tx_msgs.len() {
            if self.tx_head == 0 {
                self.stats.tx_queue_full += 1;
                return false;
            }
            self.compact_tx();
        }
        if payload.len() > DATAGRAM_BYTES_MAX {
            self.stats.tx_errors += 1;
            return false;
        }
        let i = self.tx_len;
        let start = i * DATAGRAM_BYTES_MAX;
        self.tx_buf[start..start + payload.len()].copy_from_slice(payload);
        self.tx_iov[i].iov_len = payload.len();
        self.tx_msgs[i].msg_hdr.msg_namelen = to_storage(dst, &mut self.tx_names[i]);
        self.tx_len += 1;
        true
    }

    /// Number of datagrams queued and not yet handed to the kernel.
    pub fn tx_pending(&self) -> usize {
        self.tx_len - self.tx_head
    }

    /// Sends queued datagrams with `sendmmsg` until the queue is empty or the kernel pushes back.
    pub fn flush_tx(&mut self) -> usize {
        let mut sent_total = 0;
        // Bounded: every iteration either sends >= 1 datagram, drops one, or returns.
        while self.tx_head < self.tx_len {
            let n = (self.tx_len - self.tx_head).min(UDP_BATCH_MAX);
            // SAFETY: tx_msgs[tx_head..tx_head+n] are initialised headers pointing at iovecs and
            // addresses in boxed slices owned by self (see `link`), with iov_len set by `send` to the
            // queued payload length; the kernel only reads them. MSG_DONTWAIT never blocks.
            let sent = unsafe {
                libc::sendmmsg(
                    self.socket.as_raw_fd(),
                    self.tx_msgs.as_mut_ptr().add(self.tx_head),
                    n as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if sent > 0 {
                self.tx_head += sent as usize;
                sent_total += sent as usize;
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => break,
                std::io::ErrorKind::Interrupted => continue,
                _ => {
                    // The first datagram is unsendable (e.g. unreachable destination): drop it, count it.
                    self.stats.tx_errors += 1;
                    self.tx_head += 1;
                }
            }
        }
        self.stats.tx_datagrams += sent_total as u64;
        if self.tx_head == self.tx_len {
            self.tx_head = 0;
            self.tx_len = 0;
        }
        sent_total
    }

    /// Moves the queued datagrams `tx_head..tx_len` to the front of the TX slots.
    fn compact_tx(&mut self) {
        let pending = self.tx_len - self.tx_head;
        for k in 0..pending {
            let from = self.tx_head + k;
            let len = self.tx_iov[from].iov_len;
            self.tx_buf.copy_within(
                from * DATAGRAM_BYTES_MAX..from * DATAGRAM_BYTES_MAX + len,
                k * DATAGRAM_BYTES_MAX,
            );
            self.tx_iov[k].iov_len = len;
            self.tx_names[k] = self.tx_names[from];
            self.tx_msgs[k].msg_hdr.msg_namelen = self.tx_msgs[from].msg_hdr.msg_namelen;
        }
        self.tx_head = 0;
        self.tx_len = pending;
    }
}

/// Points header `i` at name slot `i` and iovec `i`, and iovec `i` at buffer slot `i`.
fn link(
    buf: &mut [u8],
    names: &mut [libc::sockaddr_storage],
    iov: &mut [libc::iovec],
    msgs: &mut [libc::mmsghdr],
) {
    for i in 0..msgs.len() {
        iov[i].iov_base = buf[i * DATAGRAM_BYTES_MAX..].as_mut_ptr().cast();
        iov[i].iov_len = DATAGRAM_BYTES_MAX;
        let hdr = &mut msgs[i].msg_hdr;
        hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = &mut iov[i];
        hdr.msg_iovlen = 1;
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
    }
}

fn set_buffer(socket: &UdpSocket, option: libc::c_int) -> std::io::Result<()> {
    let value = UDP_SOCKET_BUFFER_BYTES as libc::c_int;
    // SAFETY: setsockopt reads size_of::<c_int>() bytes from a valid c_int on our stack; the fd is
    // owned by `socket` and open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `addr` into `out` as a sockaddr_in / sockaddr_in6; returns its length.
fn to_storage(addr: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in (that is its
            // purpose); we write one whole sockaddr_in at its start.
            unsafe {
                std::ptr::write(
                    (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                    sin,
                )
            };
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                std::ptr::write(
                    (out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(),
                    sin6,
                )
            };
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the address the kernel wrote; None for families other than IPv4/IPv6.
fn from_storage(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match name.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the kernel wrote a sockaddr_in (length checked) at the start of the
            // storage, which is aligned for it.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn recv_all(port: &mut UdpPort, want: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..10_000 {
            port.poll_rx(64, &mut |src, p| got.push((src, p.to_vec())));
            if got.len() >= want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        got
    }

    #[test]
    fn batch_send_and_receive_over_loopback() {
        let mut a = UdpPort::bind(loopback(), 16, 256).unwrap();
        let mut b = UdpPort::bind(loopback(), 16, 256).unwrap();
        for i in 0..100u32 {
            assert!(a.send(b.local_addr(), &i.to_le_bytes()));
        }
        assert_eq!(a.flush_tx(), 100);
        let got = recv_all(&mut b, 100);
        assert_eq!(got.len(), 100);
        for (i, (src, p)) in got.iter().enumerate() {
            assert_eq!(*src, a.local_addr());
            assert_eq!(p.as_slice(), &(i as u32).to_le_bytes());
        }
        assert_eq!(b.stats().rx_datagrams, 100);
    }

    #[test]
    fn full_queue_refuses_and_counts() {
        let mut a = UdpPort::bind(loopback(), 4, 2).unwrap();
        let dst = a.local_addr();
        assert!(a.send(dst, b"1"));
        assert!(a.send(dst, b"2"));
        assert!(!a.send(dst, b"3"));
        assert_eq!(a.stats().tx_queue_full, 1);
        assert!(!a.send(dst, &vec![0; DATAGRAM_BYTES_MAX + 1]));
        assert_eq!(a.flush_tx(), 2);
        assert_eq!(recv_all(&mut a, 2).len(), 2);
    }

    #[test]
    fn bad_limits_are_errors() {
        assert!(matches!(
            UdpPort::bind(loopback(), 0, 1),
            Err(UdpPortOpenError::Limits { .. })
        ));
        assert!(matches!(
            UdpPort::bind(loopback(), 1, UDP_TX_QUEUE_MAX + 1),
            Err(UdpPortOpenError::Limits { .. })
        ));
    }

    #[test]
    fn sockaddr_round_trip() {
        for s in ["198.18.100.1:7447", "[::1]:9"] {
            let a: SocketAddr = s.parse().unwrap();
            // SAFETY: all-zero sockaddr_storage is valid.
            let mut st: libc::sockaddr_storage = unsafe { zeroed() };
            let len = to_storage(a, &mut st);
            assert_eq!(from_storage(&st, len), Some(a));
        }
    }
}
