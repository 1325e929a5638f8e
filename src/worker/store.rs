//! The database side of a batch: load the snapshot the stock rules need,
//! under row locks, then write the plan — all in one transaction, with a
//! fixed number of set-based statements whatever the batch size (never one
//! per message).
//!
//! Locks are taken in one fixed order — the batch's reservations by line,
//! then its products by id, then its lines by id — so concurrent batches
//! (other consumers, other workers) never deadlock, and no other batch, API
//! request or inventory correction can change a product's stock between
//! the read here and the write: stock is never read-modify-written across
//! transactions. `CHECK (quantite_en_stock >= 0)` stays as the last line of
//! defence.

use super::change::StockChange;
use super::plan::{self, Plan, Reservation, Snapshot};
use crate::db::schema::{messages_traites, mouvements, produits, reservations};
use crate::outbox;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Text};
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
        write(conn, &plan)?;
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
    let ids: Vec<Uuid> = changes
        .iter()
        .filter_map(|c| c.line.map(|l| l.message_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Recorded now, in this transaction: a concurrent batch with the same
    // id waits here until this one commits (then it sees a duplicate).
    let recorded: HashSet<Uuid> = diesel::insert_into(messages_traites::table)
        .values(
            ids.iter()
                .map(|id| messages_traites::message_id.eq(*id))
                .collect::<Vec<_>>(),
        )
        .on_conflict_do_nothing()
        .returning(messages_traites::message_id)
        .get_results(conn)?
        .into_iter()
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

/// Writes the plan: one statement per kind of row, each skipped when empty.
fn write(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    if !plan.unrecorded.is_empty() {
        diesel::delete(messages_traites::table)
            .filter(messages_traites::message_id.eq_any(&plan.unrecorded))
            .execute(conn)?;
    }
    write_stock(conn, plan)?;
    write_reservations(conn, plan)?;
    write_movements(conn, plan)?;
    write_line_statuses(conn, plan)?;
    outbox::enqueue_alerts(conn, &plan.alerts)
}

fn write_stock(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    if plan.stock.is_empty() {
        return Ok(());
    }
    let (ids, stock): (Vec<i64>, Vec<i32>) = plan.stock.iter().map(|(p, s)| (*p, *s)).unzip();
    diesel::sql_query(
        "UPDATE produits p SET quantite_en_stock = u.stock \
         FROM unnest($1, $2) AS u (id, stock) WHERE p.id = u.id",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Integer>, _>(stock)
    .execute(conn)?;
    Ok(())
}

#[derive(Insertable)]
#[diesel(table_name = reservations)]
struct ReservationRow {
    ligne_id: i64,
    produit_id: Option<i64>,
    quantite: i32,
    version: i64,
}

/// Existing reservations (locked by [`load`]) are updated; new lines' are
/// inserted. A concurrent batch that inserted the same new line first makes
/// the insert fail: this batch rolls back, is retried, and then sees it.
fn write_reservations(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    let (new, changed): (Vec<_>, Vec<_>) = plan
        .reservations
        .iter()
        .map(|(ligne_id, (r, is_new))| {
            let row = ReservationRow {
                ligne_id: *ligne_id,
                produit_id: r.produit_id,
                quantite: r.quantite,
                version: r.version,
            };
            (row, *is_new)
        })
        .partition(|(_, is_new)| *is_new);
    if !changed.is_empty() {
        let rows = changed.into_iter().map(|(row, _)| row);
        let (lines, products, quantities, versions) = unzip4(rows);
        diesel::sql_query(
            "UPDATE reservations r SET produit_id = u.p, quantite = u.q, version = u.v \
             FROM unnest($1, $2, $3, $4) AS u (l, p, q, v) WHERE r.ligne_id = u.l",
        )
        .bind::<Array<BigInt>, _>(lines)
        .bind::<Array<diesel::sql_types::Nullable<BigInt>>, _>(products)
        .bind::<Array<Integer>, _>(quantities)
        .bind::<Array<BigInt>, _>(versions)
        .execute(conn)?;
    }
    if !new.is_empty() {
        let rows: Vec<ReservationRow> = new.into_iter().map(|(row, _)| row).collect();
        diesel::insert_into(reservations::table)
            .values(&rows)
            .execute(conn)?;
    }
    Ok(())
}

fn unzip4(
    rows: impl Iterator<Item = ReservationRow>,
) -> (Vec<i64>, Vec<Option<i64>>, Vec<i32>, Vec<i64>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        out.0.push(row.ligne_id);
        out.1.push(row.produit_id);
        out.2.push(row.quantite);
        out.3.push(row.version);
    }
    out
}

#[derive(Insertable)]
#[diesel(table_name = mouvements)]
struct MovementRow {
    produit_id: i64,
    ligne_id: Option<i64>,
    commande_id: Option<i64>,
    message_id: Option<Uuid>,
    action: &'static str,
    delta: i32,
    quantite_en_stock: i32,
    occurred_at: Option<DateTime<Utc>>,
}

fn write_movements(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    if plan.movements.is_empty() {
        return Ok(());
    }
    let rows: Vec<MovementRow> = plan
        .movements
        .iter()
        .map(|m| MovementRow {
            produit_id: m.produit_id,
            ligne_id: m.ligne_id,
            commande_id: Some(m.commande_id),
            message_id: m.message_id,
            action: m.action.as_str(),
            delta: m.delta,
            quantite_en_stock: m.quantite_en_stock,
            occurred_at: m.occurred_at,
        })
        .collect();
    diesel::insert_into(mouvements::table)
        .values(&rows)
        .execute(conn)?;
    Ok(())
}

/// Line statuses last, lines locked in id order; a line changed since (a
/// newer version) or deleted is left alone: its own message will set it.
fn write_line_statuses(conn: &mut PgConnection, plan: &Plan) -> QueryResult<()> {
    if plan.line_statuses.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(plan.line_statuses.len());
    let mut versions = Vec::with_capacity(ids.capacity());
    let mut statuses = Vec::with_capacity(ids.capacity());
    for (id, (version, status)) in &plan.line_statuses {
        ids.push(*id);
        versions.push(*version);
        statuses.push(status.as_str());
    }
    diesel::sql_query(
        "WITH locked AS (SELECT id FROM commandes_produits WHERE id = ANY ($1) \
                          ORDER BY id FOR NO KEY UPDATE) \
         UPDATE commandes_produits c SET statut_stock = u.statut \
           FROM unnest($1, $2, $3) AS u (id, version, statut), locked \
          WHERE c.id = u.id AND locked.id = u.id AND c.version = u.version",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<BigInt>, _>(versions)
    .bind::<Array<Text>, _>(statuses)
    .execute(conn)?;
    Ok(())
}

/// Forgets processed message ids older than `retention_secs`. Safe: a
/// tracked message that old is also older than its line's applied version.
pub fn purge_processed(conn: &mut PgConnection, retention_secs: u64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM messages_traites WHERE message_id IN (SELECT message_id FROM messages_traites \
         WHERE traite_le < now() - make_interval(secs => $1) LIMIT 10000)",
    )
    .bind::<diesel::sql_types::Double, _>(retention_secs as f64)
    .execute(conn)
}
