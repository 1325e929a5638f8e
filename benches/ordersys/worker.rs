//! Step 3: the worker alone, draining a pre-filled queue, exactly once.

use crate::cpu::CpuSample;
use crate::report::{verdict, Report};
use crate::setup::Bench;
use crate::sizes::target;
use crate::sql::{count, until_count};
use ordersys_testkit::process::Process;
use ordersys_testkit::TestBroker;
use serde_json::json;
use std::time::{Duration, Instant};

/// The first line id of the pre-filled messages' (lines that exist only in
/// the messages).
pub const FIRST_QUEUED_LINE: i64 = 10_000_000;

/// Pre-fills product_queue with `n` tracked CREATED messages of one unit
/// each, for lines that exist only in the messages, on `products`.
fn prefill(broker: &TestBroker, products: &[i64], n: usize) {
    let mut connection = broker.connect();
    ordersys::amqp::declare_topology(&mut connection, &broker.settings()).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let mut publisher = ordersys::amqp::ConfirmingChannel::new(channel).unwrap();
    for i in 0..n {
        let product = products[i % products.len()];
        let message_id = uuid::Uuid::new_v4().to_string();
        let body = json!({"action": "CREATED", "produit_id": product, "quantite": 1, "commande_id": 1,
                          "message_id": message_id, "ligne_id": FIRST_QUEUED_LINE + i as i64, "version": 1});
        publisher
            .publish(
                ordersys::messages::PRODUCT_EXCHANGE,
                ordersys::messages::PRODUCT_ROUTING_KEY,
                body.to_string().as_bytes(),
                ordersys::amqp::properties(&message_id),
            )
            .unwrap();
        if (i + 1) % 500 == 0 {
            publisher
                .wait_for_confirms(Duration::from_secs(60))
                .unwrap();
        }
    }
    publisher
        .wait_for_confirms(Duration::from_secs(60))
        .unwrap();
    publisher.close();
    let _ = connection.close();
}

/// Pre-fills product_queue with `n` messages on `catalog`, then starts a
/// worker and times it draining them; returns msg/s, its CPU, and the
/// worker (still running).
pub async fn drain(bench: &mut Bench, catalog: &[i64], n: usize) -> (f64, String, Process) {
    prefill(&bench.broker, catalog, n);
    let processed = "SELECT count(*) AS n FROM messages_traites";
    let target = count(&mut bench.pg, processed) + n as i64;
    // The clock starts when the worker is ready (its start-up is not
    // consumption); what it applied before that is not counted.
    let worker = bench.start_worker().await;
    let pids = [("worker", worker.pid())];
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let at_start = count(&mut bench.pg, processed);
    until_count(
        &mut bench.pg,
        "the worker to drain the queue",
        processed,
        target,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = CpuSample::take(&pids).since(&cpu_before, secs);
    ((target - at_start) as f64 / secs, cpu, worker)
}

/// Reports the figure against the broker's own consume ceiling.
pub fn report(report: &mut Report, n: usize, rate: f64, cpu: String, consume_ceiling: f64) {
    report.add(
        &format!("worker alone: drain {n} queued messages, exactly once"),
        format!("{rate:.0} msg/s"),
        Some((consume_ceiling, "msg/s (bare consume+ack)")),
        rate,
        &format!(
            "≥ {:.0} msg/s: {}",
            target::WORKER_RATE,
            verdict(rate >= target::WORKER_RATE)
        ),
    );
    let figure = "CPU while the worker drains (% of one core; the machine has 2)";
    report.add(figure, cpu, None, 0.0, "");
}
