//! What `GET /metrics` exposes, with the Prometheus project's own client
//! library (`prometheus-client`): counters, gauges and histograms in one
//! registry per process, every series labelled with the process's `mode`.
//!
//! Each mode registers what it does: every mode its HTTP metrics and the
//! process's own (memory, CPU, file descriptors); modes with an outbox relay
//! (orders, worker) the relay's; the worker the stock pipeline's. Label
//! values that are known in advance (outcomes, reasons, kinds) exist from
//! the start at 0, so `rate()` sees their first increment.

mod process;

use crate::messages::{AlertEvent, DeadLetterClass, PRODUCT_QUEUE};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::borrow::Cow;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Which parts of the pipeline a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub relay: bool,
    pub consumer: bool,
    /// The order-validation saga (orders).
    pub saga: bool,
}

/// Every metric of one process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub outbox: OutboxMetrics,
    pub stock: StockMetrics,
    pub saga: SagaMetrics,
}

/// What became of a line event in the orders service
/// (`ordersys_saga_events_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EventOutcome {
    /// It moved its saga.
    applied,
    /// Its saga did not wait for it (another version, already known, over).
    ignored,
    /// Its message id was applied before.
    duplicate,
    dead_lettered,
}

/// How a validation ended (`ordersys_validations_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ValidationResult {
    confirmed,
    refused,
    timed_out,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    outcome: EventOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: ValidationResult,
}

#[derive(Debug, Default)]
pub struct SagaMetrics {
    events: Family<EventLabel, Counter>,
    validations: Family<ResultLabel, Counter>,
}

impl SagaMetrics {
    pub fn event(&self, outcome: EventOutcome) {
        self.events.get_or_create(&EventLabel { outcome }).inc();
    }

    pub fn ended(&self, result: ValidationResult) {
        self.validations
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    /// The route's template (`/produits/{id}`), `unmatched` for none.
    pub route: String,
    /// `2xx` … `5xx`.
    pub status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug)]
pub struct HttpMetrics {
    responses: Family<ClassLabel, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

#[derive(Debug)]
pub struct OutboxMetrics {
    pub published: Counter,
    pub failed_batches: Counter,
    /// One batch: publish every row and wait for the broker's confirms.
    pub publish_duration: Histogram,
    /// Set at each scrape from the database.
    pub unsent: Gauge,
    pub oldest_unsent_seconds: Gauge<f64, AtomicU64>,
}

/// What became of a stock message (`ordersys_stock_messages_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    applied,
    rejected,
    duplicate,
    stale,
    dead_lettered,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: &'static str,
}

#[derive(Debug)]
pub struct StockMetrics {
    messages: Family<OutcomeLabel, Counter>,
    dead_letters: Family<ReasonLabel, Counter>,
    alerts: Family<KindLabel, Counter>,
    queue: Family<QueueLabel, Gauge>,
    pub batch_size: Histogram,
    pub apply_duration: Histogram,
    /// From the change's `occurred_at` (its commit in the orders service)
    /// to its application.
    pub change_latency: Histogram,
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::applied,
    Outcome::rejected,
    Outcome::duplicate,
    Outcome::stale,
    Outcome::dead_lettered,
];
/// The queues whose depth a worker reports (it may read no other).
const QUEUES: [&str; 1] = [PRODUCT_QUEUE];

/// 0.5 ms to about 16 s: requests, batches and the pipeline alike.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// The HTTP and process metrics of every mode, and those of the `parts`
    /// it runs, registered in this order (the order of `/metrics`).
    pub fn new(mode: &'static str, parts: Parts) -> Metrics {
        let mut registry =
            Registry::with_labels([(Cow::Borrowed("mode"), Cow::Borrowed(mode))].into_iter());
        let http = HttpMetrics::new();
        http.register(&mut registry);
        let outbox = OutboxMetrics::new();
        if parts.relay {
            outbox.register(&mut registry);
        }
        let stock = StockMetrics::new();
        if parts.consumer {
            stock.register(&mut registry);
        }
        let saga = SagaMetrics::default();
        if parts.saga {
            saga.register(&mut registry);
        }
        registry.register_collector(Box::new(process::Process::new()));
        Metrics {
            registry,
            http,
            outbox,
            stock,
            saga,
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl HttpMetrics {
    /// Every status class exists from the start at 0.
    fn new() -> Self {
        let http = HttpMetrics {
            responses: Family::default(),
            duration: Family::new_with_constructor(seconds),
        };
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = http.responses.get_or_create(&ClassLabel { class });
        }
        http
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ordersys_http_responses",
            "HTTP responses by status class",
            self.responses.clone(),
        );
        registry.register_with_unit(
            "ordersys_http_request_duration",
            "HTTP request duration by method, route template and status class",
            Unit::Seconds,
            self.duration.clone(),
        );
    }
}

