//! Order and line queries. Every line change bumps the line's `version` and
//! writes its message to the outbox in the same transaction.
//!
//! Locks are always taken in the same order — the order row, then its lines
//! by id — and the stock worker locks lines last, so these transactions
//! cannot deadlock with each other or with the worker.

use super::model::{
    LineChange, LineChanges, LineRow, NewLine, Order, OrderError, OrderLine, OrderRow,
};
use crate::db::schema::{commandes, commandes_produits, historique_lignes, produits};
use crate::domain::limits::LINES_PER_ORDER_MAX;
use crate::domain::Money;
use crate::domain::{FieldError, Page};
use crate::domain::{OrderStatus, StockStatus, ValidationStatus};
use crate::messages::{Action, StockMessage};
use crate::outbox;
use crate::request_id::RequestId;
use chrono::Utc;
use diesel::prelude::*;
use uuid::Uuid;

/// The message describing a line's state after a change.
pub(crate) fn message(action: Action, line: &LineRow, previous: Option<&LineRow>) -> StockMessage {
    StockMessage {
        action,
        produit_id: line.produit_id,
        quantite: line.quantite,
        commande_id: line.commande_id,
        message_id: Some(Uuid::new_v4()),
        ligne_id: Some(line.id),
        version: Some(line.version),
        ancien_produit_id: previous.map(|p| p.produit_id),
        ancienne_quantite: previous.map(|p| p.quantite),
        occurred_at: Some(Utc::now()),
        validation: false,
    }
}

fn lines_of(conn: &mut PgConnection, order_ids: &[i64]) -> QueryResult<Vec<OrderLine>> {
    commandes_produits::table
        .filter(commandes_produits::commande_id.eq_any(order_ids))
        .select(OrderLine::as_select())
        .order(commandes_produits::id)
        .load(conn)
}

fn assemble(conn: &mut PgConnection, rows: Vec<OrderRow>) -> QueryResult<Vec<Order>> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut by_order: std::collections::HashMap<i64, Vec<OrderLine>> =
        std::collections::HashMap::with_capacity(rows.len());
    for line in lines_of(conn, &ids)? {
        by_order.entry(line.commande_id).or_default().push(line);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let mine = by_order.remove(&row.id).unwrap_or_default();
            row.with_lines(mine)
        })
        .collect())
}

pub fn create_order(conn: &mut PgConnection, statut: OrderStatus) -> QueryResult<Order> {
    let row = diesel::insert_into(commandes::table)
        .values(commandes::statut.eq(statut))
        .returning(OrderRow::as_returning())
        .get_result(conn)?;
    Ok(row.with_lines(Vec::new()))
}

pub fn list_orders(
    conn: &mut PgConnection,
    statut: Option<OrderStatus>,
    page: Page,
) -> QueryResult<Vec<Order>> {
    let mut query = commandes::table
        .select(OrderRow::as_select())
        .order(commandes::id)
        .offset(page.skip)
        .limit(page.limit)
        .into_boxed();
    if let Some(statut) = statut {
        query = query.filter(commandes::statut.eq(statut));
    }
    let rows = query.load(conn)?;
    assemble(conn, rows)
}

