//! The orders service's side of the saga, on its own threads (amiquip is
//! synchronous; never an actix worker):
//!
//! - [`run`] consumes `order_events` with the one consumer loop
//!   ([`crate::consume`]), as the worker consumes `product_queue`: a batch
//!   of what is waiting, parsed (an unreadable event is dead-lettered to
//!   `order_events_dlx` with its reason), applied in one transaction
//!   ([`store::apply_events`]: an event only wakes its order, whose lines
//!   are read from the database) with retries while the database is down,
//!   and acknowledged only after the commit. A crash before the ack
//!   redelivers the batch; applied event ids and line versions make the
//!   second application change nothing.
//! - [`sweep`] refuses validations past their deadline, with the database
//!   alone (it goes on while the broker is down).

use super::machine::Step;
use super::store::{self, Advanced, Received};
use crate::consume::{self, Handler, Queue};
use crate::context::Context;
use crate::db::{self, Retention};
use crate::domain::{OrderId, Version};
use crate::logging;
use crate::messages::{
    DeadLetterClass, LineEvent, Refusal, ORDER_EVENTS_DEAD_LETTER_EXCHANGE, ORDER_EVENTS_QUEUE,
};
use crate::metrics::{EventOutcome, Metrics, ValidationResult};
use crate::outbox::Waker;
use crate::request_id::RequestId;
use amiquip::Delivery;
use diesel::PgConnection;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often the sweeper forgets old applied event ids, at most.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Consumes `order_events` until the shutdown, reconnecting with backoff.
pub fn run(ctx: Context, waker: Waker) {
    let queue = Queue {
        queue: ORDER_EVENTS_QUEUE,
        also: None,
        dead_letter_exchange: ORDER_EVENTS_DEAD_LETTER_EXCHANGE,
        noun: "line event",
        batch_size: ctx.settings.validation.batch_size,
        connection_name: "ordersys-orders-saga".into(),
        database_name: "ordersys-orders-saga",
        depth_of: Vec::new(),
        retention: None,
    };
    let handler = Events {
        max_bytes: ctx.settings.worker.max_message_bytes,
        metrics: ctx.metrics.clone(),
        waker,
    };
    consume::run(&ctx, queue, handler);
}

/// Advances sagas with line events.
struct Events {
    max_bytes: usize,
    metrics: Arc<Metrics>,
    /// Wakes this process's relay after compensation messages were written.
    waker: Waker,
}

impl Handler for Events {
    type Item = Received;

    fn decode(&mut self, delivery: &Delivery) -> Result<Received, Refusal> {
        parse(delivery, self.max_bytes).map_err(|e| Refusal::new(DeadLetterClass::Malformed, e))
    }

    fn apply(
        &mut self,
        conn: &mut PgConnection,
        events: &[Received],
    ) -> diesel::QueryResult<Vec<Option<Refusal>>> {
        let advanced = store::apply_events(conn, events)?;
        if advanced.wrote_messages {
            self.waker.wake();
        }
        report(&self.metrics, events, &advanced);
        Ok(vec![None; events.len()])
    }

    fn dead_lettered(&mut self, _: Option<&mut PgConnection>, _: Option<&Received>, _: &Refusal) {
        self.metrics.saga.event(EventOutcome::dead_lettered);
    }
}

/// Decodes a delivery into a line event, or says why it never will be one.
fn decode(body: &[u8], message_id: Option<&str>, max_bytes: usize) -> Result<Uuid, String> {
    if body.len() > max_bytes {
        return Err(format!(
            "the body has {} bytes, more than worker.max_message_bytes ({max_bytes})",
            body.len()
        ));
    }
    let id = message_id.ok_or("a line event needs a message_id property")?;
    Uuid::parse_str(id).map_err(|_| format!("message_id property {id:?} is not a UUID"))
}

