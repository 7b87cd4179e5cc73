//! Ring file headers come from files anyone with access may have written:
//! parsing any bytes must return a header or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len, header) = data.split_at(8);
    let file_len = u64::from_le_bytes(len.try_into().unwrap());
    if let Ok(h) = shm_ring::parse_header(header, file_len) {
        assert!(h.capacity_bytes.is_power_of_two());
        assert!(h.file_bytes == file_len);
    }
});
