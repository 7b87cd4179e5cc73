//! Loom models of the ring algorithm: the real Publisher/Subscriber code on a
//! small heap ring, every interleaving (bounded preemption) checked.
//!
//! Run: RUSTFLAGS="--cfg loom -C target-feature=+cmpxchg16b" CARGO_TARGET_DIR=target/loom \
//!      cargo test -p shm-ring --release --test loom
#![cfg(loom)]

use loom::thread;
use shm_ring::*;

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f)
}

/// The model clock is process-global: models run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(f);
}

/// 256-byte ring: 4 descriptors, max payload 32 bytes. Time stands still under
/// loom, so claim_timeout 0 means "abort on the second sighting".
fn ring(mode: Mode, publishers: PublisherKind) -> Ring {
    clock::set_model_now_ns(0);
    Ring::heap(&RingConfig {
        capacity_bytes: 256,
        mode,
        publishers,
        subscribers_max: 2,
        liveness_timeout_ns: u64::MAX / 2,
        claim_timeout_ns: 0,
        backing: Backing::DevShm,
        dir: None,
    })
}

fn pat(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i as u8).wrapping_mul(17).wrapping_add(k as u8))
        .collect()
}

/// Poll everything, checking order and content; returns (offsets, lost).
fn drain(sub: &mut Subscriber, len: usize) -> (Vec<u64>, u64) {
    let mut offs = Vec::new();
    let p = sub
        .poll(
            |r| {
                assert_eq!(
                    r.payload,
                    &pat(r.offset, len)[..],
                    "record {} content",
                    r.offset
                );
                offs.push(r.offset);
            },
            usize::MAX,
        )
        .expect("poll");
    assert_eq!(p.records, offs.len());
    (offs, p.lost)
}

#[test]
fn claim_commit_is_seen_whole_and_in_order() {
    for kind in [PublisherKind::Exclusive, PublisherKind::Shared] {
        model(move || {
            let ring = ring(Mode::Reliable, kind);
            let mut sub = ring.subscriber(StartAt::Tail).unwrap();
            let r2 = ring.clone();
            let t = thread::spawn(move || {
                let mut publ = r2.publisher().unwrap();
                for i in 0..2u64 {
                    let mut c = publ.claim(24).unwrap();
                    c.buffer().copy_from_slice(&pat(i, 24));
                    assert_eq!(c.commit(), Ok(i));
                }
            });
            let (mut seen, lost) = drain(&mut sub, 24);
            t.join().unwrap();
            let (rest, lost2) = drain(&mut sub, 24);
            seen.extend(rest);
            assert_eq!(seen, vec![0, 1]);
            assert_eq!(lost + lost2, 0);
        });
    }
}

#[test]
fn wrap_skips_the_gap_at_the_end() {
    model(|| {
        let ring = ring(Mode::Reliable, PublisherKind::Exclusive);
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut publ = ring.publisher().unwrap();
        // 48-byte records: four fill [0, 192); the sixth must skip [240, 256).
        for i in 0..4u64 {
            publ.offer(&pat(i, 16)).unwrap();
        }
        assert_eq!(drain(&mut sub, 16).0, vec![0, 1, 2, 3]);
        let t = thread::spawn(move || {
            publ.offer(&pat(4, 16)).unwrap();
            publ.offer(&pat(5, 16)).unwrap();
            publ
        });
        let (mut seen, _) = drain(&mut sub, 16);
        let publ = t.join().unwrap();
        seen.extend(drain(&mut sub, 16).0);
        assert_eq!(seen, vec![4, 5]);
        assert_eq!(
            ring.tail(),
            (256 + 48, 6),
            "record 5 starts at the lap boundary"
        );
        drop(publ);
    });
}

#[test]
fn shared_publishers_race_for_claims() {
    model(|| {
        let ring = ring(Mode::Reliable, PublisherKind::Shared);
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let spawn = |tag: u8| {
            let r = ring.clone();
            thread::spawn(move || {
                let mut publ = r.publisher().unwrap();
                let mut c = publ.claim(8).unwrap();
                let off = c.offset();
                c.buffer().fill(tag);
                assert_eq!(c.commit(), Ok(off));
                off
            })
        };
        let (a, b) = (spawn(0xaa), spawn(0xbb));
        let (oa, ob) = (a.join().unwrap(), b.join().unwrap());
        assert_eq!(oa + ob, 1, "offsets 0 and 1, one each");
        let mut got = Vec::new();
        sub.poll(|r| got.push((r.offset, r.payload.to_vec())), 10)
            .unwrap();
        let mut want = vec![(oa, vec![0xaa; 8]), (ob, vec![0xbb; 8])];
        want.sort();
        assert_eq!(got, want);
    });
}

