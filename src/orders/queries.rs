//! Order and line queries. Every line change bumps the line's `version` and
//! writes its message to the outbox in the same transaction.
//!
//! Rows are locked only through [`super::locks`], which holds the one
//! lock order (the order row, then its lines by id) these transactions
//! share with the validation saga and the stock worker.

use super::locks::{
    bump_lines, check_room, lock_line, lock_order_facts, lock_order_for_a_new_line, OrderLock,
    OrderState, ORDER_STATE,
};
use super::model::{
    LineChange, LineChanges, LineRow, NewLine, Order, OrderError, OrderLine, OrderRow,
};
use crate::db::schema::{commandes, commandes_produits, historique_lignes, produits};
use crate::domain::limits::LINES_PER_ORDER_MAX;
use crate::domain::transitions::{self, Effect, Refusal, Request};
use crate::domain::Money;
use crate::domain::{FieldError, LineId, OrderId, Page, ProductId, Version};
use crate::domain::{OrderStatus, StockStatus, ValidationStatus};
use crate::messages::{Action, StockMessage};
use crate::outbox;
use crate::request_id::RequestId;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Numeric, Text, Untyped};

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

/// Creates an order with `statut`, if a client may ([`transitions::may_create`]).
pub fn create_order(conn: &mut PgConnection, statut: OrderStatus) -> Result<Order, OrderError> {
    transitions::may_create(statut)?;
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

/// One order with its lines.
pub fn find_order(conn: &mut PgConnection, id: OrderId) -> QueryResult<Option<Order>> {
    let Some(row) = commandes::table
        .find(id)
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let lines = lines_of(conn, &[id.get()])?;
    Ok(Some(row.with_lines(lines)))
}

/// Locks the lines of an order, by id, and bumps their version: they are
/// about to be released.
fn release_lines(
    conn: &mut PgConnection,
    order_id: OrderId,
) -> Result<Vec<StockMessage>, OrderError> {
    Ok(bump_lines(conn, order_id)?
        .iter()
        .map(|l| l.message(Action::Deleted, None))
        .collect())
}

impl From<Refusal> for OrderError {
    fn from(refusal: Refusal) -> Self {
        OrderError::Conflict(refusal.0)
    }
}

/// Changes an order's status, as the transition table allows
/// ([`transitions::decide`]): cancelling releases the stock of every line
/// (a DELETED message each), shipping needs every line reserved.
/// Returns the order and whether messages were written.
pub fn update_order(
    conn: &mut PgConnection,
    request: &RequestId,
    id: OrderId,
    statut: Option<OrderStatus>,
) -> Result<(Order, bool), OrderError> {
    conn.transaction(|conn| {
        let shipping = statut == Some(OrderStatus::Expediee);
        let facts = lock_order_facts(conn, id, shipping)?;
        let target = statut.unwrap_or(facts.statut);
        let mut wrote = false;
        let effect = transitions::decide(&facts, Request::SetStatus(target))?;
        if effect == Effect::ReleaseLines {
            let messages = release_lines(conn, id)?;
            outbox::enqueue_stock(conn, request, &messages)?;
            wrote = !messages.is_empty();
        }
        if effect != Effect::Nothing {
            diesel::update(commandes::table.find(id))
                .set(commandes::statut.eq(target))
                .execute(conn)?;
        }
        let order = find_order(conn, id)?.ok_or(OrderError::NotFound("order", id.get()))?;
        Ok((order, wrote))
    })
}

/// Deletes an order and its lines; each line of a non-cancelled order
/// releases its stock. A shipped order is kept (409). Returns whether
/// messages were written.
pub fn delete_order(
    conn: &mut PgConnection,
    request: &RequestId,
    id: OrderId,
) -> Result<bool, OrderError> {
    conn.transaction(|conn| {
        let facts = lock_order_facts(conn, id, false)?;
        // A cancelled order's lines were released when it was cancelled.
        let messages = match transitions::decide(&facts, Request::Delete)? {
            Effect::ReleaseLines => release_lines(conn, id)?,
            _ => Vec::new(),
        };
        outbox::enqueue_stock(conn, request, &messages)?;
        diesel::delete(commandes_produits::table.filter(commandes_produits::commande_id.eq(id)))
            .execute(conn)?;
        diesel::delete(commandes::table.find(id)).execute(conn)?;
        Ok(!messages.is_empty())
    })
}

/// The statuses of the orders whose lines may change, as stored.
static OPEN_STATUSES: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    OrderStatus::ALL
        .iter()
        .filter(|s| !s.is_closed())
        .map(|s| s.as_str())
        .collect()
});

