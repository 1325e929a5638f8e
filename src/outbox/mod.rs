//! The transactional outbox: a message is written to the `outbox` table in
//! the same transaction as the change it describes, so it exists if and only
//! if the change committed. The relay publishes rows later, with publisher
//! confirms, and marks them sent only after the broker confirmed. Nothing
//! is published from inside a request.

pub mod relay;

use crate::db::schema::outbox;
use crate::messages::{
    StockAlert, StockMessage, ALERTS_EXCHANGE, PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY,
};
use crossbeam_channel::{Receiver, Sender};
use diesel::prelude::*;
use uuid::Uuid;

/// Nudges the relay of this process after a commit that wrote messages, so
/// they go out at once instead of at the next poll.
#[derive(Clone, Debug)]
pub struct Waker(Sender<()>);

/// The relay's end of [`Waker`].
#[derive(Clone, Debug)]
pub struct WakeUps(pub Receiver<()>);

pub fn wake_channel() -> (Waker, WakeUps) {
    // One pending wake-up is enough: the relay drains everything it finds.
    let (tx, rx) = crossbeam_channel::bounded(1);
    (Waker(tx), WakeUps(rx))
}

impl Waker {
    pub fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewRow<'a> {
    message_id: Uuid,
    exchange: &'a str,
    routing_key: &'a str,
    payload: String,
}

/// Writes stock messages; call inside the transaction of the change.
pub fn enqueue_stock(conn: &mut PgConnection, messages: &[StockMessage]) -> QueryResult<()> {
    let rows = messages
        .iter()
        .map(|m| {
            Ok(NewRow {
                message_id: m.message_id.unwrap_or_else(Uuid::new_v4),
                exchange: PRODUCT_EXCHANGE,
                routing_key: PRODUCT_ROUTING_KEY,
                payload: serde_json::to_string(m)
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?,
            })
        })
        .collect::<QueryResult<Vec<_>>>()?;
    insert(conn, rows)
}

/// Writes stock alerts; call inside the transaction that changed the stock.
pub fn enqueue_alerts(conn: &mut PgConnection, alerts: &[StockAlert]) -> QueryResult<()> {
    let rows = alerts
        .iter()
        .map(|a| {
            Ok(NewRow {
                message_id: Uuid::new_v4(),
                exchange: ALERTS_EXCHANGE,
                routing_key: "",
                payload: serde_json::to_string(a)
                    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?,
            })
        })
        .collect::<QueryResult<Vec<_>>>()?;
    insert(conn, rows)
}

/// How far behind the relays are: unsent rows, and the age in seconds of
/// the oldest one (0 when none waits).
#[derive(Debug, Clone, Copy, PartialEq, diesel::QueryableByName)]
pub struct Backlog {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub unsent: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub oldest_secs: f64,
}

pub fn backlog(conn: &mut PgConnection) -> QueryResult<Backlog> {
    diesel::sql_query(
        "SELECT count(*) AS unsent, \
                coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_secs \
           FROM outbox WHERE sent_at IS NULL",
    )
    .get_result(conn)
}

fn insert(conn: &mut PgConnection, rows: Vec<NewRow<'_>>) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(outbox::table)
        .values(&rows)
        .execute(conn)?;
    Ok(())
}
