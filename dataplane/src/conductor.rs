//! The conductor agent: commands from the other agents (and, later, the control plane), counters
//! publication, housekeeping. Everything that allocates after start-up happens here, off the
//! receiver's and sender's duty cycles (e.g. a remote subscriber's retransmit buffer).

use crate::agent::{Agent, CommandQueue};
use crate::counters::{Counter, Counters, CountersFile};
use crate::sender::{SenderCommand, Subscription};
use crate::session::SubscribeRequest;

/// Commands handled per duty cycle at most.
pub const COMMANDS_PER_CYCLE_MAX: usize = 16;
/// Interval between counters-file updates (ns).
pub const COUNTERS_PUBLISH_INTERVAL_NS: u64 = 10_000_000;
/// Interval between liveness checks of the other agents (ns).
pub const LIVENESS_CHECK_INTERVAL_NS: u64 = 100_000_000;
/// An agent without a duty cycle for this long is reported as stalled (ns).
pub const AGENT_STALL_NS: u64 = 1_000_000_000;

const _: () = assert!(LIVENESS_CHECK_INTERVAL_NS < AGENT_STALL_NS);

/// What the conductor is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConductorCommand {
    /// A remote subscriber asked for a partition (SETUP with FLAG_SUBSCRIBE on the data port).
    Subscribe(SubscribeRequest),
}

/// Settings of the outbound sessions the conductor builds for remote subscribers.
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    pub partitions: Vec<(u32, u16)>,
    pub retransmit_window_bytes: usize,
    pub heartbeat_interval_ns: u64,
    pub session_timeout_ns: u64,
    pub principal: String,
}

pub struct Conductor {
    commands: CommandQueue<ConductorCommand>,
    sender: CommandQueue<SenderCommand>,
    counters: Counters,
    file: CountersFile,
    settings: SubscriptionSettings,
    next_publish_ns: u64,
    commands_done: u64,
    file_errors: u64,
    /// (role, cycles counter, last value, when it last changed, reported stalled).
    watched: Vec<(&'static str, Counter, u64, u64, bool)>,
    next_liveness_ns: u64,
}

impl Conductor {
    pub fn new(
        commands: CommandQueue<ConductorCommand>,
        sender: CommandQueue<SenderCommand>,
        counters: Counters,
        file: CountersFile,
        settings: SubscriptionSettings,
    ) -> Conductor {
        Conductor {
            commands,
            sender,
            counters,
            file,
            settings,
            next_publish_ns: 0,
            commands_done: 0,
            file_errors: 0,
            watched: Vec::new(),
            next_liveness_ns: 0,
        }
    }

