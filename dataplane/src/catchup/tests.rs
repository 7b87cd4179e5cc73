//! The catch-up machine driven by a model partition: a log with a moving durable tail, a ring
//! of bounded capacity (a reliable ring: a reader holds the publisher back unless it is
//! evicted), the partition's shared reader, and a subscriber with a window. Whatever the
//! batch sizes, windows, evictions and publishing in between, the subscriber gets every record
//! from its start once, in order.

use proptest::prelude::*;

use super::*;

/// Steps a model run takes at most to drain after its random operations.
const DRAIN_STEPS_MAX: usize = 100_000;

/// What happens between two subscriber steps.
#[derive(Clone, Debug)]
enum Op {
    /// Local publishers append up to this many records (as far as the ring has room).
    Publish(u64),
    /// The archiver makes up to this many more records durable.
    Durable(u64),
    /// One subscriber step with this much window room (records), storage batches of this size.
    Step { room: usize, batch: u64 },
    /// The private ring reader is evicted (its records are lost to it).
    Evict,
    /// Time passes (the ring retry timer).
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..40).prop_map(Op::Publish),
        2 => (1u64..40).prop_map(Op::Durable),
        6 => (0usize..12, 1u64..10).prop_map(|(room, batch)| Op::Step { room, batch }),
        1 => Just(Op::Evict),
        2 => Just(Op::Tick),
    ]
}

/// A partition and one catching-up subscriber (the sender's adapter, without I/O).
struct Model {
    /// Log offset = ring offset + delta (records below delta are only in the log).
    delta: u64,
    /// Log offsets 0..published exist.
    published: u64,
    /// Log offsets 0..durable are on storage.
    durable: u64,
    ring_capacity: u64,
    now_ns: u64,
    cu: CatchUp,
    /// The log reader's next offset.
    reader_next: u64,
    /// Log offsets of a batch read and not wholly sent yet.
    batch: Vec<u64>,
    /// Next ring offset of the private reader, while there is one.
    private: Option<u64>,
    evicted: bool,
    /// Next ring offset of the partition's shared reader.
    shared: u64,
    /// Log offsets of the records sent, in order.
    sent: Vec<u64>,
    failed: Option<CatchUpError>,
    /// The ring's oldest record when the first private reader opened.
    opened_at: Option<u64>,
    /// Times the subscriber went back to storage after an eviction.
    fallbacks: u32,
}

impl Model {
    fn ring_tail(&self) -> u64 {
        self.published - self.delta
    }

    fn ring_oldest(&self) -> u64 {
        self.ring_tail().saturating_sub(self.ring_capacity)
    }

    fn publish(&mut self, n: u64) {
        // A reliable ring: the slowest reader (shared, or a private one not evicted) bounds it.
        let mut slowest = self.shared;
        if let (Some(p), false) = (self.private, self.evicted) {
            slowest = slowest.min(p);
        }
        let room = (slowest + self.ring_capacity).saturating_sub(self.ring_tail());
        self.published += n.min(room);
    }

    fn send(&mut self, log_offset: u64) {
        self.sent.push(log_offset);
    }

    /// One catch-up step (the sender's `catch_up_one`).
    fn step(&mut self, room: usize, batch: u64) {
        match self.cu.source() {
            Source::Live => {}
            Source::Storage => self.step_storage(room, batch),
            Source::Ring => self.step_ring(room),
        }
    }

    fn step_storage(&mut self, room: usize, batch: u64) {
        if !self.batch.is_empty() {
            let mut sent = 0;
            while let Some(&at) = self.batch.first() {
                if self.cu.admit_log(at) {
                    if sent == room {
                        return;
                    }
                    self.send(at);
                    self.cu.sent_log(at);
                    sent += 1;
                }
                self.batch.remove(0);
            }
            return;
        }
        if self.cu.wants_read(self.reader_next, self.durable) {
            // A batch may start before the next record (a log batch holds several).
            let from = self.reader_next.saturating_sub(batch % 3);
            let to = (self.reader_next + batch).min(self.durable);
            self.batch = (from..to).collect();
            self.reader_next = to;
            return;
        }
        self.cu.at_tail(self.durable);
        if self.cu.look_at_ring(self.now_ns) && self.cu.ring_opened(self.ring_oldest(), self.delta)
        {
            self.private = Some(self.ring_oldest());
            self.evicted = false;
        }
    }

