//! What the generator reads about processes and CPUs from /proc, and percentiles.

/// CPU seconds and memory of a process, from /proc.
pub struct ProcStats {
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Bytes it caused to be written to storage (`write_bytes` in /proc/PID/io).
    pub disk_write_bytes: u64,
}

pub fn proc_stats(pid: u32) -> ProcStats {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu_s = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let io_field = |key: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    ProcStats {
        cpu_s,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        disk_write_bytes: io_field("write_bytes:"),
    }
}

/// Busy and total clock ticks of each CPU so far, from /proc/stat (empty where it is missing).
pub fn cpu_ticks() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            // idle and iowait are the 4th and 5th.
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Each CPU's busy share between two `cpu_ticks` readings, as "cpu0:71,cpu1:93" (percent).
pub fn cpu_busy(before: &[(u64, u64)], after: &[(u64, u64)]) -> String {
    before
        .iter()
        .zip(after)
        .enumerate()
        .map(|(i, ((b0, t0), (b1, t1)))| {
            let pct = 100 * (b1 - b0) / (t1 - t0).max(1);
            format!("cpu{i}:{pct}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The `q` quantile of sorted `values` (the default if empty).
pub fn percentile<T: Copy + Default>(values: &[T], q: f64) -> T {
    values
        .get(((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}