impl OutboxMetrics {
    fn new() -> Self {
        OutboxMetrics {
            published: Counter::default(),
            failed_batches: Counter::default(),
            publish_duration: seconds(),
            unsent: Gauge::default(),
            oldest_unsent_seconds: Gauge::default(),
        }
    }

    /// The relay's metrics (orders and worker).
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "ordersys_outbox_published",
            "Outbox messages confirmed by the broker",
            self.published.clone(),
        );
        registry.register(
            "ordersys_outbox_failed_batches",
            "Outbox batches left unsent after a failure",
            self.failed_batches.clone(),
        );
        registry.register_with_unit(
            "ordersys_outbox_publish_duration",
            "Publishing one outbox batch and waiting for its confirms",
            Unit::Seconds,
            self.publish_duration.clone(),
        );
        registry.register(
            "ordersys_outbox_unsent",
            "Outbox messages not yet confirmed by the broker",
            self.unsent.clone(),
        );
        registry.register(
            "ordersys_outbox_oldest_unsent_seconds",
            "Age of the oldest unsent outbox message (0 when none)",
            self.oldest_unsent_seconds.clone(),
        );
    }
}

impl StockMetrics {
    fn new() -> Self {
        StockMetrics {
            messages: Family::default(),
            dead_letters: Family::default(),
            alerts: Family::default(),
            queue: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            apply_duration: seconds(),
            change_latency: seconds(),
        }
    }

    /// The stock pipeline's metrics (the worker), every known label value
    /// at 0.
    fn register(&self, registry: &mut Registry) {
        self.create_known_labels();
        registry.register(
            "ordersys_stock_messages",
            "Stock messages by outcome",
            self.messages.clone(),
        );
        registry.register(
            "ordersys_stock_dead_letters",
            "Stock messages dead-lettered, by reason class",
            self.dead_letters.clone(),
        );
        registry.register(
            "ordersys_stock_alerts",
            "Stock alerts raised, by kind",
            self.alerts.clone(),
        );
        registry.register(
            "ordersys_queue_messages",
            "Messages ready in a queue, as this worker last saw it",
            self.queue.clone(),
        );
        registry.register(
            "ordersys_worker_batch_size",
            "Messages per batch taken from the queue",
            self.batch_size.clone(),
        );
        registry.register_with_unit(
            "ordersys_worker_apply_duration",
            "Applying one batch to the database (one transaction)",
            Unit::Seconds,
            self.apply_duration.clone(),
        );
        registry.register_with_unit(
            "ordersys_stock_change_latency",
            "From a change's commit in the orders service to its application",
            Unit::Seconds,
            self.change_latency.clone(),
        );
    }

    fn create_known_labels(&self) {
        for outcome in OUTCOMES {
            let _ = self.messages.get_or_create(&OutcomeLabel { outcome });
        }
        for class in DeadLetterClass::ALL {
            let reason = class.as_str();
            let _ = self.dead_letters.get_or_create(&ReasonLabel { reason });
        }
        for event in AlertEvent::ALL {
            let kind = event.as_str();
            let _ = self.alerts.get_or_create(&KindLabel { kind });
        }
        for queue in QUEUES {
            let _ = self.queue.get_or_create(&QueueLabel { queue });
        }
    }
}

impl SagaMetrics {
    /// The validation saga's metrics (orders), every outcome and result at 0.
    fn register(&self, registry: &mut Registry) {
        for outcome in [
            EventOutcome::applied,
            EventOutcome::ignored,
            EventOutcome::duplicate,
            EventOutcome::dead_lettered,
        ] {
            let _ = self.events.get_or_create(&EventLabel { outcome });
        }
        for result in [
            ValidationResult::confirmed,
            ValidationResult::refused,
            ValidationResult::timed_out,
        ] {
            let _ = self.validations.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "ordersys_saga_events",
            "Line events of order validations, by what became of them",
            self.events.clone(),
        );
        registry.register(
            "ordersys_validations",
            "Order validations ended, by result",
            self.validations.clone(),
        );
    }
}

