//! The orders service's side of the saga, on its own threads (amiquip is
//! synchronous; never an actix worker):
//!
//! - [`run`] consumes `order_events` as the worker consumes `product_queue`:
//!   a batch of what is waiting, parsed (an unreadable event is
//!   dead-lettered to `order_events_dlx` with its reason), applied in one
//!   transaction ([`store::apply_events`]) with retries while the database
//!   is down, and acknowledged only after the commit. A crash before the
//!   ack redelivers the batch; applied event ids and line versions make the
//!   second application change nothing.
//! - [`sweep`] refuses validations past their deadline, with the database
//!   alone (it goes on while the broker is down).

use super::machine::Step;
use super::store::{self, Advanced, Received};
use crate::amqp::{self, AmqpError, ConfirmingChannel};
use crate::db::{self, Database, Failure};
use crate::dependencies::Dependencies;
use crate::logging;
use crate::messages::{
    DeadLetterClass, LineEvent, ORDER_EVENTS_DEAD_LETTER_EXCHANGE, ORDER_EVENTS_QUEUE,
};
use crate::metrics::{EventOutcome, Metrics, ValidationResult};
use crate::outbox::Waker;
use crate::request_id::RequestId;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use amiquip::{ConsumerMessage, ConsumerOptions, Delivery};
use diesel::PgConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// What the saga's threads need.
#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    pub db: Database,
    pub deps: Dependencies,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Wakes this process's relay after compensation messages were written.
    pub waker: Waker,
}

#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("shutting down")]
    Shutdown,
}

impl From<amiquip::Error> for Stop {
    fn from(e: amiquip::Error) -> Self {
        Stop::Broker(e.into())
    }
}

/// Consumes `order_events` until the shutdown, reconnecting with backoff.
pub fn run(ctx: Context) {
    if !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let broker = ctx.deps.broker.clone().expect("orders uses the broker");
    let mut backoff = Backoff::new(&ctx.settings.retry);
    let mut conn = None;
    loop {
        match session(&ctx, &mut conn, &mut backoff) {
            Ok(()) | Err(Stop::Shutdown) => return,
            Err(Stop::Broker(e)) => {
                broker.set_down(&e);
                if ctx.shutdown.sleep(backoff.next_delay()) {
                    return;
                }
            }
        }
    }
}

