//! The transactional outbox: a message is written to the `outbox` table in
//! the same transaction as the change it describes, so it exists if and only
//! if the change committed. The relay publishes rows later, with publisher
//! confirms, and marks them sent only after the broker confirmed. Nothing
//! is published from inside a request.

pub mod relay;

use crate::db::fixed::fixed_sql;
use crate::domain::{LineId, OrderId, ProductId, Version};
use crate::messages::{
    LineEvent, StockAlert, StockMessage, ALERTS_EXCHANGE, ORDER_EVENTS_EXCHANGE,
    ORDER_EVENTS_ROUTING_KEY, PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY,
};
use crate::request_id::RequestId;
use crossbeam_channel::{Receiver, Sender};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Uuid as SqlUuid};
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

fn json<T: serde::Serialize>(value: &T) -> QueryResult<String> {
    serde_json::to_string(value).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))
}

/// Writes stock messages, each keeping the id of the request that caused
/// it, and a history row for each line change; call inside the transaction
/// of the change. One statement, whatever the number of messages.
pub fn enqueue_stock(
    conn: &mut PgConnection,
    request: &RequestId,
    messages: &[StockMessage],
) -> QueryResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let rows = StockRows::new(messages.iter().map(|m| (m, request)))?;
    Enqueue::new(Always, &rows).execute(conn)?;
    Ok(())
}

/// [`enqueue_stock`] for the changes of several requests at once (a
/// group commit): each message keeps the id of its own request.
pub fn enqueue_stock_of(
    conn: &mut PgConnection,
    changes: &[(&RequestId, StockMessage)],
) -> QueryResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let rows = StockRows::new(changes.iter().map(|(request, m)| (m, *request)))?;
    Enqueue::new(Always, &rows).execute(conn)?;
    Ok(())
}

/// [`enqueue_stock`] after `guard`, as one statement: atomic on its own,
/// outside any transaction, in one round trip. The messages, line changes
/// only (each with its line and version, so each has a history row), are
/// written only if `guard` returns a row; returns whether it did.
pub fn enqueue_stock_if<G: Guard>(
    conn: &mut PgConnection,
    request: &RequestId,
    messages: &[StockMessage],
    guard: G,
) -> QueryResult<bool> {
    let rows = StockRows::new(messages.iter().map(|m| (m, request)))?;
    if messages.is_empty() || rows.history_ids.len() != messages.len() {
        // Whether the guard passed is read from the history rows written.
        return Err(diesel::result::Error::QueryBuilderError(
            "enqueue_stock_if takes line changes only, at least one".into(),
        ));
    }
    let history_rows = Enqueue::new(guard, &rows).execute(conn)?;
    Ok(history_rows > 0)
}

/// What a guarded enqueue runs first: SQL common table expressions, the
/// last one named `guard`, with their bind parameters. A guard is a type
/// with a static query id of its own (`#[derive(QueryId)]`: diesel keys
/// its statement cache on it, so two guards must never share one), so that
/// the statement is prepared once per connection and its plan reused (an ad hoc `sql_query` is parsed and
/// planned at every call, which costs as much as running it).
pub trait Guard: QueryFragment<Pg> + QueryId {
    /// Whether the rows wait on the guard.
    const GATED: bool = true;
}

/// No guard: the rows are written.
#[derive(QueryId)]
struct Always;

impl QueryFragment<Pg> for Always {
    fn walk_ast<'b>(&'b self, _: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Ok(())
    }
}

impl Guard for Always {
    const GATED: bool = false;
}

/// Outbox rows bound for one exchange and routing key, in order (the relay
/// publishes by id): arrays, one element per row, so that the statement is
/// the same for any number. The one way the outbox table is written —
/// stock messages ([`Enqueue`], with their history), alerts and line events
/// (alone).
struct Queue<'a> {
    exchange: &'static str,
    routing_key: &'static str,
    ids: Vec<Uuid>,
    payloads: Vec<String>,
    /// The id of the request behind each row.
    requests: Vec<Option<&'a str>>,
}

