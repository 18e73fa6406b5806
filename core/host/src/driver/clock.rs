//! The one place the host reads clocks for the engine: monotonic `Time` and wall-clock seconds.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graspd_core::Time;

/// Maps the engine's [`Time`] (milliseconds since start) to `Instant`s and back.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub fn instant(&self, time: Time) -> Instant {
        self.start + Duration::from_millis(time.as_millis())
    }

    /// Seconds since the Unix epoch: purgatory deadlines survive restarts in this unit.
    pub fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
