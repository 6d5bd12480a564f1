//! What the benchmarks share: latencies and how they are shown.

use std::time::Duration;

/// Latencies of one figure.
pub struct Sample(pub Vec<Duration>);

impl Sample {
    pub fn at(&self, permille: usize) -> Duration {
        let mut all = self.0.clone();
        all.sort();
        all.get((all.len().max(1) - 1) * permille / 1000)
            .copied()
            .unwrap_or_default()
    }

    pub fn line(&self) -> String {
        format!(
            "p50 {:>8.2} ms   p99 {:>8.2} ms   min {:>8.2} ms   max {:>8.2} ms   (n = {})",
            ms(self.at(500)),
            ms(self.at(990)),
            ms(self.at(0)),
            ms(self.at(1000)),
            self.0.len()
        )
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
