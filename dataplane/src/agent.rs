//! Agents with a duty cycle, and the threading modes that run them (Aeron's media-driver model).
//!
//! An [`Agent`] does a bounded amount of work per call to [`Agent::do_work`] and returns how much it
//! did (0 = idle). An [`AgentRunner`] decides which threads call it:
//!
//! * [`ThreadingMode::Dedicated`]: one thread per agent, pinned to a core when one is configured,
//!   busy-polling (the idle strategy never parks unless configured to).
//! * [`ThreadingMode::Shared`]: every agent on one thread, round-robin.
//! * [`ThreadingMode::Invoker`]: no thread at all; the caller drives [`AgentInvoker::invoke`] (tests,
//!   embedding).
//!
//! Cross-thread commands travel through a bounded [`CommandQueue`]; its consumer drains at most a fixed
//! number per duty cycle so one busy producer cannot starve the agent's own work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use sdk::IdleStrategy;

use crate::counters::{Counter, Counters};

/// Largest command queue any agent may be given (entries).
pub const COMMAND_QUEUE_DEPTH_MAX: usize = 65_536;
/// Most agents one runner runs (receiver, sender, archiver, conductor, plus room for per-queue receivers).
pub const AGENTS_MAX: usize = 16;

/// One role of the data plane with a duty cycle.
pub trait Agent: Send {
    /// Does at most a bounded amount of work; returns the amount done (0 means idle).
    /// Must not block, allocate or take locks.
    fn do_work(&mut self, now_ns: u64) -> usize;
    /// A short stable name ("receiver", "sender", "archiver", "conductor").
    fn role(&self) -> &'static str;
    /// Called once on the agent's thread after the runner was asked to stop.
    fn on_close(&mut self) {}
}

/// Monotonic nanoseconds since a process-wide epoch (the same for every agent of a runner).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Which threads run the agents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadingMode {
    /// One busy-polling thread per agent; `cores[i]` (when present) pins agent `i`.
    Dedicated { cores: Vec<usize> },
    /// All agents on one thread, pinned to `core` when present.
    Shared { core: Option<usize> },
    /// The caller drives the agents with [`AgentInvoker::invoke`].
    Invoker,
}

/// Where an agent's longest duty cycle (ns, a `Max` counter) and its number of duty cycles (the
/// conductor's liveness check) are published.
#[derive(Clone)]
pub struct DutyCycleSlot {
    pub counters: Counters,
    pub counter: Counter,
    pub cycles: Option<Counter>,
}

/// An agent plus the counter slot where its longest duty cycle is published.
pub struct AgentSlot {
    pub agent: Box<dyn Agent>,
    pub duty: Option<DutyCycleSlot>,
}

impl AgentSlot {
    pub fn new(agent: Box<dyn Agent>, duty: Option<DutyCycleSlot>) -> Self {
        AgentSlot { agent, duty }
    }

    #[inline]
    fn cycle(&mut self, clock: &Clock) -> usize {
        let start = clock.now_ns();
        let work = self.agent.do_work(start);
        if let Some(duty) = &self.duty {
            duty.counters
                .record_max(duty.counter, clock.now_ns().saturating_sub(start));
            if let Some(cycles) = duty.cycles {
                duty.counters.bump_single_writer(cycles);
            }
        }
        work
    }
}

/// Errors starting a runner.
#[derive(Debug, thiserror::Error)]
pub enum AgentRunnerStartError {
    #[error("{count} agents exceed AGENTS_MAX ({AGENTS_MAX}): run fewer receiver queues")]
    TooManyAgents { count: usize },
    #[error("core {core} for agent {role} is not an online CPU (online: {online}); fix `cores` in the config")]
    BadCore {
        role: &'static str,
        core: usize,
        online: usize,
    },
    #[error("could not spawn the {role} thread: {source}")]
    Spawn {
        role: &'static str,
        source: std::io::Error,
    },
    #[error("threading mode Invoker has no threads: use AgentInvoker instead")]
    InvokerMode,
}

