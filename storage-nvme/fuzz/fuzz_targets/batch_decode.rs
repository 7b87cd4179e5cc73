//! Fuzzes the record-batch decoder, the scanner and the index decoder with arbitrary bytes:
//! they must never panic, and whatever they accept must be internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage_nvme::codec::{decode_batch, encode_batch, Record};
use storage_nvme::index::decode_index;
use storage_nvme::layout::{OFFSET_INDEX_MAGIC, TIME_INDEX_MAGIC};
use storage_nvme::scan::scan_window;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode_batch(data) {
        let records: Vec<_> = v.records().collect();
        assert_eq!(records.len() as u32, v.record_count());
        // Re-encoding what was decoded gives the same bytes.
        let recs: Vec<Record<'_>> = records
            .iter()
            .map(|r| Record {
                timestamp_ns: r.timestamp_ns,
                payload: r.payload,
            })
            .collect();
        let mut out = vec![0u8; v.batch_bytes()];
        let n = encode_batch(&mut out, v.base_offset(), &recs).expect("re-encode");
        assert_eq!(&out[..n], v.as_bytes());
    }
    let mut seen = 0u64;
    let _ = scan_window(data, 0, 0, 0, data.len() as u64, |b| {
        assert!(b.next_offset > b.base_offset);
        seen += 1;
    });
    let _ = decode_index(data, OFFSET_INDEX_MAGIC, true);
    let _ = decode_index(data, TIME_INDEX_MAGIC, false);
});
