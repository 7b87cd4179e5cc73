//! A seeded simulation of one replicated partition over the sans-IO pieces: three replicas with
//! in-memory logs and storage-nvme epoch histories, the leader's [`ReplicaSet`], fetches checked
//! with [`check_fetch`], divergence cut with [`resolve_divergence`], and a controller that
//! commits every ISR proposal and elects a new leader from the committed ISR when the leader is
//! killed (clean election only). The deposed leader comes back as a follower with its
//! unreplicated tail. After every step: every record acknowledged under `all` is in the current
//! leader's log at its offset; a follower that just fetched holds a prefix of the leader's log;
//! at the end every replica converges to the leader's log.

use abi::replication::{EpochEndOutcome, NO_EPOCH};
use proptest::prelude::*;
use storage_nvme::EpochHistory;

use super::*;

const LAG: u64 = 1_000;
const NODES: [NodeId; 3] = [1, 2, 3];

/// One replica: its log (record ids by offset) and its leader-epoch history.
#[derive(Clone, Debug, Default)]
struct Replica {
    log: Vec<u64>,
    epochs: EpochHistory,
}

impl Replica {
    fn truncate(&mut self, end: u64) {
        self.log.truncate(end as usize);
        self.epochs.truncate_from_end(end);
    }
}

struct Sim {
    replicas: Vec<Replica>,
    leader: NodeId,
    epoch: u64,
    rs: ReplicaSet,
    /// Record ids acknowledged under `all` (replicated), by offset.
    acked: Vec<u64>,
    next_id: u64,
    now: u64,
    min: usize,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Publish(u8),
    Fetch { node: usize, records: u8 },
    Tick(u64),
    KillLeader { pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..5).prop_map(Step::Publish),
        6 => (0usize..3, 1u8..6).prop_map(|(node, records)| Step::Fetch { node, records }),
        2 => (0u64..LAG).prop_map(Step::Tick),
        1 => (0usize..2).prop_map(|pick| Step::KillLeader { pick }),
    ]
}

impl Sim {
    fn new(min: usize) -> Self {
        let mut replicas = vec![Replica::default(); 3];
        replicas[0].epochs.assign(1, 0).unwrap();
        let cfg = ReplicaSetConfig {
            replica_lag_time_max_ns: LAG,
            min_insync_replicas: min,
        };
        let rs = ReplicaSet::new(cfg, 0, 1, 1, &NODES, &NODES, (0, 0, 0)).unwrap();
        Self {
            replicas,
            leader: 1,
            epoch: 1,
            rs,
            acked: Vec::new(),
            next_id: 1,
            now: 0,
            min,
        }
    }

    fn idx(node: NodeId) -> usize {
        (node - 1) as usize
    }

    fn leader(&self) -> &Replica {
        &self.replicas[Self::idx(self.leader)]
    }

    fn run(&mut self, s: Step) {
        match s {
            Step::Publish(n) => {
                if self.rs.admit(AckMode::AllReplicated).is_err() {
                    return;
                }
                for _ in 0..n {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.replicas[Self::idx(self.leader)].log.push(id);
                }
                let end = self.leader().log.len() as u64;
                self.rs
                    .handle(self.now, LeaderInput::Appended { end_offset: end })
                    .unwrap();
                self.rs
                    .handle(
                        self.now,
                        LeaderInput::Durable {
                            durable_offset: end,
                        },
                    )
                    .unwrap();
            }
            Step::Fetch { node, records } => {
                let node = NODES[node];
                if node != self.leader {
                    self.fetch(node, records as usize);
                }
            }
            Step::Tick(dt) => {
                self.now += dt;
                if let Some(p) = self.rs.poll_isr_change(self.now) {
                    let input = LeaderInput::IsrCommitted {
                        leader_epoch: p.leader_epoch,
                        isr: &p.isr,
                    };
                    self.rs.handle(self.now, input).unwrap();
                }
            }
            Step::KillLeader { pick } => self.elect(pick),
        }
        self.note_acks();
    }

