//! Step 2: the pipeline. Line changes from HTTP to `RESERVE`, sustained
//! (saturated), then the change-to-applied latency at half that rate, and
//! where that time goes, from the timestamps each stage leaves.

use crate::cpu::CpuSample;
use crate::http::Ceilings;
use crate::report::{verdict, Report};
use crate::setup::{Bench, LoadOrders};
use crate::sizes::{target, PACED_CONNECTIONS};
use crate::sql::{count, seconds, until_applied};
use diesel::PgConnection;
use ordersys::load::http::{closed_loop, open_loop, Request};
use ordersys_testkit::process::Process;
use serde_json::json;
use std::time::Instant;

/// A line creation on task `t`'s order, the product chosen by `spread`.
fn line(
    orders: LoadOrders,
    products: &[i64],
    spread: usize,
    quantite: u64,
) -> impl Fn(usize, u64) -> Request {
    let products = products.to_vec();
    move |t, n| {
        let product = products[(t * spread + n as usize) % products.len()];
        let quantite = 1 + n % quantite;
        let order = orders.for_request(t, n);
        let body = json!({"commande_id": order, "produit_id": product, "quantite": quantite});
        ("POST", "/commandes-produits".into(), Some(body.to_string()))
    }
}

/// Saturates the pipeline; returns the sustained rate.
pub async fn saturated(
    bench: &mut Bench,
    report: &mut Report,
    worker: &Process,
    ceilings: &Ceilings,
    catalog: &[i64],
) -> f64 {
    let orders = bench.load_orders(bench.sizes.concurrency);
    until_applied(&mut bench.pg, "earlier lines to be reserved").await;
    let before = count(&mut bench.pg, "SELECT count(*) AS n FROM outbox");
    let pids = [
        ("orders", bench.orders().pid()),
        ("worker", worker.pid()),
        ("products", bench.products.pid()),
    ];
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let (c, secs) = (bench.sizes.concurrency, bench.sizes.pipeline_secs);
    let addr = bench.orders().addr.unwrap();
    let load = closed_loop(addr, c, secs, line(orders, catalog, 13, 3)).await;
    let drained = until_applied(&mut bench.pg, "the pipeline to apply every change").await;
    let total = started.elapsed().as_secs_f64();
    let cpu = CpuSample::take(&pids).since(&cpu_before, total);
    let changes = count(&mut bench.pg, "SELECT count(*) AS n FROM outbox") - before;
    let rate = changes as f64 / total;
    report.add(
        &format!("pipeline: line changes HTTP → RESERVE, {secs:.0} s sustained"),
        format!(
            "{rate:.0} changes/s ({changes} changes; HTTP accepted {:.0}/s; last applied {:.2} s after the load stopped)",
            load.rate(),
            drained.as_secs_f64()
        ),
        Some((ceilings.post_line, "req/s (POST alone)")),
        rate,
        &format!("≥ {:.0}/s: {}", target::PIPELINE_RATE, verdict(rate >= target::PIPELINE_RATE)),
    );
    let cpu_figure = "CPU during the pipeline step (% of one core; the machine has 2)";
    report.add(cpu_figure, cpu, None, 0.0, "");
    rate
}

/// Paces line creations at `rate` and reports the change-to-applied
/// latency, in all and by stage.
pub async fn paced(bench: &mut Bench, report: &mut Report, rate: f64, catalog: &[i64]) {
    let orders = bench.load_orders(bench.sizes.concurrency.min(PACED_CONNECTIONS));
    let half = (rate / 2.0).max(10.0);
    let since = "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint AS n";
    let window_start = count(&mut bench.pg, since);
    let addr = bench.orders().addr.unwrap();
    let connections = bench.sizes.concurrency.min(PACED_CONNECTIONS);
    let load = open_loop(
        addr,
        connections,
        half,
        bench.sizes.pipeline_secs,
        line(orders, catalog, 17, 1),
    )
    .await;
    until_applied(&mut bench.pg, "paced changes to be applied").await;
    let pg = &mut bench.pg;
    let window = format!("m.occurred_at >= to_timestamp({window_start} / 1000000.0)");
    let (p50, p99) = (
        stage(pg, 0.5, "m.occurred_at", "m.applique_le", &window),
        stage(pg, 0.99, "m.occurred_at", "m.applique_le", &window),
    );
    report.add(
        &format!("pipeline latency at {half:.0} changes/s (half), accepted → applied"),
        format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms ({} requests, {} errors or not sent, HTTP p99 {:.2} ms from the due time)",
            load.ok,
            load.errors,
            load.percentile_ms(99.0)
        ),
        None,
        0.0,
        &format!(
            "p99 ≤ {:.0} ms: {}",
            target::PIPELINE_P99_MS,
            verdict(p99 <= target::PIPELINE_P99_MS)
        ),
    );
    // The line's change (occurred_at, before commit), the relay claiming its
    // outbox row (sent_at is the claiming transaction's start), the worker's
    // batch transaction starting (traite_le), the movement written
    // (applique_le, just before that batch commits).
    let stages = [
        ("change → relay claim", "m.occurred_at", "o.sent_at"),
        ("claim → worker batch", "o.sent_at", "t.traite_le"),
        ("batch → applied", "t.traite_le", "m.applique_le"),
    ]
    .map(|(name, from, to)| {
        let (p50, p99) = (
            stage(pg, 0.5, from, to, &window),
            stage(pg, 0.99, from, to, &window),
        );
        format!("{name} p50 {p50:.1} / p99 {p99:.1} ms")
    });
    report.add(
        "pipeline latency by stage (same window)",
        stages.join("; "),
        None,
        0.0,
        "",
    );
}

/// Percentile `p` of `to - from` over the window's movements, in ms.
fn stage(pg: &mut PgConnection, p: f64, from: &str, to: &str, window: &str) -> f64 {
    seconds(
        pg,
        &format!(
            "SELECT (percentile_cont({p}) WITHIN GROUP (ORDER BY extract(epoch from {to} - {from})))::float8 AS s \
             FROM mouvements m JOIN outbox o USING (message_id) JOIN messages_traites t USING (message_id) \
             WHERE {window}"
        ),
    ) * 1000.0
}
