//! Fuzzes the SUBSCRIBE body decoder (a SETUP body whose reserved field is the start kind, with
//! the header's offset): it never panics and what it accepts re-encodes to the same body and offset.
//! The first 8 input bytes are the header offset, the rest the body.
#![no_main]

use abi::wire::{decode_subscribe, encode_subscribe};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((offset, body)) = data.split_first_chunk::<8>() else {
        return;
    };
    let offset = u64::from_le_bytes(*offset);
    if let Some((setup, start)) = decode_subscribe(body, offset) {
        let mut out = Vec::new();
        let header_offset =
            encode_subscribe(setup.frame_bytes_max, setup.principal, start, &mut out);
        assert_eq!((out.as_slice(), header_offset), (body, offset));
    }
});
