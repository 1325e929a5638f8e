//! Figures read from the database: counts, durations, and waiting until the
//! pipeline has applied every line.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable};
use std::time::{Duration, Instant};

pub fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .map(|r| r.n)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn seconds(conn: &mut PgConnection, sql: &str) -> f64 {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = Nullable<Double>)]
        s: Option<f64>,
    }
    diesel::sql_query(sql)
        .get_result::<S>(conn)
        .map(|r| r.s.unwrap_or(f64::NAN))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `sql` counts at least `target`; returns how long it took.
pub async fn until_count(pg: &mut PgConnection, what: &str, sql: &str, target: i64) -> Duration {
    let started = Instant::now();
    // The counts run over growing tables: polled more often, they would take
    // a visible share of the database from what is measured.
    while count(pg, sql) < target {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Waits until no order line waits for the worker.
pub async fn until_applied(pg: &mut PgConnection, what: &str) -> Duration {
    let waiting = "SELECT -count(*) AS n FROM commandes_produits WHERE statut_stock = 'EN_ATTENTE'";
    until_count(pg, what, waiting, 0).await
}