#[test]
fn abort_and_commit_race_all_parties_agree() {
    model(|| {
        let ring = ring(Mode::Reliable, PublisherKind::Shared);
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut witness = ring.subscriber(StartAt::Tail).unwrap();
        let r2 = ring.clone();
        let t = thread::spawn(move || {
            let mut publ = r2.publisher().unwrap();
            let mut c = publ.claim(8).unwrap();
            c.buffer().copy_from_slice(&pat(0, 8));
            c.commit().is_ok()
        });
        // Two sightings of an open claim abort it (claim_timeout 0).
        let (mut seen, mut lost) = drain(&mut sub, 8);
        let (s2, l2) = drain(&mut sub, 8);
        seen.extend(s2);
        lost += l2;
        let committed = t.join().unwrap();
        let (s3, l3) = drain(&mut sub, 8);
        seen.extend(s3);
        lost += l3;
        let (ws, wl) = drain(&mut witness, 8);
        if committed {
            assert_eq!((seen, lost), (vec![0], 0));
            assert_eq!((ws, wl), (vec![0], 0));
        } else {
            assert_eq!((seen, lost), (vec![], 1));
            assert_eq!((ws, wl), (vec![], 1));
        }
    });
}

#[test]
fn lossy_overrun_is_detected_and_counted_exactly() {
    // Lossy record bytes are modelled as atomic words: fewer preemptions
    // keep this model under a minute.
    model_bounded(2, || {
        let ring = ring(Mode::Lossy, PublisherKind::Exclusive);
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let r2 = ring.clone();
        // 48-byte records in a 256-byte ring with 4 descriptors: records 4 and 5
        // overwrite records 0 and 1 (descriptor reuse and lapped bytes).
        let t = thread::spawn(move || {
            let mut publ = r2.publisher().unwrap();
            for i in 0..6u64 {
                assert_eq!(publ.offer(&pat(i, 8)), Ok(i));
            }
        });
        let mut last = None;
        let (mut records, mut lost, mut intact) = (0u64, 0u64, 0u64);
        for _ in 0..2 {
            let p = sub
                .poll(
                    |r| {
                        assert!(last.is_none_or(|l| r.offset > l), "offsets increase");
                        last = Some(r.offset);
                        intact += u64::from(r.payload == &pat(r.offset, 8)[..]);
                    },
                    usize::MAX,
                )
                .unwrap();
            records += p.records as u64;
            lost += p.lost;
        }
        t.join().unwrap();
        let p = sub
            .poll(
                |r| intact += u64::from(r.payload == &pat(r.offset, 8)[..]),
                usize::MAX,
            )
            .unwrap();
        records += p.records as u64;
        lost += p.lost;
        assert_eq!(
            records + lost,
            6,
            "every record is delivered or counted lost, exactly once"
        );
        assert!(
            records <= intact,
            "a record counted as delivered was never torn"
        );
        assert_eq!(sub.next_offset(), 6);
    });
}

#[test]
fn batch_and_single_claims_interleave() {
    model_bounded(2, || {
        let ring = ring(Mode::Reliable, PublisherKind::Shared);
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let r2 = ring.clone();
        let t = thread::spawn(move || {
            let mut publ = r2.publisher().unwrap();
            let (a, b) = (vec![0xaa; 8], vec![0xab; 8]);
            publ.offer_batch(0, &[&a, &b]).unwrap()
        });
        let mut publ = ring.publisher().unwrap();
        let single = publ.offer(&[0xbb; 8]).unwrap();
        let (first, n) = t.join().unwrap();
        assert_eq!(n, 2);
        assert!(
            single == 0 || single == 2,
            "a batch is contiguous: {single}"
        );
        assert_eq!(first, if single == 0 { 1 } else { 0 });
        let mut got = Vec::new();
        sub.poll(|r| got.push((r.offset, r.payload[0])), 10)
            .unwrap();
        let mut want = vec![(first, 0xaa), (first + 1, 0xab), (single, 0xbb)];
        want.sort();
        assert_eq!(got, want);
    });
}

#[test]
fn eviction_and_heartbeat_race_has_one_winner() {
    model(|| {
        clock::set_model_now_ns(0);
        let ring = Ring::heap(&RingConfig {
            capacity_bytes: 256,
            mode: Mode::Reliable,
            publishers: PublisherKind::Shared,
            subscribers_max: 1,
            liveness_timeout_ns: LIVENESS_TIMEOUT_MIN_NS,
            claim_timeout_ns: u64::MAX,
            backing: Backing::DevShm,
            dir: None,
        });
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        // Time jumps past the liveness timeout: the subscriber's heartbeat is stale.
        clock::set_model_now_ns(10 * LIVENESS_TIMEOUT_MIN_NS);
        let r2 = ring.clone();
        let t = thread::spawn(move || {
            // The first claim refreshes the limits, which may evict.
            r2.publisher().unwrap().offer(&[1; 8]).is_ok()
        });
        let polled = sub.poll(|_| {}, 10);
        assert!(t.join().unwrap());
        let state = ring.subscriber_slots()[0].state;
        match polled {
            Err(PollError::Evicted) => assert_eq!(state, "evicted"),
            Ok(_) => {
                assert_eq!(state, "active", "a subscriber that heartbeated first stays");
                let next = sub.poll(|_| {}, 10);
                assert!(next.is_ok(), "{next:?}");
            }
            Err(e) => panic!("{e}"),
        }
    });
}
