//! The database side of a batch: load the snapshot the stock rules need,
//! under row locks, then write the plan — all in one transaction, with a
//! fixed number of set-based statements whatever the batch size (never one
//! per message): lock the reservations, lock the products, record the
//! message ids, lock the lines, write everything, and the alerts and the
//! order-validation line events if any.
//!
//! Locks are taken in one fixed order — the batch's reservations by line,
//! then its products by id, then its lines by id — so concurrent batches
//! (other consumers, other workers) never deadlock, and no other batch, API
//! request or inventory correction can change a product's stock between
//! the read here and the write: stock is never read-modify-written across
//! transactions. `CHECK (quantite_en_stock >= 0)` stays as the last line of
//! defence.

use super::change::{LineRef, StockChange};
use super::plan::{self, Outcome, Plan, Reservation, Snapshot};
use crate::db::schema::{commandes_produits, messages_traites, produits, reservations};
use crate::messages::DeadLetterClass;
use crate::outbox;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

/// Applies `changes`, in order, in one transaction; returns the plan that
/// was written (its outcomes say what became of each change). Alerts go to
/// the outbox in the same transaction.
pub fn apply(
    conn: &mut PgConnection,
    changes: &[StockChange],
    low_threshold: i32,
) -> QueryResult<Plan> {
    if changes.is_empty() {
        return Ok(Plan::default());
    }
    conn.transaction(|conn| {
        let snapshot = load(conn, changes)?;
        let plan = plan::plan(changes, &snapshot, low_threshold);
        write(conn, changes, &plan)?;
        Ok(plan)
    })
}

