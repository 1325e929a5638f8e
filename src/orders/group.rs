//! Group commit of line creations (`POST /commandes-produits`): concurrent
//! requests are gathered ([`crate::db::gather`]) and written in one
//! transaction of set-based statements, whatever their number:
//!
//! 1. lock their orders, in id order ([`super::locks`]), and read their
//!    products' prices;
//! 2. decide each request in Rust, in arrival order, with the rules a lone
//!    request follows ([`queries::admit_line`]: its own 404/409/422),
//!    counting the lines admitted before it into its order;
//! 3. take ids for the admitted lines, insert them, and write their outbox
//!    and history rows (each with its own request id);
//! 4. commit, then answer each request.
//!
//! A request refused in step 2 fails alone; the others go on. A batch the
//! database refuses as a whole (a product deleted meanwhile breaks the
//! lines' foreign key, a lock or statement timeout) rolls back, and each of
//! its requests runs alone ([`queries::create_line`]), so that it gets
//! exactly the answer it would have had ungathered. A batch of one is
//! that lone path (two round trips, no explicit transaction), so a request
//! with nothing to share its batch with is not slowed down.

use super::locks::{lock_orders_for_new_lines, OrderState};
use super::model::{NewLine, OrderError, OrderLine};
use super::queries::{self, admit_line, new_line_row};
use crate::db::fixed::fixed_sql;
use crate::db::gather::{BatchFailed, Gatherer};
use crate::db::schema::produits;
use crate::db::{Database, DbFailure};
use crate::domain::{LineId, Money, OrderId, ProductId};
use crate::messages::Action;
use crate::outbox;
use crate::request_id::RequestId;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Numeric};
use std::collections::HashMap;

/// A line creation waiting for its batch.
#[derive(Debug, Clone)]
pub struct LineCreation {
    pub request: RequestId,
    pub line: NewLine,
}

/// What a line creation is answered.
pub type Created = Result<OrderLine, OrderError>;

/// Line creations, group-committed.
pub type LineWrites = Gatherer<LineCreation, Created>;

/// Batches of line creations in flight at once. Two: one commits while the
/// next gathers and locks (a batch spends most of its time waiting on its
/// round trips and its commit's flush); they lock orders in the same order.
const WRITE_RUNNERS: usize = 2;

pub fn line_writes(db: Database) -> LineWrites {
    Gatherer::new(db, WRITE_RUNNERS, Box::new(create_lines))
}

/// Runs a batch of line creations; see the module's documentation.
pub fn create_lines(
    conn: &mut PgConnection,
    requests: &[LineCreation],
) -> Result<Vec<Created>, BatchFailed> {
    if let [one] = requests {
        let answer = queries::create_line(conn, &one.request, one.line);
        return match answer {
            // Cut off at its commit: the pooled connection is thrown away.
            Err(OrderError::Database(error)) if error.is_connection_error() => Err(BatchFailed {
                error,
                maybe_written: true,
            }),
            answer => Ok(vec![answer]),
        };
    }
    let mut committing = false;
    let written = conn.transaction(|conn| {
        let answers = write_batch(conn, requests)?;
        committing = true;
        Ok::<_, diesel::result::Error>(answers)
    });
    written.map_err(|error| BatchFailed {
        // Refused before its commit, the batch wrote nothing: each request
        // runs alone. An error at the commit itself may hide a commit that
        // happened (the connection lost at that moment): never rerun then.
        maybe_written: committing,
        error,
    })
}

/// Steps 1 to 3, inside the batch's transaction.
fn write_batch(conn: &mut PgConnection, requests: &[LineCreation]) -> QueryResult<Vec<Created>> {
    let mut order_ids: Vec<OrderId> = requests.iter().map(|r| r.line.commande_id).collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let mut orders: HashMap<OrderId, OrderState> = lock_orders_for_new_lines(conn, &order_ids)?
        .into_iter()
        .collect();
    let product_ids: Vec<ProductId> = requests.iter().map(|r| r.line.produit_id).collect();
    let prices: HashMap<ProductId, Money> = produits::table
        .filter(produits::id.eq_any(&product_ids))
        .select((produits::id, produits::prix))
        .load(conn)?
        .into_iter()
        .collect();

    let decisions = decide(requests, &mut orders, &prices);
    let admitted = decisions.iter().filter(|d| d.is_ok()).count();
    let mut ids = if admitted == 0 {
        Vec::new()
    } else {
        NextLineIds {
            count: admitted as i64,
        }
        .load::<NextId>(conn)?
    }
    .into_iter()
    .map(|row| row.id);
    let mut answers = Vec::with_capacity(requests.len());
    let mut rows = Vec::with_capacity(admitted);
    for (request, decision) in requests.iter().zip(decisions) {
        match decision {
            Ok(price) => {
                let id = ids.next().ok_or_else(|| {
                    diesel::result::Error::QueryBuilderError("too few line ids".into())
                })?;
                let row = new_line_row(id, &request.line, price);
                answers.push(Ok(OrderLine::from(row.clone())));
                rows.push((&request.request, row));
            }
            Err(refused) => answers.push(Err(refused)),
        }
    }
    if rows.is_empty() {
        return Ok(answers);
    }
    InsertLines {
        ids: rows.iter().map(|(_, l)| l.id).collect(),
        orders: rows.iter().map(|(_, l)| l.commande_id).collect(),
        products: rows.iter().map(|(_, l)| l.produit_id).collect(),
        quantities: rows.iter().map(|(_, l)| l.quantite).collect(),
        prices: rows.iter().map(|(_, l)| l.prix_unitaire.clone()).collect(),
    }
    .execute(conn)?;
    let messages: Vec<_> = rows
        .iter()
        .map(|(request, line)| (*request, line.message(Action::Created, None)))
        .collect();
    outbox::enqueue_stock_of(conn, &messages)?;
    Ok(answers)
}

