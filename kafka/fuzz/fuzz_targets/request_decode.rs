//! A Kafka request frame (after its size prefix) from a client: decoded or refused, never a
//! panic, and never an allocation larger than the frame implies (libFuzzer's malloc limit
//! turns one into a crash).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = kafka::codec::decode_request(bytes::Bytes::copy_from_slice(data)) {
        assert!(kafka::codec::served_api(req.api).is_some());
    }
});
