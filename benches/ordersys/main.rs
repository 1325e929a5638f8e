//! `cargo bench --bench ordersys`: how fast ordersys is, next to its own
//! ceilings.
//!
//! Cargo builds ordersys in release mode; this starts `products`, `orders`
//! and `worker` as separate processes against the local PostgreSQL and
//! RabbitMQ on a fresh database and vhost (the test kit's), and measures
//! from this process, the load generator (keep-alive HTTP/1.1 connections):
//!
//! 1. HTTP ([`http`]): GET /produits/{id}, GET /commandes/{id}, POST
//!    /commandes-produits, next to /healthz on the same servers (POST also
//!    from 1 and 8 clients, after step 3);
//! 2. the pipeline ([`pipeline`]): line changes per second from HTTP to
//!    RESERVE, sustained, and the change-to-applied latency at half that
//!    rate, by stage;
//! 3. order validation ([`validation`]): start → decision under the paced
//!    load, and many orders validated at once against scarce stock;
//! 4. the worker alone ([`worker`]), draining pre-filled stock queues,
//!    with 1, 2 and 4 consumers, sampling its backends' row-lock waits;
//! 5. the ceilings ([`ceilings`]): the broker alone, the database alone;
//! 6. each process's peak RSS.
//!
//! The load is the project's one generator, `ordersys::load`: its HTTP
//! connections (closed loop for the ceilings) and the open-loop schedule of
//! `ordersys load` (the paced pipeline step).
//!
//! Then it checks the stock invariant, prints one table ([`report`]) and
//! writes it, with the machine's description, to docs/benchmarks.md.
//!
//! `-- --smoke` runs every step for a second or so (CI does, so the harness
//! cannot rot) and writes nothing; `-- --worker-only` measures step 3 alone;
//! `-- --retention` shows that the outbox and the processed ids stay bounded
//! while the pipeline runs flat out ([`retention`]).

mod ceilings;
mod cpu;
mod http;
mod pipeline;
mod report;
mod retention;
mod setup;
mod sizes;
mod sql;
mod validation;
mod worker;

use report::{verdict, Report};
use setup::Bench;
use sizes::{target, Sizes, STOCK};
use sql::{count, until_applied};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arg = |name: &str| std::env::args().any(|a| a == name);
    let sizes = if arg("--smoke") {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    eprintln!(
        "benchmarking ordersys ({})",
        if sizes.smoke {
            "smoke mode"
        } else {
            "full run"
        }
    );
    let mut bench = Bench::start(sizes).await;
    if arg("--retention") {
        retention::measure(&mut bench).await;
        return;
    }
    if arg("--worker-only") {
        let catalog = bench
            .create_products("queue", sizes::WORKER_CATALOG, 1.into())
            .await;
        for (round, replicas) in worker::REPLICAS.into_iter().enumerate() {
            let (drain, mut process) =
                worker::drain(&mut bench, &catalog, sizes.worker_messages, replicas, round).await;
            process.terminate(std::time::Duration::from_secs(30));
            println!(
                "worker alone, {replicas} replicas: {:.0} msg/s ({} messages); CPU {}; \
                 waiting on a row lock in {} of {} samples",
                drain.rate,
                sizes.worker_messages,
                drain.cpu,
                drain.lock_waits.waiting,
                drain.lock_waits.samples
            );
        }
        return;
    }
    let mut report = Report::default();
    let (catalog, worker_catalog) = bench.catalog().await;
    bench.start_orders().await;
    let sample_orders = bench.sample_orders(&catalog).await;

    // The worker reserves the sample lines before anything is measured.
    let mut worker = bench.start_worker().await;
    until_applied(&mut bench.pg, "sample lines to be reserved").await;
    let ceilings = http::measure(&mut bench, &mut report, &catalog, &sample_orders).await;
    let rate = pipeline::saturated(&mut bench, &mut report, &worker, &ceilings, &catalog).await;
    pipeline::paced(&mut bench, &mut report, rate, &catalog).await;
    validation::under_load(&mut bench, &mut report, rate, &catalog).await;
    let scarce =
        validation::at_once_against_scarce_stock(&mut bench, &mut report, catalog[0]).await;
    http::post_at_low_concurrency(&mut bench, &mut report, &catalog).await;
    until_applied(
        &mut bench.pg,
        "the lines of the low-concurrency steps to be reserved",
    )
    .await;
    worker.terminate(std::time::Duration::from_secs(30));

    let mut drains = Vec::new();
    let mut last: Option<ordersys_testkit::process::Process> = None;
    for (round, replicas) in worker::REPLICAS.into_iter().enumerate() {
        if let Some(mut previous) = last.take() {
            previous.terminate(std::time::Duration::from_secs(30));
        }
        let (drain, process) = worker::drain(
            &mut bench,
            &worker_catalog,
            sizes.worker_messages,
            replicas,
            round,
        )
        .await;
        drains.push((replicas, drain));
        last = Some(process);
    }
    let worker = last.expect("one drain at least");
    let (publish, consume) =
        tokio::task::block_in_place(|| ceilings::broker(&bench.broker, sizes.broker_messages));
    let database = tokio::task::block_in_place(|| ceilings::database(&bench.db, sizes.db_updates));
    let (line_writes, line_writes_cpu) =
        tokio::task::block_in_place(|| ceilings::line_writes(sizes::LINE_WRITERS, sizes.http_secs));
    worker::report(
        &mut report,
        sizes.worker_messages,
        &drains,
        bench.settings.worker.replicas,
        consume,
    );
    for (figure, value) in [
        (
            "broker ceiling: amiquip publish with confirms (windows of 100)",
            format!("{publish:.0} msg/s"),
        ),
        (
            "broker ceiling: amiquip consume with acks",
            format!("{consume:.0} msg/s"),
        ),
        (
            "database ceiling: single-row UPDATE loop, autocommit",
            format!("{database:.0} updates/s"),
        ),
        (
            &format!(
                "database ceiling: the SQL of POST /commandes-produits alone \
                 (create_line from {} connections, no HTTP, no relay, no worker)",
                sizes::LINE_WRITERS
            ),
            format!("{line_writes:.0} lines/s; CPU {line_writes_cpu}"),
        ),
    ] {
        report.add(figure, value, None, 0.0, "");
    }
    report.notes.push(format!(
        "The pipeline's target ({:.0} changes/s) next to the database's ceiling for the request path \
         alone ({line_writes:.0} lines/s on this machine, PostgreSQL and its client sharing the cores, \
         nothing else running): every change also costs the relay's and the worker's statements and \
         the HTTP service, so the target is {} here.",
        target::PIPELINE_RATE,
        if line_writes < target::PIPELINE_RATE {
            "beyond what PostgreSQL alone sustains"
        } else {
            "within the database's reach"
        }
    ));
    for process in [&bench.products, bench.orders(), &worker] {
        let rss = process.peak_rss_mib();
        let verdict = verdict(rss <= target::PEAK_RSS_MIB);
        let target = format!("≤ {:.0} MiB: {verdict}", target::PEAK_RSS_MIB);
        report.add(
            &format!("peak RSS, ordersys {}", process.name),
            format!("{rss:.1} MiB"),
            None,
            0.0,
            &target,
        );
    }
    let invariant = check_invariant(
        &mut bench,
        &mut report,
        (sizes.worker_messages * worker::REPLICAS.len()) as i64,
        scarce,
    );
    println!("\n{}", report.table());
    for note in &report.notes {
        println!("{note}");
    }
    assert!(
        invariant,
        "the stock invariant does not hold after the benchmark"
    );
    if !sizes.smoke {
        report::write_doc(&report);
    }
}

