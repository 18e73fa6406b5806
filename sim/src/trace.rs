//! The run's trace: one readable line per thing that happened, and a hash over all of them.
//!
//! Two runs of one seed must produce the same hash (`--check-determinism`). The hash is FNV-1a
//! 64 over the line bytes, so it is portable. Lines never contain signatures (the simulator
//! does not sign) nor anything whose value depends on memory addresses or hash-map order.

use std::fmt;
use std::io::Write;

use graspd_core::Time;

/// How much of the trace is kept or shown.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TraceMode {
    /// Hash only (swarm runs).
    Quiet,
    /// Keep the last lines in a ring, to show on failure.
    Tail,
    /// Print every line to stdout as it happens (`--seed N`).
    Print,
}

pub struct Trace {
    mode: TraceMode,
    hash: u64,
    lines: u64,
    tail: std::collections::VecDeque<String>,
}

/// Lines kept for a failure report in `Tail` mode.
const TAIL_LINES: usize = 60;

impl Trace {
    pub fn new(mode: TraceMode) -> Trace {
        Trace {
            mode,
            hash: 0xcbf2_9ce4_8422_2325,
            lines: 0,
            tail: std::collections::VecDeque::new(),
        }
    }

    pub fn log(&mut self, now: Time, args: fmt::Arguments<'_>) {
        let line = format!("{now} {args}");
        for b in line.as_bytes().iter().chain(b"\n") {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.lines += 1;
        match self.mode {
            TraceMode::Quiet => {}
            TraceMode::Tail => {
                if self.tail.len() == TAIL_LINES {
                    self.tail.pop_front();
                }
                self.tail.push_back(line);
            }
            TraceMode::Print => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn line_count(&self) -> u64 {
        self.lines
    }

    pub fn mode(&self) -> TraceMode {
        self.mode
    }

    /// The last lines (Tail mode), oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }
}

/// `trace!(trace, now, "fmt", args..)`
#[macro_export]
macro_rules! trace {
    ($trace:expr, $now:expr, $($arg:tt)*) => {
        $trace.log($now, format_args!($($arg)*))
    };
}
