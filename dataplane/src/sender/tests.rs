//! The sender's catch-up with real I/O: a log on storage, a (lossy) ring that overruns the
//! subscriber's private reader, and a remote subscriber on loopback. No root needed.

use sdk::net::wire::SubscribeStart;
use sdk::net::{PublisherConfig, ReceiverConfig, UdpSubscriber};
use shm_ring::{Mode, Ring, RingConfig};
use storage_nvme::{AlignedBuf, Log, LogConfig, Record};

use super::*;
use crate::agent::spsc;
use crate::net::udp::UdpPort;

/// Duty cycles a test runs at most (each is non-blocking).
const CYCLES_MAX: usize = 200_000;
const STREAM: u32 = 7;
const SESSION: u32 = 5;

fn append(log: &mut Log, from: u64, to: u64) {
    let payloads: Vec<[u8; 8]> = (from..to).map(u64::to_le_bytes).collect();
    let records: Vec<Record<'_>> = payloads
        .iter()
        .map(|p| Record {
            timestamp_ns: 1,
            payload: p,
        })
        .collect();
    for (i, chunk) in records.chunks(32).enumerate() {
        log.append_batch(from + 32 * i as u64, chunk).unwrap();
    }
    assert_eq!(log.sync().unwrap(), to);
}

fn publish(ring: &Ring, from: u64, to: u64) {
    let mut p = ring.publisher().unwrap();
    for i in from..to {
        p.offer(&i.to_le_bytes()).unwrap();
    }
}

/// A subscriber reads storage, then the ring; the ring overruns its private reader, so it goes
/// back to storage from the next record it needs, then to the ring again, then live. It gets
/// every record once, in order.
#[test]
fn an_overrun_private_reader_falls_back_to_storage_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(dir.path().join("log"), LogConfig::default()).unwrap();
    let ring_cfg = RingConfig {
        capacity_bytes: 16 << 10,
        mode: Mode::Lossy,
        backing: shm_ring::Backing::DevShm,
        dir: Some(dir.path().to_path_buf()),
        ..RingConfig::default()
    };
    let ring = Ring::create("sender-fallback", &ring_cfg).unwrap();
    // Ring offset = log offset (delta 0). The log is durable to 250; the ring (about 128
    // records) holds 172..300.
    append(&mut log, 0, 250);
    publish(&ring, 0, 300);
    let counters = Counters::new(&[(STREAM, 0)]);
    let port = UdpPort::bind("127.0.0.1:0".parse().unwrap(), 32, 64).unwrap();
    let (mut commands, rx) = spsc(4);
    let mut sender = Sender::new(
        SenderPort::Udp(port),
        vec![ring.clone()],
        vec![counters.partition_cells(0)],
        1,
        4,
        u64::MAX,
        rx,
        counters.clone(),
    )
    .unwrap();
    let mut sub =
        UdpSubscriber::bind("127.0.0.1:0".parse().unwrap(), ReceiverConfig::default()).unwrap();
    let start = SubscribeStart::Earliest;
    sub.subscribe_from(sender.local_addr(), STREAM, 0, SESSION, "sub", start)
        .unwrap();
    let peer = NewSubscriber {
        dst: sub.local_addr().unwrap(),
        slot: 0,
        session: PublisherSession::new(PublisherConfig::new(STREAM, 0, SESSION, "node")).unwrap(),
        start: SubscriberStart::Storage {
            from: 0,
            reader: Box::new(log.reader()),
            buf: Box::new(AlignedBuf::new(4 << 20).unwrap()),
        },
        dst_mac: None,
    };
    assert!(commands.offer(SenderCommand::Add(Box::new(peer))).is_ok());
    let clock = crate::agent::Clock::new();
    let mut got = Vec::new();
    let mut step = |sender: &mut Sender, got: &mut Vec<u64>| {
        sender.do_work(clock.now_ns());
        sub.poll(
            |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
            64,
        );
    };
    let source = |sender: &Sender| sender.subscriptions.first().map(|s| s.cu.source());
    for _ in 0..CYCLES_MAX {
        step(&mut sender, &mut got);
        if source(&sender) == Some(Source::Ring) {
            break;
        }
    }
    assert_eq!(
        source(&sender),
        Some(Source::Ring),
        "storage to 250, the ring holds 250"
    );
    // The ring laps the private reader before it reads; the log gets those records durable.
    publish(&ring, 300, 800);
    append(&mut log, 250, 800);
    let mut fell_back = false;
    for _ in 0..CYCLES_MAX {
        step(&mut sender, &mut got);
        fell_back |= source(&sender) == Some(Source::Storage);
        if got.len() == 800 && source(&sender) == Some(Source::Live) {
            break;
        }
    }
    assert!(fell_back, "the overrun sent it back to storage");
    assert_eq!(got, (0..800).collect::<Vec<_>>());
    // Live from here: new ring records arrive once, after the caught-up ones.
    publish(&ring, 800, 810);
    for _ in 0..CYCLES_MAX {
        step(&mut sender, &mut got);
        if got.len() == 810 {
            break;
        }
    }
    assert_eq!(got, (0..810).collect::<Vec<_>>());
    ring.unlink().unwrap();
}