/// The product's current price. The row is not locked here (the orders
/// role may only read products): the line's foreign key takes a key-share
/// lock on it from the line's write to the commit, and a product deleted
/// between this read and that write is refused by the key ([`product_gone`])
/// with the same answer as a missing product.
fn product_price(conn: &mut PgConnection, id: ProductId) -> QueryResult<Option<Money>> {
    produits::table
        .find(id)
        .select(produits::prix)
        .first(conn)
        .optional()
}

/// A line write refused by its product's foreign key: the product was
/// deleted after its price was read.
fn product_gone(produit_id: ProductId) -> impl FnOnce(diesel::result::Error) -> OrderError {
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

fn missing_product(id: ProductId) -> FieldError {
    FieldError::new("produit_id", format!("product {id} does not exist"))
}

/// Whether `new` may be added to its order, as `order` (its state, `None`
/// if missing) and `price` (its product's, `None` if missing) say: the
/// order must exist and have room ([`check_room`]), the product must exist
/// (422 naming both when both are missing). Returns the line's price.
pub(super) fn admit_line(
    new: &NewLine,
    order: Option<OrderState>,
    price: Option<Money>,
) -> Result<Money, OrderError> {
    match (check_room(new.commande_id, order), price) {
        (Err(OrderError::Invalid(mut errors)), None) => {
            errors.push(missing_product(new.produit_id));
            Err(OrderError::Invalid(errors))
        }
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(OrderError::Invalid(vec![missing_product(new.produit_id)])),
        (Ok(()), Some(price)) => Ok(price),
    }
}

/// The row of a new line: waiting for its stock, first version.
pub(super) fn new_line_row(id: LineId, new: &NewLine, price: Money) -> LineRow {
    LineRow {
        id,
        commande_id: new.commande_id,
        produit_id: new.produit_id,
        quantite: new.quantite,
        prix_unitaire: price,
        statut_stock: StockStatus::EnAttente,
        version: Version::FIRST,
    }
}

/// What adding a line needs, read in one round trip and without locks: an
/// id for the line, the product's price, and the order's state.
#[derive(QueryableByName)]
struct LineSlot {
    #[diesel(sql_type = BigInt)]
    id: LineId,
    #[diesel(sql_type = Nullable<Numeric>)]
    prix: Option<Money>,
    #[diesel(sql_type = Nullable<Text>)]
    statut: Option<OrderStatus>,
    #[diesel(sql_type = Nullable<Text>)]
    validation: Option<ValidationStatus>,
    #[diesel(sql_type = Nullable<Integer>)]
    nb_lignes: Option<i32>,
}

impl LineSlot {
    fn order(&self) -> Option<OrderState> {
        Some((self.statut?, self.validation, self.nb_lignes?))
    }
}

/// The query of [`LineSlot`], prepared once per connection (a type with a
/// static query id; see [`outbox::Guard`]).
#[derive(QueryId)]
struct ReadLineSlot {
    order: OrderId,
    product: ProductId,
}

impl QueryFragment<Pg> for ReadLineSlot {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "SELECT nextval('commandes_produits_id_seq') AS id, \
                    (SELECT prix FROM produits WHERE id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.product)?;
        out.push_sql(
            ") AS prix, c.statut, c.validation, c.nb_lignes \
             FROM (SELECT) AS one LEFT JOIN commandes c ON c.id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.order)?;
        Ok(())
    }
}

impl Query for ReadLineSlot {
    type SqlType = Untyped;
}

impl RunQueryDsl<PgConnection> for ReadLineSlot {}

/// The guard of a line's creation: the line, if its order is still open
/// and has room when its row is locked (`SELECT … FOR NO KEY UPDATE`
/// re-checks its conditions on the row's latest version after waiting for
/// a concurrent change). The insert's trigger counts the line into the
/// order.
struct AddLine<'a> {
    line: &'a LineRow,
    max: i32,
}

impl QueryFragment<Pg> for AddLine<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let line = self.line;
        out.push_sql("admitted AS (SELECT id FROM commandes WHERE id = ");
        out.push_bind_param::<BigInt, _>(&line.commande_id)?;
        out.push_sql(" AND statut = ANY(");
        out.push_bind_param::<Array<Text>, _>(&*OPEN_STATUSES)?;
        out.push_sql(") AND validation IS NULL AND nb_lignes < ");
        out.push_bind_param::<Integer, _>(&self.max)?;
        out.push_sql(
            " FOR NO KEY UPDATE), guard AS (INSERT INTO commandes_produits \
             (id, commande_id, produit_id, quantite, prix_unitaire) SELECT ",
        );
        out.push_bind_param::<BigInt, _>(&line.id)?;
        out.push_sql(", id, ");
        out.push_bind_param::<BigInt, _>(&line.produit_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&line.quantite)?;
        out.push_sql(", ");
        out.push_bind_param::<Numeric, _>(&line.prix_unitaire)?;
        out.push_sql(" FROM admitted RETURNING 1)");
        Ok(())
    }
}

