//! Deterministic tests of the sans-IO sessions over a seeded lossy link, and
//! one real exchange over loopback UDP sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{self, HEADER_BYTES};
use super::*;
use abi::frame::{FrameHeader, FrameType};

const PUB_ADDR: &str = "127.0.0.1:5001";

fn cfg() -> PublisherConfig {
    let mut c = PublisherConfig::new(7, 1, 99, "alice");
    c.buffer_bytes = BUFFER_BYTES_MIN;
    c
}

fn receiver(window_bytes: u32) -> ReceiverCore {
    ReceiverCore::new(ReceiverConfig {
        window_bytes,
        ..ReceiverConfig::default()
    })
    .expect("valid config")
}

/// xorshift: the link's loss decisions replay from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i % 37) as usize * 5 + 8;
    let mut p = vec![(i % 251) as u8; len];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

/// Runs publisher and receiver against each other with `loss_percent` loss in
/// both directions until `records` records arrived; returns what arrived.
fn run_link(
    p: &mut PublisherSession,
    r: &mut ReceiverCore,
    records: u64,
    loss_percent: u64,
    seed: u64,
) -> Vec<(u64, Vec<u8>)> {
    let src: SocketAddr = PUB_ADDR.parse().expect("addr");
    let mut rng = Rng(seed);
    let mut now = 0u64;
    let mut offered = 0u64;
    let mut got = Vec::new();
    let mut frame = Vec::new();
    for _step in 0..200_000 {
        now += 100_000; // 100 us of simulated time per step
        while offered < records {
            match p.offer(offered as u16, &payload(offered)) {
                Ok(_) => offered += 1,
                Err(NetOfferError::BackPressured) => break,
                Err(e) => panic!("offer: {e}"),
            }
        }
        for _ in 0..32 {
            if !p.poll_transmit(now, &mut frame) {
                break;
            }
            if !rng.chance(loss_percent) {
                r.handle(now, src, &frame, &mut |rec| {
                    got.push((rec.offset, rec.payload.to_vec()));
                    assert_eq!(rec.record_type, (got.len() - 1) as u16);
                });
            }
        }
        while let Some(dst) = r.poll_transmit(now, &mut frame) {
            assert_eq!(dst, src);
            if !rng.chance(loss_percent) {
                p.handle(now, &frame);
            }
        }
        if got.len() as u64 == records && p.is_drained() {
            break;
        }
    }
    got
}

fn assert_exactly_once(got: &[(u64, Vec<u8>)], records: u64) {
    assert_eq!(got.len() as u64, records, "records delivered");
    let mut offset = 0;
    for (i, (o, bytes)) in got.iter().enumerate() {
        assert_eq!(*o, offset, "record {i} offset");
        assert_eq!(bytes, &payload(i as u64), "record {i} payload");
        offset += wire::record_bytes(bytes.len()) as u64;
    }
}

#[test]
fn lossless_link_delivers_in_order_exactly_once() {
    let mut p = PublisherSession::new(cfg()).expect("config");
    let mut r = receiver(1 << 20);
    let got = run_link(&mut p, &mut r, 5_000, 0, 1);
    assert_exactly_once(&got, 5_000);
    assert!(p.is_connected());
    assert_eq!(p.stats().retransmit_frames, 0);
    assert_eq!(r.stats().naks_sent, 0);
    assert!(
        p.stats().data_frames < 5_000,
        "records are batched into frames"
    );
}

#[test]
fn seeded_lossy_link_recovers_every_record() {
    for seed in [3, 17, 1234, 99_999] {
        let mut p = PublisherSession::new(cfg()).expect("config");
        let mut r = receiver(64 * 1024);
        let got = run_link(&mut p, &mut r, 3_000, 10, seed);
        assert_exactly_once(&got, 3_000);
        assert!(p.is_drained(), "seed {seed}: all acknowledged");
        assert!(r.stats().naks_sent > 0, "seed {seed}: loss was NAKed");
        assert!(p.stats().retransmit_frames > 0, "seed {seed}: and re-sent");
    }
}

