//! Step 1: HTTP. `GET /produits/{id}`, `GET /commandes/{id}` and `POST
//! /commandes-produits` at a fixed concurrency, next to the same servers'
//! `/healthz` (the HTTP ceiling).

use crate::report::{verdict, Report};
use crate::setup::{Bench, LoadOrders};
use crate::sizes::target;
use ordersys::load::http::{closed_loop, LoadResult};
use serde_json::json;
use std::net::SocketAddr;

/// The figure the pipeline step compares with.
pub struct Ceilings {
    pub post_line: f64,
}

/// Reads, then line creations once the worker runs (it reserves them).
pub async fn measure(
    bench: &mut Bench,
    report: &mut Report,
    catalog: &[i64],
    sample_orders: &[i64],
) -> Ceilings {
    let (c, secs) = (bench.sizes.concurrency, bench.sizes.http_secs);
    let products = bench.products.addr.unwrap();
    let orders = bench.orders().addr.unwrap();
    let healthz = closed_loop(products, c, secs, |_, _| ("GET", "/healthz".into(), None)).await;
    let get_product = get_each(products, bench, "/produits/", catalog).await;
    let orders_healthz =
        closed_loop(orders, c, secs, |_, _| ("GET", "/healthz".into(), None)).await;
    let get_order = get_each(orders, bench, "/commandes/", sample_orders).await;
    let load_orders = bench.load_orders(c);
    let post_line = post_each(orders, c, secs, &load_orders, catalog).await;
    let read_target = format!(
        "≥ {:.0}% of /healthz: {}",
        target::READ_SHARE_OF_HEALTHZ * 100.0,
        verdict(get_product.rate() >= target::READ_SHARE_OF_HEALTHZ * healthz.rate())
    );
    let order_target = format!(
        "≥ {:.0}% of /healthz: {}",
        target::READ_SHARE_OF_HEALTHZ * 100.0,
        verdict(get_order.rate() >= target::READ_SHARE_OF_HEALTHZ * orders_healthz.rate())
    );
    for (name, r, ceiling, target) in [
        (
            "GET /produits/{id}",
            &get_product,
            &healthz,
            read_target.as_str(),
        ),
        (
            "GET /commandes/{id}",
            &get_order,
            &orders_healthz,
            order_target.as_str(),
        ),
    ] {
        let value = summary(r);
        let ceiling = Some((ceiling.rate(), "req/s (/healthz)"));
        report.add(&format!("{name} (c={c})"), value, ceiling, r.rate(), target);
    }
    add_post_line(report, c, &post_line);
    let value = format!(
        "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        healthz.rate(),
        healthz.percentile_ms(50.0),
        healthz.percentile_ms(99.0)
    );
    report.add(
        "GET /healthz, products (HTTP ceiling)",
        value,
        None,
        0.0,
        "",
    );
    let value = format!("{:.0} req/s", orders_healthz.rate());
    report.add("GET /healthz, orders (HTTP ceiling)", value, None, 0.0, "");
    Ceilings {
        post_line: post_line.rate(),
    }
}

/// Line creations from 1 and 8 clients, where gathering them into group
/// commits must not cost latency (after the pipeline steps, which they
/// would otherwise change by the lines they add).
pub async fn post_at_low_concurrency(bench: &mut Bench, report: &mut Report, catalog: &[i64]) {
    let orders = bench.orders().addr.unwrap();
    for clients in [1, 8] {
        // Fresh orders for each step: none fills up.
        let load_orders = bench.load_orders(clients);
        let result = post_each(
            orders,
            clients,
            bench.sizes.http_secs,
            &load_orders,
            catalog,
        )
        .await;
        add_post_line(report, clients, &result);
    }
}

/// A closed loop's rate, latency and errors, as the table shows them.
fn summary(r: &LoadResult) -> String {
    format!(
        "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        r.rate(),
        r.percentile_ms(50.0),
        r.percentile_ms(99.0),
        r.errors
    )
}

fn add_post_line(report: &mut Report, clients: usize, r: &LoadResult) {
    let value = summary(r);
    report.add(
        &format!("POST /commandes-produits (c={clients})"),
        value,
        None,
        0.0,
        "",
    );
}

/// `POST /commandes-produits` from `clients` connections, each to its own
/// orders, over the catalog's products.
async fn post_each(
    orders: SocketAddr,
    clients: usize,
    secs: f64,
    load_orders: &LoadOrders,
    catalog: &[i64],
) -> LoadResult {
    let (orders_ids, products_ids) = (load_orders.clone(), catalog.to_vec());
    closed_loop(orders, clients, secs, move |t, n| {
        let product = products_ids[(t + n as usize) % products_ids.len()];
        let order = orders_ids.for_request(t, n);
        let body = json!({"commande_id": order, "produit_id": product, "quantite": 1});
        ("POST", "/commandes-produits".into(), Some(body.to_string()))
    })
    .await
}

/// `GET {prefix}{id}` for the `ids` in turn.
async fn get_each(
    addr: SocketAddr,
    bench: &Bench,
    prefix: &'static str,
    ids: &[i64],
) -> LoadResult {
    let ids = ids.to_vec();
    let (c, secs) = (bench.sizes.concurrency, bench.sizes.http_secs);
    closed_loop(addr, c, secs, move |t, n| {
        let id = ids[(t * 7 + n as usize) % ids.len()];
        ("GET", format!("{prefix}{id}"), None)
    })
    .await
}
