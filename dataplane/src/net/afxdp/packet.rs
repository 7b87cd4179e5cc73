//! Ethernet / IPv4 / UDP framing for the AF_XDP backend: RX frames are
//! validated down to the UDP payload, TX frames get headers built here.
//!
//! ```text
//!  0 dst MAC [6]  6 src MAC [6]  12 EtherType u16 BE (0x0800)
//! 14 IPv4: 14 ver/IHL  15 DSCP  16 total_len BE  18 id BE  20 flags/frag BE
//!          22 TTL  23 protocol (17)  24 checksum BE  26 src [4]  30 dst [4]
//! 34 UDP (IHL = 5 on TX): 34 src port BE  36 dst port BE  38 length BE  40 checksum BE
//! 42 payload (the MemoryStreamer frame)
//! ```
//! IPv6 is not handled by this backend (the UDP backend carries it): such
//! frames are counted as `not_udp_ipv4`.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const ETH_HEADER_BYTES: usize = 14;
pub const ETH_DST_OFFSET: usize = 0;
pub const ETH_SRC_OFFSET: usize = 6;
pub const ETH_TYPE_OFFSET: usize = 12;
pub const ETH_TYPE_IPV4: u16 = 0x0800;

pub const IPV4_HEADER_BYTES: usize = 20;
pub const IPV4_VER_IHL_OFFSET: usize = 0;
pub const IPV4_TOTAL_LEN_OFFSET: usize = 2;
pub const IPV4_ID_OFFSET: usize = 4;
pub const IPV4_FRAG_OFFSET: usize = 6;
pub const IPV4_TTL_OFFSET: usize = 8;
pub const IPV4_PROTOCOL_OFFSET: usize = 9;
pub const IPV4_CHECKSUM_OFFSET: usize = 10;
pub const IPV4_SRC_OFFSET: usize = 12;
pub const IPV4_DST_OFFSET: usize = 16;
pub const IPV4_PROTOCOL_UDP: u8 = 17;
/// More-fragments bit and fragment offset: any set means a fragment.
pub const IPV4_FRAG_MASK: u16 = 0x3FFF;
pub const IPV4_TTL: u8 = 64;

pub const UDP_HEADER_BYTES: usize = 8;
pub const UDP_SRC_PORT_OFFSET: usize = 0;
pub const UDP_DST_PORT_OFFSET: usize = 2;
pub const UDP_LEN_OFFSET: usize = 4;
pub const UDP_CHECKSUM_OFFSET: usize = 6;

/// Bytes in front of the payload of every frame this backend sends.
pub const TX_HEADERS_BYTES: usize = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES;
const _: () = assert!(TX_HEADERS_BYTES == 42);

/// Why a received frame was not handed to the data plane (each is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxDrop {
    /// Shorter than the headers it claims.
    Truncated,
    /// Not IPv4/UDP, or an IP fragment (the XDP program passes those to the kernel).
    NotUdpIpv4,
    /// Bad IHL, lengths that disagree.
    Malformed,
    /// Not addressed to our data port.
    OtherPort,
}

/// A validated UDP datagram inside an Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxDatagram<'a> {
    pub src: SocketAddrV4,
    pub src_mac: [u8; 6],
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Validates Ethernet, IPv4 and UDP headers (every length against the frame)
/// and returns the payload addressed to `port`.
pub fn parse_udp_ipv4(frame: &[u8], port: u16) -> Result<RxDatagram<'_>, RxDrop> {
    if frame.len() < ETH_HEADER_BYTES {
        return Err(RxDrop::Truncated);
    }
    if be16(frame, ETH_TYPE_OFFSET) != ETH_TYPE_IPV4 {
        return Err(RxDrop::NotUdpIpv4);
    }
    let ip = &frame[ETH_HEADER_BYTES..];
    if ip.len() < IPV4_HEADER_BYTES {
        return Err(RxDrop::Truncated);
    }
    let ver_ihl = ip[IPV4_VER_IHL_OFFSET];
    let ihl = usize::from(ver_ihl & 0x0F) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_HEADER_BYTES {
        return Err(RxDrop::Malformed);
    }
    if ip[IPV4_PROTOCOL_OFFSET] != IPV4_PROTOCOL_UDP
        || be16(ip, IPV4_FRAG_OFFSET) & IPV4_FRAG_MASK != 0
    {
        return Err(RxDrop::NotUdpIpv4);
    }
    let total = usize::from(be16(ip, IPV4_TOTAL_LEN_OFFSET));
    if total > ip.len() {
        return Err(RxDrop::Truncated);
    }
    if total < ihl + UDP_HEADER_BYTES {
        return Err(RxDrop::Malformed);
    }
    let udp = &ip[ihl..total];
    if be16(udp, UDP_DST_PORT_OFFSET) != port {
        return Err(RxDrop::OtherPort);
    }
    if usize::from(be16(udp, UDP_LEN_OFFSET)) != udp.len() {
        return Err(RxDrop::Malformed);
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6]);
    let src_ip = Ipv4Addr::new(
        ip[IPV4_SRC_OFFSET],
        ip[IPV4_SRC_OFFSET + 1],
        ip[IPV4_SRC_OFFSET + 2],
        ip[IPV4_SRC_OFFSET + 3],
    );
    Ok(RxDatagram {
        src: SocketAddrV4::new(src_ip, be16(udp, UDP_SRC_PORT_OFFSET)),
        src_mac,
        payload: &udp[UDP_HEADER_BYTES..],
    })
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn ipv4_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Addresses of one outgoing datagram.
#[derive(Clone, Copy, Debug)]
pub struct TxAddrs {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub ip_id: u16,
}

