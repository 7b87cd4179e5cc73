//! Fuzzes the replication ReportBody decoder (abi::replication) with arbitrary bytes: it never
//! panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use abi::replication::ReportBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = ReportBody::decode(data) {
        assert_eq!(&body.encode()[..], data);
    }
});