impl<'a> Queue<'a> {
    fn new(exchange: &'static str, routing_key: &'static str) -> Self {
        Queue {
            exchange,
            routing_key,
            ids: Vec::new(),
            payloads: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// Adds a row for `message` (serialized as JSON).
    fn push<T: serde::Serialize>(
        &mut self,
        id: Uuid,
        message: &T,
        request: Option<&'a str>,
    ) -> QueryResult<()> {
        self.ids.push(id);
        self.payloads.push(json(message)?);
        self.requests.push(request);
        Ok(())
    }

    /// The `INSERT`, its rows written only if `gate` (a `WHERE` clause, or
    /// nothing) holds.
    fn walk_insert<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, gate: &str) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO outbox (message_id, exchange, routing_key, payload, request_id) SELECT m, ",
        );
        out.push_bind_param::<Text, _>(self.exchange)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.routing_key)?;
        out.push_sql(", p, r FROM unnest(");
        out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.payloads)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.requests)?;
        out.push_sql(") WITH ORDINALITY AS u (m, p, r, n)");
        out.push_sql(gate);
        out.push_sql(" ORDER BY n");
        Ok(())
    }
}

impl QueryFragment<Pg> for Queue<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.walk_insert(&mut out, "")
    }
}

impl QueryId for Queue<'_> {
    type QueryId = Queue<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl RunQueryDsl<PgConnection> for Queue<'_> {}

/// Stock messages as the outbox and history rows that carry them.
struct StockRows<'a> {
    queue: Queue<'a>,
    history_ids: Vec<Uuid>,
    lines: Vec<LineId>,
    orders: Vec<OrderId>,
    versions: Vec<Version>,
    actions: Vec<&'static str>,
    products: Vec<ProductId>,
    quantities: Vec<i32>,
    /// The request behind each history row, and the id its client sent.
    requests: Vec<&'a str>,
    client_requests: Vec<Option<&'a str>>,
}

impl<'a> StockRows<'a> {
    /// Rows for messages, each with the request that caused it.
    fn new(messages: impl Iterator<Item = (&'a StockMessage, &'a RequestId)>) -> QueryResult<Self> {
        let mut rows = StockRows {
            queue: Queue::new(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY),
            history_ids: Vec::new(),
            lines: Vec::new(),
            orders: Vec::new(),
            versions: Vec::new(),
            actions: Vec::new(),
            products: Vec::new(),
            quantities: Vec::new(),
            requests: Vec::new(),
            client_requests: Vec::new(),
        };
        for (m, request) in messages {
            let message_id = m.message_id.unwrap_or_else(Uuid::new_v4);
            rows.queue.push(message_id, m, Some(request.as_str()))?;
            if let (Some(line), Some(version)) = (m.ligne_id, m.version) {
                rows.history_ids.push(message_id);
                rows.lines.push(line);
                rows.orders.push(m.commande_id);
                rows.versions.push(version);
                rows.actions.push(m.action.as_str());
                rows.products.push(m.produit_id);
                rows.quantities.push(m.quantite);
                rows.requests.push(request.as_str());
                rows.client_requests.push(request.client());
            }
        }
        Ok(rows)
    }
}

/// The outbox rows in the messages' order (the relay publishes by id), and
/// the lines' history rows, in one statement; after the guard's
/// expressions, and only if it returns a row, when gated.
struct Enqueue<'a, G> {
    guard: G,
    rows: &'a StockRows<'a>,
}

impl<'a, G: Guard> Enqueue<'a, G> {
    fn new(guard: G, rows: &'a StockRows<'a>) -> Self {
        Enqueue { guard, rows }
    }
}

