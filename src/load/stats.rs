//! What a load run measured: per operation, a latency histogram
//! (HdrHistogram, microseconds, 3 significant digits) and the answers by
//! status; a window of the last seconds for the live view. Pure: the
//! scheduler records, the reporters read.

use super::mix::Op;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// Latencies up to a minute; longer ones are recorded as a minute.
const MAX_MICROS: u64 = 60_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// One operation's figures.
#[derive(Debug, Clone)]
pub struct OpStats {
    pub latency: Histogram<u64>,
    /// Answers by HTTP status; 0 for a transport error (no answer).
    pub statuses: BTreeMap<u16, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency: histogram(),
            statuses: BTreeMap::new(),
        }
    }
}

impl OpStats {
    pub fn count(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ops: BTreeMap<Op, OpStats>,
    /// Requests not sent: the concurrency cap was reached at their time.
    pub over_cap: u64,
}

impl Stats {
    /// One answer (`status` 0: none) `latency` after its scheduled time.
    pub fn record(&mut self, op: Op, status: u16, latency: Duration) {
        let stats = self.ops.entry(op).or_default();
        *stats.statuses.entry(status).or_default() += 1;
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        stats.latency.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &Stats) {
        for (op, theirs) in &other.ops {
            let ours = self.ops.entry(*op).or_default();
            ours.latency.add(&theirs.latency).expect("same bounds");
            for (status, n) in &theirs.statuses {
                *ours.statuses.entry(*status).or_default() += n;
            }
        }
        self.over_cap += other.over_cap;
    }

    pub fn count(&self) -> u64 {
        self.ops.values().map(OpStats::count).sum()
    }

    pub fn errors(&self) -> u64 {
        self.ops.values().map(OpStats::errors).sum()
    }

    /// Errors (and requests not sent) over everything scheduled.
    pub fn error_rate(&self) -> f64 {
        let scheduled = self.count() + self.over_cap;
        if scheduled == 0 {
            return 0.0;
        }
        (self.errors() + self.over_cap) as f64 / scheduled as f64
    }

    /// Every operation's latencies together.
    pub fn all_latencies(&self) -> Histogram<u64> {
        let mut all = histogram();
        for stats in self.ops.values() {
            all.add(&stats.latency).expect("same bounds");
        }
        all
    }

