//! The real program, run by the kernel on hand-built packets through
//! `BPF_PROG_TEST_RUN` (no interface): the parser paths no veth test can
//! reach with 198.18.0.0/15 addresses and UDP sockets (IPv6, IP options,
//! truncated IP headers, VLAN), and the token bucket's refill arithmetic.
//! IPv6 sources come from 2001:2::/48 (benchmarking range), inside packets only.
//! Needs root (CAP_BPF): skips with a message otherwise, fails under `make test`.

use std::net::{IpAddr, Ipv6Addr};

use xdp_programs::abi::{Config, RateBucket, Verdict, CONFIG_FLAG_DEFAULT_ALLOW, FRAME_BYTES_MAX};
use xdp_programs::frame::{FrameHeader, FrameType};
use xdp_programs::loader::{XDP_DROP, XDP_PASS};
use xdp_programs::{TestRunProgram, XdpProgram};

const PORT: u16 = 47_000;
const SRC4: [u8; 4] = [198, 18, 200, 1];
const DST4: [u8; 4] = [198, 18, 200, 2];
const SRC6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const DST6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// What root is for here (`testkit::require!`).
const NEEDS: &str = "CAP_BPF for BPF_PROG_TEST_RUN";

fn program(default_allow: bool) -> TestRunProgram {
    let flags = if default_allow {
        CONFIG_FLAG_DEFAULT_ALLOW
    } else {
        0
    };
    XdpProgram::load_for_test_run(Config {
        data_port: PORT,
        reserved: 0,
        flags,
    })
    .expect("load")
}

fn frame(stream: u32, body: usize) -> Vec<u8> {
    let h = FrameHeader {
        frame_type: FrameType::Data,
        flags: 0,
        stream_id: stream,
        partition: 0,
        session_id: 1,
        offset: 0,
        epoch: 1,
    };
    let mut out = Vec::new();
    h.encode(&vec![0x5a; body], &mut out).expect("fits");
    out
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&40_000u16.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// IPv4 header with `options` (multiple of 4 bytes) + payload; tot_len correct.
fn ipv4(proto: u8, frag_off: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let ihl = (20 + options.len()) / 4;
    let tot = 20 + options.len() + payload.len();
    let mut p = vec![0x40 | ihl as u8, 0];
    p.extend_from_slice(&(tot as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1]);
    p.extend_from_slice(&frag_off.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&SRC4);
    p.extend_from_slice(&DST4);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    p
}

fn ipv6(next: u8, src: [u8; 16], payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&DST6);
    p.extend_from_slice(payload);
    p
}

fn v4_frame(stream: u32) -> Vec<u8> {
    eth(0x0800, &ipv4(17, 0, &[], &udp(PORT, &frame(stream, 32))))
}

/// Runs `packet`, expects `action`, and that exactly `verdict` moved by one.
fn check(prog: &mut TestRunProgram, what: &str, packet: &[u8], action: u32, verdict: Verdict) {
    let before = prog.maps().counters().expect("counters");
    assert_eq!(
        prog.run(packet).expect("test run"),
        action,
        "{what}: action"
    );
    let delta = prog.maps().counters().expect("counters").since(&before);
    for v in Verdict::ALL {
        let want = u64::from(v == verdict);
        assert_eq!(
            delta.get(v),
            want,
            "{what}: verdict {} (deltas {:?})",
            v.label(),
            delta
        );
    }
}

