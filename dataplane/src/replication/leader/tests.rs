//! The leader's replica set: watermarks, strict min ISR, ISR by lag time, fencing, acks.

use super::*;
use proptest::prelude::*;

const LAG: u64 = 1_000;
const EPOCH: u64 = 5;
const LEADER: NodeId = 1;

fn cfg(min: usize) -> ReplicaSetConfig {
    ReplicaSetConfig {
        replica_lag_time_max_ns: LAG,
        min_insync_replicas: min,
    }
}

/// Leader 1 with followers 2 and 3, all in the ISR, at log end 100, durable 100, hw 100.
fn three(min: usize) -> ReplicaSet {
    ReplicaSet::new(
        cfg(min),
        0,
        LEADER,
        EPOCH,
        &[1, 2, 3],
        &[1, 2, 3],
        (100, 100, 100),
    )
    .unwrap()
}

fn report(
    rs: &mut ReplicaSet,
    now: u64,
    from: NodeId,
    rec: u64,
    dur: u64,
) -> Result<LeaderOutput, Refusal> {
    rs.handle(
        now,
        LeaderInput::Report {
            from,
            leader_epoch: EPOCH,
            received_offset: rec,
            durable_offset: dur,
        },
    )
}

fn append(rs: &mut ReplicaSet, now: u64, end: u64, durable: u64) {
    rs.handle(now, LeaderInput::Appended { end_offset: end })
        .unwrap();
    rs.handle(
        now,
        LeaderInput::Durable {
            durable_offset: durable,
        },
    )
    .unwrap();
}

fn commit(rs: &mut ReplicaSet, now: u64, p: &IsrProposal) {
    rs.handle(
        now,
        LeaderInput::IsrCommitted {
            leader_epoch: p.leader_epoch,
            isr: &p.isr,
        },
    )
    .unwrap();
}

#[test]
fn construction_is_checked() {
    let new = |min, replicas: &[NodeId], isr: &[NodeId], offs| {
        ReplicaSet::new(cfg(min), 0, LEADER, EPOCH, replicas, isr, offs).map(|_| ())
    };
    assert_eq!(
        new(1, &[2, 3], &[2], (0, 0, 0)),
        Err(ReplicaSetError::LeaderNotReplica(1))
    );
    assert_eq!(
        new(1, &[1, 2], &[2], (0, 0, 0)),
        Err(ReplicaSetError::IsrWithoutLeader(1))
    );
    assert_eq!(
        new(1, &[1, 2], &[1, 4], (0, 0, 0)),
        Err(ReplicaSetError::IsrNotReplica(4))
    );
    assert_eq!(
        new(1, &[1, 2, 2], &[1], (0, 0, 0)),
        Err(ReplicaSetError::Duplicate(2))
    );
    assert_eq!(
        new(3, &[1, 2], &[1], (0, 0, 0)),
        Err(ReplicaSetError::MinInsync {
            min: 3,
            replicas: 2
        })
    );
    assert_eq!(
        new(0, &[1], &[1], (0, 0, 0)),
        Err(ReplicaSetError::MinInsync {
            min: 0,
            replicas: 1
        })
    );
    assert!(matches!(
        new(1, &[1], &[1], (5, 6, 5)),
        Err(ReplicaSetError::Offsets { .. })
    ));
    assert!(matches!(
        new(1, &[1], &[1], (5, 5, 6)),
        Err(ReplicaSetError::Offsets { .. })
    ));
    let many: Vec<NodeId> = (1..=REPLICAS_MAX as u64 + 1).collect();
    assert_eq!(
        new(1, &many, &[1], (0, 0, 0)),
        Err(ReplicaSetError::ReplicaCount(17))
    );
}

