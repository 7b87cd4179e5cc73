//! Typed zero-copy messages with rkyv: the subscriber reads `&ArchivedQuote`
//! straight out of shared memory after validating it.
//!
//!     cargo run -p sdk --example typed

use sdk::typed::{TypedPublisher, TypedSubscriber};
use sdk::Context;

#[derive(rkyv::Archive, rkyv::Serialize, Debug)]
struct Quote {
    instrument: u32,
    bid: i64,
    ask: i64,
    venue: String,
}

/// Application type id carried in each record header.
const QUOTE: u16 = 1;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("sdk-typed-example-{}", std::process::id()));
    let ctx = Context::builder().dir(&dir).capacity_bytes(1 << 16).build();
    let mut quotes = TypedSubscriber::<Quote>::new(ctx.subscriber(9, 0), QUOTE);
    let mut publisher = TypedPublisher::<Quote>::new(ctx.publisher(9, 0)?, QUOTE);

    for (i, venue) in ["XLON", "XPAR", "XETR"].into_iter().enumerate() {
        let q = Quote {
            instrument: 42,
            bid: 100 + i as i64,
            ask: 101 + i as i64,
            venue: venue.into(),
        };
        publisher.publish(&q)?;
    }
    quotes.poll(
        |record, q| {
            println!(
                "offset {}: {} bid {} ask {} on {}",
                record.offset, q.instrument, q.bid, q.ask, q.venue
            )
        },
        16,
    )?;
    println!("{:?}", quotes.stats());

    ctx.remove(9, 0)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
