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
//! so one relay preserves the order of each queue's messages.
//!
//! With stock partitions (`amqp.stock_partitions` > 0), a stock change is
//! published to its product's partition ([`routing_key`]), whatever
//! routing key the row was written with: rows written before the
//! partitions existed go there too. A line moved to another product has
//! its next change in another partition; the worker's line versions order
//! them.
//!
//! Wake-up: this process's request handlers nudge the relay after every
//! commit that wrote messages; a slow poll (`outbox.poll_interval_ms`)
//! catches rows written elsewhere or left over after an outage.

use super::WakeUps;
use crate::amqp::{self, AmqpError, ConfirmingChannel, CONFIRM_TIMEOUT};
use crate::context::Context;
use crate::db::fixed::fixed_sql;
use crate::db::{self, Retention};
use crate::domain::ProductId;
use crate::logging;
use crate::messages::{stock_partition, stock_routing_key, PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY};
use crate::metrics::Metrics;
use crate::request_id::{self, RequestId};
use crate::retry::Backoff;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use std::borrow::Cow;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How often sent rows and line history are purged, at most.
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
    pub ctx: Context,
    pub wakeups: WakeUps,
    /// The exchanges of the rows this relay publishes (its broker user may
    /// publish to no other): the orders' stock changes, or a worker's alerts.
    pub exchanges: &'static [&'static str],
}

impl Relay {
    /// Runs until the shutdown, reconnecting with backoff.
    pub fn run(self) {
        let ctx = &self.ctx;
        if !ctx.db.wait_ready(&ctx.shutdown) {
            return;
        }
        let broker = ctx.deps.broker.clone().expect("the relay uses the broker");
        let mut backoff = Backoff::new(&ctx.settings.retry);
        let mut retention = self.retention();
        loop {
            match self.session(&mut backoff, &mut retention) {
                Ok(()) => return,
                Err(RelayError::Broker(e)) => broker.set_down(&e),
                Err(e) => ctx.deps.database.set_down(&e),
            }
            ctx.metrics.outbox.failed_batches.inc();
            if ctx.shutdown.sleep(backoff.next_delay()) {
                return;
            }
        }
    }

    /// The tables this relay forgets past their retention: the sent rows,
    /// and the line history when it publishes stock changes (the worker's
    /// relay, which publishes alerts, has no right to it).
    fn retention(&self) -> Vec<Retention> {
        let outbox = &self.ctx.settings.outbox;
        let table = |rows, delete_chunk, keep_secs| {
            let keep = Duration::from_secs(keep_secs);
            Retention::new(
                rows,
                delete_chunk,
                keep,
                HOUSEKEEPING_EVERY,
                log::Level::Debug,
            )
        };
        let sent = table("sent outbox rows", purge_sent, outbox.retention_secs);
        let history = table(
            "line history rows",
            purge_history,
            outbox.history_retention_secs,
        );
        match self.exchanges.contains(&PRODUCT_EXCHANGE) {
            true => vec![sent, history],
            false => vec![sent],
        }
    }

    fn session(
        &self,
        backoff: &mut Backoff,
        retention: &mut [Retention],
    ) -> Result<(), RelayError> {
        let ctx = &self.ctx;
        let settings = &ctx.settings;
        let mut pg = db::connect(&settings.database, &self.name)?;
        ctx.deps.database.set_up();
        let mut connection = amqp::connect(&settings.amqp, &self.name)?;
        amqp::ensure_topology(&mut connection, &settings.amqp)?;
        let channel = connection.open_channel(None)?;
        let mut channel = ConfirmingChannel::new(channel)?;
        if let Some(broker) = &ctx.deps.broker {
            broker.set_up();
        }
        backoff.reset();
        let poll = Duration::from_millis(settings.outbox.poll_interval_ms);
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
                    settings.amqp.stock_partitions,
                    &ctx.metrics,
                )?;
                for table in retention.iter_mut() {
                    table.purge_if_due(&mut pg);
                }
                if sent < batch_size {
                    break;
                }
            }
            if ctx.shutdown.is_triggered() {
                break;
            }
            crossbeam_channel::select! {
                recv(self.wakeups.0) -> _ => {}
                // At shutdown: one last drain above, then stop.
                recv(ctx.shutdown.channel()) -> _ => {}
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
    partitions: u16,
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
                &routing_key(row, partitions),
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

/// Where a row goes: its product's partition for a stock change when there
/// are partitions, else the routing key it was written with. A payload
/// without a readable product (none is written so) keeps its key: it goes
/// to `product_queue`, which the workers consume too.
fn routing_key(row: &Row, partitions: u16) -> Cow<'_, str> {
    #[derive(serde::Deserialize)]
    struct Product {
        produit_id: ProductId,
    }
    let stock = row.exchange == PRODUCT_EXCHANGE && row.routing_key == PRODUCT_ROUTING_KEY;
    if partitions == 0 || !stock {
        return Cow::Borrowed(&row.routing_key);
    }
    match serde_json::from_str::<Product>(&row.payload) {
        Ok(p) => Cow::Owned(stock_routing_key(stock_partition(p.produit_id, partitions))),
        Err(_) => Cow::Borrowed(&row.routing_key),
    }
}

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

/// Forgets a chunk-at-a-time of line history older than `keep` (for
/// [`Retention`]).
fn purge_history(conn: &mut PgConnection, keep: Duration) -> QueryResult<usize> {
    db::purge(conn, |secs| PurgeHistory { secs }, keep)
}

/// Deletes the rows sent longer than `keep` ago (for [`Retention`]).
fn purge_sent(conn: &mut PgConnection, keep: Duration) -> QueryResult<usize> {
    db::purge(conn, |secs| PurgeSent { secs }, keep)
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

    fn row(exchange: &str, routing_key: &str, payload: &str) -> Row {
        Row {
            id: 1,
            message_id: Uuid::nil(),
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            payload: payload.into(),
            request_id: None,
            claimed_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_stock_change_goes_to_its_products_partition_when_there_are_partitions() {
        let change = row(
            PRODUCT_EXCHANGE,
            PRODUCT_ROUTING_KEY,
            r#"{"produit_id":13,"quantite":2,"commande_id":1}"#,
        );
        assert_eq!(routing_key(&change, 0), "product.update");
        assert_eq!(routing_key(&change, 8), "product.update.5");
        assert_eq!(routing_key(&change, 1), "product.update.0");
        let unreadable = row(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, "{}");
        assert_eq!(routing_key(&unreadable, 8), "product.update");
        let event = row("order_events", "line.outcome", r#"{"produit_id":13}"#);
        assert_eq!(routing_key(&event, 8), "line.outcome");
    }
}