    /// Errors by status, `503×4 0×1`.
    pub fn errors_by_status(&self) -> String {
        let mut by: BTreeMap<u16, u64> = BTreeMap::new();
        for stats in self.ops.values() {
            for (s, n) in &stats.statuses {
                if !(200..300).contains(s) {
                    *by.entry(*s).or_default() += n;
                }
            }
        }
        let parts: Vec<String> = by
            .iter()
            .map(|(s, n)| match s {
                0 => format!("no-answer×{n}"),
                s => format!("{s}×{n}"),
            })
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// One progress line: `t=5.0s sent=1000 done=998 rate=199.6/s errors=none
/// p50=1.2ms p99=4.5ms over_cap=0`: requests sent, answered (or failed),
/// the answer rate, and p50/p99 of `window` (the last seconds).
pub fn progress_line(
    elapsed: Duration,
    sent: u64,
    over_cap: u64,
    total: &Stats,
    window: &Stats,
) -> String {
    let last = window.all_latencies();
    let secs = elapsed.as_secs_f64();
    let (p50, p99) = if last.is_empty() {
        ("-".to_owned(), "-".to_owned())
    } else {
        (
            format!("{:.1}ms", ms(last.value_at_quantile(0.50))),
            format!("{:.1}ms", ms(last.value_at_quantile(0.99))),
        )
    };
    format!(
        "t={secs:.1}s sent={sent} done={} rate={:.1}/s errors={} p50={p50} p99={p99} over_cap={over_cap}",
        total.count(),
        total.count() as f64 / secs.max(1e-9),
        total.errors_by_status(),
    )
}

/// The closing table: per operation, count, errors by status and
/// p50/p90/p99/max; then the totals: requests sent per second of the
/// schedule's `span`, and how long the last answers took after it
/// (`elapsed` is from the first due time to the last answer).
pub fn summary(stats: &Stats, span: Duration, elapsed: Duration, target_rate: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}  errors by status",
        "operation", "count", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    let row =
        |out: &mut String, name: &str, h: &Histogram<u64>, count: u64, errors: u64, by: &str| {
            let q = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    ms(h.value_at_quantile(q))
                }
            };
            let _ = writeln!(
                out,
                "{name:<16} {count:>8} {errors:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}  {by}",
                q(0.50),
                q(0.90),
                q(0.99),
                if h.is_empty() { 0.0 } else { ms(h.max()) },
            );
        };
    for (op, s) in &stats.ops {
        let one = Stats {
            ops: BTreeMap::from([(*op, s.clone())]),
            over_cap: 0,
        };
        row(
            &mut out,
            op.name(),
            &s.latency,
            s.count(),
            s.errors(),
            &one.errors_by_status(),
        );
    }
    row(
        &mut out,
        "all",
        &stats.all_latencies(),
        stats.count(),
        stats.errors(),
        &stats.errors_by_status(),
    );
    // The schedule's span runs from the first due time to the last: one
    // period short of the duration.
    let period =
        span.as_secs_f64() / (stats.count() + stats.over_cap).saturating_sub(1).max(1) as f64;
    let secs = (span.as_secs_f64() + period).max(1e-9);
    let _ = writeln!(
        out,
        "achieved {:.1} req/s of {target_rate:.1} targeted over {secs:.1}s (last answer {:.2}s after the last send); {} not sent (concurrency cap); error rate {:.3}%",
        stats.count() as f64 / secs,
        (elapsed.as_secs_f64() - span.as_secs_f64()).max(0.0),
        stats.over_cap,
        stats.error_rate() * 100.0,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_operation_and_status() {
        let mut stats = Stats::default();
        stats.record(Op::CreateLine, 201, Duration::from_millis(2));
        stats.record(Op::CreateLine, 503, Duration::from_millis(30));
        stats.record(Op::ReadProduct, 200, Duration::from_micros(400));
        stats.record(Op::ReadProduct, 0, Duration::from_secs(120));
        stats.over_cap = 1;
        assert_eq!(stats.count(), 4);
        assert_eq!(stats.errors(), 2);
        assert_eq!(stats.errors_by_status(), "no-answer×1 503×1");
        assert!((stats.error_rate() - 0.6).abs() < 1e-9);
        let mut merged = Stats::default();
        merged.merge(&stats);
        merged.merge(&stats);
        assert_eq!(merged.count(), 8);
        assert_eq!(merged.over_cap, 2);
        // The two-minute wait is recorded as the histogram's ceiling.
        assert_eq!(merged.ops[&Op::ReadProduct].latency.max() / 1_000_000, 60);
    }

    #[test]
    fn the_summary_has_a_row_per_operation_and_the_totals() {
        let mut stats = Stats::default();
        for i in 1..=100 {
            stats.record(Op::ReadOrder, 200, Duration::from_millis(i));
        }
        let text = summary(
            &stats,
            Duration::from_millis(9_900),
            Duration::from_secs(10),
            12.0,
        );
        let row = text.lines().find(|l| l.starts_with("read_order")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..3], ["read_order", "100", "0"]);
        let p50: f64 = cells[3].parse().unwrap();
        assert!((p50 - 50.0).abs() < 0.5, "{row}");
        assert!(
            text.contains("achieved 10.0 req/s of 12.0 targeted"),
            "{text}"
        );
        let line = progress_line(Duration::from_secs(10), 101, 2, &stats, &stats);
        assert!(
            line.starts_with("t=10.0s sent=101 done=100 rate=10.0/s errors=none p50=50."),
            "{line}"
        );
        assert!(line.ends_with(" over_cap=2"), "{line}");
    }
}
