//! Mosquitto's `$SYS/broker/load/...` figures: per-minute rates of a counter, smoothed over 1,
//! 5 and 15 minutes the way Unix load averages are (an exponentially weighted moving average
//! updated at each `$SYS` tick).

use std::time::Duration;

/// The smoothing windows, in seconds, with the topic suffix of each.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// The smoothed rates of one counter.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// The counter at the previous tick; `None` before the first.
    last: Option<u64>,
    /// Per-minute rate smoothed over each window.
    averages: [f64; 3],
}

impl Load {
    /// Takes the counter's value `elapsed` after the previous tick.
    pub fn update(&mut self, value: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let Some(last) = self.last.replace(value) else {
            return;
        };
        if secs <= 0.0 {
            return;
        }
        let per_minute = value.saturating_sub(last) as f64 * 60.0 / secs;
        for (avg, (window, _)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-secs / window).exp();
            *avg = per_minute + keep * (*avg - per_minute);
        }
    }

    /// `(suffix, rate)` for each window, rates rounded to two decimals as Mosquitto prints.
    pub fn figures(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        WINDOWS
            .iter()
            .zip(self.averages)
            .map(|((_, name), avg)| (*name, format!("{avg:.2}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_converges_and_the_short_window_leads() {
        let mut l = Load::default();
        let tick = Duration::from_secs(10);
        // 100 per tick of 10 s = 600 per minute.
        for i in 0..=60u64 {
            l.update(i * 100, tick);
        }
        let f: Vec<f64> = l
            .figures()
            .map(|(_, v)| v.parse().expect("number"))
            .collect();
        assert!((f[0] - 600.0).abs() < 1.0, "1min {}", f[0]);
        assert!(f[1] < f[0] && f[2] < f[1], "longer windows lag: {f:?}");
        // Then silence: the 1-minute figure falls fastest.
        for _ in 0..6 {
            l.update(6000, tick);
        }
        let g: Vec<f64> = l
            .figures()
            .map(|(_, v)| v.parse().expect("number"))
            .collect();
        assert!(g[0] < 250.0 && g[0] < g[1], "after a quiet minute: {g:?}");
    }
}
