//! The XDP program's receive policy, in user space, for backends no XDP program runs in front of
//! (DPDK). One frame in, one [`Verdict`] out — the same verdicts, in the same order, with the
//! same meaning as `xdp-programs/src/memstreamer_xdp.c` (docs/protocol.md), so the same counters
//! mean the same thing whichever backend a node runs:
//!
//! ```text
//!  Ethernet -- ARP ----------------------------------------------> pass_not_ip (ARP answered by the port)
//!     |     -- not IPv4 (IPv6, VLAN, ...) -----------------------> pass_not_ip (dropped: IPv4-only backend)
//!   IPv4 -- not UDP / fragment -----------------------------------> pass_not_udp / pass_ip_fragment
//!     |  -- IHL < 5, cut short --------------------------------------> drop_bad_header / drop_truncated
//!   UDP -- not the data port --------------------------------------> pass_other_port (the port's other users)
//!     |  -- length disagreements, bad frame header -----------------> drop_bad_length / drop_bad_header
//!   policy (source, stream): deny, or no entry and no default allow -> drop_policy
//!   token bucket of the source empty -------------------------------> drop_rate_limited
//!   accepted --------------------------------------------------------> redirect (to the receiver)
//! ```
//!
//! The table is a snapshot of the pinned policy maps (`/sys/fs/bpf/memstreamer/<iface>/`),
//! which the control plane writes exactly as for an XDP node; the DPDK port's policy mirror
//! re-reads them and hands a new [`PolicyTable`] over when they changed. Token buckets follow
//! `take_token` of the C program (whole-token refill, fraction kept, full refill after
//! `RATE_REFILL_ELAPSED_NS_MAX`); a bucket whose rate or burst changed in the maps starts full,
//! as a rewrite does in XDP. No `unsafe`, no allocation on the per-frame path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use xdp_programs::abi_consts::{
    FRAME_BYTES_MAX, FRAME_HEADER_BYTES, FRAME_LENGTH_OFFSET, FRAME_MAGIC, FRAME_MAGIC_OFFSET,
    FRAME_RESERVED_OFFSET, FRAME_STREAM_ID_OFFSET, FRAME_TYPE_MAX, FRAME_TYPE_OFFSET,
    FRAME_VERSION, FRAME_VERSION_OFFSET, RATE_PER_SEC_MAX, RATE_REFILL_ELAPSED_NS_MAX,
};
use xdp_programs::{RateBucket, Verdict, VerdictCounts};

use super::afxdp::packet::{
    ETH_HEADER_BYTES, ETH_SRC_OFFSET, ETH_TYPE_IPV4, ETH_TYPE_OFFSET, IPV4_FRAG_MASK,
    IPV4_HEADER_BYTES, IPV4_PROTOCOL_OFFSET, IPV4_PROTOCOL_UDP, IPV4_SRC_OFFSET,
    IPV4_TOTAL_LEN_OFFSET, UDP_DST_PORT_OFFSET, UDP_HEADER_BYTES, UDP_LEN_OFFSET,
    UDP_SRC_PORT_OFFSET,
};

pub const ETH_TYPE_ARP: u16 = 0x0806;
const NSEC_PER_SEC: u64 = 1_000_000_000;