/// Decides each request in order, as a lone request would be decided with
/// its order locked: an admitted line counts into its order, so the next
/// one sees one line fewer of room. Returns each admitted line's price.
fn decide(
    requests: &[LineCreation],
    orders: &mut HashMap<OrderId, OrderState>,
    prices: &HashMap<ProductId, Money>,
) -> Vec<Result<Money, OrderError>> {
    requests
        .iter()
        .map(|r| {
            let order = orders.get(&r.line.commande_id).copied();
            let price = admit_line(&r.line, order, prices.get(&r.line.produit_id).cloned())?;
            if let Some((_, _, lines)) = orders.get_mut(&r.line.commande_id) {
                *lines += 1;
            }
            Ok(price)
        })
        .collect()
}

fixed_sql!(
    "SELECT nextval('commandes_produits_id_seq') AS id FROM generate_series(1, $1)",
    /// `count` new line ids.
    struct NextLineIds {
        count: i64 as BigInt,
    }
);

#[derive(QueryableByName)]
struct NextId {
    #[diesel(sql_type = BigInt)]
    id: LineId,
}

fixed_sql!(
    "INSERT INTO commandes_produits (id, commande_id, produit_id, quantite, prix_unitaire) \
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::integer[], $5::numeric[])",
    /// New lines, one per element (a trigger counts each into its order).
    struct InsertLines {
        ids: Vec<LineId> as Array<BigInt>,
        orders: Vec<OrderId> as Array<BigInt>,
        products: Vec<ProductId> as Array<BigInt>,
        quantities: Vec<i32> as Array<Integer>,
        prices: Vec<Money> as Array<Numeric>,
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{OrderStatus, ValidationStatus};
    use std::str::FromStr;

    fn creation(order: i64, product: i64) -> LineCreation {
        LineCreation {
            request: RequestId::generate(),
            line: NewLine {
                commande_id: OrderId(order),
                produit_id: ProductId(product),
                quantite: 1,
            },
        }
    }

    #[test]
    fn each_request_is_decided_as_if_alone_counting_the_lines_before_it() {
        let price = Money::from_str("2.50").unwrap();
        let mut orders = HashMap::from([
            (OrderId(1), (OrderStatus::EnAttente, None, 98)),
            (
                OrderId(2),
                (OrderStatus::EnAttente, Some(ValidationStatus::EnCours), 0),
            ),
        ]);
        let prices = HashMap::from([(ProductId(7), price.clone())]);
        let requests = [
            creation(1, 7), // the 99th line
            creation(1, 8), // no product 8: refused, not counted
            creation(1, 7), // the 100th
            creation(1, 7), // full
            creation(2, 7), // being validated
            creation(3, 9), // neither order nor product
        ];
        let decided = decide(&requests, &mut orders, &prices);
        assert_eq!(decided[0].as_ref().unwrap(), &price);
        assert!(matches!(&decided[1], Err(OrderError::Invalid(e)) if e.len() == 1));
        assert_eq!(decided[2].as_ref().unwrap(), &price);
        assert!(matches!(&decided[3], Err(OrderError::Conflict(m)) if m.contains("100 lines")));
        assert!(matches!(&decided[4], Err(OrderError::Conflict(_))));
        assert!(matches!(&decided[5], Err(OrderError::Invalid(e)) if e.len() == 2));
        assert_eq!(orders[&OrderId(1)].2, 100);
    }

    #[test]
    fn the_statements_are_numbered_as_their_fields() {
        crate::db::fixed::check(&NextLineIds { count: 2 });
        crate::db::fixed::check(&InsertLines {
            ids: vec![],
            orders: vec![],
            products: vec![],
            quantities: vec![],
            prices: vec![],
        });
    }
}
