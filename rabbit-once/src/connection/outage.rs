//! An outage as the logs tell it: a warning at the first failed connection attempt, then at
//! most one per [`WARN_EVERY`] with the attempts since the last one, and a note once a session
//! is up again — so a connection that reaches no broker is never silent, and never floods the log.

use std::time::{Duration, Instant};

/// The least time between two warnings of one outage.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(30);

/// The failed attempts since the last session (or since the start).
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When the first attempt of this outage failed; `None` while there is no outage.
    since: Option<Instant>,
    /// Failed attempts in this outage.
    attempts: u32,
    /// Failed attempts not yet told in a warning.
    untold: u32,
    /// When the last warning was due.
    warned: Option<Instant>,
}

/// A warning due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Warning {
    /// Whether it is the outage's first.
    pub first: bool,
    /// Failed attempts since the last warning (this one included).
    pub attempts: u32,
    /// Failed attempts in the whole outage.
    pub total: u32,
    /// Time since the outage's first failed attempt.
    pub down_for: Duration,
}

/// The end of an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Failed attempts in the outage.
    pub attempts: u32,
    /// Time from its first failed attempt to the session that ended it.
    pub down_for: Duration,
}

impl Outage {
    /// One more attempt failed at `now`; a warning if one is due.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<Warning> {
        let since = *self.since.get_or_insert(now);
        self.attempts = self.attempts.saturating_add(1);
        self.untold = self.untold.saturating_add(1);
        let due = self
            .warned
            .is_none_or(|w| now.saturating_duration_since(w) >= WARN_EVERY);
        if !due {
            return None;
        }
        let warning = Warning {
            first: self.warned.is_none(),
            attempts: self.untold,
            total: self.attempts,
            down_for: now.saturating_duration_since(since),
        };
        self.warned = Some(now);
        self.untold = 0;
        Some(warning)
    }

    /// A session is up at `now`: the outage (if there was one) is over.
    pub(crate) fn recovered(&mut self, now: Instant) -> Option<Recovery> {
        let since = self.since?;
        let r = Recovery {
            attempts: self.attempts,
            down_for: now.saturating_duration_since(since),
        };
        *self = Outage::default();
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_warns_then_at_most_one_warning_per_interval() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut o = Outage::default();
        assert_eq!(
            o.failed(at(0)),
            Some(Warning {
                first: true,
                attempts: 1,
                total: 1,
                down_for: Duration::ZERO
            })
        );
        // 50 ms apart, for 29.95 s: quiet.
        for i in 1..600 {
            assert_eq!(o.failed(at(i * 50)), None, "attempt {i}");
        }
        let w = o.failed(at(30_000)).expect("due after 30 s");
        assert_eq!(
            w,
            Warning {
                first: false,
                attempts: 600,
                total: 601,
                down_for: Duration::from_secs(30)
            }
        );
        assert_eq!(o.failed(at(30_050)), None);
        assert_eq!(
            o.recovered(at(31_000)),
            Some(Recovery {
                attempts: 602,
                down_for: Duration::from_secs(31)
            })
        );
    }

    #[test]
    fn a_new_outage_starts_afresh_and_a_session_without_one_is_no_recovery() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.recovered(t0), None);
        o.failed(t0);
        o.recovered(t0 + Duration::from_secs(1));
        let w = o
            .failed(t0 + Duration::from_secs(2))
            .expect("a new outage warns at once");
        assert!(w.first);
        assert_eq!((w.attempts, w.total), (1, 1));
    }
}
