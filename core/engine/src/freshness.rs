//! The `created_at` window: an event dated far ahead of this server's clock is refused, since
//! it would win every replaceable-event comparison (NIP-01: newer `created_at` wins) and sort
//! first in every query for years. Old timestamps are fine: synced history is old.

use std::time::Duration;

/// `Ok` unless `created_at` (unix seconds) is more than `max_future_skew` ahead of
/// `unix_now`; the error is the complete `OK` message.
pub fn check_created_at(
    created_at: u64,
    unix_now: u64,
    max_future_skew: Duration,
) -> Result<(), String> {
    let ahead = created_at.saturating_sub(unix_now);
    if ahead <= max_future_skew.as_secs() {
        return Ok(());
    }
    Err(format!(
        "invalid: created_at is {} in the future (this server accepts at most {} ahead of its \
         clock); check your device's clock",
        describe(ahead),
        describe(max_future_skew.as_secs())
    ))
}

/// Seconds as the largest whole unit that fits, e.g. `15 minutes`, `100 years`.
fn describe(seconds: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (365 * 24 * 3600, "year"),
        (24 * 3600, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    let (size, name) = UNITS
        .into_iter()
        .find(|(size, _)| seconds >= *size)
        .unwrap_or((1, "second"));
    let count = seconds / size;
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {name}{plural}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;
    const SKEW: Duration = Duration::from_secs(15 * 60);

    #[test]
    fn the_past_and_the_allowed_skew_are_accepted() {
        for created_at in [0, 1, NOW - 50 * 365 * 24 * 3600, NOW, NOW + 900] {
            assert_eq!(
                check_created_at(created_at, NOW, SKEW),
                Ok(()),
                "{created_at}"
            );
        }
    }

    #[test]
    fn beyond_the_skew_is_refused_with_how_far() {
        let cases = [
            (NOW + 901, "15 minutes in the future"),
            (NOW + 100 * 365 * 24 * 3600, "100 years in the future"),
            (u64::MAX, "years in the future"),
        ];
        for (created_at, says) in cases {
            let refused = check_created_at(created_at, NOW, SKEW).unwrap_err();
            assert!(refused.starts_with("invalid: created_at is "), "{refused}");
            assert!(refused.contains(says), "{refused}");
            assert!(refused.contains("at most 15 minutes ahead"), "{refused}");
        }
    }

    #[test]
    fn a_zero_skew_allows_only_now_and_before() {
        assert!(check_created_at(NOW, NOW, Duration::ZERO).is_ok());
        let refused = check_created_at(NOW + 1, NOW, Duration::ZERO).unwrap_err();
        assert!(refused.contains("1 second in the future"), "{refused}");
    }
}
