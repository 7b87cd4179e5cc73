//! Fuzzes the leader-epoch file decoder and the truncation-intent decoder with arbitrary
//! bytes: they must never panic, and whatever they accept must re-encode to the same bytes
//! and keep the history's invariant (epochs and start offsets strictly increasing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use storage_nvme::epoch::EpochHistory;
use storage_nvme::truncate::{decode_intent, encode_intent};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = EpochHistory::decode(data) {
        assert_eq!(h.encode(), data);
        for w in h.entries().windows(2) {
            assert!(w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset);
        }
        if let Some(last) = h.latest() {
            assert_eq!(
                h.end_offset_for(last.epoch, u64::MAX),
                Some((last.epoch, u64::MAX))
            );
        }
    }
    if let Ok(end) = decode_intent(data) {
        assert_eq!(&encode_intent(end)[..], data);
    }
});
