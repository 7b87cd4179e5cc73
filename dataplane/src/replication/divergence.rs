//! Divergent logs after a leader change (Kafka's KIP-101, KIP-279 and KIP-320), over the
//! replica's persisted leader-epoch history (`storage_nvme::EpochHistory`).
//!
//! A replica that led (or followed) a deposed leader may hold records the new leader never
//! had. The leader catches it on FETCH ([`check_fetch`]: does the fetch continue the leader's
//! log, given the epoch of the follower's last record?) and the follower resolves it
//! ([`resolve_divergence`]: the leader's EPOCH_END answer for its latest epoch says where that
//! epoch ends on the leader; the follower cuts at the smaller of that and its own end of it),
//! never blindly at the high watermark.

use abi::replication::{EpochEndOutcome, NO_EPOCH};
use storage_nvme::EpochHistory;

/// The leader's verdict on a FETCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchCheck {
    /// The fetch continues the leader's log: serve records from its offset.
    Serve,
    /// The follower's last record is not the leader's: it must resolve the divergence (the
    /// leader's answer for its last epoch is included, as an EPOCH_END answer would say).
    Diverging { epoch: u64, end_offset: u64 },
    /// The offset is outside the leader's log `[log_start, log_end]`: below the start the
    /// follower restarts from `log_start`; past the end it is ahead of the leader, which a
    /// follower never is in this epoch (it must truncate: ask EPOCH_END).
    OutOfRange { log_start: u64, log_end: u64 },
}

/// Whether a follower's FETCH at `fetch_offset`, whose last record has `last_fetched_epoch`
/// ([`NO_EPOCH`] when it holds none), continues the leader's log `[log_start, log_end)` with
/// epoch history `epochs`.
pub fn check_fetch(
    epochs: &EpochHistory,
    (log_start, log_end): (u64, u64),
    fetch_offset: u64,
    last_fetched_epoch: u64,
) -> FetchCheck {
    if fetch_offset < log_start || fetch_offset > log_end {
        return FetchCheck::OutOfRange { log_start, log_end };
    }
    if last_fetched_epoch == NO_EPOCH {
        // Nothing before fetch_offset to check: only a follower starting at the log start.
        return if fetch_offset == log_start {
            FetchCheck::Serve
        } else {
            FetchCheck::OutOfRange { log_start, log_end }
        };
    }
    match epochs.end_offset_for(last_fetched_epoch, log_end) {
        Some((epoch, end_offset)) if epoch < last_fetched_epoch || end_offset < fetch_offset => {
            FetchCheck::Diverging { epoch, end_offset }
        }
        Some(_) => FetchCheck::Serve,
        // The leader knows no epoch that old: nothing the follower holds can be vouched for.
        None => FetchCheck::OutOfRange { log_start, log_end },
    }
}

/// What a follower does with the leader's EPOCH_END answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Cut the log (and the epoch history) at this offset, then fetch from it. Equal to the
    /// follower's log end when nothing diverged.
    TruncateTo(u64),
    /// The answer came from a node that is not (or no longer) the leader in the asked epoch:
    /// refresh the partition's metadata and ask again.
    Retry,
}

