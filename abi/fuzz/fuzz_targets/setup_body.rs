//! Fuzzes the SETUP body decoder: it never panics and what it accepts (sizes, reserved field,
//! padding, UTF-8 principal) re-encodes to the same bytes.
#![no_main]

use abi::wire::{decode_setup, encode_setup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(setup) = decode_setup(data) {
        let mut out = Vec::new();
        encode_setup(setup.frame_bytes_max, setup.principal, &mut out);
        assert_eq!(out, data);
    }
});