    fn step_ring(&mut self, room: usize) {
        let oldest = self.ring_oldest();
        self.opened_at.get_or_insert(oldest);
        let private = *self.private.get_or_insert(oldest);
        self.cu.ring_start(self.delta);
        if self.evicted {
            self.private = None;
            self.evicted = false;
            match self.cu.ring_lost(self.delta) {
                Ok(log_offset) => {
                    self.fallbacks += 1;
                    self.reader_next = log_offset;
                    self.batch.clear();
                }
                Err(e) => self.failed = Some(e),
            }
            return;
        }
        if self.cu.met_shared(private, self.shared) {
            self.private = None;
            return;
        }
        let behind = self.shared - private;
        let mut at = private;
        let mut offered = 0;
        while at < private + behind && offered < room {
            if self.cu.admit_ring(at) {
                self.send(at + self.delta);
                self.cu.sent_ring(at);
                offered += 1;
            }
            at += 1;
        }
        self.private = Some(at);
    }

    /// The partition's shared reader: feeds live subscribers, never passes a private reader.
    fn pump(&mut self, room: usize) {
        let mut limit = self.ring_tail() - self.shared;
        match self.cu.source() {
            Source::Live => limit = limit.min(room as u64),
            Source::Ring if !self.evicted => {
                let private = self.private.unwrap_or(self.ring_oldest());
                limit = limit.min(private.saturating_sub(self.shared));
            }
            _ => {}
        }
        for at in self.shared..self.shared + limit {
            if self.cu.source() == Source::Live && self.cu.admit_ring(at) {
                self.send(at + self.delta);
                self.cu.sent_ring(at);
            }
        }
        self.shared += limit;
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish(n) => self.publish(n),
            Op::Durable(n) => self.durable = (self.durable + n).min(self.published),
            Op::Step { room, batch } => {
                self.step(room, batch);
                self.pump(room);
            }
            Op::Evict => self.evicted = self.cu.source() == Source::Ring,
            Op::Tick => self.now_ns += RING_RETRY_NS,
        }
    }

    /// No more publishing: everything becomes durable and the subscriber runs until it is live
    /// at the tail (or failed).
    fn drain(&mut self) {
        self.durable = self.published;
        for _ in 0..DRAIN_STEPS_MAX {
            if self.failed.is_some()
                || (self.cu.source() == Source::Live && self.shared == self.ring_tail())
            {
                return;
            }
            self.now_ns += RING_RETRY_NS;
            self.step(8, 5);
            self.pump(8);
        }
        panic!("the subscriber did not go live: {:?}", self.cu);
    }
}

fn model(storage: bool, delta: u64, published: u64, ring_capacity: u64, from: u64) -> Model {
    let delta = if storage { delta.min(published) } else { 0 };
    let ring_tail = published - delta;
    let cu = if storage {
        CatchUp::from_storage(from)
    } else {
        CatchUp::from_ring(from)
    };
    Model {
        delta,
        published,
        // What the log held before the ring started is durable.
        durable: (published / 2).max(delta),
        ring_capacity,
        now_ns: 0,
        opened_at: None,
        fallbacks: 0,
        reader_next: from.min((published / 2).max(delta)),
        cu,
        batch: Vec::new(),
        private: None,
        evicted: false,
        shared: ring_tail,
        sent: Vec::new(),
        failed: None,
    }
}

fn run(mut m: Model, ops: &[Op]) -> Model {
    for op in ops {
        if m.failed.is_some() {
            break;
        }
        m.apply(op);
    }
    m.drain();
    m
}

