//! Benchmarks run by `twinmq bench`: each measures a twinmq figure beside the
//! physical floor measured in the same run on the same directory, and reports
//! the ratio, because the machines these run on are shared and noisy.

pub mod broker;
pub mod journal;
pub mod replicated;
pub mod suite;

use hdrhistogram::Histogram;
use std::time::Duration;

/// A latency recorder with microsecond summaries.
#[derive(Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // 1 ns .. 100 s at 3 significant figures.
            histogram: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds"),
        }
    }
}

impl Latency {
    pub fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(nanos);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("same histogram bounds");
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The `quantile` (0..=1) in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// `value / floor`, or 0 when the floor is missing.
pub fn ratio(value: f64, floor: f64) -> f64 {
    if floor > 0.0 { value / floor } else { 0.0 }
}
