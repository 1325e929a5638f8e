//! The database side of the validation saga: starting one, and advancing
//! sagas by a batch of line events or by their deadline — each in one
//! transaction, under the orders' row locks, so that one saga is advanced
//! by one `orders` replica at a time and never twice.
//!
//! Locks are taken through [`crate::orders::locks`], in its one order:
//! the order rows (by id), then their lines (by id, in one statement for
//! all the orders of a batch, as the worker locks a batch's lines). The
//! worker locks lines last and never an order, so none of these can
//! deadlock with it or with the API.

use super::machine::{Input, LineFact, LineProgress, Saga, Step};
use crate::db::fixed::fixed_sql;
use crate::db::processed::{self, Ledger};
use crate::db::schema::{
    commandes, commandes_produits, historique_lignes, produits, validation_lignes,
};
use crate::domain::transitions::{self, Request};
use crate::domain::{LineId, OrderId, ProductId, Version};
use crate::domain::{OrderStatus, StockStatus, ValidationStatus};
use crate::messages::{Action, LineEvent};
use crate::orders::locks::{bump_lines, bump_lines_of, lock_order_facts};
use crate::orders::model::{Order, OrderError};
use crate::orders::queries::find_order;
use crate::outbox;
use crate::request_id::RequestId;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// Starts the validation of order `id`: it must exist (404), be
/// `EN_ATTENTE`, never validated, and have lines (409). Every line is sent
/// to the worker again at a new version, marked as part of the validation,
/// so that the worker reports each outcome; the order's lines are frozen
/// until the validation ends, and it is refused after `timeout`.
pub fn start(
    conn: &mut PgConnection,
    request: &RequestId,
    id: OrderId,
    timeout: Duration,
) -> Result<Order, OrderError> {
    conn.transaction(|conn| {
        let facts = lock_order_facts(conn, id, true)?;
        transitions::decide(&facts, Request::Validate)?;
        let lines = bump_lines(conn, id)?;
        Begin {
            timeout_secs: timeout.as_secs_f64(),
            id,
        }
        .execute(conn)?;
        let rows: Vec<_> = lines
            .iter()
            .map(|l| {
                (
                    validation_lignes::commande_id.eq(id),
                    validation_lignes::ligne_id.eq(l.id),
                    validation_lignes::version.eq(l.version),
                    validation_lignes::produit_id.eq(l.produit_id),
                    validation_lignes::quantite.eq(l.quantite),
                )
            })
            .collect();
        diesel::insert_into(validation_lignes::table)
            .values(&rows)
            .execute(conn)?;
        // The line as it is (same product and quantity): the worker
        // re-checks its reservation under its locks, and tries again one
        // that was rejected.
        let messages: Vec<_> = lines
            .iter()
            .map(|l| {
                let mut m = l.message(Action::Updated, Some(l));
                m.validation = true;
                m
            })
            .collect();
        outbox::enqueue_stock(conn, request, &messages)?;
        find_order(conn, id)?.ok_or(OrderError::NotFound("order", id.get()))
    })
}

fixed_sql!(include_str!("start.sql"),
    /// Marks order `id` as being validated, until `timeout_secs` from now.
    struct Begin {
        timeout_secs: f64 as Double,
        id: OrderId as BigInt,
    }
);

/// What a batch did, for the logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Advanced {
    /// Per input, in order: its step (`None` for an event already applied).
    pub steps: Vec<(OrderId, Option<Step>)>,
    /// Whether compensation messages were written (wake the relay).
    pub wrote_messages: bool,
}

/// One line event as received: its message id, and the id of the request
/// behind it (the validation's), when it has a valid one.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub message_id: Uuid,
    pub request_id: Option<RequestId>,
    pub event: LineEvent,
}

