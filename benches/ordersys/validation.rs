//! Order validation (the saga): the time from a validation's start to its
//! decision while the pipeline carries the paced load, and what happens
//! when many orders are validated at once against scarce stock.
//!
//! Times are the database's: from the start of the transaction that started
//! the validation (`validation_commencee_le`, `now()`: that transaction is
//! short) to the decision, in the transaction that decided it
//! (`validation_terminee_le`, `clock_timestamp()`, after any lock wait);
//! the HTTP answer of the start adds its own round trip.

use crate::report::Report;
use crate::setup::{Bench, LoadOrders};
use crate::sizes::PACED_CONNECTIONS;
use crate::sql::{count, seconds, until_applied, until_count};
use ordersys::load::http::{open_loop, Request};
use ordersys_testkit::Client;
use serde_json::json;
use std::time::{Duration, Instant};

/// Orders with `lines` lines each (of `quantite` units of `products[i]`,
/// in turn), created over HTTP; returns their ids.
async fn orders_with_lines(client: &Client, n: usize, lines: &[(i64, i32)]) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = client.post("/commandes", json!({})).await.expect(201).body["id"]
            .as_i64()
            .unwrap();
        for &(product, quantite) in lines {
            let body = json!({"commande_id": id, "produit_id": product, "quantite": quantite});
            client.post("/commandes-produits", body).await.expect(201);
        }
        ids.push(id);
    }
    ids
}

fn list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// p50 and p99, in ms, of start → decision over those of `ids` whose
/// validation is `state`.
fn decision_ms(bench: &mut Bench, ids: &[i64], state: &str) -> (f64, f64) {
    let mut pct = |p: f64| {
        seconds(
            &mut bench.pg,
            &format!(
                "SELECT (percentile_cont({p}) WITHIN GROUP (ORDER BY extract(epoch FROM \
                 validation_terminee_le - validation_commencee_le)))::float8 AS s \
                 FROM commandes WHERE id IN ({}) AND validation LIKE '{state}'",
                list(ids)
            ),
        ) * 1000.0
    };
    (pct(0.5), pct(0.99))
}

async fn until_decided(bench: &mut Bench, ids: &[i64], what: &str) -> Duration {
    let sql = format!(
        "SELECT count(*) AS n FROM commandes WHERE id IN ({}) AND validation <> 'EN_COURS'",
        list(ids)
    );
    until_count(&mut bench.pg, what, &sql, ids.len() as i64).await
}

/// Validations of 3-line orders, spread evenly over the step, while line
/// creations are paced at half of `rate`.
pub async fn under_load(bench: &mut Bench, report: &mut Report, rate: f64, catalog: &[i64]) {
    let client = Bench::client(bench.orders());
    let n = if bench.sizes.smoke { 10 } else { 200 };
    let lines: Vec<(i64, i32)> = catalog.iter().take(3).map(|&p| (p, 1)).collect();
    let ids = orders_with_lines(&client, n, &lines).await;
    until_applied(&mut bench.pg, "the validation orders' lines to be reserved").await;
    let half = (rate / 2.0).max(10.0);
    let secs = bench.sizes.pipeline_secs;
    let connections = bench.sizes.concurrency.min(PACED_CONNECTIONS);
    let orders = bench.load_orders(connections);
    let addr = bench.orders().addr.unwrap();
    let products = catalog.to_vec();
    let load = tokio::spawn(open_loop(addr, connections, half, secs, move |t, n| {
        line(&orders, &products, t, n)
    }));
    // Spread over the load's window, each at its time.
    let every = Duration::from_secs_f64(secs / n as f64);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let answer = client
            .post(&format!("/commandes/{id}/validation"), json!({}))
            .await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let load = load.await.expect("the paced load");
    until_decided(bench, &ids, "the validations under load to end").await;
    let confirmed = count(
        &mut bench.pg,
        &format!(
            "SELECT count(*) AS n FROM commandes WHERE id IN ({}) AND validation = 'CONFIRMEE'",
            list(&ids)
        ),
    );
    let (p50, p99) = decision_ms(bench, &ids, "CONFIRMEE");
    report.add(
        &format!("validation: start → CONFIRMEE, 3-line orders, under {half:.0} line changes/s"),
        format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms ({confirmed} of {n} confirmed; the load: {} requests, {} errors)",
            load.ok, load.errors
        ),
        None,
        0.0,
        "",
    );
    until_applied(&mut bench.pg, "the paced lines to be reserved").await;
}

