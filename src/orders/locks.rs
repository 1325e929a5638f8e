//! The row locks of orders and their lines, in one place: the API's
//! order and line changes ([`super::queries`]) and the validation saga
//! ([`crate::saga::store`]) both take them only through here.
//!
//! **The lock order.** A transaction locks the order row first, then its
//! lines, by id (several lines in one statement, in id order). The stock
//! worker locks lines last and never an order row. So two API requests, a
//! request and a saga batch, or any of them and a worker batch never wait
//! on each other in a cycle: whoever holds an order row holds nothing a
//! holder of only lines is waiting for, and lines are always taken in one
//! order. Changing this order in one place and not in the others is how
//! deadlocks come back — hence one module.
//!
//! Several order rows are always locked in id order: a group commit of new
//! lines locks all of its orders at once; moving a line locks its order and
//! the one it moves to, the lower id first, then the line.

use super::model::{LineRow, OrderError, OrderRow};
use crate::db::schema::{commandes, commandes_produits};
use crate::domain::limits::LINES_PER_ORDER_MAX;
use crate::domain::transitions::{self, LineStates, OrderFacts, Request};
use crate::domain::{FieldError, LineId, OrderId};
use crate::domain::{OrderStatus, StockStatus, ValidationStatus};
use diesel::prelude::*;

/// Locks order `id` (404 if missing) and reads its row.
fn lock_order(conn: &mut PgConnection, id: OrderId) -> Result<OrderRow, OrderError> {
    commandes::table
        .find(id)
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order", id.get()))
}

/// Locks the lines of an order, by id, bumps their version and sets them
/// `EN_ATTENTE` (a message about each is going to the worker); returns them
/// by id.
pub(crate) fn bump_lines(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Vec<LineRow>> {
    bump_lines_of(conn, &[order_id])
}

/// [`bump_lines`] for several orders at once: their lines are locked in
/// one statement, in id order (as the worker locks lines), so that two
/// transactions never wait on each other's lines.
pub(crate) fn bump_lines_of(
    conn: &mut PgConnection,
    orders: &[OrderId],
) -> QueryResult<Vec<LineRow>> {
    let ids: Vec<LineId> = commandes_produits::table
        .filter(commandes_produits::commande_id.eq_any(orders))
        .select(commandes_produits::id)
        .order(commandes_produits::id)
        .for_update()
        .load(conn)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut lines: Vec<LineRow> =
        diesel::update(commandes_produits::table.filter(commandes_produits::id.eq_any(&ids)))
            .set((
                commandes_produits::version.eq(commandes_produits::version + 1),
                commandes_produits::statut_stock.eq(StockStatus::EnAttente),
                commandes_produits::modifiee_le.eq(diesel::dsl::now),
            ))
            .returning(LineRow::as_returning())
            .get_results(conn)?;
    lines.sort_by_key(|l| l.id);
    Ok(lines)
}

/// Locks order `id` (404 if missing) and reads what its transitions
/// depend on; its lines' stock statuses only when `with_lines`.
pub(crate) fn lock_order_facts(
    conn: &mut PgConnection,
    id: OrderId,
    with_lines: bool,
) -> Result<OrderFacts, OrderError> {
    let order = lock_order(conn, id)?;
    let lines = if with_lines {
        LineStates::of(
            commandes_produits::table
                .filter(commandes_produits::commande_id.eq(id))
                .select(commandes_produits::statut_stock)
                .load::<StockStatus>(conn)?,
        )
    } else {
        LineStates::default()
    };
    Ok(OrderFacts {
        id: id.get(),
        statut: order.statut,
        validation: order.validation,
        lines,
    })
}

/// How a change to a line locks its order: shared, when the line stays in
/// it; exclusively, when the line may leave it (the order's line count, on
/// its row, drops: a trigger updates it).
#[derive(Clone, Copy)]
pub(super) enum OrderLock {
    Share,
    Exclusive,
}

/// Locks an order for a change to one of its lines: it must exist (else a
/// 422 on `field`) and be open (else 409).
fn lock_open_order(
    conn: &mut PgConnection,
    id: OrderId,
    field: &str,
    lock: OrderLock,
) -> Result<(), OrderError> {
    let order = commandes::table
        .find(id)
        .select((commandes::statut, commandes::validation));
    let status = match lock {
        OrderLock::Share => order.for_share().first(conn).optional()?,
        OrderLock::Exclusive => order.for_no_key_update().first(conn).optional()?,
    };
    check_open(id, status, field)
}

/// Locks an order for a line moved into it: exclusively (concurrent
/// additions to one order wait in turn); it must be open and have room for
/// one more line. Its line count follows the line (a trigger).
pub(super) fn lock_order_for_a_new_line(
    conn: &mut PgConnection,
    id: OrderId,
) -> Result<(), OrderError> {
    let state = commandes::table
        .find(id)
        .select(ORDER_STATE)
        .for_no_key_update()
        .first(conn)
        .optional()?;
    check_room(id, state)
}

/// Locks orders for new lines, several at once (a group commit): in id
/// order, as every other transaction takes order rows, exclusively
/// (concurrent additions to one order wait in turn); returns the state of
/// those that exist. Each line is then admitted with [`check_room`],
/// counting the lines admitted before it.
pub(super) fn lock_orders_for_new_lines(
    conn: &mut PgConnection,
    ids: &[OrderId],
) -> QueryResult<Vec<(OrderId, OrderState)>> {
    let rows: Vec<(OrderId, OrderStatus, Option<ValidationStatus>, i32)> = commandes::table
        .filter(commandes::id.eq_any(ids))
        .select((
            commandes::id,
            commandes::statut,
            commandes::validation,
            commandes::nb_lignes,
        ))
        .order(commandes::id)
        .for_no_key_update()
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, statut, validation, lines)| (id, (statut, validation, lines)))
        .collect())
}

