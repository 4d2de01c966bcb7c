//! The verdict of a health check over its results, decided purely
//! (Docker's rules, `daemon/health.go`):
//!
//! ```text
//!              pass                         pass
//!  starting ─────────▶ healthy ◀───────────────────────── unhealthy
//!     │                   │ `retries` failures in a row       ▲
//!     │                   └───────────────────────────────────┘
//!     └── `retries` failures in a row, not counting those within the
//!         start period while no check has passed yet ────────▶ unhealthy
//! ```
//!
//! One success makes the task healthy and clears the streak; a timeout is
//! a failure. The first check runs one interval after the start, the next
//! one interval after the previous one ended.

use std::time::Duration;

/// What a task's checks have decided so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// No check has decided yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It exited 0.
    Pass,
    /// It exited non-zero, could not run, or ran past its timeout.
    Fail,
}

/// The state of one task's checks.
#[derive(Clone, Debug)]
pub struct Machine {
    retries: u32,
    start_period: Duration,
    health: Health,
    streak: u32,
}

impl Machine {
    /// A task whose checks have not run yet.
    pub fn new(retries: u32, start_period: Duration) -> Self {
        Machine {
            retries: retries.max(1),
            start_period,
            health: Health::Starting,
            streak: 0,
        }
    }

    /// The verdict now.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Failures in a row that counted.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Takes the result of a check that started `since_start` after the
    /// task did; returns the new verdict when it changed.
    pub fn observe(&mut self, outcome: Outcome, since_start: Duration) -> Option<Health> {
        let before = self.health;
        match outcome {
            Outcome::Pass => {
                self.streak = 0;
                self.health = Health::Healthy;
            }
            Outcome::Fail => {
                let grace = self.health == Health::Starting && since_start < self.start_period;
                if !grace {
                    self.streak = self.streak.saturating_add(1);
                    if self.streak >= self.retries {
                        self.health = Health::Unhealthy;
                    }
                }
            }
        }
        (self.health != before).then_some(self.health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Fail, Pass};

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn retries_failures_in_a_row_make_it_unhealthy_one_pass_heals() {
        let mut m = Machine::new(3, Duration::ZERO);
        assert_eq!(m.health(), Health::Starting);
        assert_eq!(m.observe(Fail, S), None);
        assert_eq!(m.observe(Fail, 2 * S), None);
        assert_eq!(m.observe(Fail, 3 * S), Some(Health::Unhealthy));
        assert_eq!(m.observe(Fail, 4 * S), None, "stays unhealthy");
        assert_eq!(m.observe(Pass, 5 * S), Some(Health::Healthy));
        assert_eq!(m.streak(), 0);
        // A pass in between starts the count again.
        assert_eq!(m.observe(Fail, 6 * S), None);
        assert_eq!(m.observe(Fail, 7 * S), None);
        assert_eq!(m.observe(Pass, 8 * S), None);
        assert_eq!(m.observe(Fail, 9 * S), None);
        assert_eq!(m.observe(Fail, 10 * S), None);
        assert_eq!(m.health(), Health::Healthy);
        assert_eq!(m.observe(Fail, 11 * S), Some(Health::Unhealthy));
    }

    #[test]
    fn the_first_pass_decides_starting() {
        let mut m = Machine::new(3, Duration::ZERO);
        assert_eq!(m.observe(Pass, S), Some(Health::Healthy));
        assert_eq!(m.observe(Pass, 2 * S), None);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_until_a_pass() {
        let mut m = Machine::new(1, 10 * S);
        for t in 1..10 {
            assert_eq!(m.observe(Fail, t * S), None, "{t} s: in the start period");
        }
        assert_eq!(m.streak(), 0);
        assert_eq!(m.observe(Fail, 10 * S), Some(Health::Unhealthy));

        // Once healthy, the start period no longer shields failures.
        let mut m = Machine::new(1, 10 * S);
        assert_eq!(m.observe(Pass, S), Some(Health::Healthy));
        assert_eq!(m.observe(Fail, 2 * S), Some(Health::Unhealthy));
    }

    #[test]
    fn zero_retries_means_one() {
        let mut m = Machine::new(0, Duration::ZERO);
        assert_eq!(m.observe(Fail, S), Some(Health::Unhealthy));
    }
}
