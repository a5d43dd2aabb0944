//! What the tool measures besides its own counters: wall-clock time shared by all its
//! processes, a server's RSS and CPU from `/proc`, its own CPU, and latency histograms.

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds up to this (one minute); anything slower is
/// clamped, which only matters for a broken run.
const MAX_MICROS: u64 = 60_000_000;

/// Nanoseconds since the Unix epoch: the publisher and the subscribers run in different
/// processes, so they need a clock that every process reads the same.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub fn histogram() -> Histogram<u64> {
    // Three significant digits over 1 µs..60 s: the usual HdrHistogram setting.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static histogram bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    let _ = h.record(micros.clamp(1, MAX_MICROS));
}

/// A histogram as `[[value, count], ...]`, so worker processes can hand theirs over.
pub fn histogram_to_json(h: &Histogram<u64>) -> serde_json::Value {
    h.iter_recorded()
        .map(|v| serde_json::json!([v.value_iterated_to(), v.count_at_value()]))
        .collect()
}

pub fn histogram_add_json(h: &mut Histogram<u64>, json: &serde_json::Value) {
    for pair in json.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            let _ = h.record_n(value.clamp(1, MAX_MICROS), count);
        }
    }
}

/// p50/p99/p99.9/max in milliseconds, as the report shows them.
pub fn percentiles_ms(h: &Histogram<u64>) -> [f64; 4] {
    if h.is_empty() {
        return [0.0; 4];
    }
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

/// Resident set size of a process in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU time of a process in seconds (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are fixed.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Sum over several processes (nginx has a master and workers).
pub fn total_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_kib(p)).sum()
}

pub fn total_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_secs(&p.to_string())).sum()
}

pub fn own_cpu_secs() -> f64 {
    cpu_secs("self").unwrap_or(0.0)
}
