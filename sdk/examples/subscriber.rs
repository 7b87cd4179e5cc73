//! Prints the messages of stream 7. May start before the publisher: the ring
//! is mapped when it appears. Stops after 1,000 messages or 30 s.
//!
//!     cargo run -p sdk --example subscriber

use std::time::{Duration, Instant};

use sdk::{Context, IdleStrategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::builder().build();
    let mut subscriber = ctx.subscriber(7, 0); // no ring needed yet
                                               // Parks when the stream is quiet (keeping the subscription alive), spins when busy.
    let mut idle = IdleStrategy::adaptive();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0;
    while received < 1_000 && Instant::now() < deadline {
        let n = subscriber.poll(
            |r| println!("{:>6}  {}", r.offset, String::from_utf8_lossy(r.payload)),
            64,
        )?;
        received += n;
        subscriber.idle(&mut idle, n);
    }
    println!("{received} messages, {} lost", subscriber.lost_records());
    Ok(())
}