/// No lost or doubled change: every product's stock is its initial stock
/// (`scarce`: the one product that did not start at [`STOCK`]) minus its
/// RESERVE lines and the queued messages' reservations, every line is
/// RESERVE but those of refused validations (LIBERE), and every queued unit
/// was applied once.
fn check_invariant(
    bench: &mut Bench,
    report: &mut Report,
    queued_units: i64,
    scarce: (i64, i64),
) -> bool {
    let pg = &mut bench.pg;
    let first = worker::FIRST_QUEUED_LINE;
    let (scarce, scarce_stock) = scarce;
    let initial = format!("(CASE WHEN p.id = {scarce} THEN {scarce_stock} ELSE {STOCK} END)");
    let wrong = count(
        pg,
        &format!(
            "SELECT count(*) AS n FROM produits p WHERE p.quantite_en_stock <> {initial} - coalesce((SELECT sum(l.quantite) \
             FROM commandes_produits l WHERE l.produit_id = p.id AND l.statut_stock = 'RESERVE'), 0) \
             - coalesce((SELECT sum(r.quantite) FROM reservations r WHERE r.produit_id = p.id AND r.ligne_id >= {first}), 0)"
        ),
    );
    let waiting = count(
        pg,
        "SELECT count(*) AS n FROM commandes_produits l JOIN commandes c ON c.id = l.commande_id \
         WHERE l.statut_stock <> CASE WHEN c.validation = 'REFUSEE' THEN 'LIBERE' ELSE 'RESERVE' END",
    );
    let applied = count(
        pg,
        &format!("SELECT coalesce(sum(quantite), 0)::bigint AS n FROM reservations WHERE ligne_id >= {first}"),
    );
    let products = count(pg, "SELECT count(*) AS n FROM produits");
    let holds = wrong == 0 && waiting == 0 && queued_units == applied;
    report.notes.push(format!(
        "Stock invariant after the run: {} ({products} products checked; {waiting} lines neither RESERVE nor released by a refusal; \
         {applied} of {queued_units} queued units applied).",
        if holds { "holds" } else { "VIOLATED" },
    ));
    holds
}