/// Runs agents on threads until [`AgentRunner::stop`] (or drop).
pub struct AgentRunner {
    running: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn check_core(
    role: &'static str,
    core: usize,
) -> Result<core_affinity::CoreId, AgentRunnerStartError> {
    let ids = core_affinity::get_core_ids().unwrap_or_default();
    ids.iter()
        .copied()
        .find(|c| c.id == core)
        .ok_or(AgentRunnerStartError::BadCore {
            role,
            core,
            online: ids.len(),
        })
}

impl AgentRunner {
    /// Starts the agents in `mode` (Dedicated or Shared). `idle` is cloned per thread.
    pub fn start(
        mode: &ThreadingMode,
        agents: Vec<AgentSlot>,
        idle: IdleStrategy,
        clock: Clock,
    ) -> Result<AgentRunner, AgentRunnerStartError> {
        if agents.len() > AGENTS_MAX {
            return Err(AgentRunnerStartError::TooManyAgents {
                count: agents.len(),
            });
        }
        let running = Arc::new(AtomicBool::new(true));
        let mut runner = AgentRunner {
            running: running.clone(),
            threads: Vec::new(),
        };
        match mode {
            ThreadingMode::Invoker => return Err(AgentRunnerStartError::InvokerMode),
            ThreadingMode::Dedicated { cores } => {
                for (i, slot) in agents.into_iter().enumerate() {
                    let role = slot.agent.role();
                    let core = cores.get(i).map(|&c| check_core(role, c)).transpose()?;
                    let handle =
                        spawn_loop(role, vec![slot], idle.clone(), clock, core, running.clone())?;
                    runner.threads.push(handle);
                }
            }
            ThreadingMode::Shared { core } => {
                let core = core.map(|c| check_core("shared", c)).transpose()?;
                let handle = spawn_loop("shared", agents, idle, clock, core, running.clone())?;
                runner.threads.push(handle);
            }
        }
        Ok(runner)
    }