fn session(
    ctx: &Context,
    conn: &mut Option<PgConnection>,
    backoff: &mut Backoff,
) -> Result<(), Stop> {
    let settings = &ctx.settings;
    let mut connection = amqp::connect(&settings.amqp, "ordersys-orders-saga")?;
    amqp::ensure_topology(&mut connection, &settings.amqp)?;
    let channel = connection.open_channel(None)?;
    channel.qos(0, settings.amqp.prefetch, false)?;
    let mut dead_letters = ConfirmingChannel::new(connection.open_channel(None)?)?;
    let consumer = channel.basic_consume(ORDER_EVENTS_QUEUE, ConsumerOptions::default())?;
    if let Some(broker) = &ctx.deps.broker {
        broker.set_up();
    }
    backoff.reset();
    let receiver = consumer.receiver();
    let batch_size = settings
        .validation
        .batch_size
        .min(settings.amqp.prefetch.into())
        .max(1);
    loop {
        let first = crossbeam_channel::select! {
            recv(receiver) -> message => message.map_err(|_| AmqpError::Closed)?,
            recv(ctx.shutdown.channel()) -> _ => break,
        };
        let mut batch = Vec::with_capacity(batch_size);
        for message in std::iter::once(first).chain(std::iter::from_fn(|| receiver.try_recv().ok()))
        {
            match message {
                ConsumerMessage::Delivery(delivery) => batch.push(delivery),
                other => {
                    log::debug!("the saga's consumer stopped: {other:?}");
                    return Err(AmqpError::Closed.into());
                }
            }
            if batch.len() == batch_size {
                break;
            }
        }
        handle(ctx, conn, batch, &channel, &mut dead_letters)?;
    }
    amqp::cancel(consumer);
    dead_letters.close();
    let _ = channel.close();
    let _ = connection.close();
    Ok(())
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
    if event.version < 1 || event.quantite < 0 {
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

fn handle(
    ctx: &Context,
    conn: &mut Option<PgConnection>,
    batch: Vec<Delivery>,
    channel: &amiquip::Channel,
    dead_letters: &mut ConfirmingChannel,
) -> Result<(), Stop> {
    let max_bytes = ctx.settings.worker.max_message_bytes;
    let mut events = Vec::with_capacity(batch.len());
    let mut rejected: Vec<(usize, String)> = Vec::new();
    for (i, delivery) in batch.iter().enumerate() {
        match parse(delivery, max_bytes) {
            Ok(event) => events.push((i, event)),
            Err(reason) => rejected.push((i, reason)),
        }
    }
    let received: Vec<Received> = events.iter().map(|(_, e)| e.clone()).collect();
    match apply(ctx, conn, &received)? {
        Ok(advanced) => report(ctx, &received, &advanced),
        // The database refused the batch: apply each event alone, and
        // dead-letter the one it refuses.
        Err(reason) if received.len() == 1 => rejected.push((events[0].0, reason)),
        Err(_) => {
            for (i, event) in &events {
                match apply(ctx, conn, std::slice::from_ref(event))? {
                    Ok(advanced) => report(ctx, std::slice::from_ref(event), &advanced),
                    Err(reason) => rejected.push((*i, reason)),
                }
            }
        }
    }
    rejected.sort_by_key(|(i, _)| *i);
    for (i, reason) in &rejected {
        let delivery = &batch[*i];
        log::warn!(
            target: logging::FLOW,
            "dead-lettering line event {}: {}",
            delivery
                .properties
                .message_id()
                .as_deref()
                .unwrap_or("without id")
                .escape_debug(),
            reason.escape_debug()
        );
        amqp::dead_letter(
            dead_letters,
            ORDER_EVENTS_DEAD_LETTER_EXCHANGE,
            delivery,
            reason,
            DeadLetterClass::Malformed,
        )?;
    }
    if !rejected.is_empty() {
        dead_letters.wait_for_confirms(CONFIRM_TIMEOUT)?;
        for _ in &rejected {
            ctx.metrics.saga.event(EventOutcome::dead_lettered);
        }
    }
    if let Some(last) = batch.into_iter().max_by_key(|d| d.delivery_tag()) {
        last.ack_multiple(channel)?;
    }
    Ok(())
}

/// Applies the events, holding on through database outages: Ok(Ok) once
/// committed, Ok(Err(why)) when the database refuses them, Err at shutdown.
fn apply(
    ctx: &Context,
    conn: &mut Option<PgConnection>,
    events: &[Received],
) -> Result<Result<Advanced, String>, Stop> {
    let mut backoff = Backoff::new(&ctx.settings.retry);
    let database = &ctx.deps.database;
    let mut gave_way = 0u32;
    loop {
        if conn.is_none() {
            match db::connect(&ctx.settings.database, "ordersys-orders-saga") {
                Ok(c) => *conn = Some(c),
                Err(e) => {
                    database.set_down(&e);
                    if ctx.shutdown.sleep(backoff.next_delay()) {
                        return Err(Stop::Shutdown);
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        match store::apply_events(c, events) {
            Ok(advanced) => {
                if advanced.wrote_messages {
                    ctx.waker.wake();
                }
                return Ok(Ok(advanced));
            }
            Err(e) => match db::classify(&e) {
                Failure::Connection => {
                    database.set_down(&e);
                    *conn = None;
                }
                Failure::Transient => {
                    // A missing privilege is transient too: say so loudly.
                    gave_way += 1;
                    if gave_way % 20 == 5 {
                        log::warn!("line events keep giving way, still retrying: {e}");
                    } else {
                        log::debug!("line events gave way, retrying: {e}");
                    }
                }
                Failure::Refused => {
                    return Ok(Err(format!("the database refused it: {e}")));
                }
            },
        }
        if ctx.shutdown.sleep(backoff.next_delay()) {
            return Err(Stop::Shutdown);
        }
    }
}

/// Counts and logs what each event did.
fn report(ctx: &Context, events: &[Received], advanced: &Advanced) {
    let metrics = &ctx.metrics.saga;
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
    order: i64,
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
pub fn sweep(ctx: Context) {
    if !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let every = Duration::from_millis(ctx.settings.validation.sweep_interval_ms);
    let retention = Duration::from_secs(ctx.settings.worker.dedupe_retention_secs);
    let purge_every = db::purge_interval(retention, PURGE_EVERY);
    // None: never purged yet (an Instant in the past may not exist so
    // soon after boot).
    let mut last_purge: Option<Instant> = None;
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
                        ctx.waker.wake();
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
            if last_purge.is_none_or(|t| t.elapsed() >= purge_every) {
                last_purge = Some(Instant::now());
                match store::purge_applied(c, retention) {
                    Ok(n) if n > 0 => log::info!("forgot {n} applied line event ids"),
                    Ok(_) => {}
                    Err(e) => log::warn!("could not purge applied line event ids: {e}"),
                }
            }
        }
    }
}
