//! Fuzzes the STATUS body decoder: it never panics and what it accepts re-encodes to the same bytes.
#![no_main]

use abi::wire::StatusBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(status) = StatusBody::decode(data) {
        assert_eq!(&status.encode()[..], data);
    }
});
