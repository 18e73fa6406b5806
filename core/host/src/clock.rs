//! The engine's and the follower's clock: monotonic [`Time`] (milliseconds since start) and
//! wall-clock seconds, both read through the [`Runtime`], so a simulated runtime owns time.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use graspd_core::Time;

use crate::runtime::{unix_seconds, Runtime};

/// Maps [`Time`] (milliseconds since the clock was made) to the runtime's `Instant`s and back.
#[derive(Clone)]
pub struct Clock {
    start: Instant,
    runtime: Arc<dyn Runtime>,
}

impl Clock {
    pub fn new(runtime: Arc<dyn Runtime>) -> Clock {
        Clock {
            start: runtime.now(),
            runtime,
        }
    }

    pub fn now(&self) -> Time {
        let elapsed = self.runtime.now().saturating_duration_since(self.start);
        Time::from_millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn instant(&self, time: Time) -> Instant {
        self.start + Duration::from_millis(time.as_millis())
    }

    /// `duration` from now, as an `Instant` to sleep until.
    pub fn after(&self, duration: Duration) -> Instant {
        self.runtime.now() + duration
    }

    /// Seconds since the Unix epoch: purgatory deadlines survive restarts in this unit.
    pub fn unix_now(&self) -> u64 {
        unix_seconds(&*self.runtime)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock").field("now", &self.now()).finish()
    }
}