    /// A follower's fetch: resolve divergence first when the leader says so, else copy records
    /// and report.
    fn fetch(&mut self, node: NodeId, records: usize) {
        let leader_end = self.leader().log.len() as u64;
        let f = &self.replicas[Self::idx(node)];
        let f_end = f.log.len() as u64;
        let last = f.epochs.latest().map_or(NO_EPOCH, |e| e.epoch);
        let verdict = check_fetch(&self.leader().epochs, (0, leader_end), f_end, last);
        let answer = match verdict {
            FetchCheck::Serve => None,
            FetchCheck::Diverging { epoch, end_offset } => {
                Some(EpochEndOutcome::Found { epoch, end_offset })
            }
            FetchCheck::OutOfRange { .. } => {
                // Ahead of the leader: ask where the follower's last epoch ends (EPOCH_END).
                Some(
                    match self.leader().epochs.end_offset_for(last, leader_end) {
                        Some((epoch, end_offset)) => EpochEndOutcome::Found { epoch, end_offset },
                        None => EpochEndOutcome::Unknown,
                    },
                )
            }
        };
        if let Some(answer) = answer {
            let own = &self.replicas[Self::idx(node)];
            match resolve_divergence(&own.epochs, (0, f_end), answer) {
                Resolution::TruncateTo(cut) => {
                    assert!(cut <= f_end);
                    self.replicas[Self::idx(node)].truncate(cut);
                }
                Resolution::Retry => unreachable!("the simulated leader always answers"),
            }
            return;
        }
        let from = f_end as usize;
        let to = (from + records).min(leader_end as usize);
        let leader = self.leader().clone();
        let f = &mut self.replicas[Self::idx(node)];
        for o in from..to {
            f.log.push(leader.log[o]);
            let epoch = epoch_of(&leader.epochs, o as u64);
            if f.epochs.latest().is_none_or(|l| l.epoch < epoch) {
                f.epochs.assign(epoch, o as u64).unwrap();
            }
        }
        assert_eq!(
            f.log[..],
            leader.log[..f.log.len()],
            "a follower that fetched holds a prefix of the leader's log"
        );
        let end = f.log.len() as u64;
        let report = LeaderInput::Report {
            from: node,
            leader_epoch: self.epoch,
            received_offset: end,
            durable_offset: end,
        };
        self.rs.handle(self.now, report).unwrap();
    }

    /// Kills the leader; the controller elects another member of the committed ISR (clean
    /// election only), bumps the epoch, and the old leader rejoins as a follower, tail intact.
    fn elect(&mut self, pick: usize) {
        let candidates: Vec<NodeId> = self
            .rs
            .isr()
            .into_iter()
            .filter(|&n| n != self.leader)
            .collect();
        if candidates.is_empty() {
            return; // unclean election is off: the partition waits
        }
        let new = candidates[pick % candidates.len()];
        let isr: Vec<NodeId> = candidates.clone();
        self.epoch += 1;
        let r = &mut self.replicas[Self::idx(new)];
        let end = r.log.len() as u64;
        r.epochs.assign(self.epoch, end).unwrap();
        assert!(
            end >= self.acked.len() as u64,
            "the new leader lacks acknowledged records"
        );
        let cfg = ReplicaSetConfig {
            replica_lag_time_max_ns: LAG,
            min_insync_replicas: self.min.min(NODES.len()),
        };
        let hw = self.acked.len() as u64;
        self.rs =
            ReplicaSet::new(cfg, self.now, new, self.epoch, &NODES, &isr, (end, end, hw)).unwrap();
        self.leader = new;
    }

    /// Records the newly acknowledged records and checks every acknowledged one is in the
    /// leader's log where it was acknowledged.
    fn note_acks(&mut self) {
        let hw = self.rs.high_watermark_replicated() as usize;
        let log = self.replicas[Self::idx(self.leader)].log.clone();
        assert!(hw <= log.len());
        let from = self.acked.len().min(hw);
        for (o, &id) in log.iter().enumerate().take(hw).skip(from) {
            assert_eq!(
                self.rs.ack_status(AckMode::AllReplicated, o as u64),
                AckStatus::Acked
            );
            self.acked.push(id);
        }
        assert_eq!(
            log[..self.acked.len()],
            self.acked[..],
            "an acknowledged record changed or vanished"
        );
    }
}

/// The epoch that wrote offset `o` according to `h`.
fn epoch_of(h: &EpochHistory, o: u64) -> u64 {
    h.entries()
        .iter()
        .rev()
        .find(|e| e.start_offset <= o)
        .map(|e| e.epoch)
        .expect("every record has an epoch")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn acknowledged_records_survive_leader_kills_and_replicas_converge(
        min in 1usize..=2,
        steps in proptest::collection::vec(step(), 1..300),
    ) {
        let mut sim = Sim::new(min);
        for s in steps {
            sim.run(s);
        }
        // Heal: every follower fetches until it holds the leader's log.
        for _ in 0..64 {
            for node in NODES {
                if node != sim.leader {
                    sim.fetch(node, 64);
                }
            }
        }
        let leader_log = sim.leader().log.clone();
        for r in &sim.replicas {
            prop_assert_eq!(&r.log, &leader_log);
            // Every record is attributed to the same epoch on every replica.
            for o in 0..leader_log.len() as u64 {
                prop_assert_eq!(epoch_of(&r.epochs, o), epoch_of(&sim.leader().epochs, o));
            }
        }
    }
}
