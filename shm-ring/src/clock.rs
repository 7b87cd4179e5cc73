//! The ring clock: nanoseconds on one time base shared by every process
//! that maps a ring.
//!
//! On x86-64 with an invariant TSC (`constant_tsc` and `nonstop_tsc`) the
//! clock reads the TSC (about 7 ns here, no syscall) and converts it with a
//! calibration measured once against `CLOCK_MONOTONIC`. The calibration is
//! stored in every ring header; a process that opens a ring before it ever
//! read the clock adopts the ring's calibration, so publisher timestamps and
//! subscriber `now_ns()` agree exactly across processes. A process that read
//! the clock (or created a ring) first keeps its own calibration, which
//! agrees with other processes to within the calibration error (about a
//! microsecond, plus a drift of a few ppm).
//!
//! Without an invariant TSC the clock is `CLOCK_MONOTONIC` (the calibration's
//! `mult` is 0 then).

/// Conversion from TSC ticks to nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// TSC value at `ns_base`.
    pub tsc_base: u64,
    /// CLOCK_MONOTONIC nanoseconds at `tsc_base`.
    pub ns_base: u64,
    /// Nanoseconds per tick as 32.32 fixed point; 0 means "read CLOCK_MONOTONIC".
    pub mult: u64,
}

/// Sane bounds for a stored calibration: 0.1 to 10 ticks per ns (100 MHz..10 GHz).
pub const CLOCK_MULT_MIN: u64 = (1 << 32) / 10;
pub const CLOCK_MULT_MAX: u64 = 10 << 32;

impl Calibration {
    /// True when a calibration read from a ring file is usable.
    pub fn is_valid(&self) -> bool {
        self.mult == 0 || (CLOCK_MULT_MIN..=CLOCK_MULT_MAX).contains(&self.mult)
    }

    #[cfg(any(test, not(loom)))]
    #[inline(always)]
    fn convert(&self, tsc: u64) -> u64 {
        let delta = tsc.wrapping_sub(self.tsc_base);
        // A TSC read on another core may be a few ticks behind the base.
        if delta > (1 << 62) {
            return self.ns_base;
        }
        self.ns_base
            .wrapping_add(((u128::from(delta) * u128::from(self.mult)) >> 32) as u64)
    }
}

#[cfg(not(loom))]
mod imp {
    use super::Calibration;
    use std::sync::OnceLock;

    static CALIBRATION: OnceLock<Calibration> = OnceLock::new();

    /// Ring-clock nanoseconds.
    #[inline]
    pub fn now_ns() -> u64 {
        let c = CALIBRATION.get_or_init(calibrate);
        if c.mult == 0 {
            return monotonic_ns();
        }
        c.convert(rdtsc())
    }

    /// The calibration this process uses (measuring it on first use).
    pub fn calibration() -> Calibration {
        *CALIBRATION.get_or_init(calibrate)
    }

    /// Use `c` (read from a ring header) unless this process already has one.
    /// Returns true when adopted or identical.
    pub fn adopt(c: Calibration) -> bool {
        *CALIBRATION.get_or_init(|| c) == c
    }

    #[inline(always)]
    fn rdtsc() -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no memory effects; x86-64 always has it.
            unsafe { core::arch::x86_64::_rdtsc() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            monotonic_ns()
        }
    }

    /// CLOCK_MONOTONIC in nanoseconds.
    pub fn monotonic_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0, "CLOCK_MONOTONIC is always available on Linux");
        (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn tsc_is_invariant() -> bool {
        if !cfg!(target_arch = "x86_64") {
            return false;
        }
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return false;
        };
        info.lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| {
                let flags: Vec<&str> = l.split_whitespace().collect();
                flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
            })
            .unwrap_or(false)
    }

    /// One (tsc, monotonic ns) sample, bracketed tightly: of several tries,
    /// the one with the fewest ticks between the two TSC reads wins.
    fn sample() -> (u64, u64) {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..32 {
            let a = rdtsc();
            let ns = monotonic_ns();
            let b = rdtsc();
            let width = b.wrapping_sub(a);
            if width < best.0 {
                best = (width, a + width / 2, ns);
            }
        }
        (best.1, best.2)
    }

    fn calibrate() -> Calibration {
        if !tsc_is_invariant() {
            return Calibration {
                tsc_base: 0,
                ns_base: 0,
                mult: 0,
            };
        }
        let (t0, n0) = sample();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, n1) = sample();
        let ticks = t1.wrapping_sub(t0);
        let ns = n1.saturating_sub(n0);
        if ticks == 0 || ns == 0 {
            return Calibration {
                tsc_base: 0,
                ns_base: 0,
                mult: 0,
            };
        }
        let mult = ((u128::from(ns) << 32) / u128::from(ticks)) as u64;
        let c = Calibration {
            tsc_base: t0,
            ns_base: n0,
            mult,
        };
        if c.is_valid() {
            c
        } else {
            Calibration {
                tsc_base: 0,
                ns_base: 0,
                mult: 0,
            }
        }
    }
}

#[cfg(loom)]
mod imp {
    use super::Calibration;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Under loom time stands still at a value the model sets.
    static NOW_NS: AtomicU64 = AtomicU64::new(0);

    pub fn now_ns() -> u64 {
        NOW_NS.load(Ordering::Relaxed)
    }

    /// Loom models: set the ring clock (before spawning threads).
    pub fn set_model_now_ns(ns: u64) {
        NOW_NS.store(ns, Ordering::Relaxed)
    }

    pub fn calibration() -> Calibration {
        Calibration {
            tsc_base: 0,
            ns_base: 0,
            mult: 0,
        }
    }

    pub fn adopt(_c: Calibration) -> bool {
        true
    }
}

#[cfg(not(loom))]
pub use imp::monotonic_ns;
#[cfg(loom)]
pub use imp::set_model_now_ns;
pub use imp::{adopt, calibration, now_ns};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_tracks_monotonic_time() {
        // Bracket each ring-clock read by monotonic reads, so preemption
        // widens the allowed interval instead of failing the test.
        let bracket = || (monotonic_ns(), now_ns(), monotonic_ns());
        let (m0a, a, m0b) = bracket();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (m1a, b, m1b) = bracket();
        assert!(b > a);
        let (lo, hi) = (m1a.saturating_sub(m0b), m1b - m0a);
        let d = b - a;
        // Same rate within 1% (plus the bracket width).
        assert!(
            d * 100 >= lo * 99 && d * 100 <= hi * 101,
            "ring {d} ns, monotonic {lo}..={hi} ns"
        );
    }

    #[test]
    fn convert_never_goes_below_base() {
        let c = Calibration {
            tsc_base: 1000,
            ns_base: 5,
            mult: 1 << 32,
        };
        assert_eq!(c.convert(999), 5);
        assert_eq!(c.convert(1010), 15);
    }
}