/// The offset a follower with epoch history `own` and log `[own_start, own_end)` truncates to,
/// given the leader's `answer` for the follower's latest epoch: the smaller of where the
/// leader's epoch ends and where the follower's records of epochs up to it end. Never below
/// `own_start` or above `own_end`.
pub fn resolve_divergence(
    own: &EpochHistory,
    (own_start, own_end): (u64, u64),
    answer: EpochEndOutcome,
) -> Resolution {
    let cut = match answer {
        EpochEndOutcome::Fenced | EpochEndOutcome::NotLeader => return Resolution::Retry,
        // Every epoch the leader knows is newer than anything the follower holds.
        EpochEndOutcome::Unknown => own_start,
        EpochEndOutcome::Found { epoch, end_offset } => match own.end_offset_for(epoch, own_end) {
            // The follower's records of epochs <= `epoch` end at `own_epoch_end`.
            Some((_, own_epoch_end)) => own_epoch_end.min(end_offset),
            // Every record the follower holds is from a newer epoch than the leader's answer.
            None => own_start,
        },
    };
    Resolution::TruncateTo(cut.clamp(own_start, own_end.max(own_start)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hist(entries: &[(u64, u64)]) -> EpochHistory {
        let mut h = EpochHistory::new();
        for &(e, s) in entries {
            h.assign(e, s).unwrap();
        }
        h
    }

    #[test]
    fn fetch_that_continues_the_log_is_served() {
        let leader = hist(&[(1, 0), (3, 100)]);
        assert_eq!(check_fetch(&leader, (0, 150), 120, 3), FetchCheck::Serve);
        assert_eq!(check_fetch(&leader, (0, 150), 100, 1), FetchCheck::Serve);
        assert_eq!(
            check_fetch(&leader, (0, 150), 0, NO_EPOCH),
            FetchCheck::Serve
        );
    }

    #[test]
    fn fetch_past_an_epoch_end_diverges() {
        let leader = hist(&[(1, 0), (3, 100)]);
        // The follower wrote epoch 1 records past 100 (under a deposed leader of epoch 1).
        assert_eq!(
            check_fetch(&leader, (0, 150), 110, 1),
            FetchCheck::Diverging {
                epoch: 1,
                end_offset: 100
            }
        );
        // Epoch 2 never wrote on the leader: the largest below is 1, ending at 100.
        assert_eq!(
            check_fetch(&leader, (0, 150), 90, 2),
            FetchCheck::Diverging {
                epoch: 1,
                end_offset: 100
            }
        );
        let oor = FetchCheck::OutOfRange {
            log_start: 10,
            log_end: 150,
        };
        let leader = hist(&[(3, 10)]);
        assert_eq!(check_fetch(&leader, (10, 150), 151, 3), oor);
        assert_eq!(check_fetch(&leader, (10, 150), 5, 3), oor);
        assert_eq!(check_fetch(&leader, (10, 150), 20, 1), oor, "epoch too old");
        assert_eq!(check_fetch(&leader, (10, 150), 20, NO_EPOCH), oor);
    }

    /// Kafka's KIP-101 scenario: a deposed leader A wrote offsets 100..120 in epoch 2 that
    /// never replicated; B became leader in epoch 3 at 100 and wrote 100..130. A cuts at 100.
    #[test]
    fn a_deposed_leader_cuts_its_unreplicated_tail_at_the_epoch_boundary() {
        let a = hist(&[(1, 0), (2, 50)]);
        let b = hist(&[(1, 0), (2, 50), (3, 100)]);
        let answer = match b.end_offset_for(2, 130) {
            Some((epoch, end_offset)) => EpochEndOutcome::Found { epoch, end_offset },
            None => EpochEndOutcome::Unknown,
        };
        assert_eq!(
            answer,
            EpochEndOutcome::Found {
                epoch: 2,
                end_offset: 100
            }
        );
        assert_eq!(
            resolve_divergence(&a, (0, 120), answer),
            Resolution::TruncateTo(100)
        );
        // A follower behind the epoch end keeps everything.
        assert_eq!(
            resolve_divergence(&a, (0, 80), answer),
            Resolution::TruncateTo(80)
        );
    }

    /// KIP-279: the follower's latest epoch (4) is unknown to the leader, which answers with
    /// epoch 2; the follower's own epoch-2 records end at 60 (epoch 4 started there).
    #[test]
    fn an_epoch_unknown_to_the_leader_cuts_where_the_common_epoch_ends() {
        let f = hist(&[(1, 0), (2, 40), (4, 60)]);
        let answer = EpochEndOutcome::Found {
            epoch: 2,
            end_offset: 75,
        };
        assert_eq!(
            resolve_divergence(&f, (0, 90), answer),
            Resolution::TruncateTo(60)
        );
        assert_eq!(
            resolve_divergence(&f, (0, 90), EpochEndOutcome::Unknown),
            Resolution::TruncateTo(0)
        );
        assert_eq!(
            resolve_divergence(&f, (0, 90), EpochEndOutcome::Fenced),
            Resolution::Retry
        );
        assert_eq!(
            resolve_divergence(&f, (0, 90), EpochEndOutcome::NotLeader),
            Resolution::Retry
        );
        // Every follower epoch is newer than the answer: nothing is vouched for.
        let f = hist(&[(5, 10)]);
        assert_eq!(
            resolve_divergence(
                &f,
                (10, 30),
                EpochEndOutcome::Found {
                    epoch: 2,
                    end_offset: 20
                }
            ),
            Resolution::TruncateTo(10)
        );
    }

    /// Builds the same log prefix on two replicas, then each appends a divergent suffix in
    /// its own epochs (the leader's newer: it won the election); after resolution the follower
    /// keeps exactly the common prefix.
    /// Epoch steps: (epoch increment, records written in that epoch).
    type Steps = Vec<(u64, u64)>;

    fn histories() -> impl Strategy<Value = (Steps, Steps, Steps)> {
        let epochs = proptest::collection::vec((1u64..4, 1u64..30), 0..4);
        (
            proptest::collection::vec((1u64..4, 1u64..30), 1..4),
            epochs.clone(),
            epochs,
        )
    }

    fn build(
        steps: &[(u64, u64)],
        mut epoch: u64,
        mut end: u64,
        h: &mut EpochHistory,
    ) -> (u64, u64) {
        for &(de, len) in steps {
            epoch += de;
            h.assign(epoch, end).unwrap();
            end += len;
        }
        (epoch, end)
    }

    proptest! {
        #[test]
        fn resolution_never_keeps_a_record_the_leader_lacks((common, lead, foll) in histories()) {
            let mut shared = EpochHistory::new();
            let (epoch, end) = build(&common, 0, 0, &mut shared);
            let (mut leader, mut follower) = (shared.clone(), shared);
            // The leader's new epochs are all newer than the follower's (it won the election).
            let (_, f_end) = build(&foll, epoch, end, &mut follower);
            let f_last = follower.latest().map_or(0, |e| e.epoch);
            let (_, l_end) = build(&lead, f_last.max(epoch), end, &mut leader);
            let answer = match leader.end_offset_for(f_last, l_end) {
                Some((epoch, end_offset)) => EpochEndOutcome::Found { epoch, end_offset },
                None => EpochEndOutcome::Unknown,
            };
            let Resolution::TruncateTo(cut) = resolve_divergence(&follower, (0, f_end), answer) else {
                panic!("found or unknown answers never ask to retry");
            };
            // The follower keeps exactly the common prefix: nothing divergent, nothing lost.
            prop_assert_eq!(cut, end);
            prop_assert!(cut <= f_end);
        }
    }
}
