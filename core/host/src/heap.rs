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
