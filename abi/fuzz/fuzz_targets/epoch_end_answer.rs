//! Fuzzes the replication EpochEndAnswer decoder (abi::replication) with arbitrary bytes: it never
//! panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use abi::replication::EpochEndAnswer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = EpochEndAnswer::decode(data) {
        assert_eq!(&body.encode()[..], data);
    }
});
