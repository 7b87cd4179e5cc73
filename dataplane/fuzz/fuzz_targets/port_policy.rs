//! Fuzzes the user-space receive policy of the DPDK port (`dataplane::net::policy`): whole
//! Ethernet frames from the input go through `classify` (the XDP program's parser and verdicts),
//! ARP parsing, and a policy table with a deny entry, a default allow and a small token bucket.
//! Nothing may panic; a data frame's payload is always inside the frame.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use dataplane::net::policy::{arp, classify, Classified, PolicySnapshot, PolicyTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let snap = PolicySnapshot {
        default_allow: true,
        policy: vec![(IpAddr::V4(Ipv4Addr::new(198, 18, 160, 9)), 7, false)],
        rate: vec![(IpAddr::V4(Ipv4Addr::new(198, 18, 160, 2)), 10, 3)],
    };
    let mut table = PolicyTable::from_snapshot(&snap);
    for (i, frame) in data.split(|&b| b == 0xA5).enumerate() {
        match classify(frame, 7447) {
            Classified::Data {
                datagram,
                stream_id,
            } => {
                assert!(datagram.payload.len() <= frame.len());
                let _ = table.judge(*datagram.src.ip(), stream_id, i as u64 * 1_000_000);
            }
            Classified::OtherPort(d) => assert!(d.payload.len() <= frame.len()),
            Classified::Arp(body) => {
                let _ = arp::parse(body);
            }
            Classified::Done(_) => {}
        }
    }
});
