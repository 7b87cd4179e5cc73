//! Receiver-side loss detection for one session, sans-IO: the next expected offset, the highest
//! offset known to exist beyond it, and when to NAK the range between them. The node's receiver
//! (`dataplane::session`) and [`super::ReceiverCore`] both use it, so the rule exists once.
//!
//! Loss handling is go-back-N: records are taken in offset order only. Data seen beyond
//! `expected` (a DATA frame after a gap, a HEARTBEAT offset ahead, records a full ring refused)
//! opens a gap `[expected, gap_end)`; it is NAKed `nak_delay_ns` after it opened, and again every
//! `nak_retry_ns` while no progress is made. Progress (records taken) re-arms the retry timer, and
//! closes the gap once `expected` reaches `gap_end`.

/// A session's loss state; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossDetector {
    expected: u64,
    /// Highest offset known to exist beyond `expected` (a gap exists while it is larger).
    gap_end: u64,
    /// When the next NAK is due, while a gap exists.
    nak_at_ns: Option<u64>,
    nak_delay_ns: u64,
    nak_retry_ns: u64,
}

impl LossDetector {
    /// A session whose next record is at `expected`; a gap is NAKed `nak_delay_ns` after it
    /// opens and then every `nak_retry_ns` without progress.
    pub fn new(expected: u64, nak_delay_ns: u64, nak_retry_ns: u64) -> LossDetector {
        LossDetector {
            expected,
            gap_end: expected,
            nak_at_ns: None,
            nak_delay_ns,
            nak_retry_ns,
        }
    }

    /// The offset of the next record to take.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// True while data beyond `expected` is known to be missing.
    pub fn has_gap(&self) -> bool {
        self.gap_end > self.expected
    }

    /// Data up to `end` exists (seen out of order, announced by a heartbeat, or refused by the
    /// sink): a gap, if `end` is beyond `expected`.
    pub fn on_gap(&mut self, end: u64, now_ns: u64) {
        if end <= self.expected {
            return;
        }
        self.gap_end = self.gap_end.max(end);
        if self.nak_at_ns.is_none() {
            self.nak_at_ns = Some(now_ns.saturating_add(self.nak_delay_ns));
        }
    }

    /// Records up to `expected` were taken (in order, so it only grows).
    pub fn on_progress(&mut self, expected: u64, now_ns: u64) {
        debug_assert!(expected >= self.expected, "go-back-N never moves back");
        self.expected = self.expected.max(expected);
        if self.gap_end <= self.expected {
            self.gap_end = self.expected;
            self.nak_at_ns = None;
        } else {
            self.nak_at_ns = Some(now_ns.saturating_add(self.nak_retry_ns));
        }
    }