/// Writes the 42 header bytes for a payload of `payload_len` bytes (IPv4
/// checksum computed; UDP checksum 0 = none, allowed over IPv4 and the frame
/// carries its own CRC32C).
pub fn write_headers(a: &TxAddrs, payload_len: usize) -> [u8; TX_HEADERS_BYTES] {
    let mut h = [0u8; TX_HEADERS_BYTES];
    h[ETH_DST_OFFSET..ETH_DST_OFFSET + 6].copy_from_slice(&a.dst_mac);
    h[ETH_SRC_OFFSET..ETH_SRC_OFFSET + 6].copy_from_slice(&a.src_mac);
    h[ETH_TYPE_OFFSET..ETH_TYPE_OFFSET + 2].copy_from_slice(&ETH_TYPE_IPV4.to_be_bytes());
    let ip = &mut h[ETH_HEADER_BYTES..ETH_HEADER_BYTES + IPV4_HEADER_BYTES];
    ip[IPV4_VER_IHL_OFFSET] = 0x45;
    let total = (IPV4_HEADER_BYTES + UDP_HEADER_BYTES + payload_len) as u16;
    ip[IPV4_TOTAL_LEN_OFFSET..][..2].copy_from_slice(&total.to_be_bytes());
    ip[IPV4_ID_OFFSET..][..2].copy_from_slice(&a.ip_id.to_be_bytes());
    ip[IPV4_FRAG_OFFSET..][..2].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[IPV4_TTL_OFFSET] = IPV4_TTL;
    ip[IPV4_PROTOCOL_OFFSET] = IPV4_PROTOCOL_UDP;
    ip[IPV4_SRC_OFFSET..][..4].copy_from_slice(&a.src.ip().octets());
    ip[IPV4_DST_OFFSET..][..4].copy_from_slice(&a.dst.ip().octets());
    let sum = ipv4_checksum(ip);
    ip[IPV4_CHECKSUM_OFFSET..][..2].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut h[ETH_HEADER_BYTES + IPV4_HEADER_BYTES..];
    udp[UDP_SRC_PORT_OFFSET..][..2].copy_from_slice(&a.src.port().to_be_bytes());
    udp[UDP_DST_PORT_OFFSET..][..2].copy_from_slice(&a.dst.port().to_be_bytes());
    let udp_len = (UDP_HEADER_BYTES + payload_len) as u16;
    udp[UDP_LEN_OFFSET..][..2].copy_from_slice(&udp_len.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> TxAddrs {
        TxAddrs {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "198.18.100.1:7447".parse().expect("addr"),
            dst: "198.18.100.2:40000".parse().expect("addr"),
            ip_id: 7,
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = write_headers(&addrs(), payload.len()).to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn built_frames_parse_back_to_the_payload() {
        let f = frame(b"MSTR frame bytes");
        let a = addrs();
        // Seen from the peer: our source is its sender.
        let d = parse_udp_ipv4(&f, a.dst.port()).expect("valid");
        assert_eq!(d.src, a.src);
        assert_eq!(d.src_mac, a.src_mac);
        assert_eq!(d.payload, b"MSTR frame bytes");
        // A correct IPv4 header sums to zero.
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }

    #[test]
    fn ethernet_padding_after_total_len_is_allowed() {
        let mut f = frame(b"x");
        f.resize(60, 0);
        assert_eq!(parse_udp_ipv4(&f, 40000).expect("valid").payload, b"x");
    }

    #[test]
    fn every_bad_header_is_a_counted_reason_never_a_panic() {
        let good = frame(&[0xAB; 64]);
        for cut in 0..good.len() {
            let r = parse_udp_ipv4(&good[..cut], 40000);
            assert!(r.is_err(), "prefix of {cut} bytes");
        }
        assert_eq!(parse_udp_ipv4(&good, 40001), Err(RxDrop::OtherPort));
        let mut f = good.clone();
        f[12] = 0x86;
        f[13] = 0xDD;
        assert_eq!(parse_udp_ipv4(&f, 40000), Err(RxDrop::NotUdpIpv4));
        let mut f = good.clone();
        f[14] = 0x44; // IHL 4
        assert_eq!(parse_udp_ipv4(&f, 40000), Err(RxDrop::Malformed));
        let mut f = good.clone();
        f[14 + 6] = 0x20; // more fragments
        assert_eq!(parse_udp_ipv4(&f, 40000), Err(RxDrop::NotUdpIpv4));
        let mut f = good.clone();
        f[34 + 5] ^= 1; // UDP length disagrees
        assert_eq!(parse_udp_ipv4(&f, 40000), Err(RxDrop::Malformed));
        let mut x: u32 = 0xC0FF_EE11;
        for len in 0..300usize {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_udp_ipv4(&junk, 40000);
        }
    }
}
