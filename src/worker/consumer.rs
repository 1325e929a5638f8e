//! One competing consumer of `product_queue`: its own connection, channel
//! and database connection. A thin shell around [`store::apply`]:
//!
//! 1. take what is waiting, up to `worker.batch_size` (one message when idle,
//!    hundreds under load: batching costs no latency);
//! 2. parse each; a message that can never succeed is set aside;
//! 3. apply the rest in one transaction, retrying with backoff while the
//!    database is down (the messages stay unacknowledged meanwhile);
//! 4. publish the set-aside ones to the dead-letter exchange with their
//!    reason, and wait for the broker's confirms;
//! 5. acknowledge the whole batch at once (`multiple`), only now.
//!
//! A crash anywhere before 5 leaves the batch unacknowledged: the broker
//! redelivers it, and the processed-id record and line versions make the
//! second application change nothing.

use super::change::{LineRef, StockChange};
use super::plan::{Outcome, Refusal};
use super::store;
use crate::amqp::{self, AmqpError, ConfirmingChannel};
use crate::db::{self, Database, Failure};
use crate::dependencies::Dependencies;
use crate::logging;
use crate::messages::{DeadLetterClass, DEAD_LETTER_EXCHANGE, ERROR_HEADER, PRODUCT_QUEUE};
use crate::metrics::{self, Metrics};
use crate::outbox::Waker;
use crate::request_id::RequestId;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use amiquip::{AmqpValue, ConsumerMessage, ConsumerOptions, Delivery, FieldTable};
use diesel::PgConnection;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);

/// What a consumer thread needs.
#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    pub db: Database,
    pub deps: Dependencies,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// Wakes this process's relay after alerts were written.
    pub waker: Waker,
}

/// Transient failures in a row after which a batch of several is split.
const SPLIT_AFTER: u32 = 5;

/// Why a batch was not applied as a whole.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("the database refused it: {0}")]
    Refused(String),
    #[error("it kept giving way: {0}")]
    KeepsGivingWay(String),
}

/// Why a session ended.
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

