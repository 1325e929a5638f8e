//! The one batch-consumer loop of ordersys, written once for every queue it
//! consumes (`product_queue` and the stock partitions this worker holds by
//! the stock worker, `order_events` by the saga). What differs between them is a [`Handler`]: how a message is
//! decoded, and what applying a batch of them writes. The loop does the
//! rest, on a thread of its own (amiquip is synchronous):
//!
//! 1. connect, declare the topology, start consuming each queue on a
//!    channel of its own (its own prefetch);
//! 2. take what is waiting, up to [`Queue::batch_size`] (one message when
//!    idle, hundreds under load: batching costs no latency);
//! 3. decode each; one that never will be is set aside with its reason;
//! 4. apply the rest in one transaction ([`Handler::apply`]), holding on
//!    through database outages (the messages stay unacknowledged
//!    meanwhile); a batch the database refuses is bisected until the one
//!    message responsible is alone, and that one is set aside;
//! 5. publish what was set aside to the dead-letter exchange with its
//!    reason (`x-ordersys-error`, `x-ordersys-error-class`), and wait for
//!    the broker's confirms;
//! 6. acknowledge the whole batch at once (`multiple`, once per channel),
//!    only now.
//!
//! When another thread changes the queues ([`Assignment`]: the stock
//! partitions a worker holds), the loop finishes the batch in hand, ends
//! the session (what is prefetched goes back) and starts one on the new set.
//!
//! A crash or a lost connection anywhere before 6 leaves the batch
//! unacknowledged: the broker redelivers it, and the handler's record of
//! applied message ids makes the second application change nothing. At the
//! shutdown the loop finishes the batch in hand, cancels its consumer (what
//! is prefetched goes back to the queue) and closes its channels.

use crate::amqp::{self, AmqpError, ConfirmingChannel, CONFIRM_TIMEOUT};
use crate::context::Context;
use crate::db::{self, Failure, Retention};
use crate::logging;
use crate::messages::{DeadLetterClass, Refusal};
use crate::request_id::RequestId;
use crate::retry::Backoff;
use amiquip::{ConsumerMessage, ConsumerOptions, Delivery};
use diesel::{PgConnection, QueryResult};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What one queue's messages mean: the part of a consumer that differs.
pub trait Handler {
    /// A message once decoded.
    type Item;

    /// Called with the size of every batch taken, before it is decoded.
    fn received(&mut self, _count: usize) {}

    /// Decodes a delivery, or says why it never will be applied (it is
    /// dead-lettered with that reason).
    fn decode(&mut self, delivery: &Delivery) -> Result<Self::Item, Refusal>;

    /// Applies `items`, in order, in one transaction, and once it committed
    /// reports what became of each (metrics, log lines, wake-ups). Returns
    /// one entry per item: None, or the refusal of one its rules set aside
    /// (dead-lettered with that reason). An error means nothing was
    /// committed; the loop classifies it ([`db::classify`]): retried while
    /// it is transient, else the batch is bisected.
    fn apply(
        &mut self,
        conn: &mut PgConnection,
        items: &[Self::Item],
    ) -> QueryResult<Vec<Option<Refusal>>>;

    /// Called for each dead letter once the broker confirmed it. `item` is
    /// None for one that could not be decoded; `conn` is the loop's
    /// database connection, when it has one.
    fn dead_lettered(
        &mut self,
        _conn: Option<&mut PgConnection>,
        _item: Option<&Self::Item>,
        _refusal: &Refusal,
    ) {
    }
}

/// Which queue a consumer consumes, and how.
pub struct Queue {
    /// Consumed always; its name is the one in the log.
    pub queue: &'static str,
    /// More queues, which another thread may change (the stock partitions
    /// this consumer's worker holds); none for a fixed one.
    pub also: Option<Assignment>,
    /// Where its dead letters go.
    pub dead_letter_exchange: &'static str,
    /// What its messages are called in the log ("message", "line event").
    pub noun: &'static str,
    /// Most messages applied in one transaction (capped by the prefetch).
    pub batch_size: usize,
    /// The broker connection's name (one per consumer thread).
    pub connection_name: String,
    /// The database connection's `application_name`.
    pub database_name: &'static str,
    /// The queues whose messages, summed, this consumer reports as
    /// `queue`'s depth (`ordersys_queue_messages`; one consumer per queue
    /// does): none, or `queue` and its partitions.
    pub depth_of: Vec<String>,
    /// A table this consumer forgets past its retention, now and then
    /// between batches, on its own connection.
    pub retention: Option<Retention>,
}