#[test]
fn every_parser_path_gives_its_verdict() {
    testkit::require!(testkit::root(NEEDS));
    let mut p = program(true);
    let good_udp = udp(PORT, &frame(1, 32));

    check(
        &mut p,
        "arp",
        &eth(0x0806, &[0; 28]),
        XDP_PASS,
        Verdict::PassNotIp,
    );
    check(
        &mut p,
        "vlan",
        &eth(0x8100, &[0; 46]),
        XDP_PASS,
        Verdict::PassNotIp,
    );
    check(
        &mut p,
        "bare ethernet",
        &eth(0x0800, &[]),
        XDP_DROP,
        Verdict::DropTruncated,
    );
    check(
        &mut p,
        "ipv4 cut",
        &eth(0x0800, &ipv4(17, 0, &[], &good_udp)[..12]),
        XDP_DROP,
        Verdict::DropTruncated,
    );
    check(
        &mut p,
        "tcp",
        &eth(0x0800, &ipv4(6, 0, &[], &[0; 20])),
        XDP_PASS,
        Verdict::PassNotUdp,
    );
    check(
        &mut p,
        "fragment MF",
        &eth(0x0800, &ipv4(17, 0x2000, &[], &good_udp)),
        XDP_PASS,
        Verdict::PassIpFragment,
    );
    check(
        &mut p,
        "fragment offset",
        &eth(0x0800, &ipv4(17, 0x0010, &[], &good_udp)),
        XDP_PASS,
        Verdict::PassIpFragment,
    );

    let mut ihl4 = ipv4(17, 0, &[], &good_udp);
    ihl4[0] = 0x44;
    check(
        &mut p,
        "ihl 4",
        &eth(0x0800, &ihl4),
        XDP_DROP,
        Verdict::DropBadHeader,
    );

    let mut long_tot = ipv4(17, 0, &[], &good_udp);
    long_tot[2..4].copy_from_slice(&2000u16.to_be_bytes());
    check(
        &mut p,
        "tot_len past end",
        &eth(0x0800, &long_tot),
        XDP_DROP,
        Verdict::DropTruncated,
    );

    let mut short_tot = ipv4(17, 0, &[], &good_udp);
    short_tot[2..4].copy_from_slice(&24u16.to_be_bytes());
    check(
        &mut p,
        "tot_len < ip+udp",
        &eth(0x0800, &short_tot),
        XDP_DROP,
        Verdict::DropTruncated,
    );

    // Ethernet padding after tot_len is allowed.
    let mut padded = eth(0x0800, &ipv4(17, 0, &[], &good_udp));
    padded.extend_from_slice(&[0; 6]);
    check(
        &mut p,
        "padded",
        &padded,
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );

    let opts = [1u8; 8]; // 2 words of NOP options
    check(
        &mut p,
        "ip options",
        &eth(0x0800, &ipv4(17, 0, &opts, &good_udp)),
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    check(
        &mut p,
        "other port",
        &eth(0x0800, &ipv4(17, 0, &[], &udp(PORT + 1, &frame(1, 8)))),
        XDP_PASS,
        Verdict::PassOtherPort,
    );

    let mut udp_len = good_udp.clone();
    udp_len[4..6].copy_from_slice(&30u16.to_be_bytes());
    check(
        &mut p,
        "udp len != ip",
        &eth(0x0800, &ipv4(17, 0, &[], &udp_len)),
        XDP_DROP,
        Verdict::DropBadLength,
    );

    let mut bad = frame(1, 32);
    bad[5] = 8; // type beyond FRAME_TYPE_MAX
    check(
        &mut p,
        "type 8",
        &eth(0x0800, &ipv4(17, 0, &[], &udp(PORT, &bad))),
        XDP_DROP,
        Verdict::DropBadHeader,
    );

    // IPv6.
    check(
        &mut p,
        "ipv6 ok",
        &eth(0x86dd, &ipv6(17, SRC6, &good_udp)),
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    check(
        &mut p,
        "ipv6 cut",
        &eth(0x86dd, &ipv6(17, SRC6, &good_udp)[..30]),
        XDP_DROP,
        Verdict::DropTruncated,
    );
    check(
        &mut p,
        "ipv6 hop-by-hop",
        &eth(0x86dd, &ipv6(0, SRC6, &[0; 16])),
        XDP_PASS,
        Verdict::PassNotUdp,
    );
    let mut v6_long = ipv6(17, SRC6, &good_udp);
    v6_long[4..6].copy_from_slice(&1000u16.to_be_bytes());
    check(
        &mut p,
        "ipv6 payload_len past end",
        &eth(0x86dd, &v6_long),
        XDP_DROP,
        Verdict::DropTruncated,
    );
    let mut v6_short = ipv6(17, SRC6, &good_udp);
    v6_short[4..6].copy_from_slice(&4u16.to_be_bytes());
    check(
        &mut p,
        "ipv6 payload < udp",
        &eth(0x86dd, &v6_short),
        XDP_DROP,
        Verdict::DropTruncated,
    );
    let mut fl = frame(1, 32);
    fl[20] ^= 1;
    check(
        &mut p,
        "ipv6 frame length",
        &eth(0x86dd, &ipv6(17, SRC6, &udp(PORT, &fl))),
        XDP_DROP,
        Verdict::DropBadLength,
    );
}

#[test]
fn ipv6_sources_are_policed_like_ipv4() {
    testkit::require!(testkit::root(NEEDS));
    let mut p = program(false);
    let pkt = eth(0x86dd, &ipv6(17, SRC6, &udp(PORT, &frame(9, 16))));
    check(
        &mut p,
        "v6 default deny",
        &pkt,
        XDP_DROP,
        Verdict::DropPolicy,
    );
    let src = IpAddr::V6(Ipv6Addr::from(SRC6));
    p.maps().allow(src, 9).expect("allow");
    check(
        &mut p,
        "v6 allowed",
        &pkt,
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    // The IPv4 key space is separate (::ffff:a.b.c.d).
    check(
        &mut p,
        "v4 still denied",
        &v4_frame(9),
        XDP_DROP,
        Verdict::DropPolicy,
    );
    p.maps().set_rate_limit(src, 0, 1).expect("limit");
    check(
        &mut p,
        "v6 token",
        &pkt,
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    check(
        &mut p,
        "v6 limited",
        &pkt,
        XDP_DROP,
        Verdict::DropRateLimited,
    );
}

#[test]
fn frames_larger_than_the_limit_are_refused_by_the_encoder() {
    // The XDP check `length <= FRAME_BYTES_MAX` cannot be fed through
    // BPF_PROG_TEST_RUN (one page); the encoder refuses such frames up front.
    let h = FrameHeader::decode(&frame(1, 0)).expect("valid");
    assert!(h
        .encode(&vec![0; FRAME_BYTES_MAX as usize], &mut Vec::new())
        .is_err());
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[test]
fn token_bucket_refills_whole_tokens_and_keeps_the_fraction() {
    testkit::require!(testkit::root(NEEDS));
    let mut p = program(true);
    let src = IpAddr::V4(SRC4.into());
    let pkt = v4_frame(1);

    // Empty bucket, last refill 2.5 s ago, 1 token/s: the frame sees 2 new
    // tokens, takes one, and the clock advances by exactly 2 s (0.5 s kept).
    p.maps().set_rate_limit(src, 1, 10).expect("limit");
    let last0 = monotonic_ns() - 2_500_000_000;
    let empty = RateBucket {
        rate_per_sec: 1,
        burst: 10,
        tokens: 0,
        last_ns: last0,
    };
    p.maps()
        .write_rate_bucket(src, empty)
        .expect("write bucket");
    check(
        &mut p,
        "refilled",
        &pkt,
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    let b = p.maps().rate_limit(src).expect("get").expect("present");
    assert_eq!((b.tokens, b.last_ns), (1, last0 + 2_000_000_000));

    // Idle longer than RATE_REFILL_ELAPSED_NS_MAX: refilled to burst, capped.
    let idle = RateBucket {
        rate_per_sec: 1,
        burst: 3,
        tokens: 0,
        last_ns: 1,
    };
    p.maps().write_rate_bucket(src, idle).expect("write bucket");
    check(
        &mut p,
        "full after idle",
        &pkt,
        XDP_PASS,
        Verdict::RedirectNoSocket,
    );
    let b = p.maps().rate_limit(src).expect("get").expect("present");
    assert_eq!(b.tokens, 2);
    assert!(b.last_ns > 1);
}
