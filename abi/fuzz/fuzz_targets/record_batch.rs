//! Fuzzes the DATA body parser (the one the node's receiver and the SDK's subscriber share): it
//! never panics, every record it yields lies inside the body, the records tile the body exactly,
//! and re-encoding them gives the same bytes.
#![no_main]

use abi::wire::{push_record, record_bytes, RecordBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = RecordBatch::parse(data, 8) else {
        return;
    };
    let mut rebuilt = Vec::with_capacity(data.len());
    let mut next = 8u64;
    let mut n = 0;
    for rec in batch.iter() {
        assert_eq!(rec.offset, next, "records are contiguous");
        next += record_bytes(rec.payload.len()) as u64;
        push_record(&mut rebuilt, rec.record_type, rec.payload);
        n += 1;
    }
    assert_eq!(n, batch.len());
    assert_eq!(next, batch.end_offset());
    assert_eq!(rebuilt, data, "accepted bodies re-encode to the same bytes");
});
