//! Publishes 1,000 short text messages on stream 7, one per millisecond.
//! Run `cargo run -p sdk --example subscriber` in another terminal (before or after).
//!
//!     cargo run -p sdk --example publisher

use std::time::Duration;

use sdk::{Context, IdleStrategy, OfferError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Context::builder().capacity_bytes(1 << 20).build();
    let mut publisher = ctx.publisher(7, 0)?; // creates ring "stream-7-0" if needed
    println!("publishing on {}", publisher.ring().path().display());
    let mut idle = IdleStrategy::backoff();
    for i in 0..1_000u32 {
        let text = format!("hello #{i}");
        // Back-pressure (a slow subscriber in a reliable ring) is a value: retry.
        loop {
            match publisher.offer(text.as_bytes()) {
                Ok(_offset) => break,
                Err(OfferError::BackPressured) => idle.idle(0),
                Err(e) => return Err(e.into()),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The creator removes the ring file when the stream is retired; mapped
    // subscribers keep reading what is in it until they drop their handle.
    ctx.remove(7, 0)?;
    Ok(())
}