impl QueryId for AddLine<'_> {
    type QueryId = AddLine<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl outbox::Guard for AddLine<'_> {}

/// How many times adding a line is tried when its order changed between
/// the read and the write.
const ADD_LINE_ATTEMPTS: usize = 3;

/// Adds a line in two round trips, neither inside an explicit transaction:
/// one read ([`ReadLineSlot`]), then one statement that locks the order,
/// inserts the line (counted into the order by a trigger) and writes its
/// outbox and history rows, atomically. The read explains a refusal (422 for a missing order or
/// product, 409 for a closed, validated or full order); the statement only
/// re-checks, under the lock, what the read found.
pub fn create_line(
    conn: &mut PgConnection,
    request: &RequestId,
    new: NewLine,
) -> Result<OrderLine, OrderError> {
    let slot: LineSlot = ReadLineSlot {
        order: new.commande_id,
        product: new.produit_id,
    }
    .get_result(conn)?;
    let price = admit_line(&new, slot.order(), slot.prix.clone())?;
    let line = new_line_row(slot.id, &new, price);
    let messages = [line.message(Action::Created, None)];
    for _ in 0..ADD_LINE_ATTEMPTS {
        let guard = AddLine {
            line: &line,
            max: LINES_PER_ORDER_MAX as i32,
        };
        let added = outbox::enqueue_stock_if(conn, request, &messages, guard)
            .map_err(product_gone(line.produit_id))?;
        if added {
            return Ok(line.into());
        }
        // The order changed between the read and the write: say why, or
        // try again if it can take the line after all (a line left it).
        let now = commandes::table
            .find(line.commande_id)
            .select(ORDER_STATE)
            .first(conn)
            .optional()?;
        check_room(line.commande_id, now)?;
    }
    Err(OrderError::Conflict(format!(
        "order {} kept changing while a line was being added to it; retry",
        line.commande_id
    )))
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

/// Changes a line; returns it and whether it changed (and a message was written).
pub fn update_line(
    conn: &mut PgConnection,
    request: &RequestId,
    id: LineId,
    changes: LineChanges,
) -> Result<(OrderLine, bool), OrderError> {
    conn.transaction(|conn| {
        // A line that may move locks its order exclusively: if it moves,
        // the order's line count drops.
        let lock = match changes.commande_id {
            Some(_) => OrderLock::Exclusive,
            None => OrderLock::Share,
        };
        let old = lock_line(conn, id, lock, changes.commande_id)?;
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
        outbox::enqueue_stock(conn, request, &[line.message(Action::Updated, Some(&old))])?;
        Ok((line.into(), true))
    })
}

pub fn delete_line(
    conn: &mut PgConnection,
    request: &RequestId,
    id: LineId,
) -> Result<(), OrderError> {
    conn.transaction(|conn| {
        let mut line = lock_line(conn, id, OrderLock::Exclusive, None)?;
        diesel::delete(commandes_produits::table.find(id)).execute(conn)?;
        line.version = line.version.next();
        outbox::enqueue_stock(conn, request, &[line.message(Action::Deleted, None)])?;
        Ok(())
    })
}

/// One page of a line's history, oldest change first; `None` when the line
/// never existed (or its history is past retention). A page past the end
/// of an existing line's history is empty.
pub fn line_history(
    conn: &mut PgConnection,
    id: i64,
    page: Page,
) -> QueryResult<Option<Vec<LineChange>>> {
    let changes: Vec<LineChange> = historique_lignes::table
        .filter(historique_lignes::ligne_id.eq(id))
        .order((
            historique_lignes::version,
            historique_lignes::accepte_le,
            historique_lignes::message_id,
        ))
        .offset(page.skip)
        .limit(page.limit)
        .select(LineChange::as_select())
        .load(conn)?;
    if !changes.is_empty() {
        return Ok(Some(changes));
    }
    let line = diesel::dsl::exists(commandes_produits::table.find(id));
    let history =
        diesel::dsl::exists(historique_lignes::table.filter(historique_lignes::ligne_id.eq(id)));
    let exists = diesel::select(line.or(history)).get_result::<bool>(conn)?;
    Ok(exists.then_some(changes))
}