/// Locks and reads what the batch touches, and records its message ids as
/// processed (those already there were processed before).
fn load(conn: &mut PgConnection, changes: &[StockChange]) -> QueryResult<Snapshot> {
    let lines: BTreeSet<i64> = changes
        .iter()
        .filter_map(|c| c.line)
        .map(|l| l.ligne_id)
        .collect();
    let lines: Vec<i64> = lines.into_iter().collect();
    let reservations: Vec<(i64, Option<i64>, i32, i64)> = reservations::table
        .filter(reservations::ligne_id.eq_any(&lines))
        .order(reservations::ligne_id)
        .select((
            reservations::ligne_id,
            reservations::produit_id,
            reservations::quantite,
            reservations::version,
        ))
        .for_update()
        .load(conn)?;
    let mut products = BTreeSet::new();
    for change in changes {
        products.insert(change.produit_id);
        products.extend(change.ancien.map(|(p, _)| p));
    }
    products.extend(reservations.iter().filter_map(|r| r.1));
    let products: Vec<i64> = products.into_iter().collect();
    // Locked products cannot be deleted before this transaction ends.
    let stock: Vec<(i64, i32)> = produits::table
        .filter(produits::id.eq_any(&products))
        .order(produits::id)
        .select((produits::id, produits::quantite_en_stock))
        .for_no_key_update()
        .load(conn)?;
    // Sorted: batches sharing ids (redeliveries) record them in one order.
    let ids: Vec<Uuid> = changes
        .iter()
        .filter_map(|c| c.line.map(|l| l.message_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Recorded now, in this transaction: a concurrent batch with the same
    // id waits here until this one commits (then it sees a duplicate).
    let recorded: HashSet<Uuid> = diesel::sql_query(
        "INSERT INTO messages_traites (message_id) SELECT unnest($1) \
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind::<Array<SqlUuid>, _>(&ids)
    .load::<Recorded>(conn)?
    .into_iter()
    .map(|r| r.message_id)
    .collect();
    Ok(Snapshot {
        stock: stock.into_iter().collect(),
        reservations: reservations
            .into_iter()
            .map(|(ligne_id, produit_id, quantite, version)| {
                let reservation = Reservation {
                    produit_id,
                    quantite,
                    version,
                };
                (ligne_id, reservation)
            })
            .collect(),
        processed: ids
            .into_iter()
            .filter(|id| !recorded.contains(id))
            .collect(),
    })
}

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
}

/// Writes the plan: the lines' row locks, in id order, then every write in
/// one statement (stock, reservations, movements, line statuses), then the
/// alerts into the outbox. Arrays, not one row per message: the SQL text is
/// fixed (its prepared statement is reused) whatever the batch size.
fn write(conn: &mut PgConnection, changes: &[StockChange], plan: &Plan) -> QueryResult<()> {
    if !plan.unrecorded.is_empty() {
        diesel::delete(messages_traites::table)
            .filter(messages_traites::message_id.eq_any(&plan.unrecorded))
            .execute(conn)?;
    }
    let lines: Vec<i64> = plan.line_statuses.keys().copied().collect();
    // A line changed since (a newer version) or deleted is left alone by
    // the status update: its own message will set it.
    commandes_produits::table
        .filter(commandes_produits::id.eq_any(&lines))
        .order(commandes_produits::id)
        .select(commandes_produits::id)
        .for_no_key_update()
        .load::<i64>(conn)?;
    let mut rows = Rows::of(plan);
    rows.stamp_history(changes, &plan.outcomes);
    diesel::sql_query(WRITE)
        .bind::<Array<BigInt>, _>(rows.stock_ids)
        .bind::<Array<Integer>, _>(rows.stock)
        .bind::<Array<BigInt>, _>(rows.reservation_lines)
        .bind::<Array<Nullable<BigInt>>, _>(rows.reservation_products)
        .bind::<Array<Integer>, _>(rows.reservation_quantities)
        .bind::<Array<BigInt>, _>(rows.reservation_versions)
        .bind::<Array<Bool>, _>(rows.reservation_new)
        .bind::<Array<BigInt>, _>(rows.movement_products)
        .bind::<Array<Nullable<BigInt>>, _>(rows.movement_lines)
        .bind::<Array<BigInt>, _>(rows.movement_orders)
        .bind::<Array<Nullable<SqlUuid>>, _>(rows.movement_messages)
        .bind::<Array<Text>, _>(rows.movement_actions)
        .bind::<Array<Integer>, _>(rows.movement_deltas)
        .bind::<Array<Integer>, _>(rows.movement_stock)
        .bind::<Array<Nullable<Timestamptz>>, _>(rows.movement_times)
        .bind::<Array<BigInt>, _>(lines)
        .bind::<Array<BigInt>, _>(rows.status_versions)
        .bind::<Array<Text>, _>(rows.statuses)
        .bind::<Array<Nullable<Text>>, _>(rows.movement_requests)
        .bind::<Array<SqlUuid>, _>(rows.history_messages)
        .bind::<Array<BigInt>, _>(rows.history_lines)
        .bind::<Array<BigInt>, _>(rows.history_versions)
        .bind::<Array<Text>, _>(rows.history_results)
        .bind::<Array<Nullable<Text>>, _>(rows.history_reasons)
        .execute(conn)?;
    outbox::enqueue_alerts(conn, &plan.alerts)?;
    outbox::enqueue_events(conn, &plan.events)
}

/// Every write of a batch. The sub-statements touch different rows, so
/// running them as one statement changes nothing but the round trips.
/// Existing reservations (locked by [`load`]) are updated; new lines' are
/// inserted: a concurrent batch that inserted the same new line first makes
/// the insert fail, and this batch is rolled back and retried.
const WRITE: &str = "\
WITH stock AS (
    UPDATE produits p SET quantite_en_stock = u.stock
      FROM unnest($1, $2) AS u (id, stock) WHERE p.id = u.id
    RETURNING 1
), reservation AS (
    SELECT * FROM unnest($3, $4, $5, $6, $7) AS u (l, p, q, v, is_new)
), changed AS (
    UPDATE reservations r SET produit_id = u.p, quantite = u.q, version = u.v
      FROM reservation u WHERE r.ligne_id = u.l AND NOT u.is_new
    RETURNING 1
), added AS (
    INSERT INTO reservations (ligne_id, produit_id, quantite, version)
    SELECT l, p, q, v FROM reservation WHERE is_new ORDER BY l
    RETURNING 1
), moved AS (
    INSERT INTO mouvements (produit_id, ligne_id, commande_id, message_id, action, delta,
                            quantite_en_stock, occurred_at, request_id)
    SELECT p, l, c, m, a, d, s, o, r
      FROM unnest($8, $9, $10, $11, $12, $13, $14, $15, $19)
           WITH ORDINALITY AS u (p, l, c, m, a, d, s, o, r, n)
     ORDER BY n
    RETURNING 1
), status AS (
    UPDATE commandes_produits c SET statut_stock = u.statut
      FROM unnest($16, $17, $18) AS u (id, version, statut)
     WHERE c.id = u.id AND c.version = u.version
    RETURNING 1
), stamped AS (
    SELECT * FROM unnest($20, $21, $22, $23, $24) AS u (id, l, v, r, m)
), locked AS (
    -- In message id order, as the relay locks them (no deadlock with it);
    -- a change's first outcome stays (a redelivery after its id was
    -- forgotten is stale, not news), and only the row of this line and
    -- version is touched.
    SELECT h.message_id FROM historique_lignes h JOIN stamped u
        ON h.message_id = u.id AND h.ligne_id = u.l AND h.version = u.v
     WHERE h.applique_le IS NULL
     ORDER BY h.message_id FOR UPDATE OF h
), history AS (
    UPDATE historique_lignes h SET applique_le = statement_timestamp(), resultat = u.r, motif = u.m
      FROM stamped u JOIN locked ON locked.message_id = u.id
     WHERE h.message_id = u.id
    RETURNING 1
)
SELECT 1";

