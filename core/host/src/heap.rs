//! Handing freed heap memory back to the kernel after a burst of short-lived allocations.

/// Returns the allocator's free pages to the kernel. glibc's malloc keeps what is freed in
/// its arenas for reuse, so after the start-up restore (every waiting event's JSON parsed,
/// then dropped) the process would keep that peak as resident memory for its whole life.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// When to hand freed memory back after a burst of store writes: once writes have stopped for
/// a tick (the burst is over, its parsed events and frames freed) and at least `min_writes`
/// came since the last time. A trim walks the whole heap, so it is not done while writes go
/// on, nor after a handful.
#[derive(Debug)]
pub struct BurstTrim {
    min_writes: u64,
    last_seen: u64,
    at_last_trim: u64,
}

impl BurstTrim {
    pub fn new(min_writes: u64) -> BurstTrim {
        BurstTrim {
            min_writes,
            last_seen: 0,
            at_last_trim: 0,
        }
    }

    /// Called once per tick with the store writes so far; true when it is time to trim.
    pub fn tick(&mut self, writes: u64) -> bool {
        let quiet = writes == self.last_seen;
        self.last_seen = writes;
        if quiet && writes.saturating_sub(self.at_last_trim) >= self.min_writes {
            self.at_last_trim = writes;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_after_a_burst_is_over_and_not_during_it() {
        let mut trim = BurstTrim::new(1000);
        assert!(!trim.tick(600), "writes still coming");
        assert!(!trim.tick(1500), "writes still coming");
        assert!(trim.tick(1500), "quiet after 1,500 writes");
        assert!(!trim.tick(1500), "nothing since the last trim");
        assert!(!trim.tick(1600));
        assert!(!trim.tick(1600), "only 100 writes since the last trim");
    }
}