    /// The NAK due at `now_ns`, as (offset, length in bytes, capped at u32::MAX), or None. Sending
    /// it is the caller's; the next one is due `nak_retry_ns` later unless progress comes first.
    pub fn poll_nak(&mut self, now_ns: u64) -> Option<(u64, u32)> {
        let at = self.nak_at_ns?;
        if now_ns < at || !self.has_gap() {
            return None;
        }
        self.nak_at_ns = Some(now_ns.saturating_add(self.nak_retry_ns));
        let len = u32::try_from(self.gap_end - self.expected).unwrap_or(u32::MAX);
        Some((self.expected, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: u64 = 10;
    const RETRY: u64 = 100;

    #[test]
    fn in_order_data_never_naks() {
        let mut d = LossDetector::new(0, DELAY, RETRY);
        for (i, end) in [16u64, 48, 64].into_iter().enumerate() {
            d.on_progress(end, i as u64);
            assert!(!d.has_gap());
        }
        assert_eq!(d.poll_nak(10_000), None);
        assert_eq!(d.expected(), 64);
    }

    #[test]
    fn a_gap_is_naked_after_the_delay_then_every_retry_until_filled() {
        let mut d = LossDetector::new(16, DELAY, RETRY);
        d.on_gap(64, 1000);
        assert!(d.has_gap());
        assert_eq!(d.poll_nak(1000 + DELAY - 1), None, "not before the delay");
        assert_eq!(d.poll_nak(1000 + DELAY), Some((16, 48)));
        assert_eq!(d.poll_nak(1000 + DELAY + 1), None, "one NAK per retry");
        // A later frame widens the gap; the timer is not restarted.
        d.on_gap(96, 1050);
        assert_eq!(d.poll_nak(1000 + DELAY + RETRY), Some((16, 80)));
        // Progress re-arms the retry and narrows the range.
        d.on_progress(48, 1200);
        assert_eq!(d.poll_nak(1200 + RETRY - 1), None);
        assert_eq!(d.poll_nak(1200 + RETRY), Some((48, 48)));
        // Filled: no more NAKs.
        d.on_progress(96, 1400);
        assert!(!d.has_gap());
        assert_eq!(d.poll_nak(u64::MAX), None);
    }

    #[test]
    fn data_at_or_below_expected_is_no_gap() {
        let mut d = LossDetector::new(64, 0, RETRY);
        d.on_gap(64, 0);
        d.on_gap(8, 0);
        assert!(!d.has_gap());
        assert_eq!(d.poll_nak(1), None);
    }

    #[test]
    fn huge_gaps_are_capped_not_wrapped() {
        let mut d = LossDetector::new(0, 0, RETRY);
        d.on_gap(u64::MAX, u64::MAX - 2);
        assert_eq!(d.poll_nak(u64::MAX - 2), Some((0, u32::MAX)));
        // The next NAK is due at u64::MAX (saturated), not at a wrapped small time.
        assert_eq!(d.poll_nak(u64::MAX - 1), None);
        assert_eq!(d.poll_nak(u64::MAX), Some((0, u32::MAX)));
    }

    /// One step of a receiver's life: data beyond `expected`, progress, or a poll.
    #[derive(Clone, Debug)]
    enum Step {
        Gap(u16),
        Progress(u16),
        Poll,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (1u16..512).prop_map(Step::Gap),
            (0u16..512).prop_map(Step::Progress),
            Just(Step::Poll),
        ]
    }

    proptest::proptest! {
        /// Whatever happens: `expected` never moves back, a NAK always starts at `expected` and
        /// covers exactly the known gap, at most one NAK per `nak_retry_ns` without progress,
        /// and none once no gap is left.
        #[test]
        fn naks_cover_exactly_the_gap_and_are_paced(
            steps in proptest::collection::vec((step(), 0u64..50), 1..200),
        ) {
            let mut d = LossDetector::new(0, DELAY, RETRY);
            let (mut now, mut seen_end, mut last_nak) = (0u64, 0u64, None::<u64>);
            for (s, dt) in steps {
                now += dt;
                match s {
                    Step::Gap(n) => {
                        let end = d.expected() + u64::from(n);
                        seen_end = seen_end.max(end);
                        d.on_gap(end, now);
                    }
                    Step::Progress(n) => {
                        let before = d.expected();
                        let to = (before + u64::from(n)).min(seen_end.max(before));
                        d.on_progress(to, now);
                        proptest::prop_assert!(d.expected() >= before);
                        if to > before {
                            last_nak = None;
                        }
                    }
                    Step::Poll => {
                        if let Some((offset, len)) = d.poll_nak(now) {
                            proptest::prop_assert_eq!(offset, d.expected());
                            proptest::prop_assert_eq!(u64::from(len), seen_end - d.expected());
                            if let Some(t) = last_nak {
                                proptest::prop_assert!(now >= t + RETRY);
                            }
                            last_nak = Some(now);
                        }
                    }
                }
                proptest::prop_assert_eq!(d.has_gap(), seen_end > d.expected());
            }
            // With time enough, an open gap is always NAKed; a closed one never.
            let due = d.poll_nak(now + DELAY + RETRY);
            proptest::prop_assert_eq!(due.is_some(), seen_end > d.expected());
        }
    }
}