    /// True while no thread has stopped (a panicking agent stops its thread).
    pub fn is_healthy(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Asks every agent thread to stop and joins them; returns how many threads panicked.
    pub fn stop(mut self) -> usize {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> usize {
        self.running.store(false, Ordering::Release);
        self.threads
            .drain(..)
            .map(|t| t.join())
            .filter(|r| r.is_err())
            .count()
    }
}

impl Drop for AgentRunner {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn spawn_loop(
    role: &'static str,
    mut agents: Vec<AgentSlot>,
    mut idle: IdleStrategy,
    clock: Clock,
    core: Option<core_affinity::CoreId>,
    running: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, AgentRunnerStartError> {
    std::thread::Builder::new()
        .name(format!("ms-{role}"))
        .spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            // Acquire pairs with the Release store in stop_inner.
            while running.load(Ordering::Acquire) {
                let mut work = 0;
                for slot in agents.iter_mut() {
                    work += slot.cycle(&clock);
                }
                idle.idle(work);
            }
            for slot in agents.iter_mut() {
                slot.agent.on_close();
            }
        })
        .map_err(|source| AgentRunnerStartError::Spawn { role, source })
}

/// Threading mode Invoker: the caller runs every agent's duty cycle.
pub struct AgentInvoker {
    agents: Vec<AgentSlot>,
    clock: Clock,
}

impl AgentInvoker {
    pub fn new(agents: Vec<AgentSlot>, clock: Clock) -> Self {
        AgentInvoker { agents, clock }
    }

    /// One duty cycle of every agent; returns the total work done.
    pub fn invoke(&mut self) -> usize {
        let clock = self.clock;
        self.agents.iter_mut().map(|slot| slot.cycle(&clock)).sum()
    }

    /// Invokes until `done()` holds or `cycles_max` cycles ran; returns whether `done()` held.
    pub fn invoke_until(&mut self, cycles_max: usize, mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..cycles_max {
            if done() {
                return true;
            }
            self.invoke();
        }
        done()
    }

    pub fn close(mut self) {
        for slot in self.agents.iter_mut() {
            slot.agent.on_close();
        }
    }
}

/// A bounded multi-producer command queue drained by one agent with a per-cycle limit.
pub struct CommandQueue<T> {
    queue: Arc<ArrayQueue<T>>,
}

impl<T> Clone for CommandQueue<T> {
    fn clone(&self) -> Self {
        CommandQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> CommandQueue<T> {
    /// A queue of `depth` entries (1..=COMMAND_QUEUE_DEPTH_MAX; clamped into that range).
    pub fn new(depth: usize) -> Self {
        CommandQueue {
            queue: Arc::new(ArrayQueue::new(depth.clamp(1, COMMAND_QUEUE_DEPTH_MAX))),
        }
    }

    /// Enqueues; gives the command back when the queue is full (back-pressure is a value).
    pub fn offer(&self, command: T) -> Result<(), T> {
        self.queue.push(command)
    }

    /// Hands at most `limit` commands to `f`; returns how many.
    pub fn drain(&self, limit: usize, f: impl FnMut(T)) -> usize {
        drain_queue(&self.queue, limit, f)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Pops at most `limit` commands into `f`; returns how many.
fn drain_queue<T>(queue: &ArrayQueue<T>, limit: usize, mut f: impl FnMut(T)) -> usize {
    let mut n = 0;
    while n < limit {
        match queue.pop() {
            Some(c) => {
                f(c);
                n += 1;
            }
            None => break,
        }
    }
    n
}

/// The producing half of a bounded single-producer single-consumer command queue: not `Clone`,
/// so exactly one thread (the conductor) produces. Pair of [`SpscConsumer`]; see [`spsc`].
pub struct SpscProducer<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// The consuming half of a [`spsc`] queue: not `Clone`, drained by one agent in its duty cycle
/// with a fixed per-cycle limit.
pub struct SpscConsumer<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// A bounded SPSC queue of `depth` entries (clamped to 1..=COMMAND_QUEUE_DEPTH_MAX). Neither
/// half allocates after creation; a full queue gives the command back.
pub fn spsc<T>(depth: usize) -> (SpscProducer<T>, SpscConsumer<T>) {
    let queue = Arc::new(ArrayQueue::new(depth.clamp(1, COMMAND_QUEUE_DEPTH_MAX)));
    (
        SpscProducer {
            queue: queue.clone(),
        },
        SpscConsumer { queue },
    )
}

impl<T> SpscProducer<T> {
    /// Enqueues; gives the command back when the queue is full.
    pub fn offer(&mut self, command: T) -> Result<(), T> {
        self.queue.push(command)
    }

    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }
}

impl<T> SpscConsumer<T> {
    /// Hands at most `limit` commands to `f`; returns how many.
    pub fn drain(&mut self, limit: usize, f: impl FnMut(T)) -> usize {
        drain_queue(&self.queue, limit, f)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Commands an [`Outbox`] holds for its agent beyond the agent's SPSC queue, at most.
pub const OUTBOX_PENDING_MAX: usize = 1024;

/// Commands for one agent, buffered on the conductor's side while the agent's SPSC queue is
/// full (the conductor may allocate; the agent never does). Flushed every conductor cycle.
/// Bounded: at [`OUTBOX_PENDING_MAX`] waiting commands it refuses more (the caller counts the
/// refusal, or checks [`Outbox::has_room`] first for commands it must not lose).
pub struct Outbox<T> {
    pending: std::collections::VecDeque<T>,
    tx: SpscProducer<T>,
}

impl<T> Outbox<T> {
    pub fn new(tx: SpscProducer<T>) -> Self {
        Outbox {
            pending: std::collections::VecDeque::with_capacity(OUTBOX_PENDING_MAX),
            tx,
        }
    }

    /// Queues `command` behind everything not yet delivered (order is kept); gives it back
    /// when the agent's queue is full and [`OUTBOX_PENDING_MAX`] commands already wait.
    pub fn push(&mut self, command: T) -> Result<(), T> {
        self.flush();
        if self.pending.is_empty() {
            match self.tx.offer(command) {
                Ok(()) => return Ok(()),
                Err(c) => return self.hold(c),
            }
        }
        self.hold(command)
    }

    fn hold(&mut self, command: T) -> Result<(), T> {
        if self.pending.len() >= OUTBOX_PENDING_MAX {
            return Err(command);
        }
        self.pending.push_back(command);
        Ok(())
    }

    /// True when `n` more commands are taken for sure.
    pub fn has_room(&self, n: usize) -> bool {
        self.pending.len() + n <= OUTBOX_PENDING_MAX
    }

    /// Moves what fits into the agent's queue; returns how many moved.
    pub fn flush(&mut self) -> usize {
        let mut moved = 0;
        while let Some(c) = self.pending.pop_front() {
            match self.tx.offer(c) {
                Ok(()) => moved += 1,
                Err(c) => {
                    self.pending.push_front(c);
                    break;
                }
            }
        }
        moved
    }

    /// Commands waiting for room in the agent's queue.
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count {
        hits: Arc<AtomicU64>,
        closed: Arc<AtomicBool>,
    }

    use std::sync::atomic::AtomicU64;

    impl Agent for Count {
        fn do_work(&mut self, _now_ns: u64) -> usize {
            // Take a measurable time, so the duty-cycle maximum is above 0.
            let t = Instant::now();
            while t.elapsed().as_nanos() < 100 {
                std::hint::spin_loop();
            }
            self.hits.fetch_add(1, Ordering::Relaxed);
            1
        }
        fn role(&self) -> &'static str {
            "count"
        }
        fn on_close(&mut self) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    fn count_agent() -> (AgentSlot, Arc<AtomicU64>, Arc<AtomicBool>) {
        let hits = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let agent = Count {
            hits: hits.clone(),
            closed: closed.clone(),
        };
        (AgentSlot::new(Box::new(agent), None), hits, closed)
    }

    fn wait_for(hits: &AtomicU64) -> bool {
        for _ in 0..10_000 {
            if hits.load(Ordering::Relaxed) > 10 {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn invoker_runs_every_agent_once_per_cycle() {
        let (mut a, ha, _) = count_agent();
        let counters = Counters::new(&[]);
        a.duty = Some(DutyCycleSlot {
            counters: counters.clone(),
            counter: Counter::DutyCycleMaxSenderNs,
            cycles: Some(Counter::AgentCyclesSender),
        });
        let (b, hb, cb) = count_agent();
        let mut inv = AgentInvoker::new(vec![a, b], Clock::new());
        assert_eq!(inv.invoke(), 2);
        assert_eq!(inv.invoke(), 2);
        assert_eq!(ha.load(Ordering::Relaxed), 2);
        assert_eq!(hb.load(Ordering::Relaxed), 2);
        assert!(counters.get(Counter::DutyCycleMaxSenderNs) > 0);
        assert_eq!(counters.get(Counter::AgentCyclesSender), 2);
        inv.close();
        assert!(cb.load(Ordering::Relaxed));
    }

    #[test]
    fn dedicated_and_shared_modes_run_and_stop() {
        for mode in [
            ThreadingMode::Dedicated { cores: vec![] },
            ThreadingMode::Shared { core: None },
        ] {
            let (a, ha, ca) = count_agent();
            let (b, hb, cb) = count_agent();
            let runner =
                AgentRunner::start(&mode, vec![a, b], IdleStrategy::yielding(), Clock::new())
                    .unwrap();
            assert!(wait_for(&ha) && wait_for(&hb), "{mode:?}");
            assert!(runner.is_healthy());
            assert_eq!(runner.stop(), 0);
            assert!(ca.load(Ordering::Relaxed) && cb.load(Ordering::Relaxed));
        }
    }

    #[test]
    fn invoker_mode_and_bad_core_are_errors() {
        let (a, _, _) = count_agent();
        let err = AgentRunner::start(
            &ThreadingMode::Invoker,
            vec![a],
            IdleStrategy::yielding(),
            Clock::new(),
        );
        assert!(matches!(err, Err(AgentRunnerStartError::InvokerMode)));
        let (a, _, _) = count_agent();
        let mode = ThreadingMode::Dedicated {
            cores: vec![100_000],
        };
        let err = AgentRunner::start(&mode, vec![a], IdleStrategy::yielding(), Clock::new());
        assert!(matches!(
            err,
            Err(AgentRunnerStartError::BadCore { core: 100_000, .. })
        ));
    }

    #[test]
    fn command_queue_is_bounded_and_drains_with_a_limit() {
        let q = CommandQueue::new(4);
        for i in 0..4 {
            q.offer(i).unwrap();
        }
        assert_eq!(q.offer(9), Err(9));
        let mut got = Vec::new();
        assert_eq!(q.drain(3, |c| got.push(c)), 3);
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(q.drain(3, |c| got.push(c)), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn spsc_outbox_keeps_order_across_a_full_queue() {
        let (tx, mut rx) = spsc(2);
        let mut out = Outbox::new(tx);
        for i in 0..5 {
            assert!(out.push(i).is_ok());
        }
        assert_eq!(out.backlog(), 3);
        let mut got = Vec::new();
        for _ in 0..5 {
            rx.drain(1, |c| got.push(c));
            out.flush();
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(rx.is_empty() && out.backlog() == 0);
    }

    #[test]
    fn outbox_is_bounded_and_gives_the_command_back() {
        let (tx, mut rx) = spsc(1);
        let mut out = Outbox::new(tx);
        for i in 0..=OUTBOX_PENDING_MAX {
            assert!(
                out.push(i).is_ok(),
                "the queue's one plus the outbox's bound"
            );
        }
        assert!(!out.has_room(1));
        assert_eq!(out.push(usize::MAX), Err(usize::MAX));
        assert_eq!(rx.drain(1, drop), 1);
        assert!(out.push(7).is_ok(), "room again after the agent took one");
        let mut got = Vec::new();
        for _ in 0..=OUTBOX_PENDING_MAX {
            rx.drain(1, |c| got.push(c));
            out.flush();
        }
        let want: Vec<usize> = (1..=OUTBOX_PENDING_MAX).chain([7]).collect();
        assert_eq!(got, want, "order kept, the refused one never delivered");
    }
}