fn parse(delivery: &Delivery, max_bytes: usize) -> Result<Received, String> {
    let message_id = decode(
        &delivery.body,
        delivery.properties.message_id().as_deref(),
        max_bytes,
    )?;
    let event: LineEvent =
        serde_json::from_slice(&delivery.body).map_err(|e| format!("malformed line event: {e}"))?;
    if event.version < Version::FIRST || event.quantite < 0 {
        return Err(format!(
            "a line event needs a version of at least 1 and a quantite of 0 or more, got {} and {}",
            event.version, event.quantite
        ));
    }
    let request_id = delivery
        .properties
        .correlation_id()
        .as_deref()
        .and_then(RequestId::parse);
    Ok(Received {
        message_id,
        request_id,
        event,
    })
}

/// Counts and logs what each event did.
fn report(metrics: &Metrics, events: &[Received], advanced: &Advanced) {
    let metrics = &metrics.saga;
    for (event, (order, step)) in events.iter().zip(&advanced.steps) {
        let request_id = event.request_id.as_ref().map_or("", |r| r.as_str());
        let line = event.event.ligne_id;
        match step {
            None => metrics.event(EventOutcome::duplicate),
            Some(Step::Ignored(why)) => {
                metrics.event(EventOutcome::ignored);
                log::debug!(
                    target: logging::FLOW,
                    request_id;
                    "order {order}: woken by {} of line {line}, nothing new: {why}",
                    event.event.event.as_str()
                );
            }
            Some(step) => {
                metrics.event(EventOutcome::applied);
                log::info!(
                    target: logging::FLOW,
                    request_id, message_id:% = event.message_id, ligne_id = line;
                    "order {order}: woken by {} of line {line} v{}; its lines read from the database",
                    event.event.event.as_str(),
                    event.event.version
                );
                log_step(metrics, *order, step, ValidationResult::refused);
            }
        }
    }
}

fn log_step(
    metrics: &crate::metrics::SagaMetrics,
    order: OrderId,
    step: &Step,
    refusal: ValidationResult,
) {
    match step {
        Step::Confirmed => {
            metrics.ended(ValidationResult::confirmed);
            log::info!(target: logging::FLOW, "order {order}: validation CONFIRMEE");
        }
        Step::Refused(motif) => {
            metrics.ended(refusal);
            log::info!(
                target: logging::FLOW,
                "order {order}: validation REFUSEE ({motif}); releasing its lines"
            );
        }
        Step::Compensated => {
            log::info!(target: logging::FLOW, "order {order}: every line released");
        }
        Step::Recorded | Step::Ignored(_) => {}
    }
}

/// Refuses validations past their deadline every
/// `validation.sweep_interval_ms`, and forgets old applied event ids.
pub fn sweep(ctx: Context, waker: Waker) {
    if !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let every = Duration::from_millis(ctx.settings.validation.sweep_interval_ms);
    let mut retention = Retention::new(
        "applied line event ids",
        store::purge_applied,
        Duration::from_secs(ctx.settings.worker.dedupe_retention_secs),
        PURGE_EVERY,
        log::Level::Info,
    );
    let mut conn: Option<PgConnection> = None;
    let limit = ctx.settings.validation.batch_size;
    while !ctx.shutdown.sleep(every) {
        if conn.is_none() {
            match db::connect(&ctx.settings.database, "ordersys-orders-sweeper") {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    log::debug!("the validation sweeper cannot connect: {e}");
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        loop {
            match store::time_out(c, limit) {
                Ok(advanced) => {
                    if advanced.wrote_messages {
                        waker.wake();
                    }
                    for (order, step) in &advanced.steps {
                        if let Some(step) = step {
                            log_step(&ctx.metrics.saga, *order, step, ValidationResult::timed_out);
                        }
                    }
                    if advanced.steps.len() < limit {
                        break;
                    }
                }
                Err(e) => {
                    log::warn!("could not time out validations: {e}");
                    if db::is_connection_error(&e) {
                        conn = None;
                    }
                    break;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            retention.purge_if_due(c);
        }
    }
}
