//! One consumer of `product_queue` and of the stock partitions given it
//! ([`lease`](super::lease)): the stock worker's
//! [`Handler`] for the one consumer loop ([`crate::consume`]), around
//! [`store::apply`]. [`change`](super::change) decodes each body (a poison
//! one is dead-lettered with its reason); the batch is applied in one
//! transaction; each change's outcome is counted and logged once committed.

use super::change::StockChange;
use super::plan::{Outcome, Refusal};
use super::store;
use crate::consume::{self, Assignment, Handler, Queue};
use crate::context::Context;
use crate::db::Retention;
use crate::logging;
use crate::messages::{stock_queue, DeadLetterClass, DEAD_LETTER_EXCHANGE, PRODUCT_QUEUE};
use crate::metrics::{self, Metrics};
use crate::outbox::Waker;
use crate::request_id::RequestId;
use crate::settings::Settings;
use amiquip::Delivery;
use diesel::PgConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often consumer 0 forgets old processed ids, at most.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);

/// Runs consumer `index` until the shutdown; `partitions` are the stock
/// partition queues it is given, when there are any. Consumer 0 also
/// reports the queues' depth (all partitions' included) and forgets old
/// processed ids.
pub fn run(index: usize, ctx: Context, waker: Waker, partitions: Option<Assignment>) {
    let settings = &ctx.settings;
    let depth_of = match index {
        0 => std::iter::once(PRODUCT_QUEUE.to_owned())
            .chain((0..settings.amqp.stock_partitions).map(stock_queue))
            .collect(),
        _ => Vec::new(),
    };
    let retention = Duration::from_secs(settings.worker.dedupe_retention_secs);
    let queue = Queue {
        queue: PRODUCT_QUEUE,
        also: partitions,
        dead_letter_exchange: DEAD_LETTER_EXCHANGE,
        noun: "message",
        batch_size: settings.worker.batch_size,
        connection_name: format!("ordersys-worker-{index}"),
        database_name: "ordersys-worker",
        depth_of,
        retention: (index == 0).then(|| {
            Retention::new(
                "processed message ids",
                store::purge_processed,
                retention,
                HOUSEKEEPING_EVERY,
                log::Level::Info,
            )
        }),
    };
    let handler = Stock {
        settings: settings.clone(),
        metrics: ctx.metrics.clone(),
        waker,
    };
    consume::run(&ctx, queue, handler);
}

/// Applies stock changes.
struct Stock {
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Wakes this process's relay after alerts or line events were written.
    waker: Waker,
}

impl Handler for Stock {
    type Item = StockChange;

    fn received(&mut self, count: usize) {
        self.metrics.stock.batch_size.observe(count as f64);
    }

    fn decode(&mut self, delivery: &Delivery) -> Result<StockChange, Refusal> {
        let worker = &self.settings.worker;
        let id = delivery.properties.message_id().as_deref();
        let mut change = StockChange::decode(
            &delivery.body,
            id,
            worker.max_message_bytes,
            worker.accept_seed_format,
        )
        .map_err(|reason| Refusal::new(DeadLetterClass::Malformed, reason))?;
        // A valid id of the request behind the message, else none: a
        // producer's bad correlation_id is ignored, never a reason to refuse.
        change.request_id = delivery
            .properties
            .correlation_id()
            .as_deref()
            .and_then(RequestId::parse);
        Ok(change)
    }

    fn apply(
        &mut self,
        conn: &mut PgConnection,
        changes: &[StockChange],
    ) -> diesel::QueryResult<Vec<Option<Refusal>>> {
        let started = Instant::now();
        let plan = store::apply(conn, changes, self.settings.stock.low_threshold)?;
        let metrics = &self.metrics.stock;
        metrics
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
        for alert in &plan.alerts {
            metrics.alert(alert.event);
        }
        if !plan.alerts.is_empty() || !plan.events.is_empty() {
            self.waker.wake();
        }
        let now = chrono::Utc::now();
        let verdicts = plan
            .outcomes
            .into_iter()
            .zip(changes)
            .map(|(outcome, change)| {
                let counted = match &outcome {
                    Outcome::DeadLetter(refusal) => return Some(refusal.clone()),
                    Outcome::Applied(_) => metrics::Outcome::applied,
                    Outcome::Rejected => metrics::Outcome::rejected,
                    Outcome::Duplicate => metrics::Outcome::duplicate,
                    Outcome::Stale => metrics::Outcome::stale,
                };
                if let (Outcome::Applied(_) | Outcome::Rejected, Some(at)) =
                    (&outcome, change.occurred_at)
                {
                    let latency = (now - at).to_std().unwrap_or_default();
                    metrics.change_latency.observe(latency.as_secs_f64());
                }
                metrics.count(counted, 1);
                log_outcome(change, &outcome);
                None
            });
        Ok(verdicts.collect())
    }

    /// Counts the dead letter. A change the database refused rolled its
    /// batch back, its history stamp with it: stamped on its own (best
    /// effort: the dead letter and the log have the reason).
    fn dead_lettered(
        &mut self,
        conn: Option<&mut PgConnection>,
        change: Option<&StockChange>,
        refusal: &Refusal,
    ) {
        self.metrics.stock.dead_lettered(refusal.class);
        let line = change.and_then(|c| c.line);
        if let (DeadLetterClass::Refused, Some(line), Some(conn)) = (refusal.class, line, conn) {
            if let Err(e) = store::stamp_refused(conn, line) {
                log::warn!(
                    "could not record a refused change in line {}'s history: {e}",
                    line.ligne_id
                );
            }
        }
    }
}

/// One line per message of the flow, with the request that caused it
/// (dead letters have their own warning). Only validated values: the ids
/// are the change's, not the delivery's properties as sent.
fn log_outcome(change: &StockChange, outcome: &Outcome) {
    if !log::log_enabled!(target: logging::FLOW, log::Level::Info) {
        return;
    }
    let what = outcome.word();
    let request_id = change.request_id.as_ref().map_or("", |r| r.as_str());
    match change.line {
        Some(line) => log::info!(
            target: logging::FLOW,
            request_id, message_id:% = line.message_id, ligne_id = line.ligne_id,
            version = line.version, outcome = what;
            "{} line {} v{} of order {}: {what}",
            change.action.as_str(),
            line.ligne_id,
            line.version,
            change.commande_id
        ),
        None => log::info!(
            target: logging::FLOW,
            request_id, outcome = what;
            "{} (seed format) of {} on product {} for order {}: {what}",
            change.action.as_str(),
            change.quantite,
            change.produit_id,
            change.commande_id
        ),
    }
}