fn contiguous(sent: &[u64]) -> bool {
    sent.windows(2).all(|w| w[1] == w[0] + 1)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// With a log: storage -> ring -> live, with fallbacks to storage after an eviction, gets
    /// exactly the records from the start offset to the end, once each, in order.
    #[test]
    fn with_storage_every_record_once_in_order(
        delta in 0u64..50,
        published in 0u64..200,
        ring_capacity in 4u64..64,
        from_back in 0u64..220,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let from = published.saturating_sub(from_back);
        let m = run(model(true, delta, published, ring_capacity, from), &ops);
        prop_assert!(m.failed.is_none());
        let want: Vec<u64> = (from..m.published).collect();
        prop_assert_eq!(m.sent, want);
    }

    /// Without a log: ring -> live gets a gap-free, duplicate-free run ending at the tail; it
    /// starts at the asked offset when the ring still held it. An eviction ends the catch-up
    /// (nothing to read the lost records from) with what was sent still in order.
    #[test]
    fn without_storage_in_order_and_gap_free(
        published in 0u64..200,
        ring_capacity in 4u64..64,
        from_back in 0u64..100,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let from = published.saturating_sub(from_back);
        let m = run(model(false, 0, published, ring_capacity, from), &ops);
        prop_assert!(contiguous(&m.sent));
        if let (Some(&first), Some(oldest)) = (m.sent.first(), m.opened_at) {
            prop_assert_eq!(first, from.max(oldest), "from the start, or the ring's oldest");
        }
        match m.failed {
            Some(e) => prop_assert_eq!(e, CatchUpError::RingLostNoStorage),
            None => prop_assert_eq!(m.sent.last().map_or(from, |l| l + 1).max(from), m.published.max(from)),
        }
    }
}

#[test]
fn storage_then_ring_then_live_at_the_exact_switch_points() {
    // Log 0..10, durable 0..6, ring holds ring offsets 0..10 (delta 0), shared reader at 10.
    let mut m = model(true, 0, 10, 16, 2);
    m.durable = 6;
    m.step(16, 16); // read 2..6
    m.step(16, 16); // send 2..6
    assert_eq!(m.sent, vec![2, 3, 4, 5]);
    m.step(16, 16); // at the tail: the ring holds 6
    assert_eq!(m.cu.source(), Source::Ring);
    assert_eq!(m.cu.next_ring(), Some(6));
    m.step(16, 16); // private reader 0..10, sends 6..10
    assert_eq!(m.sent, (2..10).collect::<Vec<_>>());
    m.step(16, 16);
    assert_eq!(m.cu.source(), Source::Live);
    m.publish(3);
    m.pump(16);
    assert_eq!(m.sent, (2..13).collect::<Vec<_>>());
}

#[test]
fn a_record_neither_durable_nor_in_the_ring_waits_for_storage() {
    let mut cu = CatchUp::from_storage(5);
    assert!(!cu.wants_read(5, 5));
    cu.at_tail(5);
    assert!(cu.look_at_ring(0));
    assert!(!cu.ring_opened(6, 0), "the ring lost offset 5 already");
    assert!(!cu.look_at_ring(1), "rate-limited");
    assert!(!cu.wants_read(5, 5), "no read until the durable end moves");
    assert!(cu.wants_read(5, 7));
    assert_eq!(cu.source(), Source::Storage);
}

#[test]
fn an_eviction_goes_back_to_storage_at_the_next_record() {
    let mut cu = CatchUp::from_storage(100);
    cu.at_tail(100);
    assert!(cu.look_at_ring(0));
    assert!(cu.ring_opened(0, 100), "ring offset 0 is log offset 100");
    for at in 0..4 {
        cu.sent_ring(at);
    }
    assert_eq!(cu.ring_lost(100), Ok(104));
    assert_eq!(cu.source(), Source::Storage);
    assert!(!cu.admit_log(103) && cu.admit_log(104));
    assert_eq!(
        CatchUp::from_ring(0).ring_lost(0),
        Err(CatchUpError::RingLostNoStorage)
    );
}

#[test]
fn the_model_falls_back_to_storage_after_an_eviction_and_loses_nothing() {
    let mut m = model(true, 0, 20, 8, 12);
    m.apply(&Op::Step { room: 2, batch: 4 });
    assert_eq!(m.cu.source(), Source::Ring, "the ring holds 12..20");
    m.apply(&Op::Step { room: 2, batch: 4 });
    assert_eq!(m.sent, vec![12, 13]);
    m.apply(&Op::Evict);
    m.apply(&Op::Publish(30));
    m.apply(&Op::Step { room: 2, batch: 4 });
    assert_eq!(m.cu.source(), Source::Storage);
    m.drain();
    assert_eq!(m.fallbacks, 1);
    assert_eq!(m.sent, (12..m.published).collect::<Vec<_>>());
}