    /// Watches the duty-cycle count of these agent roles (liveness).
    pub fn watch(&mut self, roles: &[&'static str]) {
        self.watched = roles
            .iter()
            .filter_map(|&r| crate::counters::cycles_counter(r).map(|c| (r, c, 0, 0, false)))
            .collect();
    }

    /// Reports agents whose duty-cycle count stopped moving (a blocked or spinning-in-place agent;
    /// with shared threading the conductor shares their thread and can only see it afterwards).
    fn check_liveness(&mut self, now_ns: u64) {
        for (role, counter, last, since, stalled) in self.watched.iter_mut() {
            let cycles = self.counters.get(*counter);
            if cycles != *last || *since == 0 {
                (*last, *since, *stalled) = (cycles, now_ns, false);
            } else if !*stalled && now_ns - *since >= AGENT_STALL_NS {
                *stalled = true;
                self.counters.add(Counter::AgentStalls, 1);
                eprintln!(
                    "memstreamer: the {role} agent made no duty cycle for {} ms",
                    (now_ns - *since) / 1_000_000
                );
            }
        }
    }

    fn subscribe(&mut self, r: SubscribeRequest) {
        let Some(partition_idx) = self
            .settings
            .partitions
            .iter()
            .position(|&p| p == (r.stream_id, r.partition))
        else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let frame_max = xdp_programs::abi_consts::FRAME_BYTES_MAX;
        let mut cfg = sdk::net::PublisherConfig::new(
            r.stream_id,
            r.partition,
            r.session_id,
            &self.settings.principal,
        );
        cfg.epoch = r.epoch;
        cfg.frame_bytes = (r.frame_bytes_max.min(frame_max) & !7) as usize;
        cfg.buffer_bytes = self.settings.retransmit_window_bytes;
        cfg.heartbeat_interval_ns = self.settings.heartbeat_interval_ns;
        cfg.status_timeout_ns = self.settings.session_timeout_ns;
        match sdk::net::PublisherSession::new(cfg) {
            Ok(session) => {
                let sub = Box::new(Subscription::new(r.src, partition_idx, session));
                if self.sender.offer(SenderCommand::Add(sub)).is_err() {
                    self.counters.add(Counter::ConductorCommandsDropped, 1);
                }
            }
            Err(_) => self.counters.add(Counter::ConductorSubscribeRefused, 1),
        }
    }
}

impl Agent for Conductor {
    fn do_work(&mut self, now_ns: u64) -> usize {
        let commands = self.commands.clone();
        let mut work = commands.drain(COMMANDS_PER_CYCLE_MAX, |c| match c {
            ConductorCommand::Subscribe(r) => self.subscribe(r),
        });
        self.commands_done += work as u64;
        self.counters
            .set(Counter::ConductorCommands, self.commands_done);
        if now_ns >= self.next_liveness_ns {
            self.next_liveness_ns = now_ns + LIVENESS_CHECK_INTERVAL_NS;
            self.check_liveness(now_ns);
        }
        if now_ns >= self.next_publish_ns {
            self.next_publish_ns = now_ns + COUNTERS_PUBLISH_INTERVAL_NS;
            if let Err(e) = self.file.publish(&self.counters) {
                // Reported once per 1000 failures: the data path keeps running without a stat view.
                if self.file_errors.is_multiple_of(1000) {
                    eprintln!("memstreamer: {e}");
                }
                self.file_errors += 1;
            }
            work += 1;
        }
        work
    }

    fn role(&self) -> &'static str {
        "conductor"
    }

    fn on_close(&mut self) {
        let _ = self.file.publish(&self.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_agents_are_counted_once_per_stall() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let settings = SubscriptionSettings {
            partitions: vec![(7, 0)],
            retransmit_window_bytes: 1 << 16,
            heartbeat_interval_ns: 1,
            session_timeout_ns: 2,
            principal: "n".into(),
        };
        let mut c = Conductor::new(
            CommandQueue::new(4),
            CommandQueue::new(4),
            counters.clone(),
            file,
            settings,
        );
        c.watch(&["receiver"]);
        let step = LIVENESS_CHECK_INTERVAL_NS;
        let mut now = 1;
        for _ in 0..(AGENT_STALL_NS / step) + 3 {
            c.do_work(now);
            now += step;
        }
        assert_eq!(counters.get(Counter::AgentStalls), 1, "reported once");
        counters.bump_single_writer(Counter::AgentCyclesReceiver);
        for _ in 0..3 {
            c.do_work(now);
            now += step;
        }
        assert_eq!(
            counters.get(Counter::AgentStalls),
            1,
            "progress clears the stall"
        );
    }

    #[test]
    fn subscribe_requests_become_sender_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let counters = Counters::new(&[(7, 0)]);
        let file = CountersFile::create(&dir.path().join("c"), &counters).unwrap();
        let settings = SubscriptionSettings {
            partitions: vec![(7, 0)],
            retransmit_window_bytes: 1 << 16,
            heartbeat_interval_ns: 1_000_000,
            session_timeout_ns: 5_000_000,
            principal: "n".into(),
        };
        let (commands, sender) = (CommandQueue::new(4), CommandQueue::new(4));
        let mut c = Conductor::new(
            commands.clone(),
            sender.clone(),
            counters.clone(),
            file,
            settings,
        );
        let request = |stream_id, frame_bytes_max| SubscribeRequest {
            src: "198.18.0.2:9".parse().unwrap(),
            stream_id,
            partition: 0,
            session_id: 1,
            epoch: 0,
            frame_bytes_max,
        };
        for r in [request(7, 1472), request(8, 1472), request(7, 16)] {
            assert!(commands.offer(ConductorCommand::Subscribe(r)).is_ok());
        }
        c.do_work(1);
        assert_eq!(sender.len(), 1, "only the valid request reaches the sender");
        assert_eq!(
            counters.get(Counter::ConductorSubscribeRefused),
            2,
            "unknown stream, frame too small"
        );
    }
}
