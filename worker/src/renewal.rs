//! When a node renews its certificate: decided purely from the
//! certificate's validity and the clock, so it is tested without waiting.
//!
//! ```text
//!  not_before                 50%        80%                not_after
//!      |───────────────────────|──────────|──────────────────────|
//!                              └ renew at a random point ┘   last 10%: log errors
//!  failed: retry after 5 s, 10 s, 20 s … 5 min (never past not_after)
//! ```
//!
//! Why random: every node of a cluster is issued its certificate within a
//! few seconds at `init`/`join`; a fixed point would send them all to the
//! leader at once, every renewal period (Swarm picks the same window).

use std::time::Duration;

use time::OffsetDateTime;
use weft_proto::identity::CERT_BACKDATE;

/// Earliest point of the renewal window, as a fraction of the life.
pub const WINDOW_START: f64 = 0.5;
/// Latest point of the renewal window.
pub const WINDOW_END: f64 = 0.8;
/// Below this fraction of the life left, failures are logged as errors.
pub const LOUD_BELOW: f64 = 0.1;
/// First retry delay after a failed renewal; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(5);
/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// A random fraction of the life in the renewal window.
pub fn random_fraction() -> f64 {
    WINDOW_START + rand::random::<f64>() * (WINDOW_END - WINDOW_START)
}

/// When the certificate's life began: its `not_before` without the CA's
/// backdating ([`CERT_BACKDATE`]), unless the whole validity is shorter
/// than that (not one of weft's). Counting the backdating as life would put
/// the window of a short-lived certificate before it was even issued.
pub fn issued(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    if not_after - not_before > CERT_BACKDATE {
        not_before + CERT_BACKDATE
    } else {
        not_before
    }
}

/// The instant `fraction` of the way through the certificate's life
/// (from [`issued`]).
pub fn renew_at(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> OffsetDateTime {
    let start = issued(not_before, not_after);
    let life = (not_after - start).max(time::Duration::ZERO);
    start + life * fraction.clamp(0.0, 1.0)
}

/// How long to wait after the `failures`-th failed renewal in a row
/// (counting from 1), never past the certificate's expiry.
pub fn retry_after(failures: u32, now: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let backoff = RETRY_MIN.saturating_mul(1 << exp).min(RETRY_MAX);
    let left = Duration::try_from(not_after - now).unwrap_or(Duration::ZERO);
    backoff.min(left.max(Duration::from_secs(1)))
}

/// Whether less than [`LOUD_BELOW`] of the life is left at `now`.
pub fn nearly_expired(
    now: OffsetDateTime,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> bool {
    let life = not_after - issued(not_before, not_after);
    not_after - now < life * LOUD_BELOW
}

/// How long from `now` until `at` (zero if it has passed).
pub fn until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    #[test]
    fn renewal_falls_in_the_window() {
        for _ in 0..1000 {
            let f = random_fraction();
            assert!((WINDOW_START..=WINDOW_END).contains(&f), "{f}");
            // Issued at 0, backdated as weft's CA does.
            let at = renew_at(t(-CERT_BACKDATE.whole_seconds()), t(1000), f);
            assert!(at >= t(500) && at <= t(800), "{at}");
        }
        assert_eq!(renew_at(t(-200), t(1100), 0.5), t(600));
        // A certificate with no life left renews at once.
        assert_eq!(renew_at(t(10), t(5), 0.7), t(10));
    }

    #[test]
    fn the_backdating_is_not_life() {
        let backdate = CERT_BACKDATE.whole_seconds();
        // A 1 h certificate issued at 0 (valid from -5 min): 50% is 30 min.
        assert_eq!(renew_at(t(-backdate), t(3600), 0.5), t(1800));
        // A 30 s one (tests): the window is 15-24 s after issue, not in
        // the past.
        assert_eq!(renew_at(t(-backdate), t(30), 0.5), t(15));
        assert_eq!(renew_at(t(-backdate), t(30), 0.8), t(24));
        assert!(nearly_expired(t(3300), t(-backdate), t(3600)));
        assert!(!nearly_expired(t(3200), t(-backdate), t(3600)));
    }

    #[test]
    fn retries_back_off_and_never_wait_past_expiry() {
        let now = t(0);
        let far = t(1_000_000);
        assert_eq!(retry_after(1, now, far), Duration::from_secs(5));
        assert_eq!(retry_after(2, now, far), Duration::from_secs(10));
        assert_eq!(retry_after(4, now, far), Duration::from_secs(40));
        assert_eq!(retry_after(10, now, far), RETRY_MAX);
        assert_eq!(retry_after(u32::MAX, now, far), RETRY_MAX);
        assert_eq!(retry_after(10, now, t(30)), Duration::from_secs(30));
        // Expired already: keep trying every second.
        assert_eq!(retry_after(3, t(50), t(30)), Duration::from_secs(1));
    }

    #[test]
    fn loud_in_the_last_tenth() {
        let from = t(-CERT_BACKDATE.whole_seconds());
        assert!(!nearly_expired(t(899), from, t(1000)));
        assert!(nearly_expired(t(901), from, t(1000)));
        assert!(nearly_expired(t(2000), from, t(1000)));
        assert_eq!(until(t(5), t(3)), Duration::ZERO);
        assert_eq!(until(t(3), t(5)), Duration::from_secs(2));
    }
}