impl<G: Guard> QueryFragment<Pg> for Enqueue<'_, G> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let (rows, gate) = (
            self.rows,
            if G::GATED {
                " WHERE EXISTS (SELECT 1 FROM guard)"
            } else {
                ""
            },
        );
        out.push_sql("WITH ");
        if G::GATED {
            self.guard.walk_ast(out.reborrow())?;
            out.push_sql(", ");
        }
        out.push_sql("queued AS (");
        rows.queue.walk_insert(&mut out, gate)?;
        out.push_sql(
            " RETURNING 1) \
             INSERT INTO historique_lignes (message_id, ligne_id, commande_id, version, action, \
                                            produit_id, quantite, request_id, client_request_id) \
             SELECT m, l, c, v, a, p, q, r, cr FROM unnest(",
        );
        out.push_bind_param::<Array<SqlUuid>, _>(&rows.history_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&rows.lines)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&rows.orders)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&rows.versions)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&rows.actions)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&rows.products)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Integer>, _>(&rows.quantities)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&rows.requests)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&rows.client_requests)?;
        out.push_sql(") AS u (m, l, c, v, a, p, q, r, cr)");
        out.push_sql(gate);
        Ok(())
    }
}

impl<G: Guard> QueryId for Enqueue<'_, G> {
    type QueryId = Enqueue<'static, G::QueryId>;
    const HAS_STATIC_QUERY_ID: bool = G::HAS_STATIC_QUERY_ID;
}

impl<G> RunQueryDsl<PgConnection> for Enqueue<'_, G> {}

/// Writes stock alerts; call inside the transaction that changed the stock.
pub fn enqueue_alerts(conn: &mut PgConnection, alerts: &[StockAlert]) -> QueryResult<()> {
    if alerts.is_empty() {
        return Ok(());
    }
    let mut queue = Queue::new(ALERTS_EXCHANGE, "");
    for alert in alerts {
        queue.push(Uuid::new_v4(), alert, None)?;
    }
    queue.execute(conn)?;
    Ok(())
}

/// Writes the line events of an order validation, each keeping the id of
/// the request behind its change; call inside the transaction that applied
/// the changes. One statement, whatever the number of events.
pub fn enqueue_events(
    conn: &mut PgConnection,
    events: &[(LineEvent, Option<RequestId>)],
) -> QueryResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut queue = Queue::new(ORDER_EVENTS_EXCHANGE, ORDER_EVENTS_ROUTING_KEY);
    for (event, request) in events {
        queue.push(Uuid::new_v4(), event, request.as_ref().map(|r| r.as_str()))?;
    }
    queue.execute(conn)?;
    Ok(())
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

/// Of the rows bound for `exchanges` (each relay's own: orders and workers
/// share the table).
pub fn backlog(conn: &mut PgConnection, exchanges: &[&str]) -> QueryResult<Backlog> {
    ReadBacklog { exchanges }.get_result(conn)
}

fixed_sql!(
    "SELECT count(*) AS unsent, \
            coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_secs \
       FROM outbox WHERE sent_at IS NULL AND exchange = ANY($1)",
    /// The [`Backlog`] of the rows bound for `exchanges`.
    struct ReadBacklog<'a> {
        exchanges: &'a [&'a str] as Array<Text>,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_numbered_as_its_fields() {
        crate::db::fixed::check(&ReadBacklog {
            exchanges: &[ALERTS_EXCHANGE],
        });
    }

    /// Stock messages, alerts and line events write the outbox with one
    /// fragment: only the guard and the history around it differ.
    #[test]
    fn every_message_writes_the_outbox_the_same_way() {
        let sql = |q: &dyn QueryFragment<Pg>| {
            let mut builder = diesel::pg::PgQueryBuilder::default();
            q.to_sql(&mut builder, &Pg).unwrap();
            diesel::query_builder::QueryBuilder::finish(builder)
        };
        let alerts = sql(&Queue::new(ALERTS_EXCHANGE, ""));
        let events = sql(&Queue::new(ORDER_EVENTS_EXCHANGE, ORDER_EVENTS_ROUTING_KEY));
        assert_eq!(alerts, events);
        let rows = StockRows::new(std::iter::empty()).unwrap();
        let stock = sql(&Enqueue::new(Always, &rows));
        assert!(
            stock.contains(&format!("queued AS ({alerts} RETURNING 1)")),
            "{stock}"
        );
    }
}