/// Transient failures in a row after which a batch of several is split
/// (one that always exceeds the statement timeout, say: smaller ones may
/// not); a single message is retried on, with a warning every 20 times.
const SPLIT_AFTER: u32 = 5;

/// How often the queue's depth is read, and the longest an idle loop waits
/// before looking at it.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(2);

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
    #[error("its queues changed")]
    Reassigned,
}

/// Queues that another thread may change, with a generation that counts
/// the changes; and, the other way, whether the consumer given them is
/// consuming: the time its loop last came round with its session up, and
/// whether it ended.
#[derive(Clone, Default)]
pub struct Assignment(Arc<Mutex<Assigned>>);

#[derive(Default)]
struct Assigned {
    generation: u64,
    queues: Vec<String>,
    alive: Option<Instant>,
    ended: bool,
}

/// The longest a consumer's loop goes without coming round while its
/// session is up (it waits for a message at most this long).
pub const COMES_ROUND_EVERY: Duration = QUEUE_DEPTH_EVERY;

impl Assignment {
    fn lock(&self) -> std::sync::MutexGuard<'_, Assigned> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the queues, unless they are the same.
    pub fn set(&self, queues: Vec<String>) {
        let mut current = self.lock();
        if current.queues != queues {
            current.generation += 1;
            current.queues = queues;
        }
    }

    /// The generation and the queues.
    pub fn get(&self) -> (u64, Vec<String>) {
        let current = self.lock();
        (current.generation, current.queues.clone())
    }

    /// Whether the consumer came round within `within` with its session
    /// up, and has not ended.
    pub fn consuming(&self, within: Duration) -> bool {
        let current = self.lock();
        !current.ended && current.alive.is_some_and(|t| t.elapsed() <= within)
    }

    /// Whether the consumer has ended (the shutdown, or a panic).
    pub fn ended(&self) -> bool {
        self.lock().ended
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn came_round(&self) {
        self.lock().alive = Some(Instant::now());
    }
}

/// Marks an assignment's consumer ended when it returns or panics.
struct EndsWith(Option<Assignment>);

impl Drop for EndsWith {
    fn drop(&mut self) {
        if let Some(assignment) = &self.0 {
            assignment.lock().ended = true;
        }
    }
}

impl From<amiquip::Error> for Stop {
    fn from(e: amiquip::Error) -> Self {
        Stop::Broker(e.into())
    }
}

/// Consumes `queue` with `handler` until the shutdown, reconnecting to the
/// broker with backoff ([`crate::retry`]).
pub fn run<H: Handler>(ctx: &Context, queue: Queue, handler: H) {
    let _ends = EndsWith(queue.also.clone());
    if !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let broker = ctx.deps.broker.clone().expect("a consumer uses the broker");
    let mut backoff = Backoff::new(&ctx.settings.retry);
    let mut consumer = Consumer {
        ctx,
        queue,
        handler,
        conn: None,
    };
    loop {
        match consumer.session(&mut backoff) {
            Ok(()) | Err(Stop::Shutdown) => return,
            Err(Stop::Reassigned) => {}
            Err(Stop::Broker(e)) => {
                broker.set_down(&e);
                if ctx.shutdown.sleep(backoff.next_delay()) {
                    return;
                }
            }
        }
    }
}

struct Consumer<'a, H> {
    ctx: &'a Context,
    queue: Queue,
    handler: H,
    /// Kept across broker sessions; dropped when it breaks.
    conn: Option<PgConnection>,
}