/// What decides whether an order can take one more line.
pub(super) type OrderState = (OrderStatus, Option<ValidationStatus>, i32);

pub(super) const ORDER_STATE: (
    commandes::statut,
    commandes::validation,
    commandes::nb_lignes,
) = (
    commandes::statut,
    commandes::validation,
    commandes::nb_lignes,
);

/// An order's lines may change while it exists (else a 422 on `field`)
/// and the transition table allows it: open, never validated.
fn check_open(
    id: OrderId,
    status: Option<(OrderStatus, Option<ValidationStatus>)>,
    field: &str,
) -> Result<(), OrderError> {
    let Some((statut, validation)) = status else {
        return Err(OrderError::Invalid(vec![FieldError::new(
            field,
            format!("order {id} does not exist"),
        )]));
    };
    let facts = OrderFacts {
        id: id.get(),
        statut,
        validation,
        lines: LineStates::default(),
    };
    transitions::decide(&facts, Request::ChangeLines)?;
    Ok(())
}

/// A line may be added to an order whose lines may change (see
/// [`check_open`]) and that holds fewer than the most an order may hold.
pub(super) fn check_room(id: OrderId, state: Option<OrderState>) -> Result<(), OrderError> {
    check_open(id, state.map(|(s, v, _)| (s, v)), "commande_id")?;
    match state {
        Some((_, _, lines)) if i64::from(lines) >= LINES_PER_ORDER_MAX => {
            Err(OrderError::Conflict(format!(
                "order {id} already has {lines} lines, the most an order may hold"
            )))
        }
        _ => Ok(()),
    }
}

/// Locks a line and its (open) order, order first. A line about to move
/// to order `moving_to` has that order locked too, the lower id first, so
/// that the move waits in the same order as everything else that locks
/// several orders (a group commit of new lines).
pub(super) fn lock_line(
    conn: &mut PgConnection,
    id: LineId,
    lock: OrderLock,
    moving_to: Option<OrderId>,
) -> Result<LineRow, OrderError> {
    let order_id = commandes_produits::table
        .find(id)
        .select(commandes_produits::commande_id)
        .first::<OrderId>(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order line", id.get()))?;
    if let Some(target) = moving_to.filter(|target| *target < order_id) {
        // Checked, and locked again, by lock_order_for_a_new_line.
        commandes::table
            .find(target)
            .select(commandes::id)
            .for_no_key_update()
            .first::<OrderId>(conn)
            .optional()?;
    }
    lock_open_order(conn, order_id, "commande_id", lock).map_err(|e| match e {
        // The order vanished between the two reads: so did the line.
        OrderError::Invalid(_) => OrderError::NotFound("order line", id.get()),
        other => other,
    })?;
    let line = commandes_produits::table
        .find(id)
        .select(LineRow::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order line", id.get()))?;
    if line.commande_id != order_id {
        return Err(OrderError::Conflict(format!(
            "order line {id} was moved to another order meanwhile; retry"
        )));
    }
    Ok(line)
}
