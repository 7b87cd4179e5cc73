//! Single-process behaviour of the ring: round trips, wrap, back-pressure,
//! aborts, broadcast, lossy overrun, shared publishers, bad input.

mod common;

use common::{payload, TestDir};
use shm_ring::*;

fn drain(sub: &mut Subscriber, out: &mut Vec<(u64, u16, Vec<u8>)>) -> Poll {
    sub.poll(
        |r| out.push((r.offset, r.type_id, r.payload.to_vec())),
        usize::MAX,
    )
    .expect("poll")
}

#[test]
fn exclusive_reliable_round_trip_in_order_with_offsets() {
    let dir = TestDir::new("rt");
    let ring = Ring::create(
        "rt",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    assert_eq!(ring.backing(), BackingKind::DevShm);
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    let mut got = Vec::new();
    for i in 0..1000u64 {
        let len = (i % 97) as usize;
        assert_eq!(publ.offer_typed(i as u16, &payload(i, len)).unwrap(), i);
        if i % 7 == 0 {
            drain(&mut sub, &mut got);
        }
    }
    let p = drain(&mut sub, &mut got);
    assert_eq!(p.lost, 0);
    assert_eq!(got.len(), 1000);
    for (i, (off, ty, data)) in got.iter().enumerate() {
        assert_eq!(*off, i as u64);
        assert_eq!(*ty, i as u16);
        assert_eq!(*data, payload(i as u64, i % 97));
    }
    assert_eq!(sub.next_offset(), 1000);
    assert_eq!(sub.lost_records(), 0);
}

#[test]
fn reliable_back_pressure_is_a_value_and_releases_after_poll() {
    let dir = TestDir::new("bp");
    let ring = Ring::create(
        "bp",
        &dir.cfg(1024, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    let mut sent = 0u64;
    while publ.offer(&payload(sent, 32)).is_ok() {
        sent += 1;
        assert!(sent < 100, "a 1 KiB ring must push back");
    }
    assert_eq!(publ.offer(&[0; 32]), Err(OfferError::BackPressured));
    assert_eq!(sent, 16, "1024 bytes / 64-byte records");
    let p = sub.poll(|_| {}, 4).unwrap();
    assert_eq!(p.records, 4);
    for _ in 0..4 {
        publ.offer(&[1; 32]).unwrap();
    }
    assert_eq!(publ.offer(&[0; 32]), Err(OfferError::BackPressured));
}

#[test]
fn records_never_straddle_the_end_and_wrap_many_laps() {
    let dir = TestDir::new("wrap");
    for kind in [PublisherKind::Exclusive, PublisherKind::Shared] {
        let ring = Ring::create(
            &format!("wrap-{kind:?}"),
            &dir.cfg(1024, Mode::Reliable, kind),
        )
        .unwrap();
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut publ = ring.publisher().unwrap();
        let mut got = Vec::new();
        let mut expect = Vec::new();
        let max = publ.max_payload_len();
        assert_eq!(max, 1024 / 4 - 32);
        for i in 0..2000u64 {
            let len = [0, 1, 15, 16, 17, 100, max][i as usize % 7];
            let data = payload(i, len);
            loop {
                match publ.offer(&data) {
                    Ok(off) => {
                        assert_eq!(off, i);
                        break;
                    }
                    Err(OfferError::BackPressured) => {
                        drain(&mut sub, &mut got);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            expect.push((i, 0u16, data));
        }
        drain(&mut sub, &mut got);
        assert_eq!(got, expect);
        assert!(ring.tail().0 > 1024 * 100, "many laps");
    }
}

#[test]
fn zero_copy_claim_commit_abort_and_drop() {
    let dir = TestDir::new("claim");
    let ring = Ring::create(
        "claim",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    {
        let mut c = publ.claim(5).unwrap();
        assert_eq!(c.offset(), 0);
        c.buffer().copy_from_slice(b"hello");
        c.set_type(7);
        c.set_timestamp_ns(42);
        assert_eq!(c.commit(), Ok(0));
    }
    publ.claim(3).unwrap().abort();
    drop(publ.claim(3).unwrap());
    assert_eq!(publ.offer(b"after"), Ok(3));
    let mut got = Vec::new();
    let p = sub
        .poll(
            |r| got.push((r.offset, r.type_id, r.timestamp_ns, r.payload.to_vec())),
            10,
        )
        .unwrap();
    assert_eq!(
        p,
        Poll {
            records: 2,
            lost: 2
        }
    );
    assert_eq!(
        got,
        vec![
            (0, 7, 42, b"hello".to_vec()),
            (3, 0, got[1].2, b"after".to_vec())
        ]
    );
    assert!(got[1].2 > 0, "default timestamp is the ring clock");
    assert_eq!(sub.lost_records(), 2);
}

#[test]
fn message_too_large_is_refused() {
    let dir = TestDir::new("big");
    let ring = Ring::create("big", &dir.cfg(1024, Mode::Reliable, PublisherKind::Shared)).unwrap();
    let mut publ = ring.publisher().unwrap();
    let max = ring.max_payload_len();
    assert_eq!(
        publ.offer(&vec![0; max + 1]),
        Err(OfferError::MessageTooLarge { len: max + 1, max })
    );
    assert!(matches!(
        publ.claim(usize::MAX),
        Err(OfferError::MessageTooLarge { .. })
    ));
    assert!(publ.offer(&vec![0; max]).is_ok());
}

#[test]
fn every_subscriber_gets_every_record() {
    let dir = TestDir::new("bcast");
    let ring = Ring::create(
        "bcast",
        &dir.cfg(2048, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut subs: Vec<_> = (0..3)
        .map(|_| ring.subscriber(StartAt::Tail).unwrap())
        .collect();
    let mut publ = ring.publisher().unwrap();
    let mut got = vec![Vec::new(); 3];
    for i in 0..500u64 {
        while publ.offer(&payload(i, 24)) == Err(OfferError::BackPressured) {
            for (s, g) in subs.iter_mut().zip(got.iter_mut()) {
                drain(s, g);
            }
        }
    }
    for (s, g) in subs.iter_mut().zip(got.iter_mut()) {
        drain(s, g);
        assert_eq!(g.len(), 500);
        assert!(g
            .iter()
            .enumerate()
            .all(|(i, r)| r.0 == i as u64 && r.2 == payload(i as u64, 24)));
    }
}

#[test]
fn lossy_publisher_never_waits_and_subscriber_counts_exact_loss() {
    let dir = TestDir::new("lossy");
    let ring = Ring::create(
        "lossy",
        &dir.cfg(1024, Mode::Lossy, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    for i in 0..100u64 {
        assert_eq!(
            publ.offer(&payload(i, 32)),
            Ok(i),
            "lossy publishers never wait"
        );
    }
    let mut got = Vec::new();
    let p = drain(&mut sub, &mut got);
    // Overrun: jumped to the tail, everything before is lost, exactly.
    assert_eq!(p.records as u64 + p.lost, 100);
    assert_eq!(p.lost, 100);
    for i in 100..105u64 {
        publ.offer(&payload(i, 32)).unwrap();
    }
    let p = drain(&mut sub, &mut got);
    assert_eq!(
        p,
        Poll {
            records: 5,
            lost: 0
        }
    );
    assert_eq!(
        got.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![100, 101, 102, 103, 104]
    );
    assert_eq!(sub.lost_records(), 100);
}

#[test]
fn earliest_starts_at_oldest_safe_record_tail_at_next() {
    let dir = TestDir::new("earliest");
    let ring = Ring::create(
        "earliest",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared),
    )
    .unwrap();
    let mut publ = ring.publisher().unwrap();
    for i in 0..10u64 {
        publ.offer(&payload(i, 10)).unwrap();
    }
    let mut early = ring.subscriber(StartAt::Earliest).unwrap();
    let mut tail = ring.subscriber(StartAt::Tail).unwrap();
    assert_eq!(early.next_offset(), 0);
    assert_eq!(tail.next_offset(), 10);
    publ.offer(b"x").unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    drain(&mut early, &mut a);
    drain(&mut tail, &mut b);
    assert_eq!(a.len(), 11);
    assert_eq!(b.iter().map(|r| r.0).collect::<Vec<_>>(), vec![10]);
}

#[test]
fn shared_publishers_on_threads_deliver_every_record_once() {
    let dir = TestDir::new("mt");
    let ring = Ring::create("mt", &dir.cfg(8192, Mode::Reliable, PublisherKind::Shared)).unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    const PER: u64 = 5000;
    let handles: Vec<_> = (0..3u64)
        .map(|t| {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut publ = ring.publisher().unwrap();
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                for i in 0..PER {
                    let msg = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    while publ.offer(&msg) == Err(OfferError::BackPressured) {
                        assert!(std::time::Instant::now() < deadline);
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    let mut next = [0u64; 3];
    let mut offsets = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while next.iter().sum::<u64>() < 3 * PER {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out at {next:?}"
        );
        sub.poll(
            |r| {
                assert_eq!(r.offset, offsets);
                offsets += 1;
                let t = u64::from_le_bytes(r.payload[..8].try_into().unwrap()) as usize;
                let i = u64::from_le_bytes(r.payload[8..].try_into().unwrap());
                assert_eq!(i, next[t], "per-publisher order");
                next[t] += 1;
            },
            256,
        )
        .unwrap();
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(sub.lost_records(), 0);
}

#[test]
fn exclusive_ring_has_one_publisher_at_a_time() {
    let dir = TestDir::new("excl");
    let ring = Ring::create(
        "excl",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let p1 = ring.publisher().unwrap();
    assert!(
        matches!(ring.publisher(), Err(PublisherAttachError::Busy { pid }) if pid == std::process::id())
    );
    drop(p1);
    let mut p2 = ring.publisher().unwrap();
    assert_eq!(p2.offer(b"a"), Ok(0));
}

#[test]
fn subscriber_table_full_is_an_error_and_slots_are_reused() {
    let dir = TestDir::new("full");
    let mut cfg = dir.cfg(4096, Mode::Reliable, PublisherKind::Shared);
    cfg.subscribers_max = 2;
    let ring = Ring::create("full", &cfg).unwrap();
    let a = ring.subscriber(StartAt::Tail).unwrap();
    let _b = ring.subscriber(StartAt::Tail).unwrap();
    assert!(matches!(
        ring.subscriber(StartAt::Tail),
        Err(SubscriberAttachError::TableFull { max: 2 })
    ));
    drop(a);
    ring.subscriber(StartAt::Tail).unwrap();
}

#[test]
fn open_sees_the_same_ring_and_create_refuses_a_live_one() {
    let dir = TestDir::new("open");
    let cfg = dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive);
    let ring = Ring::create("o", &cfg).unwrap();
    assert!(
        matches!(Ring::create("o", &cfg), Err(RingCreateError::Exists { pid, .. }) if pid == std::process::id())
    );
    let other = Ring::open("o", Some(dir.path())).unwrap();
    assert_eq!(other.capacity_bytes(), 4096);
    assert_eq!(other.mode(), Mode::Reliable);
    assert_eq!(other.publisher_kind(), PublisherKind::Exclusive);
    let mut sub = other.subscriber(StartAt::Tail).unwrap();
    ring.publisher()
        .unwrap()
        .offer(b"via another mapping")
        .unwrap();
    let mut got = Vec::new();
    drain(&mut sub, &mut got);
    assert_eq!(got[0].2, b"via another mapping");
    ring.unlink().unwrap();
    assert!(matches!(
        Ring::open("o", Some(dir.path())),
        Err(RingOpenError::NotFound { .. })
    ));
}

#[test]
fn invalid_names_and_configs_are_refused() {
    let dir = TestDir::new("cfg");
    let good = dir.cfg(4096, Mode::Reliable, PublisherKind::Shared);
    assert!(matches!(
        Ring::create("../x", &good),
        Err(RingCreateError::InvalidName { .. })
    ));
    assert!(matches!(
        Ring::open("", None),
        Err(RingOpenError::InvalidName { .. })
    ));
    for bad in [
        RingConfig {
            capacity_bytes: 3000,
            ..good.clone()
        },
        RingConfig {
            capacity_bytes: 512,
            ..good.clone()
        },
        RingConfig {
            capacity_bytes: 1 << 31,
            ..good.clone()
        },
        RingConfig {
            subscribers_max: 0,
            ..good.clone()
        },
        RingConfig {
            subscribers_max: SUBSCRIBERS_MAX + 1,
            ..good.clone()
        },
        RingConfig {
            liveness_timeout_ns: 1000,
            ..good.clone()
        },
        RingConfig {
            claim_timeout_ns: 0,
            ..good.clone()
        },
    ] {
        let e = Ring::create("x", &bad).unwrap_err();
        assert!(matches!(e, RingCreateError::InvalidConfig { .. }), "{e}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left behind"
    );
}

#[test]
fn offer_batch_publishes_what_fits_in_order() {
    let dir = TestDir::new("batch");
    for kind in [PublisherKind::Exclusive, PublisherKind::Shared] {
        let ring =
            Ring::create(&format!("b-{kind:?}"), &dir.cfg(1024, Mode::Reliable, kind)).unwrap();
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut publ = ring.publisher().unwrap();
        assert_eq!(publ.offer_batch(3, &[]), Ok((0, 0)));
        let msgs: Vec<Vec<u8>> = (0..40u64).map(|i| payload(i, (i % 50) as usize)).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let mut sent = 0usize;
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sent < refs.len() {
            assert!(std::time::Instant::now() < deadline);
            match publ.offer_batch(3, &refs[sent..]) {
                Ok((first, n)) => {
                    assert_eq!(first, sent as u64);
                    assert!(n >= 1);
                    sent += n;
                }
                Err(OfferError::BackPressured) => {}
                Err(e) => panic!("{e}"),
            }
            drain(&mut sub, &mut got);
        }
        drain(&mut sub, &mut got);
        let want: Vec<_> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i as u64, 3u16, m.clone()))
            .collect();
        assert_eq!(got, want);
        let big = vec![0u8; ring.max_payload_len() + 1];
        assert!(matches!(
            publ.offer_batch(0, &[b"ok", &big]),
            Err(OfferError::MessageTooLarge { .. })
        ));
        assert_eq!(
            publ.offer(b"next"),
            Ok(40),
            "a refused batch publishes nothing"
        );
    }
}

#[test]
fn offer_batch_copies_every_small_payload_length_exactly() {
    // offer_batch copies payloads of up to 64 bytes with fixed-width moves:
    // every length 0..=80 must arrive byte-exact, neighbours untouched.
    let dir = TestDir::new("batch-lens");
    let ring = Ring::create(
        "lens",
        &dir.cfg(64 << 10, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let mut publ = ring.publisher().unwrap();
    let msgs: Vec<Vec<u8>> = (0..=80u64).map(|len| payload(len, len as usize)).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    assert_eq!(publ.offer_batch(9, &refs), Ok((0, refs.len())));
    let mut got = Vec::new();
    assert_eq!(drain(&mut sub, &mut got).records, refs.len());
    let want: Vec<_> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u64, 9u16, m.clone()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn busy_polling_subscriber_keeps_its_heartbeat_fresh() {
    // The subscriber reads the clock only every few polls; a busy empty-poll
    // loop must still refresh its heartbeat about every HEARTBEAT_INTERVAL_NS.
    let dir = TestDir::new("heartbeat");
    let ring = Ring::create(
        "hb",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let mut sub = ring.subscriber(StartAt::Tail).unwrap();
    let first = ring.subscriber_slots()[0].heartbeat_ns;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut refreshed = 0;
    let mut last = first;
    for _ in 0..100_000_000u64 {
        assert_eq!(sub.poll(|_| {}, 16), Ok(Poll::default()));
        let hb = ring.subscriber_slots()[0].heartbeat_ns;
        if hb != last {
            assert!(hb > last, "heartbeats only move forward");
            last = hb;
            refreshed += 1;
            if refreshed == 3 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "heartbeat refreshed {refreshed} times in 10 s"
        );
    }
    assert_eq!(refreshed, 3);
    assert!(last - first >= 3 * HEARTBEAT_INTERVAL_NS);
}