impl<H: Handler> Consumer<'_, H> {
    /// The queues of a session: `queue`, then the assigned ones, and the
    /// assignment's generation.
    fn queues(&self) -> (u64, Vec<String>) {
        let mut queues = vec![self.queue.queue.to_owned()];
        let generation = match &self.queue.also {
            Some(also) => {
                let (generation, more) = also.get();
                queues.extend(more);
                generation
            }
            None => 0,
        };
        (generation, queues)
    }

    fn reassigned(&self, generation: u64) -> bool {
        self.queue
            .also
            .as_ref()
            .is_some_and(|also| also.generation() != generation)
    }

    /// One broker connection's worth of consuming, until the shutdown
    /// (`Ok`) or until its queues change (`Stop::Reassigned`).
    fn session(&mut self, backoff: &mut Backoff) -> Result<(), Stop> {
        let settings = &self.ctx.settings;
        let (generation, queues) = self.queues();
        let mut connection = amqp::connect(&settings.amqp, &self.queue.connection_name)?;
        amqp::ensure_topology(&mut connection, &settings.amqp)?;
        let channels = consuming_channels(&mut connection, queues.len(), settings.amqp.prefetch)?;
        let mut dead_letters = ConfirmingChannel::new(connection.open_channel(None)?)?;
        let consumers = channels
            .iter()
            .zip(&queues)
            .map(|(channel, queue)| {
                channel.basic_consume(queue.as_str(), ConsumerOptions::default())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(broker) = &self.ctx.deps.broker {
            broker.set_up();
        }
        backoff.reset();
        // On a channel of its own: a refused declare closes its channel,
        // not a consumer's.
        let mut depth = match self.queue.depth_of.is_empty() {
            false => Some(QueueDepth::new(connection.open_channel(None)?)),
            true => None,
        };
        let batch_size = self
            .queue
            .batch_size
            .min(settings.amqp.prefetch.into())
            .max(1);
        let mut select = crossbeam_channel::Select::new();
        for consumer in &consumers {
            select.recv(consumer.receiver());
        }
        let shutdown = select.recv(self.ctx.shutdown.channel());
        let ended = loop {
            if let Some(depth) = depth.as_mut() {
                depth.refresh(self.ctx, self.queue.queue, &self.queue.depth_of);
            }
            if self.reassigned(generation) {
                break Stop::Reassigned;
            }
            if let Some(also) = &self.queue.also {
                also.came_round();
            }
            let Ok(operation) = select.select_timeout(COMES_ROUND_EVERY) else {
                continue;
            };
            let first_queue = operation.index();
            if first_queue == shutdown {
                let _ = operation.recv(self.ctx.shutdown.channel());
                break Stop::Shutdown;
            }
            let receiver = consumers[first_queue].receiver();
            let first = operation.recv(receiver).map_err(|_| AmqpError::Closed)?;
            let batch = Batch::gather(first_queue, first, &consumers, &queues, batch_size)?;
            self.handle(batch, &channels, &mut dead_letters)?;
            if let (Some(retention), Some(conn)) = (self.queue.retention.as_mut(), &mut self.conn) {
                retention.purge_if_due(conn);
            }
        };
        // Stop deliveries (what is prefetched goes back).
        drop(select);
        for consumer in consumers {
            amqp::cancel(consumer);
        }
        if let Some(depth) = depth {
            let _ = depth.channel.close();
        }
        dead_letters.close();
        for channel in channels {
            let _ = channel.close();
        }
        let _ = connection.close();
        match ended {
            Stop::Shutdown => Ok(()),
            other => Err(other),
        }
    }

    /// Decodes, applies, dead-letters and acknowledges one batch.
    fn handle(
        &mut self,
        batch: Batch,
        channels: &[amiquip::Channel],
        dead_letters: &mut ConfirmingChannel,
    ) -> Result<(), Stop> {
        let Batch {
            deliveries: batch,
            queues,
        } = batch;
        self.handler.received(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        let mut positions = Vec::with_capacity(batch.len());
        // Set aside: the delivery's position, the reason, and the item
        // when it was decoded.
        let mut rejected: Vec<(usize, Refusal, Option<usize>)> = Vec::new();
        for (i, delivery) in batch.iter().enumerate() {
            match self.handler.decode(delivery) {
                Ok(item) => {
                    items.push(item);
                    positions.push(i);
                }
                Err(refusal) => rejected.push((i, refusal, None)),
            }
        }
        let verdicts = self.apply(&items)?;
        for (n, verdict) in verdicts.into_iter().enumerate() {
            if let Some(refusal) = verdict {
                rejected.push((positions[n], refusal, Some(n)));
            }
        }
        // In delivery order, whichever step rejected them.
        rejected.sort_by_key(|(i, _, _)| *i);
        for (i, refusal, _) in &rejected {
            let delivery = &batch[*i];
            self.log_dead_letter(delivery, refusal);
            // The original properties stay, correlation_id included.
            amqp::dead_letter(
                dead_letters,
                self.queue.dead_letter_exchange,
                delivery,
                &refusal.reason,
                refusal.class,
            )?;
        }
        if !rejected.is_empty() {
            dead_letters.wait_for_confirms(CONFIRM_TIMEOUT)?;
            for (_, refusal, item) in &rejected {
                let item = item.map(|n| &items[n]);
                self.handler
                    .dead_lettered(self.conn.as_mut(), item, refusal);
            }
        }
        // Delivery tags count per channel: the last of each queue.
        let mut last: Vec<Option<Delivery>> = channels.iter().map(|_| None).collect();
        for (delivery, queue) in batch.into_iter().zip(queues) {
            let slot = &mut last[queue];
            if slot
                .as_ref()
                .is_none_or(|l| l.delivery_tag() < delivery.delivery_tag())
            {
                *slot = Some(delivery);
            }
        }
        for (delivery, channel) in last.into_iter().zip(channels) {
            if let Some(delivery) = delivery {
                delivery.ack_multiple(channel)?;
            }
        }
        Ok(())
    }

    /// What a producer sent is logged escaped: no control character or
    /// forged line reaches the log as such. A producer's bad
    /// `correlation_id` is ignored, never a reason to refuse.
    fn log_dead_letter(&self, delivery: &Delivery, refusal: &Refusal) {
        let request_id = delivery
            .properties
            .correlation_id()
            .as_deref()
            .and_then(RequestId::parse);
        let id = delivery.properties.message_id().as_deref();
        let body = &delivery.body[..delivery.body.len().min(200)];
        log::warn!(
            target: logging::FLOW,
            request_id = request_id.as_ref().map_or("", |r| r.as_str()),
            class = refusal.class.as_str();
            "dead-lettering {} {} ({}): {}",
            self.queue.noun,
            id.unwrap_or("without id").escape_debug(),
            String::from_utf8_lossy(body).escape_debug(),
            refusal.reason.escape_debug()
        );
    }

    /// Applies the items, holding on through database outages; each gets
    /// its verdict. A batch the database refuses (a constraint, a value
    /// out of range: the handler's rules should never let one through), or
    /// one that keeps giving way, is bisected until the item responsible
    /// is alone; that one is dead-lettered, the others are applied as usual.
    fn apply(&mut self, items: &[H::Item]) -> Result<Vec<Option<Refusal>>, Stop> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        match self.apply_while_transient(items)? {
            Ok(verdicts) => Ok(verdicts),
            Err(Failed::Refused(refused)) if items.len() == 1 => Ok(vec![Some(Refusal::new(
                DeadLetterClass::Refused,
                format!("the database refused it: {refused}"),
            ))]),
            Err(failed) => {
                log::warn!(
                    "a batch of {} {}(s) of {} failed, bisecting it: {failed}",
                    items.len(),
                    self.queue.noun,
                    self.queue.queue
                );
                let (first, second) = items.split_at(items.len() / 2);
                let mut verdicts = self.apply(first)?;
                verdicts.extend(self.apply(second)?);
                Ok(verdicts)
            }
        }
    }

    /// Ok(Ok(verdicts)) once committed, or Ok(Err(why)) when the database
    /// refuses the batch itself, or when a batch of several keeps giving
    /// way. Connection and transient failures (a restart, a failover, a
    /// deadlock, a timeout, a missing privilege) are otherwise retried with
    /// backoff for as long as they last, the messages staying
    /// unacknowledged; Err only at the shutdown.
    fn apply_while_transient(
        &mut self,
        items: &[H::Item],
    ) -> Result<Result<Vec<Option<Refusal>>, Failed>, Stop> {
        let settings = &self.ctx.settings;
        let database = &self.ctx.deps.database;
        let mut backoff = Backoff::new(&settings.retry);
        let mut gave_way = 0;
        loop {
            if self.conn.is_none() {
                match db::connect(&settings.database, self.queue.database_name) {
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
            match self.handler.apply(conn, items) {
                Ok(verdicts) => {
                    database.set_up();
                    debug_assert_eq!(verdicts.len(), items.len(), "one verdict per item");
                    return Ok(Ok(verdicts));
                }
                Err(e) => match db::classify(&e) {
                    Failure::Connection => {
                        database.set_down(&e);
                        self.conn = None;
                    }
                    Failure::Transient => {
                        gave_way += 1;
                        if gave_way == SPLIT_AFTER && items.len() > 1 {
                            return Ok(Err(Failed::KeepsGivingWay(e.to_string())));
                        }
                        if gave_way % 20 == SPLIT_AFTER {
                            log::warn!(
                                "a {} of {} keeps giving way, still retrying: {e}",
                                self.queue.noun,
                                self.queue.queue
                            );
                        } else {
                            log::debug!(
                                "{} {}(s) of {} gave way, retrying: {e}",
                                items.len(),
                                self.queue.noun,
                                self.queue.queue
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
}

/// `n` channels to consume on, each with the prefetch.
fn consuming_channels(
    connection: &mut amiquip::Connection,
    n: usize,
    prefetch: u16,
) -> Result<Vec<amiquip::Channel>, Stop> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = connection.open_channel(None)?;
        channel.qos(0, prefetch, false)?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Deliveries taken for one batch, each with the index of its queue (and
/// channel) in the session.
struct Batch {
    deliveries: Vec<Delivery>,
    queues: Vec<usize>,
}

impl Batch {
    /// Up to `size` deliveries: `first`, of queue `first_queue`, then what
    /// is waiting in that queue, then in the others in turn (each queue's
    /// own order kept).
    fn gather(
        first_queue: usize,
        first: ConsumerMessage,
        consumers: &[amiquip::Consumer<'_>],
        names: &[String],
        size: usize,
    ) -> Result<Batch, Stop> {
        let mut batch = Batch {
            deliveries: Vec::with_capacity(size),
            queues: Vec::with_capacity(size),
        };
        batch.take(first_queue, first, names)?;
        let order = (first_queue..consumers.len()).chain(0..first_queue);
        for i in order {
            while batch.deliveries.len() < size {
                let Ok(message) = consumers[i].receiver().try_recv() else {
                    break;
                };
                batch.take(i, message, names)?;
            }
        }
        Ok(batch)
    }

    /// Adds a delivery of queue `queue`; anything else means its channel is
    /// gone (what is in hand will be redelivered).
    fn take(
        &mut self,
        queue: usize,
        message: ConsumerMessage,
        names: &[String],
    ) -> Result<(), Stop> {
        match message {
            ConsumerMessage::Delivery(delivery) => {
                self.deliveries.push(delivery);
                self.queues.push(queue);
                Ok(())
            }
            other => {
                log::debug!("stopped consuming {}: {other:?}", names[queue]);
                Err(AmqpError::Closed.into())
            }
        }
    }
}

/// Reads a queue's depth now and then, for `ordersys_queue_messages`.
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

    /// Reports the messages of `queues`, summed, as `label`'s depth.
    fn refresh(&mut self, ctx: &Context, label: &str, queues: &[String]) {
        if self.refused || self.last.is_some_and(|t| t.elapsed() < QUEUE_DEPTH_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let mut messages: u32 = 0;
        for queue in queues {
            match self.channel.queue_declare_passive(queue) {
                Ok(declared) => {
                    let count = declared.declared_message_count().unwrap_or_default();
                    messages = messages.saturating_add(count);
                }
                Err(e) => {
                    // Its channel is closed now: stop asking until the next
                    // session, and show no stale figure meanwhile.
                    log::warn!("cannot read {queue}'s depth: {e}");
                    ctx.metrics.stock.forget_queue_depth(label);
                    self.refused = true;
                    return;
                }
            }
        }
        ctx.metrics.stock.queue_depth(label, messages);
    }
}
