//! Single-process micro-benchmarks of the ring hot path (figures, not tests):
//! claim/commit, offer, offer_batch, poll, and the two typed (rkyv) publish paths.
//!
//!     cargo bench -p benches --bench ring
//!
//! Publish-only benches use a lossy ring with no subscriber (never
//! back-pressured); poll is timed over batches published untimed beforehand.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sdk::typed::TypedPublisher;
use sdk::{Context, Mode, PublisherKind, StartAt};

const CAPACITY_BYTES: u64 = 8 << 20;
const POLL_BATCH: usize = 256;
const PUBLISH_BATCH: usize = 64;

/// Subscriber liveness timeout for the benches (the ring's default is 1 s).
const BENCH_LIVENESS_TIMEOUT_NS: u64 = 60_000_000_000;

fn context(dir: &Path, mode: Mode) -> Context {
    Context::builder()
        .dir(dir)
        .capacity_bytes(CAPACITY_BYTES)
        .mode(mode)
        .publisher_kind(PublisherKind::Exclusive)
        .start_at(StartAt::Earliest)
        // Criterion analyses between benches without polling; on a loaded
        // machine that can outlast the default 1 s and evict the subscriber.
        .liveness_timeout_ns(BENCH_LIVENESS_TIMEOUT_NS)
        .build()
}

fn publish(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(dir.path(), Mode::Lossy);
    let mut p = ctx.publisher(1, 0).expect("publisher");
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    for size in [32usize, 64, 256] {
        let payload = vec![7u8; size];
        g.bench_function(format!("claim_commit/{size}B"), |b| {
            b.iter(|| {
                let mut claim = p.claim(size).expect("lossy ring never back-pressures");
                claim.buffer().copy_from_slice(black_box(&payload));
                black_box(claim.commit().expect("commit"))
            })
        });
        g.bench_function(format!("offer/{size}B"), |b| {
            b.iter(|| black_box(p.offer(black_box(&payload)).expect("offer")))
        });
    }
    g.finish();
    drop(p);
    // Batched: shm-ring's own exclusive publisher (the sdk Publisher has no
    // batch call), one clock read and one tail store per 64 records.
    let ring = ctx.create_ring(1, 0).expect("ring");
    let mut raw = ring.publisher().expect("exclusive publisher");
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(PUBLISH_BATCH as u64));
    let payload = [7u8; 32];
    let batch: [&[u8]; PUBLISH_BATCH] = [&payload[..]; PUBLISH_BATCH];
    g.bench_function(format!("offer_batch{PUBLISH_BATCH}/32B"), |b| {
        b.iter(|| black_box(raw.offer_batch(0, black_box(&batch)).expect("offer_batch")))
    });
    g.finish();
    drop(raw);
    ctx.remove(1, 0).expect("remove ring");
}

fn poll(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(dir.path(), Mode::Reliable);
    let mut p = ctx.publisher(2, 0).expect("publisher");
    let mut sub = ctx.subscriber(2, 0);
    assert!(sub.try_attach(true).expect("attach"));
    let mut g = c.benchmark_group("poll");
    g.throughput(Throughput::Elements(POLL_BATCH as u64));
    g.bench_function(format!("batch{POLL_BATCH}/32B"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for i in 0..POLL_BATCH as u64 {
                    p.offer(&[i as u8; 32])
                        .expect("ring has room for one batch");
                }
                let t = Instant::now();
                let mut sum = 0u64;
                let n = sub
                    .poll(|r| sum += u64::from(r.payload[0]), POLL_BATCH)
                    .expect("poll");
                spent += t.elapsed();
                assert_eq!(n, POLL_BATCH);
                black_box(sum);
            }
            spent
        })
    });
    g.throughput(Throughput::Elements(1));
    // The cost of one poll call that finds nothing: what a caught-up
    // subscriber pays per loop iteration (it bounds how soon it sees a record).
    g.bench_function("empty", |b| {
        b.iter(|| {
            sub.poll(
                |r| {
                    black_box(r.payload);
                },
                POLL_BATCH,
            )
            .expect("poll")
        })
    });
    g.bench_function("offer_then_poll_one/32B", |b| {
        let payload = [3u8; 32];
        b.iter(|| {
            p.offer(&payload).expect("offer");
            sub.poll(
                |r| {
                    black_box(r.payload);
                },
                1,
            )
            .expect("poll")
        })
    });
    g.finish();
    ctx.remove(2, 0).expect("remove ring");
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Tick {
    instrument: u32,
    bid: i64,
    ask: i64,
    seq: u64,
    venue: [u8; 8],
}

#[derive(rkyv::Archive, rkyv::Serialize)]
struct Book {
    instrument: u32,
    venue: String,
    levels: Vec<(i64, u32)>,
}

fn typed(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ctx = context(dir.path(), Mode::Lossy);
    let mut g = c.benchmark_group("typed_publish");
    g.throughput(Throughput::Elements(1));
    let tick = Tick {
        instrument: 1,
        bid: 100,
        ask: 101,
        seq: 0,
        venue: *b"XLON\0\0\0\0",
    };
    let book = Book {
        instrument: 1,
        venue: "XLON".into(),
        levels: (0..10).map(|i| (100 - i, 10 * i as u32)).collect(),
    };
    let mut ticks = TypedPublisher::<Tick>::new(ctx.publisher(3, 0).expect("publisher"), 1);
    g.bench_function("tick/scratch_copy", |b| {
        b.iter(|| {
            ticks
                .publish_via_scratch(black_box(&tick))
                .expect("publish")
        })
    });
    g.bench_function("tick/in_place", |b| {
        b.iter(|| ticks.publish(black_box(&tick)).expect("publish"))
    });
    let mut books = TypedPublisher::<Book>::new(ctx.publisher(4, 0).expect("publisher"), 2);
    g.bench_function("book10/scratch_copy", |b| {
        b.iter(|| {
            books
                .publish_via_scratch(black_box(&book))
                .expect("publish")
        })
    });
    g.bench_function("book10/in_place", |b| {
        b.iter(|| books.publish(black_box(&book)).expect("publish"))
    });
    g.finish();

    let mut g = c.benchmark_group("typed_access");
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&book).expect("serialize");
    g.bench_function("book10/validate", |b| {
        b.iter_batched(
            || (),
            |_| black_box(sdk::typed::access::<Book>(black_box(&bytes)).is_some()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    ctx.remove(3, 0).expect("remove ring");
    ctx.remove(4, 0).expect("remove ring");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = publish, poll, typed
}
criterion_main!(benches);