/// The plan's rows as the columns [`WRITE`] takes.
#[derive(Default)]
struct Rows<'a> {
    stock_ids: Vec<i64>,
    stock: Vec<i32>,
    reservation_lines: Vec<i64>,
    reservation_products: Vec<Option<i64>>,
    reservation_quantities: Vec<i32>,
    reservation_versions: Vec<i64>,
    reservation_new: Vec<bool>,
    movement_products: Vec<i64>,
    movement_lines: Vec<Option<i64>>,
    movement_orders: Vec<i64>,
    movement_messages: Vec<Option<Uuid>>,
    movement_actions: Vec<&'static str>,
    movement_deltas: Vec<i32>,
    movement_stock: Vec<i32>,
    movement_times: Vec<Option<DateTime<Utc>>>,
    status_versions: Vec<i64>,
    statuses: Vec<&'static str>,
    movement_requests: Vec<Option<&'a str>>,
    history_messages: Vec<Uuid>,
    history_lines: Vec<i64>,
    history_versions: Vec<i64>,
    history_results: Vec<&'static str>,
    history_reasons: Vec<Option<&'a str>>,
}

impl<'a> Rows<'a> {
    fn of(plan: &'a Plan) -> Rows<'a> {
        let mut rows = Rows::default();
        for (id, stock) in &plan.stock {
            rows.stock_ids.push(*id);
            rows.stock.push(*stock);
        }
        for (line, (reservation, is_new)) in &plan.reservations {
            rows.reservation_lines.push(*line);
            rows.reservation_products.push(reservation.produit_id);
            rows.reservation_quantities.push(reservation.quantite);
            rows.reservation_versions.push(reservation.version);
            rows.reservation_new.push(*is_new);
        }
        for m in &plan.movements {
            rows.movement_products.push(m.produit_id);
            rows.movement_lines.push(m.ligne_id);
            rows.movement_orders.push(m.commande_id);
            rows.movement_messages.push(m.message_id);
            rows.movement_actions.push(m.action.as_str());
            rows.movement_deltas.push(m.delta);
            rows.movement_stock.push(m.quantite_en_stock);
            rows.movement_times.push(m.occurred_at);
            rows.movement_requests
                .push(m.request_id.as_ref().map(|r| r.as_str()));
        }
        for (version, status) in plan.line_statuses.values() {
            rows.status_versions.push(*version);
            rows.statuses.push(status.as_str());
        }
        rows
    }

    /// The outcome of each tracked change, for its line's history (a
    /// duplicate leaves the first outcome as it was).
    fn stamp_history(&mut self, changes: &[StockChange], outcomes: &'a [Outcome]) {
        for (change, outcome) in changes.iter().zip(outcomes) {
            let Some(line) = change.line else { continue };
            // A duplicate leaves the first outcome; the seed format has no line.
            if matches!(outcome, Outcome::Duplicate | Outcome::Applied(None)) {
                continue;
            }
            let reason = match outcome {
                // A fixed text per class: the detail is the dead letter's.
                Outcome::DeadLetter(refusal) => Some(refusal.class.motif()),
                _ => None,
            };
            self.history_messages.push(line.message_id);
            self.history_lines.push(line.ligne_id);
            self.history_versions.push(line.version);
            let result = outcome.word();
            self.history_results.push(result);
            self.history_reasons.push(reason);
        }
    }
}

/// Stamps a change the database refused (dead-lettered alone, after its
/// batch's transaction rolled back) in its line's history, with the fixed
/// text of its class: the database's message is for the dead letter and
/// the log, not for a history anyone may read.
pub fn stamp_refused(conn: &mut PgConnection, line: LineRef) -> QueryResult<usize> {
    let reason = DeadLetterClass::Refused.motif();
    diesel::sql_query(
        "UPDATE historique_lignes SET applique_le = statement_timestamp(), resultat = $4, motif = $5 \
          WHERE message_id = $1 AND ligne_id = $2 AND version = $3 AND applique_le IS NULL",
    )
    .bind::<SqlUuid, _>(line.message_id)
    .bind::<BigInt, _>(line.ligne_id)
    .bind::<BigInt, _>(line.version)
    .bind::<Text, _>(plan::REFUSED)
    .bind::<Text, _>(reason)
    .execute(conn)
}

/// Forgets a chunk of processed message ids older than `$1` seconds (for
/// [`crate::db::Retention`]). Safe: a tracked message that old is also
/// older than its line's applied version.
pub const FORGET_PROCESSED: &str = "DELETE FROM messages_traites WHERE message_id IN \
    (SELECT message_id FROM messages_traites \
      WHERE traite_le < now() - make_interval(secs => $1) LIMIT 5000)";