#[test]
fn watermarks_are_the_minimum_over_the_isr_leader_included() {
    let mut rs = three(2);
    append(&mut rs, 1, 150, 120);
    // Followers have not reported in this epoch: they count as 0, the watermarks stay.
    assert_eq!(
        (
            rs.high_watermark_replicated(),
            rs.high_watermark_persisted()
        ),
        (100, 100)
    );
    report(&mut rs, 2, 2, 140, 110).unwrap();
    assert_eq!(
        rs.high_watermark_replicated(),
        100,
        "follower 3 still unknown"
    );
    let out = report(&mut rs, 3, 3, 130, 105).unwrap();
    assert!(out.watermarks_advanced);
    assert_eq!(
        (
            rs.high_watermark_replicated(),
            rs.high_watermark_persisted()
        ),
        (130, 105)
    );
    report(&mut rs, 4, 3, 150, 150).unwrap();
    assert_eq!(
        (
            rs.high_watermark_replicated(),
            rs.high_watermark_persisted()
        ),
        (140, 110)
    );
    report(&mut rs, 5, 2, 150, 150).unwrap();
    // Leader's own durable offset holds the persisted watermark back.
    assert_eq!(
        (
            rs.high_watermark_replicated(),
            rs.high_watermark_persisted()
        ),
        (150, 120)
    );

    assert_eq!(rs.ack_status(AckMode::None, 0), AckStatus::NoAck);
    assert_eq!(rs.ack_status(AckMode::Leader, 149), AckStatus::Acked);
    assert_eq!(rs.ack_status(AckMode::Leader, 150), AckStatus::Waiting);
    assert_eq!(rs.ack_status(AckMode::LeaderDurable, 119), AckStatus::Acked);
    assert_eq!(
        rs.ack_status(AckMode::LeaderDurable, 120),
        AckStatus::Waiting
    );
    assert_eq!(rs.ack_status(AckMode::AllReplicated, 149), AckStatus::Acked);
    assert_eq!(rs.ack_status(AckMode::AllPersisted, 119), AckStatus::Acked);
    assert_eq!(
        rs.ack_status(AckMode::AllPersisted, 120),
        AckStatus::Waiting
    );
}

#[test]
fn a_lagging_follower_leaves_the_isr_after_the_lag_time_and_strict_min_isr_holds() {
    let mut rs = three(2);
    append(&mut rs, 0, 200, 200);
    report(&mut rs, 10, 2, 200, 200).unwrap();
    report(&mut rs, 10, 3, 120, 120).unwrap();
    assert_eq!(rs.high_watermark_replicated(), 120);
    // Follower 3 got one lag time of grace from the election at 0.
    assert_eq!(rs.poll_isr_change(LAG), None);
    let p = rs.poll_isr_change(LAG + 1).expect("3 lags");
    assert_eq!(
        (p.isr.clone(), p.removed.clone(), p.added),
        (vec![1, 2], vec![3], None)
    );
    assert_eq!(rs.poll_isr_change(LAG + 2), None, "one proposal at a time");
    // Until the shrink is committed, 3 still holds the watermark back.
    report(&mut rs, LAG + 3, 2, 200, 200).unwrap();
    assert_eq!(rs.high_watermark_replicated(), 120);
    commit(&mut rs, LAG + 4, &p);
    assert_eq!(rs.isr(), vec![1, 2]);
    assert_eq!(
        rs.high_watermark_replicated(),
        200,
        "committed shrink releases it"
    );

    // Follower 2 stops too: the ISR drops to the leader alone, below min 2.
    append(&mut rs, LAG + 5, 300, 300);
    let p = rs.poll_isr_change(3 * LAG).expect("2 lags");
    commit(&mut rs, 3 * LAG, &p);
    assert_eq!(rs.isr_len(), 1);
    assert_eq!(
        rs.admit(AckMode::AllReplicated),
        Err(NotEnoughReplicas {
            isr: 1,
            min_insync_replicas: 2
        })
    );
    assert!(rs.admit(AckMode::Leader).is_ok());
    assert_eq!(
        rs.ack_status(AckMode::AllReplicated, 250),
        AckStatus::BelowMinIsr
    );
    assert_eq!(
        rs.ack_status(AckMode::AllReplicated, 199),
        AckStatus::Acked,
        "committed before"
    );
    assert_eq!(rs.ack_status(AckMode::Leader, 250), AckStatus::Acked);
    // The leader alone holds everything, but strict min ISR keeps the watermark where it was.
    assert_eq!(rs.high_watermark_replicated(), 200);
    let msg = rs.admit(AckMode::AllPersisted).unwrap_err().to_string();
    assert!(msg.contains("NOT_ENOUGH_REPLICAS"), "{msg}");

    // Follower 2 catches up and rejoins; the proposed member counts at once.
    report(&mut rs, 3 * LAG + 1, 2, 300, 300).unwrap();
    let p = rs.poll_isr_change(3 * LAG + 2).expect("2 rejoins");
    assert_eq!((p.isr.clone(), p.added), (vec![1, 2], Some(2)));
    commit(&mut rs, 3 * LAG + 3, &p);
    append(&mut rs, 3 * LAG + 4, 300, 300);
    assert_eq!(rs.high_watermark_replicated(), 300);
    assert_eq!(rs.ack_status(AckMode::AllReplicated, 250), AckStatus::Acked);
}