/// A UDP/IPv4 datagram found in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub src: SocketAddrV4,
    pub src_mac: [u8; 6],
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// What a received frame is, before the policy decides about data frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified<'a> {
    /// A well-formed MemoryStreamer frame for the data port: policy and rate limit next.
    Data {
        datagram: Datagram<'a>,
        stream_id: u32,
    },
    /// UDP/IPv4 for another port (`pass_other_port`): e.g. STATUS/NAK for the sender.
    OtherPort(Datagram<'a>),
    /// An ARP packet (`pass_not_ip`); the bytes after the Ethernet header.
    Arp(&'a [u8]),
    /// Any other verdict: counted, the frame goes nowhere.
    Done(Verdict),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: u32) -> u32 {
    let at = at as usize;
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses Ethernet / IPv4 / UDP and the frame header as the XDP program does; every length is
/// checked against `frame` before it is used.
pub fn classify(frame: &[u8], data_port: u16) -> Classified<'_> {
    use Classified::Done;
    if frame.len() < ETH_HEADER_BYTES {
        return Done(Verdict::DropTruncated);
    }
    match be16(frame, ETH_TYPE_OFFSET) {
        ETH_TYPE_IPV4 => {}
        ETH_TYPE_ARP => return Classified::Arp(&frame[ETH_HEADER_BYTES..]),
        _ => return Done(Verdict::PassNotIp),
    }
    let ip = &frame[ETH_HEADER_BYTES..];
    if ip.len() < IPV4_HEADER_BYTES {
        return Done(Verdict::DropTruncated);
    }
    if ip[IPV4_PROTOCOL_OFFSET] != IPV4_PROTOCOL_UDP {
        return Done(Verdict::PassNotUdp);
    }
    if be16(ip, super::afxdp::packet::IPV4_FRAG_OFFSET) & IPV4_FRAG_MASK != 0 {
        return Done(Verdict::PassIpFragment);
    }
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    if ihl < IPV4_HEADER_BYTES {
        return Done(Verdict::DropBadHeader);
    }
    let total = usize::from(be16(ip, IPV4_TOTAL_LEN_OFFSET));
    if total > ip.len() || total < ihl + UDP_HEADER_BYTES {
        return Done(Verdict::DropTruncated);
    }
    let udp = &ip[ihl..total];
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6]);
    let src_ip = Ipv4Addr::new(
        ip[IPV4_SRC_OFFSET],
        ip[IPV4_SRC_OFFSET + 1],
        ip[IPV4_SRC_OFFSET + 2],
        ip[IPV4_SRC_OFFSET + 3],
    );
    let dst_port = be16(udp, UDP_DST_PORT_OFFSET);
    let udp_len = usize::from(be16(udp, UDP_LEN_OFFSET));
    let datagram = |payload| Datagram {
        src: SocketAddrV4::new(src_ip, be16(udp, UDP_SRC_PORT_OFFSET)),
        src_mac,
        dst_port,
        payload,
    };
    if data_port == 0 || dst_port != data_port {
        if udp_len != udp.len() || udp_len < UDP_HEADER_BYTES {
            // The kernel would drop it too; the sender never sees it.
            return Done(Verdict::PassOtherPort);
        }
        return Classified::OtherPort(datagram(&udp[UDP_HEADER_BYTES..]));
    }
    if udp_len != udp.len() {
        return Done(Verdict::DropBadLength);
    }
    let body = &udp[UDP_HEADER_BYTES..];
    if body.len() < FRAME_HEADER_BYTES as usize {
        return Done(Verdict::DropTruncated);
    }
    let version = body[FRAME_VERSION_OFFSET as usize];
    let kind = u32::from(body[FRAME_TYPE_OFFSET as usize]);
    let reserved = u16::from_le_bytes([
        body[FRAME_RESERVED_OFFSET as usize],
        body[FRAME_RESERVED_OFFSET as usize + 1],
    ]);
    if le32(body, FRAME_MAGIC_OFFSET) != FRAME_MAGIC
        || u32::from(version) != FRAME_VERSION
        || kind == 0
        || kind > FRAME_TYPE_MAX
        || reserved != 0
    {
        return Done(Verdict::DropBadHeader);
    }
    let frame_len = le32(body, FRAME_LENGTH_OFFSET);
    if frame_len as usize != body.len() || frame_len > FRAME_BYTES_MAX {
        return Done(Verdict::DropBadLength);
    }
    Classified::Data {
        datagram: datagram(body),
        stream_id: le32(body, FRAME_STREAM_ID_OFFSET),
    }
}

/// A token bucket as the XDP program keeps it (single writer here: the receiver's thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub rate_per_sec: u64,
    pub burst: u64,
    pub tokens: u64,
    /// 0: the clock starts at the next frame.
    pub last_ns: u64,
}

impl Bucket {
    pub fn full(rate_per_sec: u64, burst: u64) -> Bucket {
        Bucket {
            rate_per_sec: rate_per_sec.min(RATE_PER_SEC_MAX),
            burst,
            tokens: burst,
            last_ns: 0,
        }
    }

