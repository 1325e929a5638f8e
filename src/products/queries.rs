//! Catalog queries: plain functions over a connection, used by the HTTP
//! handlers (through the blocking pool) and by tests.

use super::model::{Movement, NewProduct, Product, ProductChanges};
use crate::db::schema::{commandes_produits, mouvements, produits};
use crate::domain::Page;
use diesel::prelude::*;

pub fn insert(conn: &mut PgConnection, new: &NewProduct) -> QueryResult<Product> {
    diesel::insert_into(produits::table)
        .values(new)
        .returning(Product::as_returning())
        .get_result(conn)
}

pub fn list(conn: &mut PgConnection, page: Page) -> QueryResult<Vec<Product>> {
    produits::table
        .select(Product::as_select())
        .order(produits::id)
        .offset(page.skip)
        .limit(page.limit)
        .load(conn)
}

pub fn find(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Product>> {
    produits::table
        .find(id)
        .select(Product::as_select())
        .first(conn)
        .optional()
}

/// The products among `ids`, keyed by id (for coalesced reads).
pub fn find_many(conn: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<(i64, Product)>> {
    Ok(produits::table
        .filter(produits::id.eq_any(ids))
        .select(Product::as_select())
        .load::<Product>(conn)?
        .into_iter()
        .map(|product| (product.id, product))
        .collect())
}

/// Applies `changes`; `None` when the product does not exist.
pub fn update(
    conn: &mut PgConnection,
    id: i64,
    changes: &ProductChanges,
) -> QueryResult<Option<Product>> {
    if changes.is_empty() {
        return find(conn, id);
    }
    diesel::update(produits::table.find(id))
        .set(changes)
        .returning(Product::as_returning())
        .get_result(conn)
        .optional()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    NotFound,
    /// Order lines still reference the product.
    Referenced(i64),
}

/// Deletes a product unless order lines reference it. The row lock makes a
/// concurrent line creation (whose foreign key check locks the product
/// row too) wait, so no line can slip in between the count and the delete.
pub fn delete(conn: &mut PgConnection, id: i64) -> QueryResult<Deletion> {
    conn.transaction(|conn| {
        let exists = produits::table
            .find(id)
            .select(produits::id)
            .for_update()
            .first::<i64>(conn)
            .optional()?;
        if exists.is_none() {
            return Ok(Deletion::NotFound);
        }
        let lines: i64 = commandes_produits::table
            .filter(commandes_produits::produit_id.eq(id))
            .count()
            .get_result(conn)?;
        if lines > 0 {
            return Ok(Deletion::Referenced(lines));
        }
        diesel::delete(produits::table.find(id)).execute(conn)?;
        Ok(Deletion::Deleted)
    })
}

/// The product's movements, newest first; `None` when it does not exist.
pub fn movements(
    conn: &mut PgConnection,
    id: i64,
    page: Page,
) -> QueryResult<Option<Vec<Movement>>> {
    if find(conn, id)?.is_none() {
        return Ok(None);
    }
    mouvements::table
        .filter(mouvements::produit_id.eq(id))
        .select(Movement::as_select())
        .order(mouvements::id.desc())
        .offset(page.skip)
        .limit(page.limit)
        .load(conn)
        .map(Some)
}