#[test]
fn a_follower_that_trails_by_one_report_stays_in_sync() {
    let mut rs = three(1);
    let mut end = 100;
    for step in 1..50u64 {
        let now = step * LAG / 2;
        // Each report holds the end the leader had at the previous one, never the current end.
        report(&mut rs, now, 2, end, end).unwrap();
        report(&mut rs, now, 3, end, end).unwrap();
        end += 10;
        append(&mut rs, now, end, end);
        assert_eq!(rs.poll_isr_change(now), None, "step {step}");
    }
}

#[test]
fn a_joining_follower_must_hold_the_watermarks_and_the_epoch_start() {
    let mut rs = ReplicaSet::new(cfg(1), 0, LEADER, EPOCH, &[1, 2], &[1], (100, 100, 90)).unwrap();
    append(&mut rs, 1, 130, 130);
    assert_eq!(rs.high_watermark_replicated(), 130, "leader alone");
    // At the leader's end, but below the epoch start would be impossible; below the watermark:
    report(&mut rs, 2, 2, 95, 95).unwrap();
    assert_eq!(rs.poll_isr_change(2), None);
    report(&mut rs, 3, 2, 130, 120).unwrap();
    assert_eq!(
        rs.poll_isr_change(3),
        None,
        "durable below the persisted watermark"
    );
    report(&mut rs, 4, 2, 130, 130).unwrap();
    assert_eq!(rs.poll_isr_change(4).map(|p| p.added), Some(Some(2)));
    rs.handle(
        5,
        LeaderInput::IsrRejected {
            leader_epoch: EPOCH,
        },
    )
    .unwrap();
    assert!(rs.pending_proposal().is_none());
    assert!(
        rs.poll_isr_change(6).is_some(),
        "may propose again after a rejection"
    );
}

