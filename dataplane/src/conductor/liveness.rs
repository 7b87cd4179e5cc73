//! Liveness: agents whose duty-cycle count stopped moving are reported as stalled (a blocked or
//! spinning-in-place agent; with shared threading the conductor shares their thread and can
//! only see it afterwards).

use crate::counters::{Counter, Counters};

/// Interval between liveness checks of the other agents (ns).
pub const LIVENESS_CHECK_INTERVAL_NS: u64 = 100_000_000;
/// An agent without a duty cycle for this long is reported as stalled (ns).
pub const AGENT_STALL_NS: u64 = 1_000_000_000;

const _: () = assert!(LIVENESS_CHECK_INTERVAL_NS < AGENT_STALL_NS);

/// One watched agent.
struct Watched {
    role: &'static str,
    cycles: Counter,
    last: u64,
    /// When its count last changed (0: not seen yet).
    since_ns: u64,
    stalled: bool,
}

/// The agents the conductor watches.
#[derive(Default)]
pub struct Liveness {
    watched: Vec<Watched>,
    next_check_ns: u64,
}

impl Liveness {
    /// Watches the duty-cycle count of these agent roles.
    pub fn watch(&mut self, roles: &[&'static str]) {
        self.watched = roles
            .iter()
            .filter_map(|&role| {
                crate::counters::cycles_counter(role).map(|cycles| Watched {
                    role,
                    cycles,
                    last: 0,
                    since_ns: 0,
                    stalled: false,
                })
            })
            .collect();
    }

    /// Checks every [`LIVENESS_CHECK_INTERVAL_NS`]; a stall is counted once (`AgentStalls`)
    /// until the agent makes progress again.
    pub fn check(&mut self, now_ns: u64, counters: &Counters) {
        if now_ns < self.next_check_ns {
            return;
        }
        self.next_check_ns = now_ns + LIVENESS_CHECK_INTERVAL_NS;
        for w in self.watched.iter_mut() {
            let cycles = counters.get(w.cycles);
            if cycles != w.last || w.since_ns == 0 {
                (w.last, w.since_ns, w.stalled) = (cycles, now_ns, false);
            } else if !w.stalled && now_ns - w.since_ns >= AGENT_STALL_NS {
                w.stalled = true;
                counters.add(Counter::AgentStalls, 1);
                eprintln!(
                    "memstreamer: the {} agent made no duty cycle for {} ms",
                    w.role,
                    (now_ns - w.since_ns) / 1_000_000
                );
            }
        }
    }
}
