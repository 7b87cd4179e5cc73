//! Fuzzes the replication FetchBody decoder (abi::replication) with arbitrary bytes: it never
//! panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use abi::replication::FetchBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = FetchBody::decode(data) {
        assert_eq!(&body.encode()[..], data);
    }
});