#[test]
fn flow_control_never_sends_past_the_window() {
    let window = wire::align8(16 * 1024) as u32;
    let mut p = PublisherSession::new(cfg()).expect("config");
    let mut r = receiver(window);
    let src: SocketAddr = PUB_ADDR.parse().expect("addr");
    let mut frame = Vec::new();
    // Connect.
    assert!(p.poll_transmit(0, &mut frame));
    r.handle(0, src, &frame, &mut |_| {});
    let dst = r.poll_transmit(0, &mut frame).expect("setup ack");
    assert_eq!(dst, src);
    p.handle(0, &frame);
    assert!(p.is_connected());
    while p.offer(0, &[1; 1000]).is_ok() {}
    assert_eq!(p.stats().back_pressured, 1);
    // Without further STATUS the publisher stops at offset 0 + window.
    let mut data_end = 0;
    for _ in 0..1000 {
        if !p.poll_transmit(1, &mut frame) {
            break;
        }
        let h = FrameHeader::decode(&frame).expect("valid frame");
        if h.frame_type == FrameType::Data {
            data_end = h.offset + (frame.len() - HEADER_BYTES) as u64;
        }
    }
    assert!(data_end > 0 && data_end <= u64::from(window), "{data_end}");
}

/// A STATUS from the node for `cfg()`'s session.
fn status(flags: u16, consumed: u64, durable: u64) -> Vec<u8> {
    let c = cfg();
    let h = FrameHeader {
        frame_type: FrameType::Status,
        flags,
        stream_id: c.stream_id,
        partition: c.partition,
        session_id: c.session_id,
        offset: consumed,
        epoch: c.epoch,
    };
    let body = wire::StatusBody {
        durable_offset: durable,
        window_bytes: 1 << 20,
        receiver_id: 1,
    };
    let mut out = Vec::new();
    h.encode(&body.encode(), &mut out)
        .expect("STATUS fits a frame");
    out
}

#[test]
fn durable_release_keeps_records_until_the_node_stored_them() {
    for release in [Release::Consumed, Release::Durable] {
        let mut c = cfg();
        c.release = release;
        let mut p = PublisherSession::new(c).expect("config");
        let mut frame = Vec::new();
        assert!(p.poll_transmit(0, &mut frame)); // SETUP
        p.handle(0, &status(wire::FLAG_SETUP_ACK, 0, 0));
        assert!(p.is_connected());
        for _ in 0..4 {
            p.offer(0, &[7; 100]).expect("room");
        }
        for _ in 0..100 {
            if !p.poll_transmit(1, &mut frame) {
                break;
            }
        }
        let end = p.end_offset();
        assert!(end > 0);
        // The node has every record in its ring, none on storage yet.
        p.handle(2, &status(0, end, 0));
        assert_eq!(p.durable_offset(), 0);
        let expected = if release == Release::Durable { 0 } else { end };
        assert_eq!(p.acked_offset(), expected, "{release:?}");
        // A durable offset past the consumed one is clamped to it.
        p.handle(3, &status(0, end, end + 4096));
        assert_eq!(p.durable_offset(), end);
        assert_eq!(p.acked_offset(), end, "{release:?}");
    }
}

#[test]
fn tail_loss_is_found_by_heartbeat_and_recovered() {
    let mut p = PublisherSession::new(cfg()).expect("config");
    let mut r = receiver(1 << 20);
    let src: SocketAddr = PUB_ADDR.parse().expect("addr");
    let mut frame = Vec::new();
    assert!(p.poll_transmit(0, &mut frame));
    r.handle(0, src, &frame, &mut |_| {});
    r.poll_transmit(0, &mut frame).expect("ack");
    p.handle(0, &frame);
    p.offer(5, b"the last record").expect("room");
    assert!(p.poll_transmit(1, &mut frame)); // DATA, lost
    let mut got = Vec::new();
    let mut now = 1;
    for _ in 0..100 {
        now += 1_000_000;
        while p.poll_transmit(now, &mut frame) {
            r.handle(now, src, &frame, &mut |rec| got.push(rec.payload.to_vec()));
        }
        while r.poll_transmit(now, &mut frame).is_some() {
            p.handle(now, &frame);
        }
        if p.is_drained() {
            break;
        }
    }
    assert_eq!(got, vec![b"the last record".to_vec()]);
    assert_eq!(r.stats().naks_sent, 1);
}

