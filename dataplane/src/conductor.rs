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
