//! Fuzzes the NAK body decoder: it never panics and what it accepts re-encodes to the same bytes.
#![no_main]

use abi::wire::{decode_nak, encode_nak};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(length_bytes) = decode_nak(data) {
        assert_eq!(&encode_nak(length_bytes)[..], data);
    }
});