/// Runs consumer `index` until the shutdown.
pub fn run(index: usize, ctx: Context) {
    if !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let broker = ctx.deps.broker.clone().expect("the worker uses the broker");
    let mut backoff = Backoff::new(&ctx.settings.retry);
    let mut consumer = Consumer {
        index,
        ctx: &ctx,
        conn: None,
        last_housekeeping: Instant::now(),
    };
    loop {
        match consumer.session(&mut backoff) {
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

struct Consumer<'a> {
    index: usize,
    ctx: &'a Context,
    conn: Option<PgConnection>,
    last_housekeeping: Instant,
}

impl Consumer<'_> {
    /// One broker connection's worth of consuming.
    fn session(&mut self, backoff: &mut Backoff) -> Result<(), Stop> {
        let settings = &self.ctx.settings;
        let mut connection =
            amqp::connect(&settings.amqp, &format!("ordersys-worker-{}", self.index))?;
        amqp::ensure_topology(&mut connection, &settings.amqp)?;
        let channel = connection.open_channel(None)?;
        channel.qos(0, settings.amqp.prefetch, false)?;
        let mut dead_letters = ConfirmingChannel::new(connection.open_channel(None)?)?;
        let consumer = channel.basic_consume(PRODUCT_QUEUE, ConsumerOptions::default())?;
        if let Some(broker) = &self.ctx.deps.broker {
            broker.set_up();
        }
        backoff.reset();
        let receiver = consumer.receiver();
        // Consumer 0 reports the queue's depth, on a channel of its own (a
        // refused declare closes its channel, not the consumer's).
        let mut depth = match self.index {
            0 => Some(QueueDepth::new(connection.open_channel(None)?)),
            _ => None,
        };
        let batch_size = settings
            .worker
            .batch_size
            .min(settings.amqp.prefetch.into())
            .max(1);
        loop {
            if let Some(depth) = depth.as_mut() {
                depth.refresh(&self.ctx.metrics);
            }
            let first = crossbeam_channel::select! {
                recv(receiver) -> message => message.map_err(|_| AmqpError::Closed)?,
                recv(self.ctx.shutdown.channel()) -> _ => break,
                default(QUEUE_DEPTH_EVERY) => continue,
            };
            let mut batch = Vec::with_capacity(batch_size);
            let mut closed = None;
            for message in
                std::iter::once(first).chain(std::iter::from_fn(|| receiver.try_recv().ok()))
            {
                match message {
                    ConsumerMessage::Delivery(delivery) => batch.push(delivery),
                    other => {
                        closed = Some(other);
                        break;
                    }
                }
                if batch.len() == batch_size {
                    break;
                }
            }
            if let Some(reason) = closed {
                // The channel is gone: what is in hand will be redelivered.
                log::debug!("consumer {} stopped: {reason:?}", self.index);
                return Err(AmqpError::Closed.into());
            }
            self.handle(batch, &channel, &mut dead_letters)?;
            self.housekeeping();
        }
        // Shutdown: stop deliveries (what is prefetched goes back).
        amqp::cancel(consumer);
        if let Some(depth) = depth {
            let _ = depth.channel.close();
        }
        dead_letters.close();
        let _ = channel.close();
        let _ = connection.close();
        Ok(())
    }

    fn handle(
        &mut self,
        batch: Vec<Delivery>,
        channel: &amiquip::Channel,
        dead_letters: &mut ConfirmingChannel,
    ) -> Result<(), Stop> {
        let mut changes = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        // Set aside with the reason, and the line of a tracked change.
        let mut rejected: Vec<(usize, Refusal, Option<LineRef>)> = Vec::new();
        let worker = &self.ctx.settings.worker;
        let metrics = &self.ctx.metrics.stock;
        metrics.batch_size.observe(batch.len() as f64);
        // A valid id of the request behind each message, else none: a
        // producer's bad correlation_id is ignored, never a reason to refuse.
        let request_ids: Vec<Option<RequestId>> = batch
            .iter()
            .map(|d| {
                d.properties
                    .correlation_id()
                    .as_deref()
                    .and_then(RequestId::parse)
            })
            .collect();
        for (i, delivery) in batch.iter().enumerate() {
            let id = delivery.properties.message_id().as_deref();
            match StockChange::decode(
                &delivery.body,
                id,
                worker.max_message_bytes,
                worker.accept_seed_format,
            ) {
                Ok(mut change) => {
                    change.request_id = request_ids[i].clone();
                    changes.push(change);
                    positions.push(i);
                }
                Err(reason) => {
                    rejected.push((i, Refusal::new(DeadLetterClass::Malformed, reason), None))
                }
            }
        }
        let outcomes = self.apply(&changes)?;
        let now = chrono::Utc::now();
        for ((outcome, &i), change) in outcomes.into_iter().zip(&positions).zip(&changes) {
            let counted = match &outcome {
                Outcome::DeadLetter(refusal) => {
                    rejected.push((i, refusal.clone(), change.line));
                    continue;
                }
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
        }
        // In delivery order, whichever step rejected them.
        rejected.sort_by_key(|(i, _, _)| *i);
        for (i, refusal, _) in &rejected {
            let delivery = &batch[*i];
            // What a producer sent is logged escaped: no control character
            // or forged line reaches the log as such.
            let id = delivery.properties.message_id().clone();
            let request_id = &request_ids[*i];
            let body = &delivery.body[..delivery.body.len().min(200)];
            log::warn!(
                target: logging::FLOW,
                request_id = request_id.as_ref().map_or("", |r| r.as_str()),
                class = refusal.class.as_str();
                "dead-lettering message {} ({}): {}",
                id.as_deref().unwrap_or("without id").escape_debug(),
                String::from_utf8_lossy(body).escape_debug(),
                refusal.reason.escape_debug()
            );
            // The original properties stay, correlation_id included.
            amqp::dead_letter(
                dead_letters,
                DEAD_LETTER_EXCHANGE,
                delivery,
                &refusal.reason,
                refusal.class,
            )?;
        }
        if !rejected.is_empty() {
            dead_letters.wait_for_confirms(CONFIRM_TIMEOUT)?;
            for (_, refusal, line) in &rejected {
                metrics.dead_lettered(refusal.class);
                if let (DeadLetterClass::Refused, Some(line)) = (refusal.class, line) {
                    self.stamp_refused(*line);
                }
            }
        }
        if let Some(last) = batch.into_iter().max_by_key(|d| d.delivery_tag()) {
            last.ack_multiple(channel)?;
        }
        Ok(())
    }

    /// Applies the batch, holding on through database outages. Each change
    /// gets its outcome. A batch the database refuses (a constraint, a value
    /// out of range: the stock rules should never let one through) is
    /// bisected until the change responsible is alone, and that one is
    /// dead-lettered: the others are applied as usual.
    fn apply(&mut self, changes: &[StockChange]) -> Result<Vec<Outcome>, Stop> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        match self.apply_while_transient(changes)? {
            Ok(outcomes) => Ok(outcomes),
            Err(Failed::Refused(refused)) if changes.len() == 1 => {
                Ok(vec![Outcome::DeadLetter(Refusal::new(
                    DeadLetterClass::Refused,
                    format!("the database refused it: {refused}"),
                ))])
            }
            Err(failed) => {
                log::warn!(
                    "a batch of {} change(s) failed, bisecting it: {failed}",
                    changes.len()
                );
                let (first, second) = changes.split_at(changes.len() / 2);
                let mut outcomes = self.apply(first)?;
                outcomes.extend(self.apply(second)?);
                Ok(outcomes)
            }
        }
    }

    /// Ok(Ok(outcomes)), or Ok(Err(why)) when the database refuses the
    /// batch itself, or when a batch of several keeps giving way (one that
    /// always exceeds the statement timeout, say: smaller ones may not).
    /// Connection and transient failures (a restart, a failover, a
    /// deadlock, a timeout) are otherwise retried with backoff for as long
    /// as they last, the messages staying unacknowledged; Err only at
    /// shutdown.
    fn apply_while_transient(
        &mut self,
        changes: &[StockChange],
    ) -> Result<Result<Vec<Outcome>, Failed>, Stop> {
        let settings = &self.ctx.settings;
        let database = &self.ctx.deps.database;
        let mut backoff = Backoff::new(&settings.retry);
        let mut gave_way = 0;
        loop {
            if self.conn.is_none() {
                match db::connect(&settings.database, "ordersys-worker") {
                    Ok(conn) => self.conn = Some(conn),
                    Err(e) => {
                        database.set_down(&e);
                        if self.ctx.shutdown.sleep(backoff.next_delay()) {
                            return Err(Stop::Shutdown);
                        }
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            let started = Instant::now();
            match store::apply(conn, changes, settings.stock.low_threshold) {
                Ok(plan) => {
                    database.set_up();
                    let metrics = &self.ctx.metrics.stock;
                    metrics
                        .apply_duration
                        .observe(started.elapsed().as_secs_f64());
                    for alert in &plan.alerts {
                        metrics.alert(alert.event);
                    }
                    if !plan.alerts.is_empty() || !plan.events.is_empty() {
                        self.ctx.waker.wake();
                    }
                    return Ok(Ok(plan.outcomes));
                }
                Err(e) => match db::classify(&e) {
                    Failure::Connection => {
                        database.set_down(&e);
                        self.conn = None;
                    }
                    Failure::Transient => {
                        gave_way += 1;
                        if gave_way == SPLIT_AFTER && changes.len() > 1 {
                            return Ok(Err(Failed::KeepsGivingWay(e.to_string())));
                        }
                        if gave_way == SPLIT_AFTER {
                            log::warn!("a stock change keeps giving way, still retrying: {e}");
                        } else {
                            log::debug!(
                                "{} stock change(s) gave way, retrying: {e}",
                                changes.len()
                            );
                        }
                    }
                    Failure::Refused => return Ok(Err(Failed::Refused(e.to_string()))),
                },
            }
            if self.ctx.shutdown.sleep(backoff.next_delay()) {
                return Err(Stop::Shutdown);
            }
        }
    }

    /// A change the database refused rolled its batch back, its history
    /// stamp with it: stamped on its own (best effort: the dead letter and
    /// the log have the reason).
    fn stamp_refused(&mut self, line: LineRef) {
        if let Some(conn) = self.conn.as_mut() {
            if let Err(e) = store::stamp_refused(conn, line) {
                log::warn!(
                    "could not record a refused change in line {}'s history: {e}",
                    line.ligne_id
                );
            }
        }
    }

    /// Consumer 0 forgets old processed ids now and then.
    fn housekeeping(&mut self) {
        let retention = Duration::from_secs(self.ctx.settings.worker.dedupe_retention_secs);
        let every = db::purge_interval(retention, HOUSEKEEPING_EVERY);
        if self.index != 0 || self.last_housekeeping.elapsed() < every {
            return;
        }
        self.last_housekeeping = Instant::now();
        if let Some(conn) = self.conn.as_mut() {
            match store::purge_processed(conn, retention) {
                Ok(n) if n > 0 => log::info!("forgot {n} processed message ids past retention"),
                Ok(_) => {}
                Err(e) => log::warn!("could not purge processed message ids: {e}"),
            }
        }
    }
}

/// How often consumer 0 reads the queue's depth.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(2);

/// Reads `product_queue`'s depth now and then, for `ordersys_queue_messages`.
struct QueueDepth {
    channel: amiquip::Channel,
    last: Option<Instant>,
    refused: bool,
}

impl QueueDepth {
    fn new(channel: amiquip::Channel) -> QueueDepth {
        QueueDepth {
            channel,
            last: None,
            refused: false,
        }
    }

    fn refresh(&mut self, metrics: &Metrics) {
        if self.refused || self.last.is_some_and(|t| t.elapsed() < QUEUE_DEPTH_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        match self.channel.queue_declare_passive(PRODUCT_QUEUE) {
            Ok(queue) => {
                let messages = queue.declared_message_count().unwrap_or_default();
                metrics.stock.queue_depth(PRODUCT_QUEUE, messages);
            }
            Err(e) => {
                // Its channel is closed now: stop asking until the next
                // session, and show no stale figure meanwhile.
                log::warn!("cannot read {PRODUCT_QUEUE}'s depth: {e}");
                metrics.stock.forget_queue_depth(PRODUCT_QUEUE);
                self.refused = true;
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

/// Builds the dead-letter headers of a rejected delivery (for tests).
pub fn error_header(headers: &Option<FieldTable>) -> Option<String> {
    match headers.as_ref()?.get(ERROR_HEADER)? {
        AmqpValue::LongString(reason) => Some(reason.clone()),
        _ => None,
    }
}
