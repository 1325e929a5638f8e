//! The outbox relay: publishes committed outbox rows to RabbitMQ.
//!
//! Claim, publish, confirm, mark — in one database transaction:
//! `SELECT … FOR UPDATE SKIP LOCKED` claims a batch of unsent rows (other
//! relays, in other `orders` replicas or in workers, skip them), every row
//! is published persistent with its `message_id`, the relay waits for the
//! broker's confirms of the whole batch, and only then sets `sent_at` and
//! commits. A nack, a lost connection or a crash rolls the transaction back:
//! the rows stay unsent and go out again (the worker de-duplicates by
//! `message_id`). Rows are claimed in id order and published on one channel,
//! so one relay preserves the order of each line's changes.
//!
//! Wake-up: this process's request handlers nudge the relay after every
//! commit that wrote messages; a slow poll (`outbox.poll_interval_ms`)
//! catches rows written elsewhere or left over after an outage.

use super::WakeUps;
use crate::amqp::{self, AmqpError, ConfirmingChannel};
use crate::db::schema::outbox;
use crate::db::{self, Database};
use crate::dependencies::Dependencies;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use diesel::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Broker(#[from] AmqpError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("PostgreSQL: {0}")]
    Connect(#[from] diesel::ConnectionError),
}

impl From<amiquip::Error> for RelayError {
    fn from(e: amiquip::Error) -> Self {
        RelayError::Broker(e.into())
    }
}

/// What the relay thread needs.
pub struct Relay {
    pub name: String,
    pub settings: Settings,
    pub db: Database,
    pub deps: Dependencies,
    pub metrics: Arc<Metrics>,
    pub wakeups: WakeUps,
    pub shutdown: Shutdown,
    /// The exchanges of the rows this relay publishes (its broker user may
    /// publish to no other): the orders' stock changes, or a worker's alerts.
    pub exchanges: &'static [&'static str],
}

impl Relay {
    /// Runs until the shutdown, reconnecting with backoff.
    pub fn run(self) {
        if !self.db.wait_ready(&self.shutdown) {
            return;
        }
        let broker = self.deps.broker.clone().expect("the relay uses the broker");
        let mut backoff = Backoff::new(&self.settings.retry);
        loop {
            match self.session(&mut backoff) {
                Ok(()) => return,
                Err(RelayError::Broker(e)) => broker.set_down(&e),
                Err(e) => self.deps.database.set_down(&e),
            }
            Metrics::add(&self.metrics.outbox_failed_batches, 1);
            if self.shutdown.sleep(backoff.next_delay()) {
                return;
            }
        }
    }

    fn session(&self, backoff: &mut Backoff) -> Result<(), RelayError> {
        let settings = &self.settings;
        let mut pg = db::connect(&settings.database, &self.name)?;
        self.deps.database.set_up();
        let mut connection = amqp::connect(&settings.amqp, &self.name)?;
        amqp::ensure_topology(&mut connection, &settings.amqp)?;
        let channel = connection.open_channel(None)?;
        let mut channel = ConfirmingChannel::new(channel)?;
        if let Some(broker) = &self.deps.broker {
            broker.set_up();
        }
        backoff.reset();
        let poll = Duration::from_millis(settings.outbox.poll_interval_ms);
        let retention = Duration::from_secs(settings.outbox.retention_secs);
        let purge_every = db::purge_interval(retention, HOUSEKEEPING_EVERY);
        let mut last_purge = Instant::now() - purge_every;
        loop {
            // Drain everything pending, a batch at a time, purging on the
            // way: sustained publishing must not starve retention.
            loop {
                let batch_size = settings.outbox.batch_size;
                let sent = publish_batch(
                    &mut pg,
                    &mut channel,
                    self.exchanges,
                    batch_size,
                    &self.metrics,
                )?;
                if last_purge.elapsed() >= purge_every {
                    last_purge = Instant::now();
                    purge_sent(&mut pg, retention);
                }
                if sent < batch_size {
                    break;
                }
            }
            if self.shutdown.is_triggered() {
                break;
            }
            crossbeam_channel::select! {
                recv(self.wakeups.0) -> _ => {}
                // At shutdown: one last drain above, then stop.
                recv(self.shutdown.channel()) -> _ => {}
                default(poll) => {
                    // Idle: make sure the broker is still there, so a lost
                    // connection shows in /readyz now, not at the next message.
                    channel.channel().exchange_declare_passive(crate::messages::PRODUCT_EXCHANGE)?;
                }
            }
        }
        channel.close();
        let _ = connection.close();
        Ok(())
    }
}

/// Claims up to `limit` unsent rows, publishes them, waits for the confirms,
/// marks them sent. Returns how many were sent.
fn publish_batch(
    pg: &mut PgConnection,
    channel: &mut ConfirmingChannel,
    exchanges: &[&str],
    limit: usize,
    metrics: &Metrics,
) -> Result<usize, RelayError> {
    let sent = pg.transaction::<_, RelayError, _>(|pg| {
        let rows: Vec<(i64, Uuid, String, String, String)> = outbox::table
            .filter(outbox::sent_at.is_null())
            .filter(outbox::exchange.eq_any(exchanges))
            .order(outbox::id)
            .limit(limit as i64)
            .select((
                outbox::id,
                outbox::message_id,
                outbox::exchange,
                outbox::routing_key,
                outbox::payload,
            ))
            .for_update()
            .skip_locked()
            .load(pg)?;
        if rows.is_empty() {
            return Ok(0);
        }
        for (_, message_id, exchange, routing_key, payload) in &rows {
            let properties = amqp::properties(&message_id.to_string());
            channel.publish(exchange, routing_key, payload.as_bytes(), properties)?;
        }
        channel.wait_for_confirms(CONFIRM_TIMEOUT)?;
        let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
        diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
            .set(outbox::sent_at.eq(diesel::dsl::now))
            .execute(pg)?;
        Ok(rows.len())
    })?;
    Metrics::add(&metrics.outbox_published, sent as u64);
    Ok(sent)
}

/// Deletes rows sent longer than `retention` ago.
fn purge_sent(pg: &mut PgConnection, retention: Duration) {
    const CHUNK: &str = "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
        WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1) LIMIT 5000)";
    match db::purge(pg, CHUNK, retention) {
        Ok(n) if n > 0 => log::debug!("purged {n} sent outbox rows"),
        Ok(_) => {}
        Err(e) => log::warn!("could not purge sent outbox rows: {e}"),
    }
}
