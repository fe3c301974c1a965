//! Injected clocks (DESIGN convention 8): control code asks a [`Clock`] for the time and to
//! wait, so tests and stepped replay run on a [`ManualClock`] without wall-clock time.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time in nanoseconds and a way to wait for a later time.
pub trait Clock: Debug + Send + Sync {
    /// Now, in nanoseconds since this clock's epoch.
    fn now_ns(&self) -> u64;

    /// Returns once `now_ns() >= deadline_ns` (a manual clock jumps there).
    fn sleep_until_ns(&self, deadline_ns: u64);
}

/// Wall-clock time (nanoseconds since the Unix epoch) for stamps, with monotonic waits.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin_wall_ns: u64,
    origin: Instant,
}

impl SystemClock {
    /// Reads the wall clock once; later readings advance it monotonically.
    #[must_use]
    pub fn new() -> Self {
        let origin_wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            origin_wall_ns,
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.origin_wall_ns.saturating_add(since)
    }

    fn sleep_until_ns(&self, deadline_ns: u64) {
        let now = self.now_ns();
        if deadline_ns > now {
            std::thread::sleep(Duration::from_nanos(deadline_ns - now));
        }
    }
}

/// A clock that moves only when told to; `sleep_until_ns` jumps forward. Clones share time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at `start_ns`.
    #[must_use]
    pub fn new(start_ns: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start_ns)),
        }
    }

    /// Moves the clock forward by `delta_ns`.
    pub fn advance(&self, delta_ns: u64) {
        self.now.fetch_add(delta_ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until_ns(&self, deadline_ns: u64) {
        self.now.fetch_max(deadline_ns, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_forward() {
        let c = ManualClock::new(10);
        c.advance(5);
        assert_eq!(c.now_ns(), 15);
        c.sleep_until_ns(100);
        assert_eq!(c.now_ns(), 100);
        c.sleep_until_ns(50);
        assert_eq!(c.now_ns(), 100);
        let shared = c.clone();
        shared.advance(1);
        assert_eq!(c.now_ns(), 101);
    }

    #[test]
    fn system_clock_is_monotone_and_sleeps() {
        let c = SystemClock::new();
        let a = c.now_ns();
        c.sleep_until_ns(a + 2_000_000);
        let b = c.now_ns();
        assert!(b >= a + 2_000_000, "{a} {b}");
        assert!(a > 1_600_000_000_000_000_000, "epoch-based: {a}");
    }
}