/// The orders among `ids` with their lines, keyed by id (for coalesced
/// reads): two queries, whatever the number of orders.
pub fn find_orders(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<(i64, Order)>> {
    let rows = commandes::table
        .filter(commandes::id.eq_any(ids))
        .select(OrderRow::as_select())
        .order(commandes::id)
        .load(conn)?;
    Ok(assemble(conn, rows)?
        .into_iter()
        .map(|order| (order.id, order))
        .collect())
}

pub(crate) fn find_order(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Order>> {
    let Some(row) = commandes::table
        .find(id)
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let lines = lines_of(conn, &[id])?;
    Ok(Some(row.with_lines(lines)))
}

pub(crate) fn lock_order(conn: &mut PgConnection, id: i64) -> Result<OrderRow, OrderError> {
    commandes::table
        .find(id)
        .select(OrderRow::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order", id))
}

/// Locks the lines of an order, by id, and bumps their version: they are
/// about to be released.
pub(crate) fn release_lines(
    conn: &mut PgConnection,
    order_id: i64,
) -> Result<Vec<StockMessage>, OrderError> {
    Ok(bump_lines(conn, order_id)?
        .iter()
        .map(|l| message(Action::Deleted, l, None))
        .collect())
}

/// Locks the lines of an order, by id, bumps their version and sets them
/// `EN_ATTENTE` (a message about each is going to the worker); returns them
/// by id.
pub(crate) fn bump_lines(conn: &mut PgConnection, order_id: i64) -> QueryResult<Vec<LineRow>> {
    bump_lines_of(conn, &[order_id])
}

/// [`bump_lines`] for several orders at once: their lines are locked in
/// one statement, in id order (as the worker locks lines), so that two
/// transactions never wait on each other's lines.
pub(crate) fn bump_lines_of(conn: &mut PgConnection, orders: &[i64]) -> QueryResult<Vec<LineRow>> {
    let ids: Vec<i64> = commandes_produits::table
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

fn validating_conflict(order: i64) -> OrderError {
    OrderError::Conflict(format!(
        "order {order} is being validated; it cannot change until its validation ends"
    ))
}

/// Why the lines of an order that went through validation cannot change.
fn validated_conflict(order: i64, validation: ValidationStatus) -> OrderError {
    match validation {
        ValidationStatus::EnCours => OrderError::Conflict(format!(
            "order {order} is being validated; its lines cannot change until its validation ends"
        )),
        other => OrderError::Conflict(format!(
            "order {order}'s validation is {}; its lines can no longer change",
            other.as_str()
        )),
    }
}

fn closed_conflict(order: i64, status: OrderStatus) -> OrderError {
    OrderError::Conflict(format!(
        "order {order} is {} and can no longer change",
        status.as_str()
    ))
}

/// Changes an order's status. Cancelling releases the stock of every line
/// (a DELETED message each); `ANNULEE` and `EXPEDIEE` are final.
/// Returns the order and whether messages were written.
pub fn update_order(
    conn: &mut PgConnection,
    request: &RequestId,
    id: i64,
    statut: Option<OrderStatus>,
) -> Result<(Order, bool), OrderError> {
    conn.transaction(|conn| {
        let order = lock_order(conn, id)?;
        let target = statut.unwrap_or(order.statut);
        let mut wrote = false;
        if target != order.statut {
            if order.statut.is_closed() {
                return Err(closed_conflict(id, order.statut));
            }
            if order.validation == Some(ValidationStatus::EnCours) {
                return Err(validating_conflict(id));
            }
            if order.validation.is_some() && target == OrderStatus::EnAttente {
                return Err(OrderError::Conflict(format!(
                    "order {id} was validated; it cannot go back to EN_ATTENTE"
                )));
            }
            if target == OrderStatus::Annulee {
                let messages = release_lines(conn, id)?;
                outbox::enqueue_stock(conn, request, &messages)?;
                wrote = !messages.is_empty();
            }
            diesel::update(commandes::table.find(id))
                .set(commandes::statut.eq(target))
                .execute(conn)?;
        }
        let order = find_order(conn, id)?.ok_or(OrderError::NotFound("order", id))?;
        Ok((order, wrote))
    })
}

/// Deletes an order and its lines; each line of a non-cancelled order
/// releases its stock. A shipped order is kept (409). Returns whether
/// messages were written.
pub fn delete_order(
    conn: &mut PgConnection,
    request: &RequestId,
    id: i64,
) -> Result<bool, OrderError> {
    conn.transaction(|conn| {
        let order = lock_order(conn, id)?;
        if order.validation == Some(ValidationStatus::EnCours) {
            return Err(validating_conflict(id));
        }
        if order.statut == OrderStatus::Expediee {
            return Err(OrderError::Conflict(format!(
                "order {id} has shipped; shipped orders are kept"
            )));
        }
        // A cancelled order's lines were released when it was cancelled.
        let messages = if order.statut == OrderStatus::Annulee {
            Vec::new()
        } else {
            release_lines(conn, id)?
        };
        outbox::enqueue_stock(conn, request, &messages)?;
        diesel::delete(commandes_produits::table.filter(commandes_produits::commande_id.eq(id)))
            .execute(conn)?;
        diesel::delete(commandes::table.find(id)).execute(conn)?;
        Ok(!messages.is_empty())
    })
}

/// Locks an order for a change to one of its lines: it must exist (else a
/// 422 on `field`) and be open (else 409).
fn lock_open_order(conn: &mut PgConnection, id: i64, field: &str) -> Result<(), OrderError> {
    let status = commandes::table
        .find(id)
        .select((commandes::statut, commandes::validation))
        .for_share()
        .first(conn)
        .optional()?;
    check_open(id, status, field)
}

/// Like [`lock_open_order`], for adding a line: the order is locked
/// exclusively (concurrent additions to one order wait in turn) and must
/// have room for one more line.
fn lock_order_for_a_new_line(conn: &mut PgConnection, id: i64) -> Result<(), OrderError> {
    let status = commandes::table
        .find(id)
        .select((commandes::statut, commandes::validation))
        .for_no_key_update()
        .first(conn)
        .optional()?;
    check_open(id, status, "commande_id")?;
    let lines: i64 = commandes_produits::table
        .filter(commandes_produits::commande_id.eq(id))
        .count()
        .get_result(conn)?;
    if lines >= LINES_PER_ORDER_MAX {
        return Err(OrderError::Conflict(format!(
            "order {id} already has {lines} lines, the most an order may hold"
        )));
    }
    Ok(())
}

/// An order's lines may change while it exists, is open, and never went
/// through validation.
fn check_open(
    id: i64,
    status: Option<(OrderStatus, Option<ValidationStatus>)>,
    field: &str,
) -> Result<(), OrderError> {
    match status {
        None => Err(OrderError::Invalid(vec![FieldError::new(
            field,
            format!("order {id} does not exist"),
        )])),
        Some((status, _)) if status.is_closed() => Err(closed_conflict(id, status)),
        Some((_, Some(validation))) => Err(validated_conflict(id, validation)),
        Some(_) => Ok(()),
    }
}

/// The product's current price. The row is not locked here (the orders
/// role may only read products): the line's foreign key takes a key-share
/// lock on it from the line's write to the commit, and a product deleted
/// between this read and that write is refused by the key ([`product_gone`])
/// with the same answer as a missing product.
fn product_price(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Money>> {
    produits::table
        .find(id)
        .select(produits::prix)
        .first(conn)
        .optional()
}

/// A line write refused by its product's foreign key: the product was
/// deleted after its price was read.
fn product_gone(produit_id: i64) -> impl FnOnce(diesel::result::Error) -> OrderError {
    move |error| match &error {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            info,
        ) if info.constraint_name() == Some("commandes_produits_produit_id_fkey") => {
            OrderError::Invalid(vec![missing_product(produit_id)])
        }
        _ => OrderError::Database(error),
    }
}

fn missing_product(id: i64) -> FieldError {
    FieldError::new("produit_id", format!("product {id} does not exist"))
}

pub fn create_line(
    conn: &mut PgConnection,
    request: &RequestId,
    new: NewLine,
) -> Result<OrderLine, OrderError> {
    conn.transaction(|conn| {
        let order = lock_order_for_a_new_line(conn, new.commande_id);
        let price = product_price(conn, new.produit_id)?;
        match (order, &price) {
            (Err(OrderError::Invalid(mut errors)), None) => {
                errors.push(missing_product(new.produit_id));
                return Err(OrderError::Invalid(errors));
            }
            (Err(e), _) => return Err(e),
            (Ok(()), None) => {
                return Err(OrderError::Invalid(vec![missing_product(new.produit_id)]))
            }
            (Ok(()), Some(_)) => {}
        }
        let line: LineRow = diesel::insert_into(commandes_produits::table)
            .values((
                commandes_produits::commande_id.eq(new.commande_id),
                commandes_produits::produit_id.eq(new.produit_id),
                commandes_produits::quantite.eq(new.quantite),
                commandes_produits::prix_unitaire.eq(price.unwrap_or_default()),
            ))
            .returning(LineRow::as_returning())
            .get_result(conn)
            .map_err(product_gone(new.produit_id))?;
        outbox::enqueue_stock(conn, request, &[message(Action::Created, &line, None)])?;
        Ok(line.into())
    })
}

pub fn list_lines(conn: &mut PgConnection, page: Page) -> QueryResult<Vec<OrderLine>> {
    commandes_produits::table
        .select(OrderLine::as_select())
        .order(commandes_produits::id)
        .offset(page.skip)
        .limit(page.limit)
        .load(conn)
}

pub fn find_line(conn: &mut PgConnection, id: i64) -> QueryResult<Option<OrderLine>> {
    commandes_produits::table
        .find(id)
        .select(OrderLine::as_select())
        .first(conn)
        .optional()
}

/// Locks a line and its (open) order, order first.
fn lock_line(conn: &mut PgConnection, id: i64) -> Result<LineRow, OrderError> {
    let order_id = commandes_produits::table
        .find(id)
        .select(commandes_produits::commande_id)
        .first::<i64>(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order line", id))?;
    lock_open_order(conn, order_id, "commande_id").map_err(|e| match e {
        // The order vanished between the two reads: so did the line.
        OrderError::Invalid(_) => OrderError::NotFound("order line", id),
        other => other,
    })?;
    let line = commandes_produits::table
        .find(id)
        .select(LineRow::as_select())
        .for_update()
        .first(conn)
        .optional()?
        .ok_or(OrderError::NotFound("order line", id))?;
    if line.commande_id != order_id {
        return Err(OrderError::Conflict(format!(
            "order line {id} was moved to another order meanwhile; retry"
        )));
    }
    Ok(line)
}

/// Changes a line; returns it and whether it changed (and a message was written).
pub fn update_line(
    conn: &mut PgConnection,
    request: &RequestId,
    id: i64,
    changes: LineChanges,
) -> Result<(OrderLine, bool), OrderError> {
    conn.transaction(|conn| {
        let old = lock_line(conn, id)?;
        let commande_id = changes.commande_id.unwrap_or(old.commande_id);
        let produit_id = changes.produit_id.unwrap_or(old.produit_id);
        let quantite = changes.quantite.unwrap_or(old.quantite);
        let mut errors = Vec::new();
        if commande_id != old.commande_id {
            match lock_order_for_a_new_line(conn, commande_id) {
                Err(OrderError::Invalid(mut e)) => errors.append(&mut e),
                other => other?,
            }
        }
        let mut prix_unitaire = old.prix_unitaire.clone();
        if produit_id != old.produit_id {
            match product_price(conn, produit_id)? {
                Some(price) => prix_unitaire = price,
                None => errors.push(missing_product(produit_id)),
            }
        }
        if !errors.is_empty() {
            return Err(OrderError::Invalid(errors));
        }
        if (commande_id, produit_id, quantite) == (old.commande_id, old.produit_id, old.quantite) {
            return Ok((old.into(), false));
        }
        let line: LineRow = diesel::update(commandes_produits::table.find(id))
            .set((
                commandes_produits::commande_id.eq(commande_id),
                commandes_produits::produit_id.eq(produit_id),
                commandes_produits::quantite.eq(quantite),
                commandes_produits::prix_unitaire.eq(prix_unitaire),
                commandes_produits::version.eq(commandes_produits::version + 1),
                commandes_produits::statut_stock.eq(StockStatus::EnAttente),
                commandes_produits::modifiee_le.eq(diesel::dsl::now),
            ))
            .returning(LineRow::as_returning())
            .get_result(conn)
            .map_err(product_gone(produit_id))?;
        outbox::enqueue_stock(
            conn,
            request,
            &[message(Action::Updated, &line, Some(&old))],
        )?;
        Ok((line.into(), true))
    })
}

pub fn delete_line(
    conn: &mut PgConnection,
    request: &RequestId,
    id: i64,
) -> Result<(), OrderError> {
    conn.transaction(|conn| {
        let mut line = lock_line(conn, id)?;
        diesel::delete(commandes_produits::table.find(id)).execute(conn)?;
        line.version += 1;
        outbox::enqueue_stock(conn, request, &[message(Action::Deleted, &line, None)])?;
        Ok(())
    })
}

/// A line's history, oldest change first; `None` when the line never
/// existed (or its history is past retention).
pub fn line_history(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Vec<LineChange>>> {
    let changes: Vec<LineChange> = historique_lignes::table
        .filter(historique_lignes::ligne_id.eq(id))
        .order((historique_lignes::version, historique_lignes::accepte_le))
        .select(LineChange::as_select())
        .load(conn)?;
    if !changes.is_empty() {
        return Ok(Some(changes));
    }
    let exists = diesel::select(diesel::dsl::exists(commandes_produits::table.find(id)))
        .get_result::<bool>(conn)?;
    Ok(exists.then_some(changes))
}
