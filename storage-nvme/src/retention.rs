//! Sans-IO retention decisions: which sealed segments to delete, oldest first.

/// What retention needs to know about one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    /// Bytes the segment file takes on disk.
    pub file_bytes: u64,
    /// The newest record timestamp in the segment.
    pub max_timestamp_ns: u64,
}

/// Retention limits; `None` disables a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub total_bytes_max: Option<u64>,
    pub age_ns_max: Option<u64>,
}

/// How many of the oldest segments to delete. `segments` are oldest first and the last one is
/// the active segment, which is never deleted. Deletion is always a prefix so the log stays
/// contiguous.
pub fn segments_to_delete(
    segments: &[SegmentInfo],
    policy: &RetentionPolicy,
    now_ns: u64,
) -> usize {
    let sealed = segments.len().saturating_sub(1);
    let mut total: u64 = segments.iter().map(|s| s.file_bytes).sum();
    let mut n = 0;
    while n < sealed {
        let s = &segments[n];
        let too_big = policy.total_bytes_max.is_some_and(|max| total > max);
        let too_old = policy
            .age_ns_max
            .is_some_and(|age| now_ns.saturating_sub(s.max_timestamp_ns) > age);
        if !(too_big || too_old) {
            break;
        }
        total -= s.file_bytes;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(base: u64, bytes: u64, ts: u64) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            file_bytes: bytes,
            max_timestamp_ns: ts,
        }
    }

    #[test]
    fn never_deletes_the_active_segment() {
        let segs = [seg(0, 100, 0)];
        let p = RetentionPolicy {
            total_bytes_max: Some(0),
            age_ns_max: Some(0),
        };
        assert_eq!(segments_to_delete(&segs, &p, 1_000), 0);
    }

    #[test]
    fn size_and_age() {
        let segs = [
            seg(0, 100, 10),
            seg(10, 100, 20),
            seg(20, 100, 30),
            seg(30, 100, 40),
        ];
        let size = RetentionPolicy {
            total_bytes_max: Some(250),
            age_ns_max: None,
        };
        assert_eq!(segments_to_delete(&segs, &size, 0), 2);
        let age = RetentionPolicy {
            total_bytes_max: None,
            age_ns_max: Some(15),
        };
        assert_eq!(segments_to_delete(&segs, &age, 40), 2); // ts 10 and 20 are older than 40 - 15
        assert_eq!(
            segments_to_delete(&segs, &RetentionPolicy::default(), 1 << 60),
            0
        );
    }

    proptest! {
        #[test]
        fn result_respects_limits(sizes in proptest::collection::vec(1u64..1000, 1..20), max in 0u64..20_000) {
            let segs: Vec<_> = sizes.iter().enumerate().map(|(i, b)| seg(i as u64 * 10, *b, i as u64)).collect();
            let p = RetentionPolicy { total_bytes_max: Some(max), age_ns_max: None };
            let n = segments_to_delete(&segs, &p, 0);
            prop_assert!(n < segs.len());
            let left: u64 = segs[n..].iter().map(|s| s.file_bytes).sum();
            prop_assert!(left <= max || n == segs.len() - 1);
            if n > 0 {
                let before: u64 = segs[n - 1..].iter().map(|s| s.file_bytes).sum();
                prop_assert!(before > max);
            }
        }
    }
}