    /// Takes one token at `now_ns` (monotonic); false: the frame is rate limited.
    pub fn take(&mut self, now_ns: u64) -> bool {
        let rate = self.rate_per_sec;
        if self.last_ns == 0 {
            self.last_ns = now_ns.max(1);
        } else if rate != 0 && now_ns > self.last_ns {
            let elapsed = now_ns - self.last_ns;
            let (add, next_last) = if elapsed >= RATE_REFILL_ELAPSED_NS_MAX {
                (self.burst, now_ns)
            } else {
                let add = elapsed * rate / NSEC_PER_SEC;
                (add, self.last_ns + add * NSEC_PER_SEC / rate)
            };
            if add != 0 {
                self.last_ns = next_last;
                self.tokens = (self.tokens + add).min(self.burst);
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What the pinned maps held at one read: the input of a [`PolicyTable`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySnapshot {
    pub default_allow: bool,
    /// (source, stream) -> allow.
    pub policy: Vec<(IpAddr, u32, bool)>,
    /// source -> (rate per second, burst).
    pub rate: Vec<(IpAddr, u64, u64)>,
}

impl PolicySnapshot {
    /// Orders the entries so two reads of the same maps compare equal.
    pub fn normalize(&mut self) {
        self.policy.sort_unstable();
        self.rate.sort_unstable();
    }

    /// The snapshot of a bucket as the maps store it (tokens and clock are not policy).
    pub fn rate_entry(source: IpAddr, b: &RateBucket) -> (IpAddr, u64, u64) {
        (source, b.rate_per_sec, b.burst)
    }
}

/// The receive policy of one port: built off the hot path, consulted per frame.
#[derive(Debug, Default)]
pub struct PolicyTable {
    default_allow: bool,
    policy: HashMap<(Ipv4Addr, u32), bool>,
    rate_index: HashMap<Ipv4Addr, usize>,
    buckets: Vec<(Ipv4Addr, Bucket)>,
}

impl PolicyTable {
    /// A table that lets everything through (labs, tests, `default_allow` without entries).
    pub fn allow_all() -> PolicyTable {
        PolicyTable {
            default_allow: true,
            ..PolicyTable::default()
        }
    }

    /// Builds the table of `snap` (IPv6 entries are kept out: this backend is IPv4-only).
    pub fn from_snapshot(snap: &PolicySnapshot) -> PolicyTable {
        let mut t = PolicyTable {
            default_allow: snap.default_allow,
            ..PolicyTable::default()
        };
        for &(src, stream, allow) in &snap.policy {
            if let IpAddr::V4(v4) = src {
                t.policy.insert((v4, stream), allow);
            }
        }
        for &(src, rate, burst) in &snap.rate {
            if let IpAddr::V4(v4) = src {
                t.rate_index.insert(v4, t.buckets.len());
                t.buckets.push((v4, Bucket::full(rate, burst)));
            }
        }
        t
    }

    /// Keeps the running state (tokens, clock) of every bucket whose limits did not change.
    pub fn carry_buckets_from(&mut self, old: &PolicyTable) {
        for (src, bucket) in self.buckets.iter_mut() {
            if let Some(&(_, prev)) = old.rate_index.get(src).map(|&i| &old.buckets[i]) {
                if (prev.rate_per_sec, prev.burst) == (bucket.rate_per_sec, bucket.burst) {
                    *bucket = prev;
                }
            }
        }
    }

    /// The verdict for a data frame of `stream_id` from `src` at `now_ns`.
    pub fn judge(&mut self, src: Ipv4Addr, stream_id: u32, now_ns: u64) -> Verdict {
        let allowed = match self.policy.get(&(src, stream_id)) {
            Some(&allow) => allow,
            None => self.default_allow,
        };
        if !allowed {
            return Verdict::DropPolicy;
        }
        if let Some(&i) = self.rate_index.get(&src) {
            if !self.buckets[i].1.take(now_ns) {
                return Verdict::DropRateLimited;
            }
        }
        Verdict::Redirect
    }
}

/// Verdict counts of one port, written by its receiver only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictTally(pub VerdictCounts);

impl VerdictTally {
    #[inline]
    pub fn count(&mut self, v: Verdict) {
        self.0 .0[v.id() as usize] += 1;
    }
}

/// ARP over Ethernet/IPv4 (RFC 826), the part a host needs: answer requests for our address,
/// learn the sender of every valid packet, ask for a neighbour we do not know.
pub mod arp {
    use std::net::Ipv4Addr;

    pub const ARP_BYTES: usize = 28;
    const HTYPE_ETHERNET: u16 = 1;
    const PTYPE_IPV4: u16 = 0x0800;
    pub const OP_REQUEST: u16 = 1;
    pub const OP_REPLY: u16 = 2;

    /// A valid Ethernet/IPv4 ARP packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Arp {
        pub op: u16,
        pub sender_mac: [u8; 6],
        pub sender_ip: Ipv4Addr,
        pub target_ip: Ipv4Addr,
    }

    /// Parses the bytes after the Ethernet header; None when it is not Ethernet/IPv4 ARP.
    pub fn parse(b: &[u8]) -> Option<Arp> {
        if b.len() < ARP_BYTES
            || u16::from_be_bytes([b[0], b[1]]) != HTYPE_ETHERNET
            || u16::from_be_bytes([b[2], b[3]]) != PTYPE_IPV4
            || b[4] != 6
            || b[5] != 4
        {
            return None;
        }
        let op = u16::from_be_bytes([b[6], b[7]]);
        if op != OP_REQUEST && op != OP_REPLY {
            return None;
        }
        let mut sender_mac = [0u8; 6];
        sender_mac.copy_from_slice(&b[8..14]);
        Some(Arp {
            op,
            sender_mac,
            sender_ip: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
            target_ip: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
        })
    }

    /// A whole Ethernet frame (42 bytes) carrying an ARP packet.
    pub fn frame(
        op: u16,
        src_mac: [u8; 6],
        src_ip: Ipv4Addr,
        dst_mac: [u8; 6],
        target_mac: [u8; 6],
        target_ip: Ipv4Addr,
    ) -> [u8; 14 + ARP_BYTES] {
        let mut f = [0u8; 14 + ARP_BYTES];
        f[0..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        f[12..14].copy_from_slice(&super::ETH_TYPE_ARP.to_be_bytes());
        let a = &mut f[14..];
        a[0..2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        a[2..4].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&op.to_be_bytes());
        a[8..14].copy_from_slice(&src_mac);
        a[14..18].copy_from_slice(&src_ip.octets());
        a[18..24].copy_from_slice(&target_mac);
        a[24..28].copy_from_slice(&target_ip.octets());
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::afxdp::packet::{write_headers, TxAddrs};

    const PORT: u16 = 7447;

    fn frame_body(stream: u32, extra: usize) -> Vec<u8> {
        let mut b = vec![0u8; FRAME_HEADER_BYTES as usize + extra];
        b[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        b[4] = FRAME_VERSION as u8;
        b[5] = 1;
        b[8..12].copy_from_slice(&stream.to_le_bytes());
        let len = b.len() as u32;
        b[20..24].copy_from_slice(&len.to_le_bytes());
        b
    }

    fn eth(body: &[u8], dst_port: u16) -> Vec<u8> {
        let a = TxAddrs {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: "198.18.160.2:40000".parse().expect("addr"),
            dst: SocketAddrV4::new(Ipv4Addr::new(198, 18, 160, 1), dst_port),
            ip_id: 1,
        };
        let mut f = write_headers(&a, body.len()).to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_good_frame_is_data_with_its_stream() {
        let f = eth(&frame_body(7, 16), PORT);
        match classify(&f, PORT) {
            Classified::Data {
                datagram,
                stream_id,
            } => {
                assert_eq!(stream_id, 7);
                assert_eq!(
                    datagram.src,
                    "198.18.160.2:40000".parse::<SocketAddrV4>().expect("a")
                );
                assert_eq!(datagram.payload.len(), 56);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(&f, PORT + 1),
            Classified::OtherPort(d) if d.dst_port == PORT
        ));
    }

    #[test]
    fn bad_frames_get_the_xdp_programs_verdicts() {
        let good = eth(&frame_body(7, 16), PORT);
        let v = |f: &[u8]| match classify(f, PORT) {
            Classified::Done(v) => Some(v),
            _ => None,
        };
        assert_eq!(v(&good[..10]), Some(Verdict::DropTruncated));
        let mut f = good.clone();
        f[42] ^= 0xFF; // magic
        assert_eq!(v(&f), Some(Verdict::DropBadHeader));
        let mut f = good.clone();
        f[42 + 20] ^= 1; // frame length
        assert_eq!(v(&f), Some(Verdict::DropBadLength));
        let mut f = good.clone();
        f[14 + 9] = 6; // TCP
        assert_eq!(v(&f), Some(Verdict::PassNotUdp));
        let mut f = good.clone();
        f[14 + 6] = 0x20; // more fragments
        assert_eq!(v(&f), Some(Verdict::PassIpFragment));
        let mut f = good.clone();
        f[14] = 0x44;
        assert_eq!(v(&f), Some(Verdict::DropBadHeader));
        let mut f = good.clone();
        f[12] = 0x86;
        f[13] = 0xDD;
        assert_eq!(v(&f), Some(Verdict::PassNotIp));
        let short = eth(&frame_body(7, 0)[..20], PORT);
        assert_eq!(v(&short), Some(Verdict::DropTruncated));
        for cut in 0..good.len() {
            let _ = classify(&good[..cut], PORT);
        }
    }

    #[test]
    fn policy_deny_wins_default_decides_and_buckets_limit() {
        let src = Ipv4Addr::new(198, 18, 160, 2);
        let mut snap = PolicySnapshot {
            default_allow: false,
            policy: vec![(IpAddr::V4(src), 7, true), (IpAddr::V4(src), 8, false)],
            rate: vec![],
        };
        let mut t = PolicyTable::from_snapshot(&snap);
        assert_eq!(t.judge(src, 7, 1), Verdict::Redirect);
        assert_eq!(t.judge(src, 8, 1), Verdict::DropPolicy);
        assert_eq!(t.judge(src, 9, 1), Verdict::DropPolicy);
        snap.default_allow = true;
        snap.rate = vec![(IpAddr::V4(src), 1000, 3)];
        let mut t2 = PolicyTable::from_snapshot(&snap);
        t2.carry_buckets_from(&t);
        assert_eq!(t2.judge(src, 9, 10), Verdict::Redirect);
        assert_eq!(t2.judge(src, 9, 10), Verdict::Redirect);
        assert_eq!(t2.judge(src, 9, 10), Verdict::Redirect);
        assert_eq!(t2.judge(src, 9, 10), Verdict::DropRateLimited);
        // 1000/s: one token per ms.
        assert_eq!(t2.judge(src, 9, 10 + 1_000_000), Verdict::Redirect);
        assert_eq!(t2.judge(src, 9, 10 + 1_000_000), Verdict::DropRateLimited);
        // Same limits: the running bucket is kept; new limits start full.
        let mut t3 = PolicyTable::from_snapshot(&snap);
        t3.carry_buckets_from(&t2);
        assert_eq!(t3.judge(src, 9, 10 + 1_000_000), Verdict::DropRateLimited);
        snap.rate = vec![(IpAddr::V4(src), 1000, 2)];
        let mut t4 = PolicyTable::from_snapshot(&snap);
        t4.carry_buckets_from(&t3);
        assert_eq!(t4.judge(src, 9, 10 + 1_000_000), Verdict::Redirect);
    }

    #[test]
    fn arp_round_trips_and_rejects_junk() {
        let f = arp::frame(
            arp::OP_REQUEST,
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(198, 18, 160, 2),
            [0xFF; 6],
            [0; 6],
            Ipv4Addr::new(198, 18, 160, 1),
        );
        match classify(&f, PORT) {
            Classified::Arp(b) => {
                let a = arp::parse(b).expect("valid");
                assert_eq!(a.op, arp::OP_REQUEST);
                assert_eq!(a.sender_ip, Ipv4Addr::new(198, 18, 160, 2));
                assert_eq!(a.target_ip, Ipv4Addr::new(198, 18, 160, 1));
                for cut in 0..b.len() {
                    assert!(arp::parse(&b[..cut]).is_none());
                }
            }
            other => panic!("{other:?}"),
        }
    }
}
