//! Small measuring helpers the bench and the stress run share: settings from
//! the environment, quantiles and their confidence intervals, and a
//! process's resident memory.

/// `$name` parsed, or `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 95 % confidence interval for the median of `values`: the 2.5th and
/// 97.5th percentiles of the medians of 2,000 resamples (with
/// replacement), drawn from a fixed seed so the same samples always give
/// the same interval. NaNs when there are no values.
pub fn median_interval(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    // xorshift64: enough randomness for resampling, and no dependency.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let mut medians = Vec::with_capacity(RESAMPLES);
    let mut resample = vec![0.0; values.len()];
    for _ in 0..RESAMPLES {
        for slot in resample.iter_mut() {
            *slot = values[next(values.len())];
        }
        medians.push(quantile(&resample, 0.5));
    }
    (quantile(&medians, 0.025), quantile(&medians, 0.975))
}

/// How many resamples [`median_interval`] draws.
const RESAMPLES: usize = 2000;

/// The `q` quantile (0..=1) of `values`, interpolated between neighbours;
/// NaN when there are none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    let weight = position - low as f64;
    let at = |i: usize| sorted.get(i).copied().unwrap_or(f64::NAN);
    at(low) * (1.0 - weight) + at(high) * weight
}

/// A process's resident memory in KiB (`VmRSS` in /proc), or `None` once
/// it has gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_interval_holds_the_median_and_narrows_with_samples() {
        let few: Vec<f64> = (0..10).map(|i| 1.0 + f64::from(i % 5) * 0.02).collect();
        let many: Vec<f64> = (0..200).map(|i| 1.0 + f64::from(i % 5) * 0.02).collect();
        let (low, high) = median_interval(&few);
        assert!(low <= quantile(&few, 0.5) && quantile(&few, 0.5) <= high);
        let (many_low, many_high) = median_interval(&many);
        assert!(many_high - many_low <= high - low);
        assert_eq!(
            median_interval(&few),
            (low, high),
            "the same samples, the same interval"
        );
        assert!(median_interval(&[]).0.is_nan());
    }
}