fn line(orders: &LoadOrders, products: &[i64], t: usize, n: u64) -> Request {
    let product = products[(t * 7 + n as usize) % products.len()];
    let body =
        json!({"commande_id": orders.for_request(t, n), "produit_id": product, "quantite": 1});
    ("POST", "/commandes-produits".into(), Some(body.to_string()))
}

/// `n` orders, each with a line of 2 units of one scarce product and one
/// of an ample one, validated at once. The scarce product has no stock
/// when the lines are created (they are `REJETE`); it is then given stock
/// for `n` × 3 / 8 of them (an inventory correction), so that the
/// validations' re-checks are what competes for it. Returns the scarce
/// product and its stock from then on.
pub async fn at_once_against_scarce_stock(
    bench: &mut Bench,
    report: &mut Report,
    ample: i64,
) -> (i64, i64) {
    let n = if bench.sizes.smoke { 20 } else { 200 };
    let stock = (n * 3 / 8 * 2) as i64;
    let products = Bench::client(&bench.products);
    let scarce = products
        .post(
            "/produits/",
            json!({"nom": "scarce", "prix": 1, "quantite_en_stock": 0}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let client = Bench::client(bench.orders());
    let ids = orders_with_lines(&client, n, &[(scarce, 2), (ample, 1)]).await;
    until_applied(&mut bench.pg, "the scarce orders' lines to be applied").await;
    products
        .put(
            &format!("/produits/{scarce}"),
            json!({"quantite_en_stock": stock}),
        )
        .await
        .expect(200);
    let started = Instant::now();
    let starts = ids.iter().map(|id| {
        let client = client.clone();
        let path = format!("/commandes/{id}/validation");
        async move { client.post(&path, json!({})).await.status }
    });
    let statuses = futures_util::future::join_all(starts).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    let accepted = started.elapsed();
    until_decided(bench, &ids, "the scarce validations to end").await;
    let all = seconds(
        &mut bench.pg,
        &format!(
            "SELECT extract(epoch FROM max(validation_terminee_le) - min(validation_commencee_le))::float8 AS s \
             FROM commandes WHERE id IN ({})",
            list(&ids)
        ),
    );
    until_applied(&mut bench.pg, "the refused orders' lines to be released").await;
    let mut by = |state: &str| {
        count(
            &mut bench.pg,
            &format!(
                "SELECT count(*) AS n FROM commandes WHERE id IN ({}) AND validation = '{state}'",
                list(&ids)
            ),
        )
    };
    let (confirmed, refused) = (by("CONFIRMEE"), by("REFUSEE"));
    let left = count(
        &mut bench.pg,
        &format!("SELECT quantite_en_stock::bigint AS n FROM produits WHERE id = {scarce}"),
    );
    let (p50, p99) = decision_ms(bench, &ids, "%");
    assert_eq!(confirmed + refused, n as i64, "every validation ended");
    assert_eq!(
        left,
        stock - 2 * confirmed,
        "the scarce stock holds exactly the confirmed orders' units"
    );
    report.add(
        &format!("validation: {n} orders at once, scarce stock for {}", stock / 2),
        format!(
            "{confirmed} CONFIRMEE, {refused} REFUSEE and compensated, all decided {all:.2} s after the first start \
             (202s in {:.0} ms); start → decision p50 {p50:.1} ms, p99 {p99:.1} ms; scarce stock left {left}",
            accepted.as_secs_f64() * 1000.0
        ),
        None,
        0.0,
        "",
    );
    (scarce, stock)
}