/// Applies line events, in order, in one transaction: an event id applied
/// before is skipped; the others advance their orders' sagas.
pub fn apply_events(conn: &mut PgConnection, events: &[Received]) -> QueryResult<Advanced> {
    if events.is_empty() {
        return Ok(Advanced::default());
    }
    conn.transaction(|conn| {
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.message_id).collect();
        ids.sort();
        ids.dedup();
        // Recorded now: a concurrent batch with the same id waits here
        // until this one commits, then sees it as applied.
        let fresh = processed::record(conn, Ledger::LineEvents, &ids)?;
        let mut seen = HashSet::new();
        let inputs: Vec<Pending> = events
            .iter()
            .map(|e| {
                let new = fresh.contains(&e.message_id) && seen.insert(e.message_id);
                Pending {
                    order: e.event.commande_id,
                    input: new.then_some(Wake::Event),
                }
            })
            .collect();
        advance(conn, &inputs)
    })
}

/// Refuses validations past their deadline, up to `limit` of them (those
/// another replica is advancing are skipped); returns what it did.
pub fn time_out(conn: &mut PgConnection, limit: usize) -> QueryResult<Advanced> {
    conn.transaction(|conn| {
        let due: Vec<(OrderId, f64)> = ClaimDue {
            limit: limit as i64,
        }
        .load::<Due>(conn)?
        .into_iter()
        .map(|d| (d.id, d.after))
        .collect();
        let inputs: Vec<Pending> = due
            .iter()
            .map(|&(order, after)| {
                let after = Duration::from_secs_f64(after.max(0.0));
                Pending {
                    order,
                    input: Some(Wake::Deadline { after }),
                }
            })
            .collect();
        advance(conn, &inputs)
    })
}

fixed_sql!(include_str!("due.sql"),
    /// Locks up to `limit` validations past their deadline, skipping those
    /// locked elsewhere, in id order.
    struct ClaimDue {
        limit: i64 as BigInt,
    }
);

#[derive(QueryableByName)]
struct Due {
    #[diesel(sql_type = BigInt)]
    id: OrderId,
    #[diesel(sql_type = Double)]
    after: f64,
}

/// What woke one order's saga (`None`: an event applied before).
struct Pending {
    order: OrderId,
    input: Option<Wake>,
}

/// Why a saga is looked at.
#[derive(Clone, Copy)]
enum Wake {
    /// A line event named its order: the saga reads its lines' facts from
    /// the database (the event's body is never trusted).
    Event,
    /// Its deadline passed (`after` its start).
    Deadline { after: Duration },
}

/// Locks the sagas of `inputs`' orders, feeds each its inputs in order and
/// writes what they decided. An input of an order with no saga is ignored.
fn advance(conn: &mut PgConnection, inputs: &[Pending]) -> QueryResult<Advanced> {
    let orders: Vec<OrderId> = inputs
        .iter()
        .filter(|p| p.input.is_some())
        .map(|p| p.order)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut sagas = load(conn, &orders)?;
    let facts = line_facts(conn, &sagas)?;
    let before = sagas.clone();
    let mut advanced = Advanced::default();
    // Each refused order's motif.
    let mut refusals: BTreeMap<OrderId, String> = BTreeMap::new();
    let mut confirmed = Vec::new();
    for pending in inputs {
        let order = pending.order;
        let Some(input) = pending.input else {
            advanced.steps.push((order, None));
            continue;
        };
        let step = match sagas.get_mut(&order) {
            None => Step::Ignored("the order has no validation"),
            Some(saga) => {
                let seen = Input::Facts(facts.get(&order).map(Vec::as_slice).unwrap_or_default());
                let step = match input {
                    Wake::Event => saga.step(seen),
                    // What the worker wrote decides first: a late wake-up
                    // (the broker down, a backlog of events) does not turn
                    // an outcome already in the database into a timeout.
                    Wake::Deadline { after } => match saga.step(seen) {
                        decided @ (Step::Confirmed | Step::Refused(_)) => decided,
                        _ => saga.step(Input::Timeout { after }),
                    },
                };
                match &step {
                    Step::Confirmed => confirmed.push(order),
                    Step::Refused(motif) => {
                        refusals.insert(order, motif.clone());
                    }
                    _ => {}
                }
                step
            }
        };
        advanced.steps.push((order, Some(step)));
    }
    advanced.wrote_messages = compensate(conn, &refusals, &mut sagas)?;
    write_lines(conn, &before, &sagas)?;
    if !confirmed.is_empty() {
        diesel::update(commandes::table.filter(commandes::id.eq_any(&confirmed)))
            .set((
                commandes::validation.eq(ValidationStatus::Confirmee),
                commandes::statut.eq(OrderStatus::EnCours),
                commandes::validation_terminee_le.eq(now()),
            ))
            .execute(conn)?;
    }
    for (order, motif) in &refusals {
        diesel::update(commandes::table.find(order))
            .set((
                commandes::validation.eq(ValidationStatus::Refusee),
                commandes::statut.eq(OrderStatus::Annulee),
                commandes::motif.eq(motif),
                commandes::validation_terminee_le.eq(now()),
            ))
            .execute(conn)?;
    }
    Ok(advanced)
}

