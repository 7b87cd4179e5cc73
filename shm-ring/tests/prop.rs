//! Property tests: random record sequences (sizes around the wrap edges,
//! aborts, interleaved polls) against a model; random corruption of headers.

mod common;

use common::{payload, TestDir};
use proptest::prelude::*;
use shm_ring::*;

#[derive(Debug, Clone)]
enum Op {
    Offer(usize),
    Batch(Vec<usize>),
    Abort(usize),
    Poll(usize),
}

/// Payload lengths biased to the interesting edges of a 1 KiB ring
/// (max payload 224): empty, alignment edges, maximum.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        Just(1),
        Just(15),
        Just(16),
        Just(17),
        Just(224),
        Just(223),
        0usize..=224
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => len().prop_map(Op::Offer),
            1 => prop::collection::vec(len(), 0..6).prop_map(Op::Batch),
            1 => len().prop_map(Op::Abort),
            3 => (1usize..8).prop_map(Op::Poll),
        ],
        1..300,
    )
}

fn kinds() -> impl Strategy<Value = PublisherKind> {
    prop_oneof![Just(PublisherKind::Exclusive), Just(PublisherKind::Shared)]
}

proptest! {
    // Cases: proptest default (256), or PROPTEST_CASES.

    /// Reliable: every committed record arrives once, in order, intact, with
    /// dense offsets; aborted ones are counted lost; back-pressure only when
    /// the subscriber is behind.
    #[test]
    fn reliable_delivers_exactly_the_committed_records(ops in ops(), kind in kinds()) {
        let dir = TestDir::new("prop-rel");
        let ring = Ring::create("p", &dir.cfg(1024, Mode::Reliable, kind)).unwrap();
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut publ = ring.publisher().unwrap();
        let mut next_offset = 0u64;
        let mut expected = std::collections::VecDeque::new();
        let mut aborted = 0u64;
        let check = |sub: &mut Subscriber, limit: usize, expected: &mut std::collections::VecDeque<(u64, Vec<u8>)>| {
            let mut got = Vec::new();
            let p = sub.poll(|r| got.push((r.offset, r.payload.to_vec())), limit).unwrap();
            assert_eq!(p.records, got.len());
            assert!(got.len() <= limit);
            for g in got {
                assert_eq!(Some(g), expected.pop_front());
            }
            p.lost
        };
        let mut lost = 0;
        for op in ops {
            match op {
                Op::Offer(n) | Op::Abort(n) => {
                    let data = payload(next_offset, n);
                    let mut claim = loop {
                        match publ.claim(n) {
                            Ok(c) => break c,
                            Err(OfferError::BackPressured) => {
                                prop_assert!(!expected.is_empty() || aborted > lost, "back-pressure with nothing unread");
                                lost += check(&mut sub, usize::MAX, &mut expected);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    prop_assert_eq!(claim.offset(), next_offset);
                    claim.buffer().copy_from_slice(&data);
                    if matches!(op, Op::Offer(_)) {
                        prop_assert_eq!(claim.commit(), Ok(next_offset));
                        expected.push_back((next_offset, data));
                    } else {
                        claim.abort();
                        aborted += 1;
                    }
                    next_offset += 1;
                }
                Op::Batch(lens) => {
                    let msgs: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, n)| payload(next_offset + i as u64, *n)).collect();
                    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
                    let mut done = 0;
                    while done < refs.len() {
                        match publ.offer_batch(0, &refs[done..]) {
                            Ok((first, n)) => {
                                prop_assert_eq!(first, next_offset);
                                for m in &msgs[done..done + n] {
                                    expected.push_back((next_offset, m.clone()));
                                    next_offset += 1;
                                }
                                done += n;
                            }
                            Err(OfferError::BackPressured) => {
                                prop_assert!(!expected.is_empty() || aborted > lost, "back-pressure with nothing unread");
                                lost += check(&mut sub, usize::MAX, &mut expected);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                Op::Poll(limit) => lost += check(&mut sub, limit, &mut expected),
            }
        }
        lost += check(&mut sub, usize::MAX, &mut expected);
        prop_assert!(expected.is_empty());
        prop_assert_eq!(lost, aborted);
        prop_assert_eq!(sub.lost_records(), aborted);
        prop_assert_eq!(sub.next_offset(), next_offset);
    }

    /// Lossy: publishers never wait; the subscriber sees increasing offsets,
    /// intact payloads, and records + lost accounts for every offset exactly.
    #[test]
    fn lossy_accounts_for_every_offset(ops in ops(), kind in kinds()) {
        let dir = TestDir::new("prop-lossy");
        let ring = Ring::create("p", &dir.cfg(1024, Mode::Lossy, kind)).unwrap();
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let mut publ = ring.publisher().unwrap();
        let mut next_offset = 0u64;
        let mut lens = Vec::new();
        let (mut delivered, mut lost) = (0u64, 0u64);
        let mut last: Option<u64> = None;
        let mut poll = |sub: &mut Subscriber, limit: usize, lens: &[usize]| {
            let p = sub.poll(|r| {
                assert!(last.is_none_or(|l| r.offset > l));
                last = Some(r.offset);
                assert_eq!(r.payload, payload(r.offset, lens[r.offset as usize]));
            }, limit).unwrap();
            (p.records as u64, p.lost)
        };
        for op in ops {
            match op {
                Op::Offer(n) => {
                    prop_assert_eq!(publ.offer(&payload(next_offset, n)), Ok(next_offset));
                    lens.push(n);
                    next_offset += 1;
                }
                Op::Abort(n) => {
                    publ.claim(n).unwrap().abort();
                    lens.push(n);
                    next_offset += 1;
                }
                Op::Batch(ns) => {
                    let msgs: Vec<Vec<u8>> = ns.iter().enumerate().map(|(i, n)| payload(next_offset + i as u64, *n)).collect();
                    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
                    prop_assert_eq!(publ.offer_batch(0, &refs), Ok((next_offset, ns.len())), "lossy batches never wait");
                    lens.extend(ns);
                    next_offset += msgs.len() as u64;
                }
                Op::Poll(limit) => {
                    let (d, l) = poll(&mut sub, limit, &lens);
                    delivered += d;
                    lost += l;
                }
            }
        }
        let (d, l) = poll(&mut sub, usize::MAX, &lens);
        delivered += d;
        lost += l;
        prop_assert_eq!(delivered + lost, next_offset);
        prop_assert_eq!(sub.next_offset(), next_offset);
        prop_assert_eq!(sub.lost_records(), lost);
    }

    /// Any corruption of a valid header is either still a valid header or a
    /// clear error; never a panic.
    #[test]
    fn header_corruption_never_panics(flips in prop::collection::vec((0usize..256, any::<u8>()), 1..8), cut in 0usize..300) {
        let dir = TestDir::new("prop-hdr");
        let ring = Ring::create("h", &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared)).unwrap();
        let mut buf = std::fs::read(ring.path()).unwrap();
        let len = buf.len() as u64;
        for (at, v) in flips {
            buf[at] = v;
        }
        let _ = parse_header(&buf, len);
        let _ = parse_header(&buf[..cut.min(buf.len())], len);
        let _ = parse_header(&buf, len / 2);
    }
}
