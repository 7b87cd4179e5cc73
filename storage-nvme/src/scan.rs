//! Sans-IO batch scanning used by recovery, index rebuilds and `ms-log verify`: walks the
//! batches in a window of segment bytes and says where and why it stopped.

use crate::codec::{decode_batch, peek_batch_bytes, BatchDecodeError};

/// One verified batch found by [`scan_window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedBatch {
    pub position: u64,
    pub base_offset: u64,
    pub next_offset: u64,
    pub batch_bytes: u64,
    pub max_timestamp_ns: u64,
}

/// Why [`scan_window`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// The batch at `position` is not wholly inside the window: read more and call again.
    NeedMore {
        position: u64,
        batch_bytes: Option<u64>,
    },
    /// An all-zero header: the written log ends here.
    End { position: u64 },
    /// Bytes at `position` are not a valid batch.
    Invalid {
        position: u64,
        error: BatchDecodeError,
    },
    /// A valid batch with an unexpected base offset (stale bytes from an earlier life).
    OffsetMismatch {
        position: u64,
        expected: u64,
        found: u64,
    },
    /// The batch at `position` would run past `limit`.
    PastLimit { position: u64 },
}

/// Scans batches in `window` (which starts at file position `window_pos`) from `position`,
/// expecting base offset `expected_offset` and never past file position `limit`.
/// Calls `on_batch` for each verified batch, in order.
pub fn scan_window(
    window: &[u8],
    window_pos: u64,
    mut position: u64,
    mut expected_offset: u64,
    limit: u64,
    mut on_batch: impl FnMut(&ScannedBatch),
) -> (ScanStop, u64, u64) {
    loop {
        let rel = (position - window_pos) as usize;
        let avail = &window[rel.min(window.len())..];
        match peek_batch_bytes(avail) {
            Ok(len) => {
                if position + len as u64 > limit {
                    return (ScanStop::PastLimit { position }, position, expected_offset);
                }
                if avail.len() < len {
                    return (
                        ScanStop::NeedMore {
                            position,
                            batch_bytes: Some(len as u64),
                        },
                        position,
                        expected_offset,
                    );
                }
            }
            Err(BatchDecodeError::Truncated { .. }) => {
                if position + crate::layout::BATCH_HEADER_BYTES as u64 > limit {
                    return (ScanStop::End { position }, position, expected_offset);
                }
                return (
                    ScanStop::NeedMore {
                        position,
                        batch_bytes: None,
                    },
                    position,
                    expected_offset,
                );
            }
            Err(BatchDecodeError::Zero) => {
                return (ScanStop::End { position }, position, expected_offset)
            }
            Err(error) => {
                return (
                    ScanStop::Invalid { position, error },
                    position,
                    expected_offset,
                )
            }
        }
        match decode_batch(avail) {
            Ok(v) => {
                if v.base_offset() != expected_offset {
                    return (
                        ScanStop::OffsetMismatch {
                            position,
                            expected: expected_offset,
                            found: v.base_offset(),
                        },
                        position,
                        expected_offset,
                    );
                }
                let b = ScannedBatch {
                    position,
                    base_offset: v.base_offset(),
                    next_offset: v.next_offset(),
                    batch_bytes: v.batch_bytes() as u64,
                    max_timestamp_ns: v.max_timestamp_ns(),
                };
                on_batch(&b);
                position += b.batch_bytes;
                expected_offset = b.next_offset;
            }
            Err(error) => {
                return (
                    ScanStop::Invalid { position, error },
                    position,
                    expected_offset,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_batch, Record};

    #[test]
    fn stops_at_zero_torn_and_stale() {
        let mut buf = vec![0u8; 4096];
        let mut at = 0;
        for i in 0..3u64 {
            let r = [Record {
                timestamp_ns: i,
                payload: b"abc",
            }];
            at += encode_batch(&mut buf[at..], i, &r).unwrap();
        }
        let mut seen = 0;
        let (stop, pos, next) = scan_window(&buf, 0, 0, 0, 4096, |_| seen += 1);
        assert_eq!(
            (stop, pos, next, seen),
            (
                ScanStop::End {
                    position: at as u64
                },
                at as u64,
                3,
                3
            )
        );
        // A torn last batch.
        buf[at - 3] ^= 0xff;
        let (stop, _, next) = scan_window(&buf, 0, 0, 0, 4096, |_| {});
        assert!(matches!(stop, ScanStop::Invalid { .. }));
        assert_eq!(next, 2);
        // Expecting another offset: a stale batch.
        let (stop, _, _) = scan_window(&buf, 0, 0, 7, 4096, |_| {});
        assert_eq!(
            stop,
            ScanStop::OffsetMismatch {
                position: 0,
                expected: 7,
                found: 0
            }
        );
    }
}
