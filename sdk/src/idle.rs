//! Idle strategies (Aeron-style): what a polling loop does after a duty cycle
//! that found no work.
//!
//! ```text
//!  strategy    no work ->                                      wake-up cost   CPU when idle
//!  BusySpin    spin_loop hint                                   ~0             one core
//!  Yield       sched_yield                                      ~1 us          one core (yields)
//!  Backoff     spin N -> yield M -> park, sleep doubling        <= park max    ~0
//!              from park_ns_min to park_ns_max
//!  Adaptive    spin while idle < spin_ns -> yield while idle    <= park max    ~0
//!              < yield_ns -> park for idle_time/16 clamped
//!              to [park_ns_min, park_ns_max]; keepalive on
//!              every wake so the ring does not evict a quiet
//!              subscriber
//! ```
//! Any work resets the strategy to its first phase. A parked strategy calls
//! the `keepalive` closure after each sleep (`Subscriber::idle` passes the ring
//! subscriber's `keepalive()`).

use std::time::{Duration, Instant};

/// Aeron's defaults for the backoff strategy.
pub const BACKOFF_SPINS_MAX: u32 = 10;
pub const BACKOFF_YIELDS_MAX: u32 = 5;
pub const BACKOFF_PARK_NS_MIN: u64 = 1_000;
pub const BACKOFF_PARK_NS_MAX: u64 = 1_000_000;

/// Adaptive defaults: spin for 50 us of idleness, yield until 1 ms, then park
/// for 1/16 of the idle time so far, between 20 us and 1 ms.
pub const ADAPTIVE_SPIN_NS: u64 = 50_000;
pub const ADAPTIVE_YIELD_NS: u64 = 1_000_000;
pub const ADAPTIVE_PARK_NS_MIN: u64 = 20_000;
pub const ADAPTIVE_PARK_NS_MAX: u64 = 1_000_000;
/// Park period = idle time >> this shift.
pub const ADAPTIVE_PARK_SHIFT: u32 = 4;

const _: () = assert!(BACKOFF_PARK_NS_MIN <= BACKOFF_PARK_NS_MAX);
const _: () = assert!(ADAPTIVE_PARK_NS_MIN <= ADAPTIVE_PARK_NS_MAX);
const _: () = assert!(ADAPTIVE_SPIN_NS <= ADAPTIVE_YIELD_NS);

/// The strategy a polling loop uses when a duty cycle did no work.
#[derive(Clone, Debug)]
pub enum IdleStrategy {
    BusySpin,
    Yield,
    Backoff(Backoff),
    Adaptive(Adaptive),
}

impl IdleStrategy {
    pub fn busy_spin() -> Self {
        Self::BusySpin
    }
    pub fn yielding() -> Self {
        Self::Yield
    }
    pub fn backoff() -> Self {
        Self::Backoff(Backoff::default())
    }
    pub fn adaptive() -> Self {
        Self::Adaptive(Adaptive::default())
    }

    /// One idle step after a duty cycle that did `work` units of work
    /// (`work > 0` resets the strategy and returns at once).
    #[inline]
    pub fn idle(&mut self, work: usize) {
        self.idle_with(work, || {});
    }

    /// Like `idle`, calling `keepalive` after each park so a parked
    /// subscriber stays alive in the ring.
    #[inline]
    pub fn idle_with(&mut self, work: usize, keepalive: impl FnMut()) {
        if work > 0 {
            self.reset();
            return;
        }
        match self {
            Self::BusySpin => std::hint::spin_loop(),
            Self::Yield => std::thread::yield_now(),
            Self::Backoff(b) => b.idle(keepalive),
            Self::Adaptive(a) => a.idle(keepalive),
        }
    }

    /// Back to the first phase (called automatically on work).
    #[inline]
    pub fn reset(&mut self) {
        match self {
            Self::BusySpin | Self::Yield => {}
            Self::Backoff(b) => b.reset(),
            Self::Adaptive(a) => a.reset(),
        }
    }

    /// True while the last idle step parked the thread (for tests and stats).
    pub fn is_parking(&self) -> bool {
        match self {
            Self::BusySpin | Self::Yield => false,
            Self::Backoff(b) => b.spins > b.spins_max && b.yields > b.yields_max,
            Self::Adaptive(a) => a.parked,
        }
    }
}

/// Spin `spins_max` times, yield `yields_max` times, then park with a sleep
/// doubling from `park_ns_min` up to `park_ns_max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub spins_max: u32,
    pub yields_max: u32,
    pub park_ns_min: u64,
    pub park_ns_max: u64,
    spins: u32,
    yields: u32,
    park_ns: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(
            BACKOFF_SPINS_MAX,
            BACKOFF_YIELDS_MAX,
            BACKOFF_PARK_NS_MIN,
            BACKOFF_PARK_NS_MAX,
        )
    }
}

impl Backoff {
    /// `park_ns_min` is raised to 1 and `park_ns_max` to `park_ns_min` if smaller.
    pub fn new(spins_max: u32, yields_max: u32, park_ns_min: u64, park_ns_max: u64) -> Self {
        let park_ns_min = park_ns_min.max(1);
        let park_ns_max = park_ns_max.max(park_ns_min);
        Self {
            spins_max,
            yields_max,
            park_ns_min,
            park_ns_max,
            spins: 0,
            yields: 0,
            park_ns: park_ns_min,
        }
    }

