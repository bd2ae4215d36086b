//! Exponential backoff with jitter: a small value type, unit-tested with plain numbers.

use std::time::Duration;

/// Delays between attempts: `min · 2^attempt`, capped at `max`, minus up to `jitter` of itself.
///
/// `jitter` is a fraction in `0.0..=1.0`: with 0.5 a 4 s step becomes a random delay in 2..4 s,
/// so many clients cut off together do not reconnect in lock step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (default 100 ms).
    pub min: Duration,
    /// The longest delay (default 10 s).
    pub max: Duration,
    /// The fraction of each delay that is random, `0.0..=1.0` (default 0.5).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`, with `jitter` (clamped to `0.0..=1.0` when used).
    pub fn new(min: Duration, max: Duration, jitter: f64) -> Self {
        Backoff { min, max, jitter }
    }

    /// The delay before attempt `attempt` (0-based), given a random number `r` in `0.0..1.0`.
    pub fn delay_with(&self, attempt: u32, r: f64) -> Duration {
        let base = self
            .min
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max)
            .min(self.max)
            .max(self.min.min(self.max));
        let jitter = self.jitter.clamp(0.0, 1.0) * r.clamp(0.0, 1.0);
        base.mul_f64(1.0 - jitter)
    }

    /// The delay before attempt `attempt` (0-based), with fresh randomness.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.min > self.max {
            return Err(format!(
                "backoff min {:?} is larger than max {:?}",
                self.min, self.max
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!("backoff jitter {} is not in 0..=1", self.jitter));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(ms(100), ms(1000), 0.0);
        let d: Vec<_> = (0..6).map(|a| b.delay_with(a, 0.7)).collect();
        assert_eq!(d, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(
            b.delay_with(1000, 0.0),
            ms(1000),
            "no overflow on huge attempts"
        );
    }

    #[test]
    fn jitter_subtracts_a_fraction() {
        let b = Backoff::new(ms(1000), ms(1000), 0.5);
        assert_eq!(b.delay_with(0, 0.0), ms(1000));
        assert_eq!(b.delay_with(0, 1.0), ms(500));
        assert_eq!(b.delay_with(0, 0.5), ms(750));
        for _ in 0..100 {
            let d = b.delay(3);
            assert!(d >= ms(500) && d <= ms(1000), "{d:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(Backoff::new(ms(2), ms(1), 0.1).validate().is_err());
        assert!(Backoff::new(ms(1), ms(2), 1.5).validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }
}