#[test]
fn fenced_and_bad_reports_are_refused_and_change_nothing() {
    let mut rs = three(2);
    append(&mut rs, 0, 200, 200);
    let before = (rs.high_watermark_replicated(), rs.followers().to_vec());
    let refuse = |rs: &mut ReplicaSet, from, epoch, rec, dur| {
        rs.handle(
            1,
            LeaderInput::Report {
                from,
                leader_epoch: epoch,
                received_offset: rec,
                durable_offset: dur,
            },
        )
        .unwrap_err()
    };
    assert_eq!(
        refuse(&mut rs, 2, EPOCH - 1, 200, 200),
        Refusal::StaleEpoch { got: 4, current: 5 }
    );
    assert_eq!(
        refuse(&mut rs, 2, EPOCH + 1, 200, 200),
        Refusal::FutureEpoch { got: 6, current: 5 }
    );
    assert_eq!(refuse(&mut rs, 9, EPOCH, 200, 200), Refusal::NotMember(9));
    assert_eq!(
        refuse(&mut rs, LEADER, EPOCH, 200, 200),
        Refusal::NotMember(LEADER)
    );
    assert!(matches!(
        refuse(&mut rs, 2, EPOCH, 201, 0),
        Refusal::AheadOfLeader { .. }
    ));
    assert!(matches!(
        refuse(&mut rs, 2, EPOCH, 100, 101),
        Refusal::DurableAboveReceived { .. }
    ));
    assert_eq!(
        (rs.high_watermark_replicated(), rs.followers().to_vec()),
        before
    );
    let stale_commit = rs.handle(
        1,
        LeaderInput::IsrCommitted {
            leader_epoch: 4,
            isr: &[1],
        },
    );
    assert!(matches!(stale_commit, Err(Refusal::StaleEpoch { .. })));
    let bad = rs.handle(
        1,
        LeaderInput::IsrCommitted {
            leader_epoch: EPOCH,
            isr: &[2, 3],
        },
    );
    assert!(matches!(
        bad,
        Err(Refusal::IsrInvalid(ReplicaSetError::IsrWithoutLeader(1)))
    ));
    assert_eq!(rs.isr(), vec![1, 2, 3]);
    let msg = Refusal::StaleEpoch { got: 4, current: 5 }.to_string();
    assert!(msg.contains("deposed"), "{msg}");
}

#[test]
fn an_isr_member_that_loses_its_tail_leaves_at_once() {
    let mut rs = three(1);
    append(&mut rs, 0, 200, 200);
    report(&mut rs, 1, 2, 200, 150).unwrap();
    report(&mut rs, 1, 3, 200, 200).unwrap();
    // Follower 2 restarted: its memory is gone, it holds only what was durable.
    let r = report(&mut rs, 2, 2, 150, 150).unwrap_err();
    assert!(matches!(r, Refusal::Regressed { from: 2, .. }));
    assert_eq!(rs.high_watermark_replicated(), 200, "never moves back");
    let p = rs
        .poll_isr_change(3)
        .expect("2 leaves without waiting the lag time");
    assert_eq!(p.removed, vec![2]);
    commit(&mut rs, 4, &p);
    // Outside the ISR its offsets may go back; it rejoins once caught up.
    report(&mut rs, 5, 2, 150, 150).unwrap();
    report(&mut rs, 6, 2, 200, 200).unwrap();
    assert_eq!(rs.poll_isr_change(6).and_then(|p| p.added), Some(2));
}

