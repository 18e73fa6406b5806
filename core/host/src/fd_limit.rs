//! Fitting the WebSocket cap into the process's open-file limit: every WebSocket holds a file
//! descriptor, and a server whose descriptors are all held by idle WebSockets cannot accept
//! anyone, nor open its store, pipes to git or outbound connections.

/// The WebSocket cap to use: `configured`, lowered so that at least a quarter of the open-file
/// limit (and at least [`RESERVED_MIN`]) stays free for everything else. The soft limit is
/// raised to the hard limit first, as far as the OS allows.
pub fn websockets_that_fit(configured: usize) -> usize {
    let Some(files) = raise_open_file_limit() else {
        return configured;
    };
    let reserved = (files / 4).max(RESERVED_MIN);
    let fits = files.saturating_sub(reserved);
    if configured > fits {
        tracing::warn!(
            open_file_limit = files,
            configured,
            using = fits,
            "--max-websockets lowered to fit the open-file limit (raise it with `ulimit -n`)"
        );
        fits
    } else {
        configured
    }
}

/// Descriptors always kept for the store, git processes, HTTP requests and the follower.
const RESERVED_MIN: usize = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force.
#[cfg(unix)]
fn raise_open_file_limit() -> Option<usize> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<usize> {
    None
}