#[test]
fn duplicates_and_stale_epochs_are_dropped_and_counted() {
    let mut p = PublisherSession::new(cfg()).expect("config");
    let mut r = receiver(1 << 20);
    let src: SocketAddr = PUB_ADDR.parse().expect("addr");
    let mut frame = Vec::new();
    assert!(p.poll_transmit(0, &mut frame));
    r.handle(0, src, &frame, &mut |_| {});
    r.poll_transmit(0, &mut frame).expect("ack");
    p.handle(0, &frame);
    p.offer(0, b"once").expect("room");
    assert!(p.poll_transmit(1, &mut frame));
    let mut n = 0;
    r.handle(1, src, &frame, &mut |_| n += 1);
    r.handle(1, src, &frame, &mut |_| n += 1);
    assert_eq!(n, 1);
    assert_eq!(r.stats().drop_duplicate, 1);
    // Same frame with an older epoch: re-encode with epoch - 1 is impossible
    // at 0, so raise the session's epoch with a new SETUP first.
    let mut c = cfg();
    c.epoch = 1;
    let mut p1 = PublisherSession::new(c).expect("config");
    let mut setup = Vec::new();
    assert!(p1.poll_transmit(0, &mut setup));
    r.handle(2, src, &setup, &mut |_| {});
    r.handle(3, src, &frame, &mut |_| n += 1);
    assert_eq!(r.stats().drop_stale_epoch, 1);
    assert_eq!(n, 1);
}

#[test]
fn malformed_input_is_counted_never_a_panic() {
    let mut p = PublisherSession::new(cfg()).expect("config");
    let mut r = receiver(1 << 20);
    let src: SocketAddr = PUB_ADDR.parse().expect("addr");
    let mut good = Vec::new();
    assert!(p.poll_transmit(0, &mut good));
    r.handle(0, src, &good, &mut |_| {});
    r.poll_transmit(0, &mut good).expect("ack");
    p.handle(0, &good);
    p.offer(1, &[9; 100]).expect("room");
    assert!(p.poll_transmit(1, &mut good));
    let mut rng = Rng(0xDEAD_BEEF);
    let mut delivered = 0;
    for i in 0..2_000 {
        let mut bad = good.clone();
        match i % 4 {
            0 => bad.truncate(rng.next() as usize % good.len()),
            1 => {
                let at = rng.next() as usize % bad.len();
                bad[at] ^= 1 << (rng.next() % 8);
            }
            2 => bad = (0..(rng.next() % 200)).map(|_| rng.next() as u8).collect(),
            _ => {
                // A valid CRC over a corrupted body: records must be checked too.
                let h = FrameHeader::decode(&good).expect("good");
                let mut body = good[HEADER_BYTES..].to_vec();
                let at = rng.next() as usize % body.len();
                body[at] = rng.next() as u8;
                h.encode(&body, &mut bad).expect("fits");
            }
        }
        r.handle(2, src, &bad, &mut |_| delivered += 1);
        p.handle(2, &bad);
    }
    let s = r.stats();
    assert!(s.drop_bad_header > 0 && s.drop_bad_body > 0);
    assert_eq!(s.frames_received, 2_001, "the SETUP and 2000 bad frames");
    assert!(delivered <= 1, "at most the one valid record: {delivered}");
    assert!(p.stats().frames_dropped > 0);
}

#[test]
fn offer_refuses_oversize_and_closed() {
    let mut p = PublisherSession::new(cfg()).expect("config");
    let max = p.payload_bytes_max();
    assert_eq!(max, 1472 - 40 - 8);
    assert!(p.offer(0, &vec![0; max]).is_ok());
    assert_eq!(
        p.offer(0, &vec![0; max + 1]),
        Err(NetOfferError::TooLarge { len: max + 1, max })
    );
    p.close();
    assert_eq!(p.offer(0, b"x"), Err(NetOfferError::Closed));
}

