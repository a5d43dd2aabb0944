//! Server-side throughput estimate for `rate_per_second` and `eta_seconds`.
//!
//! Keeps the last few `(time, processed)` samples inside a sliding window and divides
//! the distance covered by the time it took. A drop in `processed` (a job entering a new
//! phase) starts the estimate afresh rather than reporting a negative rate.
//!
//! Kept samples stand at least [`MIN_GAP_MS`] apart (a report sooner than that replaces
//! the newest sample), so that a producer reporting every few milliseconds still spans
//! enough time for a rate within its first second, instead of filling the few samples
//! with a span too short to measure.

use std::collections::VecDeque;

/// Samples older than this do not count: the rate follows the recent pace.
const WINDOW_MS: u64 = 30_000;
/// Enough samples to smooth jitter, few enough to stay small per task.
const MAX_SAMPLES: usize = 16;
/// Below this span a rate is mostly noise.
const MIN_SPAN_MS: u64 = 250;
/// Closest spacing of kept samples (the newest excepted).
const MIN_GAP_MS: u64 = 100;

#[derive(Debug, Default, Clone)]
pub struct RateEstimator {
    samples: VecDeque<(u64, u64)>,
}

impl RateEstimator {
    pub fn record(&mut self, now_ms: u64, processed: u64) {
        if let Some(&(_, last)) = self.samples.back() {
            if processed < last {
                self.samples.clear();
            }
        }
        let len = self.samples.len();
        let close = len >= 2 && now_ms.saturating_sub(self.samples[len - 2].0) < MIN_GAP_MS;
        if close {
            self.samples.pop_back();
        }
        self.samples.push_back((now_ms, processed));
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        while let Some(&(t, _)) = self.samples.front() {
            if now_ms.saturating_sub(t) > WINDOW_MS && self.samples.len() > 2 {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Items per second, rounded to two decimals; `None` until there is a span to measure.
    pub fn per_second(&self) -> Option<f64> {
        let (&(t0, p0), &(t1, p1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.checked_sub(t0)?;
        if span < MIN_SPAN_MS {
            return None;
        }
        let rate = (p1 - p0) as f64 * 1000.0 / span as f64;
        Some((rate * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_pace_gives_its_rate() {
        let mut r = RateEstimator::default();
        for i in 0..10 {
            r.record(1_000 + i * 500, i * 5);
        }
        assert_eq!(r.per_second(), Some(10.0));
    }

    #[test]
    fn reports_every_few_milliseconds_give_a_rate_within_the_first_second() {
        let mut r = RateEstimator::default();
        let mut first_rate_at = None;
        for i in 0..200 {
            let now = 1_000 + i * 5;
            r.record(now, i * 2);
            if first_rate_at.is_none() && r.per_second().is_some() {
                first_rate_at = Some(now - 1_000);
            }
        }
        assert!(
            first_rate_at.is_some_and(|t| t < 1_000),
            "{first_rate_at:?}"
        );
        assert_eq!(r.per_second(), Some(400.0));
    }

    #[test]
    fn unknown_until_a_span_exists_and_reset_on_a_new_phase() {
        let mut r = RateEstimator::default();
        r.record(1_000, 10);
        assert_eq!(r.per_second(), None);
        r.record(2_000, 20);
        assert_eq!(r.per_second(), Some(10.0));
        r.record(3_000, 0);
        assert_eq!(r.per_second(), None);
    }
}
