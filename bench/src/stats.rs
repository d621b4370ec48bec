//! Summary statistics over latency samples: percentiles (linear
//! interpolation between closest ranks, as numpy's default) and the mean.
//! Pure arithmetic on plain data; it knows nothing about what was measured.

use std::time::Duration;

/// p50/p99/mean of one series of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        Some(Summary {
            n: ms.len(),
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            min: ms[0],
            max: ms[ms.len() - 1],
        })
    }
}

/// The `p`th percentile (0-100) of `sorted` (ascending, non-empty),
/// interpolating linearly between the two closest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Rounds to three decimals (the precision reported in milliseconds).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!((percentile(&v, 50.0) - 50.5).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn summary_sorts_and_converts_to_ms() {
        let d = |us| Duration::from_micros(us);
        let s = Summary::of(&[d(3000), d(1000), d(2000)]).expect("samples");
        assert_eq!(s.n, 3);
        assert!((s.p50 - 2.0).abs() < 1e-9);
        assert!((s.mean - 2.0).abs() < 1e-9);
        assert_eq!((s.min, s.max), (1.0, 3.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn round3_keeps_three_decimals() {
        assert_eq!(round3(1.23456), 1.235);
        assert_eq!(round3(0.0004), 0.0);
    }
}
