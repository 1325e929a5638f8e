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
use crate::db::fixed::fixed_sql;
use crate::db::{self, Database};
use crate::dependencies::Dependencies;
use crate::logging;
use crate::messages::PRODUCT_EXCHANGE;
use crate::metrics::Metrics;
use crate::request_id::{self, RequestId};
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
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
            self.metrics.outbox.failed_batches.inc();
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
        let history_retention = Duration::from_secs(settings.outbox.history_retention_secs);
        let purge_every = db::purge_interval(retention.min(history_retention), HOUSEKEEPING_EVERY);
        let keeps_history = self.exchanges.contains(&PRODUCT_EXCHANGE);
        // None: never purged yet (an Instant in the past may not exist so
        // soon after boot).
        let mut last_purge: Option<Instant> = None;
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
                if last_purge.is_none_or(|t| t.elapsed() >= purge_every) {
                    last_purge = Some(Instant::now());
                    purge_sent(&mut pg, retention);
                    if keeps_history {
                        purge_history(&mut pg, history_retention);
                    }
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

fixed_sql!(include_str!("claim.sql"),
    /// Locks up to `limit` unsent rows bound for `exchanges`, in id order,
    /// skipping those another relay holds.
    struct Claim<'a> {
        exchanges: &'a [&'a str] as Array<Text>,
        limit: i64 as BigInt,
    }
);

/// A claimed outbox row.
#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
    #[diesel(sql_type = Text)]
    exchange: String,
    #[diesel(sql_type = Text)]
    routing_key: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    /// When the claim ran: after the rows committed, before they are
    /// published (so between accepted and applied).
    #[diesel(sql_type = Timestamptz)]
    claimed_at: chrono::DateTime<chrono::Utc>,
}

/// Claims up to `limit` unsent rows, publishes them, waits for the confirms,
/// marks them sent (and the lines' history published). Returns how many
/// were sent.
fn publish_batch(
    pg: &mut PgConnection,
    channel: &mut ConfirmingChannel,
    exchanges: &[&str],
    limit: usize,
    metrics: &Metrics,
) -> Result<usize, RelayError> {
    let sent = pg.transaction::<_, RelayError, _>(|pg| {
        let rows: Vec<Row> = Claim {
            exchanges,
            limit: limit as i64,
        }
        .load(pg)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        for row in &rows {
            let properties = properties(row.message_id, row.request_id.as_deref());
            channel.publish(
                &row.exchange,
                &row.routing_key,
                row.payload.as_bytes(),
                properties,
            )?;
        }
        channel.wait_for_confirms(CONFIRM_TIMEOUT)?;
        if log::log_enabled!(target: logging::FLOW, log::Level::Info) {
            for Row {
                message_id,
                exchange,
                request_id,
                ..
            } in &rows
            {
                let request_id = request_id.as_deref().unwrap_or("");
                log::info!(
                    target: logging::FLOW,
                    request_id, message_id:% = message_id, exchange = exchange.as_str();
                    "published to {exchange}"
                );
            }
        }
        metrics
            .outbox
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        // The history is the stock changes' (the worker's relay, which
        // publishes alerts, has no right to it).
        if exchanges.contains(&PRODUCT_EXCHANGE) {
            MarkPublished {
                ids: &ids,
                published_at: rows[0].claimed_at,
            }
            .execute(pg)?;
        } else {
            MarkSent { ids: &ids }.execute(pg)?;
        }
        Ok(rows.len())
    })?;
    metrics.outbox.published.inc_by(sent as u64);
    Ok(sent)
}

fixed_sql!(
    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1)",
    /// Marks the rows `ids` sent.
    struct MarkSent<'a> {
        ids: &'a [i64] as Array<BigInt>,
    }
);

fixed_sql!(include_str!("mark_published.sql"),
    /// Marks the rows `ids` sent, and their lines' history published. The
    /// history rows are locked in message id order, as the worker locks
    /// them when it stamps their outcome (it may be applying this very
    /// batch): the two never deadlock. `publie_le` is when the rows were
    /// claimed to be published (this statement runs once the broker
    /// confirmed them).
    struct MarkPublished<'a> {
        ids: &'a [i64] as Array<BigInt>,
        published_at: chrono::DateTime<chrono::Utc> as Timestamptz,
    }
);

/// A row's AMQP properties: persistent, its message id, and the id of the
/// request that wrote it as `correlation_id` and as a W3C `traceparent`.
fn properties(message_id: Uuid, request_id: Option<&str>) -> amiquip::AmqpProperties {
    let properties = amqp::properties(&message_id.to_string());
    match request_id.and_then(RequestId::parse) {
        Some(id) => {
            let mut headers = amiquip::FieldTable::default();
            headers.insert(
                request_id::TRACEPARENT.into(),
                amiquip::AmqpValue::LongString(id.traceparent(message_id)),
            );
            properties
                .with_correlation_id(id.as_str().into())
                .with_headers(headers)
        }
        None => properties,
    }
}

/// Forgets line history older than `retention`.
fn purge_history(pg: &mut PgConnection, retention: Duration) {
    match db::purge(pg, |secs| PurgeHistory { secs }, retention) {
        Ok(n) if n > 0 => log::debug!("purged {n} line history rows"),
        Ok(_) => {}
        Err(e) => log::warn!("could not purge line history: {e}"),
    }
}

/// Deletes rows sent longer than `retention` ago.
fn purge_sent(pg: &mut PgConnection, retention: Duration) {
    match db::purge(pg, |secs| PurgeSent { secs }, retention) {
        Ok(n) if n > 0 => log::debug!("purged {n} sent outbox rows"),
        Ok(_) => {}
        Err(e) => log::warn!("could not purge sent outbox rows: {e}"),
    }
}

fixed_sql!(
    "DELETE FROM historique_lignes WHERE message_id IN (SELECT message_id \
     FROM historique_lignes WHERE accepte_le < now() - make_interval(secs => $1) LIMIT 5000)",
    /// A chunk of the line history older than `secs`.
    struct PurgeHistory {
        secs: f64 as Double,
    }
);

fixed_sql!(
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
     WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => $1) LIMIT 5000)",
    /// A chunk of the rows sent longer than `secs` ago.
    struct PurgeSent {
        secs: f64 as Double,
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixed::check;

    #[test]
    fn the_statements_are_numbered_as_their_fields() {
        check(&Claim {
            exchanges: &[PRODUCT_EXCHANGE],
            limit: 1,
        });
        check(&MarkSent { ids: &[1] });
        check(&MarkPublished {
            ids: &[1],
            published_at: chrono::Utc::now(),
        });
        check(&PurgeHistory { secs: 1.0 });
        check(&PurgeSent { secs: 1.0 });
    }
}