#[derive(Clone, Debug)]
enum Op {
    Append(u64),
    Durable(u64),
    Report {
        from: NodeId,
        epoch_delta: i8,
        rec: u64,
        dur: u64,
    },
    Tick(u64),
    Decide(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..20).prop_map(Op::Append),
        (0u64..20).prop_map(Op::Durable),
        ((1u64..6), -1i8..=1, 0u64..400, 0u64..400).prop_map(|(from, epoch_delta, rec, dur)| {
            Op::Report {
                from,
                epoch_delta,
                rec,
                dur,
            }
        }),
        (0u64..LAG).prop_map(Op::Tick),
        any::<bool>().prop_map(Op::Decide),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// HW never goes backwards; HW <= every counted member's offset; no `all` ack above HW; a
    /// non-member or a stale epoch never changes anything.
    #[test]
    fn watermark_invariants_hold(min in 1usize..=4, ops in proptest::collection::vec(op(), 1..200)) {
        // Replicas 1 (leader), 2, 3, 4; node 5 is not a member.
        let mut rs = ReplicaSet::new(cfg(min), 0, LEADER, EPOCH, &[1, 2, 3, 4], &[1, 2, 3], (50, 40, 40)).unwrap();
        let mut now = 0u64;
        for op in ops {
            let before = (rs.high_watermark_replicated(), rs.high_watermark_persisted());
            let snapshot = rs.followers().to_vec();
            match op {
                Op::Append(n) => {
                    let end = rs.leader_end() + n;
                    rs.handle(now, LeaderInput::Appended { end_offset: end }).unwrap();
                }
                Op::Durable(n) => {
                    let d = (rs.leader_durable() + n).min(rs.leader_end());
                    rs.handle(now, LeaderInput::Durable { durable_offset: d }).unwrap();
                }
                Op::Report { from, epoch_delta, rec, dur } => {
                    let epoch = EPOCH.wrapping_add_signed(epoch_delta.into());
                    let res = rs.handle(now, LeaderInput::Report { from, leader_epoch: epoch, received_offset: rec, durable_offset: dur });
                    if from == 5 || epoch != EPOCH {
                        prop_assert!(res.is_err());
                        prop_assert_eq!(rs.followers(), &snapshot[..]);
                    }
                    if res.is_err() {
                        prop_assert_eq!((rs.high_watermark_replicated(), rs.high_watermark_persisted()), before);
                    }
                }
                Op::Tick(dt) => {
                    now += dt;
                    let _ = rs.poll_isr_change(now);
                }
                Op::Decide(accept) => {
                    if let Some(p) = rs.pending_proposal().cloned() {
                        if accept {
                            rs.handle(now, LeaderInput::IsrCommitted { leader_epoch: EPOCH, isr: &p.isr }).unwrap();
                        } else {
                            rs.handle(now, LeaderInput::IsrRejected { leader_epoch: EPOCH }).unwrap();
                        }
                    }
                }
            }
            let (hr, hp) = (rs.high_watermark_replicated(), rs.high_watermark_persisted());
            prop_assert!(hr >= before.0 && hp >= before.1, "watermarks went back");
            prop_assert!(hr <= rs.leader_end() && hp <= rs.leader_durable().max(40));
            prop_assert!(hp <= hr);
            if rs.isr_len() < min {
                prop_assert_eq!((hr, hp), before, "strict min ISR");
            }
            let pending_added = rs.pending_proposal().and_then(|p| p.added);
            for f in rs.followers() {
                let counted = f.in_isr || pending_added == Some(f.id);
                // The recovered watermark may exceed what a member reported so far (it counts
                // as 0 until its first report); whenever a watermark moves, it moves to at
                // most every counted member's offset.
                if counted && hr > before.0 {
                    prop_assert!(hr <= f.received_offset, "replicated {} above member {:?}", hr, f);
                }
                if counted && hp > before.1 {
                    prop_assert!(hp <= f.durable_offset, "persisted {} above member {:?}", hp, f);
                }
            }
            for o in [hr.saturating_sub(1), hr, hr + 1, hr + 50] {
                let st = rs.ack_status(AckMode::AllReplicated, o);
                prop_assert_eq!(st == AckStatus::Acked, o < hr);
                let st = rs.ack_status(AckMode::AllPersisted, o);
                prop_assert_eq!(st == AckStatus::Acked, o < hp);
            }
        }
    }
}

#[test]
fn a_follower_silent_at_the_end_leaves_the_isr_and_does_not_rejoin_silently() {
    let mut rs = three(2);
    report(&mut rs, 10, 2, 100, 100).unwrap();
    report(&mut rs, 10, 3, 100, 100).unwrap();
    // No writes; node 2 keeps reporting, node 3 goes silent while holding the end.
    for t in (100..=3 * LAG).step_by(100) {
        report(&mut rs, t, 2, 100, 100).unwrap();
    }
    let p = rs.poll_isr_change(3 * LAG).expect("node 3 leaves");
    assert_eq!((p.isr, p.removed), (vec![1, 2], vec![3]));
    rs.handle(
        3 * LAG,
        LeaderInput::IsrCommitted {
            leader_epoch: EPOCH,
            isr: &[1, 2],
        },
    )
    .unwrap();
    // Still silent: it is not proposed back although it holds the end.
    report(&mut rs, 3 * LAG + 1, 2, 100, 100).unwrap();
    assert_eq!(rs.poll_isr_change(3 * LAG + 2), None);
    // It reports again: back in.
    report(&mut rs, 3 * LAG + 3, 3, 100, 100).unwrap();
    let p = rs.poll_isr_change(3 * LAG + 4).expect("node 3 rejoins");
    assert_eq!(p.added, Some(3));
}
