//! Fuzzes the counters-file decoder (a file another process writes): it never panics, and what
//! it accepts has no more rows than the file holds and re-encodes each row to its bytes.
#![no_main]

use abi::counters::{
    partitions_offset, CountersSnapshot, PartitionSnapshot, COUNTERS_COUNT_OFFSET,
    PARTITION_ENTRY_BYTES, PARTITION_RESERVED_OFFSET,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = CountersSnapshot::decode(data) else {
        return;
    };
    let count = u32::from_le_bytes(data[COUNTERS_COUNT_OFFSET..][..4].try_into().unwrap());
    let base = partitions_offset(count as usize);
    assert!(base + snap.partitions.len() * PARTITION_ENTRY_BYTES <= data.len());
    for (i, row) in snap.partitions.iter().enumerate() {
        let mut bytes = data[base + i * PARTITION_ENTRY_BYTES..][..PARTITION_ENTRY_BYTES].to_vec();
        // The reserved field is not decoded: compare with it zeroed.
        bytes[PARTITION_RESERVED_OFFSET..][..2].fill(0);
        let mut out = [0u8; PARTITION_ENTRY_BYTES];
        row.encode(&mut out);
        assert_eq!(&out[..], &bytes[..]);
        assert_eq!(PartitionSnapshot::decode(&out), *row);
    }
});
