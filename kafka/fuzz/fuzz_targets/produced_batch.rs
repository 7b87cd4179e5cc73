//! A produced record batch (the `records` of a Produce partition): validated or refused,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = kafka::batch::validate_produced(data, 100_000) {
        assert_eq!(info.bytes, data.len());
        let mut copy = data.to_vec();
        kafka::batch::assign(&mut copy, 7, 1);
        assert_eq!(kafka::batch::stored_range(&copy).map(|(b, _)| b), Some(7));
    }
});