#[test]
fn bad_configs_are_clear_errors() {
    let mut c = cfg();
    c.frame_bytes = 100;
    assert!(matches!(
        PublisherSession::new(c),
        Err(NetConfigError::FrameBytes { .. })
    ));
    let mut c = cfg();
    c.buffer_bytes = 100_000;
    assert!(matches!(
        PublisherSession::new(c),
        Err(NetConfigError::BufferBytes { .. })
    ));
    let mut c = cfg();
    c.principal = String::new();
    assert!(matches!(
        PublisherSession::new(c),
        Err(NetConfigError::Principal { .. })
    ));
    assert!(ReceiverCore::new(ReceiverConfig {
        window_bytes: 10,
        ..ReceiverConfig::default()
    })
    .is_err());
}

#[test]
fn loopback_udp_publisher_to_subscriber() {
    const RECORDS: u64 = 20_000;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut sub = UdpSubscriber::bind(any, ReceiverConfig::default()).expect("bind");
    let node = sub.local_addr().expect("addr");
    let mut c = cfg();
    c.buffer_bytes = 1 << 20;
    let mut publisher = UdpPublisher::new(any, node, c).expect("publisher");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut offered = 0;
    while (got.len() as u64) < RECORDS && Instant::now() < deadline {
        while offered < RECORDS {
            match publisher.offer(offered as u16, &payload(offered)) {
                Ok(_) => offered += 1,
                Err(NetOfferError::BackPressured) => break,
                Err(e) => panic!("offer: {e}"),
            }
        }
        publisher.do_work();
        sub.poll(|r| got.push((r.offset, r.payload.to_vec())), 256);
    }
    assert_exactly_once(&got, RECORDS);
    let closed = {
        let deadline = Instant::now() + Duration::from_secs(10);
        publisher.session_mut_close();
        while !publisher.session().is_closed() && Instant::now() < deadline {
            publisher.do_work();
            sub.poll(|_| {}, 64);
        }
        publisher.session().is_closed()
    };
    assert!(closed, "END_OF_SESSION after everything was acknowledged");
    for _ in 0..1000 {
        sub.poll(|_| {}, 64);
        if sub.core().is_ended(99) {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(sub.core().is_ended(99));
}

#[test]
fn subscribe_asks_the_node_until_its_setup_arrives() {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let node = std::net::UdpSocket::bind(any).expect("node data port");
    node.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sub = UdpSubscriber::bind(any, ReceiverConfig::default()).expect("bind");
    sub.subscribe(node.local_addr().expect("addr"), 7, 2, 4242, "reader")
        .expect("room");
    assert_eq!(
        sub.subscribe(node.local_addr().expect("addr"), 7, 2, 1, ""),
        Err(NetSubscribeError::Principal { len: 0 })
    );
    sub.poll(|_| {}, 1);
    let mut buf = vec![0u8; FRAME_RECV_BYTES];
    let (n, from) = node.recv_from(&mut buf).expect("SUBSCRIBE arrives");
    let h = FrameHeader::decode(&buf[..n]).expect("valid frame");
    assert_eq!(h.frame_type, FrameType::Setup);
    assert_eq!(h.flags, wire::FLAG_SUBSCRIBE);
    assert_eq!((h.stream_id, h.partition, h.session_id), (7, 2, 4242));
    assert_eq!(
        wire::decode_setup(&buf[HEADER_BYTES..n]).map(|s| s.principal),
        Some("reader")
    );
    // The node answers as the publisher of session 4242 (from another port).
    let mut c = PublisherConfig::new(7, 2, 4242, "node");
    c.buffer_bytes = BUFFER_BYTES_MIN;
    let mut sender = UdpPublisher::new(any, from, c).expect("node sender");
    sender.offer(0, b"from the ring").expect("room");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < deadline {
        sender.do_work();
        sub.poll(|r| got.push(r.payload.to_vec()), 16);
    }
    assert!(sub.is_subscribed(4242));
    assert_eq!(got, vec![b"from the ring".to_vec()]);
}
