//! Counters exposed at `GET /metrics` in the Prometheus text format.
//!
//! A handful of atomics rather than a metrics framework: each process has
//! few series, and every increment is one relaxed atomic add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP responses by status class (index 1 = 1xx … 5 = 5xx).
    http_responses: [AtomicU64; 6],
    /// Outbox messages the broker confirmed.
    pub outbox_published: AtomicU64,
    /// Outbox batches that failed (nack, lost connection) and stay unsent.
    pub outbox_failed_batches: AtomicU64,
    /// Stock messages applied to stock.
    pub stock_applied: AtomicU64,
    /// Stock messages already processed (same message id), acknowledged without effect.
    pub stock_duplicates: AtomicU64,
    /// Stock messages older than the line's applied version, acknowledged without effect.
    pub stock_stale: AtomicU64,
    /// Stock messages sent to the dead-letter queue.
    pub stock_dead_lettered: AtomicU64,
}

impl Metrics {
    pub fn record_response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.http_responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus exposition of every counter, labelled with the mode.
    pub fn render(&self, mode: &str) -> String {
        let mut out = String::with_capacity(1024);
        let _ = writeln!(
            out,
            "# HELP ordersys_http_responses_total HTTP responses by status class."
        );
        let _ = writeln!(out, "# TYPE ordersys_http_responses_total counter");
        for class in 1..=5 {
            let _ = writeln!(
                out,
                "ordersys_http_responses_total{{mode=\"{mode}\",class=\"{class}xx\"}} {}",
                self.http_responses[class].load(Ordering::Relaxed)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 6] = [
            (
                "ordersys_outbox_published_total",
                "Outbox messages confirmed by the broker.",
                &self.outbox_published,
            ),
            (
                "ordersys_outbox_failed_batches_total",
                "Outbox batches left unsent after a failure.",
                &self.outbox_failed_batches,
            ),
            (
                "ordersys_stock_applied_total",
                "Stock messages applied.",
                &self.stock_applied,
            ),
            (
                "ordersys_stock_duplicates_total",
                "Stock messages skipped as already processed.",
                &self.stock_duplicates,
            ),
            (
                "ordersys_stock_stale_total",
                "Stock messages skipped as older than the applied version.",
                &self.stock_stale,
            ),
            (
                "ordersys_stock_dead_lettered_total",
                "Stock messages sent to the dead-letter queue.",
                &self.stock_dead_lettered,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(
                out,
                "{name}{{mode=\"{mode}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

impl Metrics {
    /// The outbox backlog gauges.
    pub fn render_backlog(mode: &str, backlog: crate::outbox::Backlog) -> String {
        format!(
            "# HELP ordersys_outbox_unsent Outbox messages not yet confirmed by the broker.\n\
             # TYPE ordersys_outbox_unsent gauge\n\
             ordersys_outbox_unsent{{mode=\"{mode}\"}} {}\n\
             # HELP ordersys_outbox_oldest_unsent_seconds Age of the oldest unsent outbox message (0 when none).\n\
             # TYPE ordersys_outbox_oldest_unsent_seconds gauge\n\
             ordersys_outbox_oldest_unsent_seconds{{mode=\"{mode}\"}} {:.3}\n",
            backlog.unsent, backlog.oldest_secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_class() {
        let m = Metrics::default();
        m.record_response(201);
        m.record_response(204);
        m.record_response(503);
        Metrics::add(&m.stock_applied, 3);
        let text = m.render("orders");
        assert!(text.contains("ordersys_http_responses_total{mode=\"orders\",class=\"2xx\"} 2"));
        assert!(text.contains("ordersys_http_responses_total{mode=\"orders\",class=\"5xx\"} 1"));
        assert!(text.contains("ordersys_stock_applied_total{mode=\"orders\"} 3"));
    }
}