    fn idle(&mut self, mut keepalive: impl FnMut()) {
        if self.spins <= self.spins_max {
            self.spins += 1;
            std::hint::spin_loop();
        } else if self.yields <= self.yields_max {
            self.yields += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_nanos(self.park_ns));
            keepalive();
            self.park_ns = (self.park_ns * 2).min(self.park_ns_max);
        }
    }

    fn reset(&mut self) {
        self.spins = 0;
        self.yields = 0;
        self.park_ns = self.park_ns_min;
    }
}

/// Chooses its phase from how long the loop has been idle, so a
/// briefly quiet stream reacts in microseconds while a long-quiet one parks
/// and costs almost no CPU.
#[derive(Clone, Debug)]
pub struct Adaptive {
    pub spin_ns: u64,
    pub yield_ns: u64,
    pub park_ns_min: u64,
    pub park_ns_max: u64,
    /// `Instant`, not the ring clock: an idle loop may run before the ring is
    /// mapped, and reading the ring clock first would keep this process from
    /// adopting the ring's clock calibration.
    idle_since: Option<Instant>,
    parked: bool,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self::new(
            ADAPTIVE_SPIN_NS,
            ADAPTIVE_YIELD_NS,
            ADAPTIVE_PARK_NS_MIN,
            ADAPTIVE_PARK_NS_MAX,
        )
    }
}

impl Adaptive {
    /// Thresholds are ordered (`spin_ns <= yield_ns`, `1 <= park_ns_min <= park_ns_max`)
    /// by raising the later ones when needed.
    pub fn new(spin_ns: u64, yield_ns: u64, park_ns_min: u64, park_ns_max: u64) -> Self {
        let park_ns_min = park_ns_min.max(1);
        Self {
            spin_ns,
            yield_ns: yield_ns.max(spin_ns),
            park_ns_min,
            park_ns_max: park_ns_max.max(park_ns_min),
            idle_since: None,
            parked: false,
        }
    }

    /// The sleep chosen after `idle_ns` of idleness (0 = do not park).
    pub fn park_ns_for(&self, idle_ns: u64) -> u64 {
        if idle_ns < self.yield_ns {
            return 0;
        }
        (idle_ns >> ADAPTIVE_PARK_SHIFT).clamp(self.park_ns_min, self.park_ns_max)
    }

    fn idle(&mut self, mut keepalive: impl FnMut()) {
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        let idle_ns = u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX);
        if idle_ns < self.spin_ns {
            std::hint::spin_loop();
        } else if idle_ns < self.yield_ns {
            std::thread::yield_now();
        } else {
            self.parked = true;
            std::thread::sleep(Duration::from_nanos(self.park_ns_for(idle_ns)));
            keepalive();
        }
    }

    fn reset(&mut self) {
        self.idle_since = None;
        self.parked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_spins_then_yields_then_parks_with_keepalive() {
        let mut s = IdleStrategy::Backoff(Backoff::new(2, 2, 1_000, 4_000));
        let mut keepalives = 0;
        for _ in 0..6 {
            s.idle_with(0, || keepalives += 1);
        }
        assert_eq!(keepalives, 0, "spins and yields do not park");
        assert!(s.is_parking());
        for _ in 0..4 {
            s.idle_with(0, || keepalives += 1);
        }
        assert_eq!(keepalives, 4);
        let IdleStrategy::Backoff(b) = &s else {
            unreachable!()
        };
        assert_eq!(b.park_ns, 4_000, "park period doubles up to the cap");
        s.idle(1);
        assert!(!s.is_parking(), "work resets the strategy");
    }

    #[test]
    fn adaptive_park_period_grows_with_idle_time_and_is_capped() {
        let a = Adaptive::default();
        assert_eq!(a.park_ns_for(ADAPTIVE_SPIN_NS), 0);
        assert_eq!(
            a.park_ns_for(ADAPTIVE_YIELD_NS),
            ADAPTIVE_PARK_NS_MIN.max(ADAPTIVE_YIELD_NS >> 4)
        );
        assert_eq!(a.park_ns_for(10 * ADAPTIVE_YIELD_NS), 625_000);
        assert_eq!(a.park_ns_for(u64::MAX), ADAPTIVE_PARK_NS_MAX);
    }

    #[test]
    fn adaptive_parks_after_the_yield_window_and_calls_keepalive() {
        // Tiny windows so the test runs in a few milliseconds.
        let mut s = IdleStrategy::Adaptive(Adaptive::new(1_000, 2_000, 1_000, 10_000));
        let mut keepalives = 0u32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while keepalives < 3 && std::time::Instant::now() < deadline {
            s.idle_with(0, || keepalives += 1);
        }
        assert_eq!(keepalives, 3);
        assert!(s.is_parking());
        s.idle(3);
        assert!(!s.is_parking());
    }

    #[test]
    fn adaptive_new_orders_its_thresholds() {
        let a = Adaptive::new(10, 5, 0, 0);
        assert!(a.spin_ns <= a.yield_ns);
        assert!(1 <= a.park_ns_min && a.park_ns_min <= a.park_ns_max);
    }
}
