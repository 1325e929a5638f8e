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
use crate::db::fixed::fixed_sql;
use crate::db::processed::{self, Ledger};
use crate::db::schema::{commandes_produits, messages_traites, produits, reservations};
use crate::domain::{LineId, OrderId, ProductId, Version};
use crate::messages::DeadLetterClass;
use crate::outbox;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{
    Array, BigInt, Bool, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use std::collections::BTreeSet;
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
    let lines: BTreeSet<LineId> = changes
        .iter()
        .filter_map(|c| c.line)
        .map(|l| l.ligne_id)
        .collect();
    let lines: Vec<LineId> = lines.into_iter().collect();
    let reservations: Vec<(LineId, Option<ProductId>, i32, Version)> = reservations::table
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
    let products: Vec<ProductId> = products.into_iter().collect();
    // Locked products cannot be deleted before this transaction ends.
    let stock: Vec<(ProductId, i32)> = produits::table
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
    let recorded = processed::record(conn, Ledger::StockChanges, &ids)?;
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

/// Writes the plan: the lines' row locks, in id order, then every write in
/// one statement ([`Write`]: stock, reservations, movements, line
/// statuses, history), then the alerts and line events into the outbox.
/// Arrays, not one row per message: the SQL text is fixed whatever the
/// batch size, and prepared once per connection.
fn write(conn: &mut PgConnection, changes: &[StockChange], plan: &Plan) -> QueryResult<()> {
    if !plan.unrecorded.is_empty() {
        diesel::delete(messages_traites::table)
            .filter(messages_traites::message_id.eq_any(&plan.unrecorded))
            .execute(conn)?;
    }
    let mut rows = Write::of(plan);
    rows.stamp_history(changes, &plan.outcomes);
    // A line changed since (a newer version) or deleted is left alone by
    // the status update: its own message will set it.
    commandes_produits::table
        .filter(commandes_produits::id.eq_any(&rows.status_lines))
        .order(commandes_produits::id)
        .select(commandes_produits::id)
        .for_no_key_update()
        .load::<LineId>(conn)?;
    rows.execute(conn)?;
    outbox::enqueue_alerts(conn, &plan.alerts)?;
    outbox::enqueue_events(conn, &plan.events)
}

fixed_sql!(include_str!("write.sql"),
    /// Every write of a batch (`write.sql`), the plan's rows as its
    /// columns. The sub-statements touch different rows, so running them
    /// as one statement changes nothing but the round trips. Existing
    /// reservations (locked by [`load`]) are updated; new lines' are
    /// inserted: a concurrent batch that inserted the same new line first
    /// makes the insert fail, and this batch is rolled back and retried.
    #[derive(Default)]
    struct Write<'a> {
        stock_ids: Vec<ProductId> as Array<BigInt>,
        stock: Vec<i32> as Array<Integer>,
        reservation_lines: Vec<LineId> as Array<BigInt>,
        reservation_products: Vec<Option<ProductId>> as Array<Nullable<BigInt>>,
        reservation_quantities: Vec<i32> as Array<Integer>,
        reservation_versions: Vec<Version> as Array<BigInt>,
        reservation_new: Vec<bool> as Array<Bool>,
        movement_products: Vec<ProductId> as Array<BigInt>,
        movement_lines: Vec<Option<LineId>> as Array<Nullable<BigInt>>,
        movement_orders: Vec<OrderId> as Array<BigInt>,
        movement_messages: Vec<Option<Uuid>> as Array<Nullable<SqlUuid>>,
        movement_actions: Vec<&'static str> as Array<Text>,
        movement_deltas: Vec<i32> as Array<Integer>,
        movement_stock: Vec<i32> as Array<Integer>,
        movement_times: Vec<Option<DateTime<Utc>>> as Array<Nullable<Timestamptz>>,
        movement_requests: Vec<Option<&'a str>> as Array<Nullable<Text>>,
        status_lines: Vec<LineId> as Array<BigInt>,
        status_versions: Vec<Version> as Array<BigInt>,
        statuses: Vec<&'static str> as Array<Text>,
        history_messages: Vec<Uuid> as Array<SqlUuid>,
        history_lines: Vec<LineId> as Array<BigInt>,
        history_versions: Vec<Version> as Array<BigInt>,
        history_results: Vec<&'static str> as Array<Text>,
        history_reasons: Vec<Option<&'a str>> as Array<Nullable<Text>>,
    }
);

impl<'a> Write<'a> {
    /// The plan's rows; the history's are added by [`Write::stamp_history`].
    fn of(plan: &'a Plan) -> Write<'a> {
        let mut rows = Write::default();
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
        for (line, (version, status)) in &plan.line_statuses {
            rows.status_lines.push(*line);
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
    StampRefused {
        resultat: plan::REFUSED,
        motif: reason,
        message_id: line.message_id,
        ligne_id: line.ligne_id,
        version: line.version,
    }
    .execute(conn)
}

fixed_sql!(
    "UPDATE historique_lignes SET applique_le = statement_timestamp(), resultat = $1, motif = $2 \
      WHERE message_id = $3 AND ligne_id = $4 AND version = $5 AND applique_le IS NULL",
    /// The history row of one refused change, if not stamped yet.
    struct StampRefused<'a> {
        resultat: &'a str as Text,
        motif: &'a str as Text,
        message_id: Uuid as SqlUuid,
        ligne_id: LineId as BigInt,
        version: Version as BigInt,
    }
);

/// Forgets processed message ids older than `retention`. Safe: a tracked
/// message that old is also older than its line's applied version.
pub fn purge_processed(
    conn: &mut PgConnection,
    retention: std::time::Duration,
) -> QueryResult<usize> {
    processed::purge(conn, Ledger::StockChanges, retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixed::check;

    #[test]
    fn the_statements_are_numbered_as_their_fields() {
        check(&Write::default());
        check(&StampRefused {
            resultat: plan::REFUSED,
            motif: "m",
            message_id: Uuid::nil(),
            ligne_id: LineId(1),
            version: Version(1),
        });
    }
}
