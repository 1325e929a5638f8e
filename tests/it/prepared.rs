//! Fixed SQL is prepared once per connection: run twice on one connection,
//! each statement shows once among the session's prepared statements
//! (`pg_prepared_statements` lists the named ones diesel caches; a
//! statement it does not cache goes unnamed, and is not listed).

use crate::common::TestDb;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use ordersys::domain::{LineId, OrderId, ProductId, Version};
use ordersys::messages::{Action, ALERTS_EXCHANGE};
use ordersys::worker::change::{LineRef, StockChange};
use std::time::Duration;
use uuid::Uuid;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many times the session prepared `sql` (by its exact text, or by
/// its start when `prefix`).
fn prepared(conn: &mut PgConnection, sql: &str, prefix: bool) -> i64 {
    let condition = if prefix {
        "starts_with(statement, $1)"
    } else {
        "statement = $1"
    };
    diesel::sql_query(format!(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE {condition}"
    ))
    .bind::<Text, _>(sql)
    .get_result::<N>(conn)
    .unwrap()
    .n
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(conn).unwrap().n
}

fn change(line: LineId, order: OrderId, product: ProductId, version: Version) -> StockChange {
    StockChange {
        line: Some(LineRef {
            message_id: Uuid::new_v4(),
            ligne_id: line,
            version,
        }),
        action: Action::Created,
        produit_id: product,
        quantite: 2,
        commande_id: order,
        ancien: None,
        occurred_at: None,
        request_id: None,
        validation: false,
    }
}

#[test]
fn the_fixed_statements_are_prepared_once_per_connection() {
    let db = TestDb::migrated();
    let product = db.count(
        "INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('p', 1, 10) RETURNING id AS n",
    );
    let order = db.count("INSERT INTO commandes DEFAULT VALUES RETURNING id AS n");
    let line = LineId(db.count(&format!(
        "INSERT INTO commandes_produits (commande_id, produit_id, quantite, prix_unitaire) \
         VALUES ({order}, {product}, 2, 1) RETURNING id AS n"
    )));
    let (order, product) = (OrderId(order), ProductId(product));
    let mut conn = db.conn();
    for version in [Version(2), Version(3)] {
        // Below the threshold of 9 the first time: an alert too.
        let plan =
            ordersys::worker::store::apply(&mut conn, &[change(line, order, product, version)], 9)
                .unwrap();
        assert_eq!(plan.outcomes.len(), 1);
        ordersys::worker::store::purge_processed(&mut conn, Duration::from_secs(3600)).unwrap();
        ordersys::saga::store::time_out(&mut conn, 10).unwrap();
        ordersys::outbox::backlog(&mut conn, &[ALERTS_EXCHANGE]).unwrap();
    }
    assert_eq!(db.count("SELECT count(*) AS n FROM outbox"), 1, "the alert");
    let write = include_str!("../../src/worker/write.sql");
    assert_eq!(prepared(&mut conn, write, false), 1, "the worker's write");
    for start in [
        "INSERT INTO messages_traites (message_id) SELECT unnest($1)",
        "INSERT INTO outbox (message_id, exchange, routing_key, payload, request_id)",
        "DELETE FROM messages_traites",
        "SELECT count(*) AS unsent",
    ] {
        assert_eq!(prepared(&mut conn, start, true), 1, "{start}");
    }
    let due = include_str!("../../src/saga/due.sql");
    assert_eq!(prepared(&mut conn, due, false), 1, "the saga's deadlines");
    assert_eq!(
        count(
            &mut conn,
            "SELECT count(*) - count(DISTINCT statement) AS n FROM pg_prepared_statements"
        ),
        0,
        "a statement prepared twice"
    );
}
