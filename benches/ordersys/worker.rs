//! Step 3: the worker alone, draining a pre-filled queue, exactly once.

use crate::cpu::CpuSample;
use crate::report::{verdict, Report};
use crate::setup::Bench;
use crate::sizes::target;
use crate::sql::{count, until_count};
use ordersys::domain::ProductId;
use ordersys::messages::{stock_partition, stock_routing_key, PRODUCT_ROUTING_KEY};
use ordersys_testkit::process::Process;
use ordersys_testkit::TestBroker;
use serde_json::json;
use std::time::{Duration, Instant};

/// The first line id of the pre-filled messages' (lines that exist only in
/// the messages).
pub const FIRST_QUEUED_LINE: i64 = 10_000_000;

/// Pre-fills the stock queues with `n` tracked CREATED messages of one
/// unit each, for lines that exist only in the messages (from `first_line`
/// on), on `products`: each to its product's partition as the relay
/// publishes it, or to product_queue without partitions.
fn prefill(broker: &TestBroker, partitions: u16, products: &[i64], n: usize, first_line: i64) {
    let mut connection = broker.connect();
    let settings = ordersys::settings::AmqpSettings {
        stock_partitions: partitions,
        ..broker.settings()
    };
    ordersys::amqp::declare_topology(&mut connection, &settings).unwrap();
    let channel = connection.open_channel(None).unwrap();
    let mut publisher = ordersys::amqp::ConfirmingChannel::new(channel).unwrap();
    for i in 0..n {
        let product = products[i % products.len()];
        let message_id = uuid::Uuid::new_v4().to_string();
        let body = json!({"action": "CREATED", "produit_id": product, "quantite": 1, "commande_id": 1,
                          "message_id": message_id, "ligne_id": first_line + i as i64, "version": 1});
        let routing_key = match partitions {
            0 => PRODUCT_ROUTING_KEY.to_owned(),
            n => stock_routing_key(stock_partition(ProductId(product), n)),
        };
        publisher
            .publish(
                ordersys::messages::PRODUCT_EXCHANGE,
                &routing_key,
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

/// One drain: its rate, the worker's CPU, and how often its backends were
/// seen waiting on a row lock.
pub struct Drain {
    pub rate: f64,
    pub cpu: String,
    pub lock_waits: LockWaits,
}

/// The worker's consumers in each drain, the default (`worker.replicas`)
/// last: its process stays running for the memory figures.
pub const REPLICAS: [usize; 3] = [1, 4, 2];

/// Pre-fills the stock queues with `n` messages on `catalog` (the `round`-th
/// drain's own lines), then starts a worker with `replicas` consumers and
/// times it draining them, sampling what its backends wait on; returns
/// the figures and the worker (still running).
pub async fn drain(
    bench: &mut Bench,
    catalog: &[i64],
    n: usize,
    replicas: usize,
    round: usize,
) -> (Drain, Process) {
    prefill(
        &bench.broker,
        bench.settings.amqp.stock_partitions,
        catalog,
        n,
        FIRST_QUEUED_LINE + (round * n) as i64,
    );
    let processed = "SELECT count(*) AS n FROM messages_traites";
    let target = count(&mut bench.pg, processed) + n as i64;
    // The clock starts when the worker is ready (its start-up is not
    // consumption); what it applied before that is not counted.
    let worker = bench.start_worker_with(replicas).await;
    let sampler = LockWaits::sample(bench.db.conn());
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
    let lock_waits = sampler.stop();
    let rate = (target - at_start) as f64 / secs;
    (
        Drain {
            rate,
            cpu,
            lock_waits,
        },
        worker,
    )
}

/// Samples, every 100 ms, the worker's backends that are running a
/// statement, and those among them waiting on a lock (another
/// transaction's row: `Lock/transactionid` or `Lock/tuple`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LockWaits {
    pub samples: u64,
    /// Samples in which some worker backend waited on a lock.
    pub waiting: u64,
}

pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<LockWaits>,
}

impl LockWaits {
    fn sample(mut conn: diesel::PgConnection) -> Sampler {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut waits = LockWaits::default();
            while !stopped.load(Ordering::Relaxed) {
                let sql = "SELECT count(*) AS n FROM pg_stat_activity \
                           WHERE application_name = 'ordersys-worker' AND state = 'active' \
                             AND wait_event_type = 'Lock' \
                             AND wait_event IN ('transactionid', 'tuple')";
                waits.samples += 1;
                if crate::sql::count(&mut conn, sql) > 0 {
                    waits.waiting += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            waits
        });
        Sampler { stop, thread }
    }
}

impl Sampler {
    fn stop(self) -> LockWaits {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Reports the drains, by replicas, against the broker's own consume
/// ceiling; the target is held to the default's (`default_replicas`).
pub fn report(
    report: &mut Report,
    n: usize,
    drains: &[(usize, Drain)],
    default_replicas: usize,
    consume_ceiling: f64,
) {
    let mut drains: Vec<&(usize, Drain)> = drains.iter().collect();
    drains.sort_by_key(|(replicas, _)| *replicas);
    for (replicas, drain) in drains {
        let is_default = *replicas == default_replicas;
        let waits = drain.lock_waits;
        let value = format!(
            "{:.0} msg/s; a backend waiting on another's row lock in {} of {} samples",
            drain.rate, waits.waiting, waits.samples
        );
        let target = if is_default {
            format!(
                "≥ {:.0} msg/s: {}",
                target::WORKER_RATE,
                verdict(drain.rate >= target::WORKER_RATE)
            )
        } else {
            String::new()
        };
        report.add(
            &format!(
                "worker alone, {replicas} replica{}: drain {n} queued messages, exactly once",
                if *replicas == 1 { "" } else { "s" }
            ),
            value,
            Some((consume_ceiling, "msg/s (bare consume+ack)")),
            drain.rate,
            &target,
        );
        if is_default {
            let figure = "CPU while the worker drains (% of one core; the machine has 2)";
            report.add(figure, drain.cpu.clone(), None, 0.0, "");
        }
    }
}