/// The compensation of the refused orders: every line of each released,
/// in this transaction (their locks taken in one statement, in line id
/// order), each release a message in the outbox; their sagas then wait for
/// each release. Returns whether messages were written.
fn compensate(
    conn: &mut PgConnection,
    refusals: &BTreeMap<OrderId, String>,
    sagas: &mut BTreeMap<OrderId, Saga>,
) -> QueryResult<bool> {
    if refusals.is_empty() {
        return Ok(false);
    }
    let orders: Vec<OrderId> = refusals.keys().copied().collect();
    let lines = bump_lines_of(conn, &orders)?;
    let mut wrote = false;
    for order in refusals.keys() {
        let mine: Vec<_> = lines.iter().filter(|l| l.commande_id == *order).collect();
        // The releases are the validation request's doing, as the server
        // recorded it: never an id a line event carried.
        let mut request = None;
        if let Some(saga) = sagas.get_mut(order) {
            request = validation_request(conn, saga)?;
            saga.refused(mine.iter().map(|l| (l.id, l.version)));
        }
        let messages: Vec<_> = mine
            .iter()
            .map(|l| {
                let mut m = l.message(Action::Deleted, None);
                m.validation = true;
                m
            })
            .collect();
        let request = request.unwrap_or_else(RequestId::generate);
        outbox::enqueue_stock(conn, &request, &messages)?;
        wrote |= !messages.is_empty();
    }
    Ok(wrote)
}

/// The server's id of the request that started `saga` (still at the
/// versions it validates): recorded in the history of its lines' change.
fn validation_request(conn: &mut PgConnection, saga: &Saga) -> QueryResult<Option<RequestId>> {
    let Some(line) = saga.lines.first() else {
        return Ok(None);
    };
    let recorded: Option<Option<String>> = historique_lignes::table
        .filter(historique_lignes::ligne_id.eq(line.ligne_id))
        .filter(historique_lignes::version.eq(line.version))
        .select(historique_lignes::request_id)
        .first(conn)
        .optional()?;
    Ok(recorded.flatten().and_then(|id| RequestId::parse(&id)))
}

/// The time of the decision (not the transaction's start: a batch may
/// wait on locks), for a nullable column.
fn now() -> diesel::expression::SqlLiteral<Nullable<diesel::sql_types::Timestamptz>> {
    diesel::dsl::sql("clock_timestamp()")
}

/// Locks the orders (by id) and reads their sagas.
fn load(conn: &mut PgConnection, orders: &[OrderId]) -> QueryResult<BTreeMap<OrderId, Saga>> {
    let states: Vec<(OrderId, Option<ValidationStatus>)> = commandes::table
        .filter(commandes::id.eq_any(orders))
        .order(commandes::id)
        .select((commandes::id, commandes::validation))
        .for_update()
        .load(conn)?;
    let mut sagas: BTreeMap<OrderId, Saga> = states
        .into_iter()
        .filter_map(|(id, state)| {
            Some((
                id,
                Saga {
                    commande_id: id,
                    state: state?,
                    lines: Vec::new(),
                },
            ))
        })
        .collect();
    let with_saga: Vec<OrderId> = sagas.keys().copied().collect();
    let lines: Vec<LineRow> = validation_lignes::table
        .filter(validation_lignes::commande_id.eq_any(&with_saga))
        .order((validation_lignes::commande_id, validation_lignes::ligne_id))
        .select(LineRow::as_select())
        .load(conn)?;
    for l in lines {
        if let Some(saga) = sagas.get_mut(&l.commande_id) {
            saga.lines.push(LineProgress {
                ligne_id: l.ligne_id,
                version: l.version,
                produit_id: l.produit_id,
                quantite: l.quantite,
                resultat: l.resultat.and_then(|r| StockStatus::parse(&r).ok()),
                disponible: l.disponible,
            });
        }
    }
    Ok(sagas)
}

