//! `-- --retention`: the pipeline saturated for the step's time with a
//! retention of 2 s for sent outbox rows and processed message ids, the two
//! tables sampled twice a second: they stay bounded (about 2 s of traffic),
//! while everything is applied exactly once.

use crate::setup::Bench;
use crate::sizes::CATALOG;
use crate::sql::{count, until_applied};
use ordersys::load::http::closed_loop;
use serde_json::json;
use std::time::{Duration, Instant};

const RETENTION: &str = "2";

pub async fn measure(bench: &mut Bench) {
    bench.env.extend([
        ("ORDERSYS__OUTBOX__RETENTION_SECS", RETENTION),
        ("ORDERSYS__WORKER__DEDUPE_RETENTION_SECS", RETENTION),
    ]);
    let catalog = bench.create_products("retention", CATALOG, 1.into()).await;
    bench.start_orders().await;
    let _worker = bench.start_worker().await;
    let (c, secs) = (bench.sizes.concurrency, bench.sizes.pipeline_secs);
    let orders = bench.load_orders(c);
    let addr = bench.orders().addr.unwrap();
    let load = tokio::spawn(closed_loop(addr, c, secs, move |t, n| {
        let product = catalog[(t + n as usize) % catalog.len()];
        let order = orders.for_request(t, n);
        let body = json!({"commande_id": order, "produit_id": product, "quantite": 1});
        ("POST", "/commandes-produits".into(), Some(body.to_string()))
    }));
    let (mut outbox, mut processed) = (0, 0);
    let started = Instant::now();
    while !load.is_finished() {
        outbox = outbox.max(count(&mut bench.pg, "SELECT count(*) AS n FROM outbox"));
        processed = processed.max(count(
            &mut bench.pg,
            "SELECT count(*) AS n FROM messages_traites",
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let load = load.await.expect("load");
    until_applied(&mut bench.pg, "every change to be applied").await;
    let rate = load.rate();
    println!(
        "retention {RETENTION} s, {:.0} s at {rate:.0} changes/s ({} changes): \
         at most {outbox} outbox rows and {processed} processed ids at once (about {:.1} s of traffic each)",
        started.elapsed().as_secs_f64(),
        load.ok,
        outbox.max(processed) as f64 / rate
    );
}