impl HttpMetrics {
    pub fn record(&self, labels: RouteLabels, elapsed: Duration) {
        self.responses
            .get_or_create(&ClassLabel {
                class: labels.status,
            })
            .inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// `2xx` for 204, and so on (`5xx` for anything out of range).
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl StockMetrics {
    pub fn count(&self, outcome: Outcome, n: u64) {
        self.messages
            .get_or_create(&OutcomeLabel { outcome })
            .inc_by(n);
    }

    pub fn dead_lettered(&self, class: DeadLetterClass) {
        self.count(Outcome::dead_lettered, 1);
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: class.as_str(),
            })
            .inc();
    }

    pub fn alert(&self, event: AlertEvent) {
        self.alerts
            .get_or_create(&KindLabel {
                kind: event.as_str(),
            })
            .inc();
    }

    /// Drops a queue's depth series (it could not be read).
    pub fn forget_queue_depth(&self, queue: &str) {
        if let Some(queue) = QUEUES.into_iter().find(|q| *q == queue) {
            self.queue.remove(&QueueLabel { queue });
        }
    }

    /// Records a queue's depth; only the queues the worker knows.
    pub fn queue_depth(&self, queue: &str, messages: u32) {
        if let Some(queue) = QUEUES.into_iter().find(|q| *q == queue) {
            self.queue
                .get_or_create(&QueueLabel { queue })
                .set(messages.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn each_mode_exposes_what_it_runs() {
        let m = Metrics::new(
            "orders",
            Parts {
                relay: true,
                consumer: false,
                saga: true,
            },
        );
        m.http.record(
            RouteLabels {
                method: "GET",
                route: "/commandes/{id}".into(),
                status: status_class(200),
            },
            Duration::from_millis(3),
        );
        m.outbox.published.inc_by(4);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                r#"ordersys_http_responses_total{mode="orders",class="2xx"}"#
            ),
            Some("1")
        );
        assert_eq!(
            value(
                &text,
                r#"ordersys_http_responses_total{mode="orders",class="5xx"}"#
            ),
            Some("0")
        );
        assert_eq!(
            value(
                &text,
                r#"ordersys_http_request_duration_seconds_count{mode="orders",method="GET",route="/commandes/{id}",status="2xx"}"#
            ),
            Some("1")
        );
        assert_eq!(
            value(&text, r#"ordersys_outbox_published_total{mode="orders"}"#),
            Some("4")
        );
        assert!(!text.contains("ordersys_stock_messages_total"), "{text}");
        assert_eq!(
            value(
                &text,
                r#"ordersys_validations_total{mode="orders",result="timed_out"}"#
            ),
            Some("0")
        );
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }

    #[test]
    fn the_worker_counts_outcomes_reasons_alerts_and_queues() {
        let m = Metrics::new(
            "worker",
            Parts {
                relay: true,
                consumer: true,
                saga: false,
            },
        );
        m.stock.count(Outcome::applied, 3);
        m.stock.dead_lettered(DeadLetterClass::Malformed);
        m.stock.alert(AlertEvent::StockBas);
        m.stock.queue_depth(PRODUCT_QUEUE, 12);
        m.stock.queue_depth("someone_elses", 1);
        let text = m.render();
        for (series, expected) in [
            (
                r#"ordersys_stock_messages_total{mode="worker",outcome="applied"}"#,
                "3",
            ),
            (
                r#"ordersys_stock_messages_total{mode="worker",outcome="dead_lettered"}"#,
                "1",
            ),
            (
                r#"ordersys_stock_messages_total{mode="worker",outcome="stale"}"#,
                "0",
            ),
            (
                r#"ordersys_stock_dead_letters_total{mode="worker",reason="malformed"}"#,
                "1",
            ),
            (
                r#"ordersys_stock_alerts_total{mode="worker",kind="STOCK_BAS"}"#,
                "1",
            ),
            (
                r#"ordersys_stock_alerts_total{mode="worker",kind="STOCK_EPUISE"}"#,
                "0",
            ),
            (
                r#"ordersys_queue_messages{mode="worker",queue="product_queue"}"#,
                "12",
            ),
        ] {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        }
        assert!(!text.contains("someone_elses"));
    }
}