/// What the database says now of the lines of `sagas`, by order: each
/// line's version and `statut_stock` (written by the worker in the
/// transaction that applied its stock) and its product's stock. One query
/// whatever the batch.
fn line_facts(
    conn: &mut PgConnection,
    sagas: &BTreeMap<OrderId, Saga>,
) -> QueryResult<BTreeMap<OrderId, Vec<LineFact>>> {
    let lines: Vec<LineId> = sagas
        .values()
        .flat_map(|s| s.lines.iter().map(|l| l.ligne_id))
        .collect();
    if lines.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(OrderId, LineId, Version, StockStatus, i32)> = commandes_produits::table
        .inner_join(produits::table)
        .filter(commandes_produits::id.eq_any(&lines))
        .select((
            commandes_produits::commande_id,
            commandes_produits::id,
            commandes_produits::version,
            commandes_produits::statut_stock,
            produits::quantite_en_stock,
        ))
        .load(conn)?;
    let mut facts: BTreeMap<OrderId, Vec<LineFact>> = BTreeMap::new();
    for (order, ligne_id, version, statut, disponible) in rows {
        facts.entry(order).or_default().push(LineFact {
            ligne_id,
            version,
            statut,
            disponible,
        });
    }
    Ok(facts)
}

/// A row of `validation_lignes`.
#[derive(Queryable, Selectable)]
#[diesel(table_name = validation_lignes, check_for_backend(diesel::pg::Pg))]
struct LineRow {
    commande_id: OrderId,
    ligne_id: LineId,
    version: Version,
    produit_id: ProductId,
    quantite: i32,
    resultat: Option<String>,
    disponible: Option<i32>,
}

/// Writes the lines whose progress changed, in one statement.
fn write_lines(
    conn: &mut PgConnection,
    before: &BTreeMap<OrderId, Saga>,
    after: &BTreeMap<OrderId, Saga>,
) -> QueryResult<()> {
    let mut orders = Vec::new();
    let mut lines = Vec::new();
    let mut versions = Vec::new();
    let mut results: Vec<Option<&'static str>> = Vec::new();
    let mut available = Vec::new();
    for (order, saga) in after {
        let old = &before[order].lines;
        for (line, was) in saga.lines.iter().zip(old) {
            if line != was {
                orders.push(*order);
                lines.push(line.ligne_id);
                versions.push(line.version);
                results.push(line.resultat.map(StockStatus::as_str));
                available.push(line.disponible);
            }
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    Progress {
        orders,
        lines,
        versions,
        results,
        available,
    }
    .execute(conn)?;
    Ok(())
}

fixed_sql!(include_str!("progress.sql"),
    /// The progress of validation lines, a row per element.
    struct Progress {
        orders: Vec<OrderId> as Array<BigInt>,
        lines: Vec<LineId> as Array<BigInt>,
        versions: Vec<Version> as Array<BigInt>,
        results: Vec<Option<&'static str>> as Array<Nullable<Text>>,
        available: Vec<Option<i32>> as Array<Nullable<Integer>>,
    }
);

/// Forgets applied event ids older than `retention` (a redelivery that old
/// finds its line's version moved on, or its saga over).
pub fn purge_applied(conn: &mut PgConnection, retention: Duration) -> QueryResult<usize> {
    processed::purge(conn, Ledger::LineEvents, retention)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixed::check;

    #[test]
    fn the_statements_are_numbered_as_their_fields() {
        check(&Begin {
            timeout_secs: 1.0,
            id: OrderId(1),
        });
        check(&ClaimDue { limit: 1 });
        check(&Progress {
            orders: vec![OrderId(1)],
            lines: vec![LineId(1)],
            versions: vec![Version(1)],
            results: vec![None],
            available: vec![None],
        });
    }
}
