//! A whole-broker restart under load. It stops and starts the shared
//! RabbitMQ node, so it lives in its own test binary: `cargo test` runs test
//! binaries one after the other, and this one has a single test.

use ordersys_testkit::{load, TestApp};
use std::process::Command;
use std::time::Duration;

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .status()
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_and_doubles_nothing() {
    let app = TestApp::with_worker().await;
    let initial = load::products(&app, 5, 30).await;
    let mut ids: Vec<i64> = initial.keys().copied().collect();
    ids.sort();
    let traffic = tokio::spawn({
        let orders = app.orders.clone();
        let ids = ids.clone();
        async move { load::run(&[orders], &ids, 600, 8, 11).await }
    });
    // Let traffic flow, then take the whole node down for a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restart = tokio::task::spawn_blocking(|| {
        rabbitmqctl(&["stop_app"]);
        std::thread::sleep(Duration::from_secs(2)); // the outage itself
        rabbitmqctl(&["start_app"]);
        rabbitmqctl(&["await_startup"]);
    });
    restart.await.unwrap();
    let report = traffic.await.unwrap();
    assert_eq!(
        report.failed, 0,
        "the API does not depend on the broker: {report:?}"
    );
    app.orders_server.wait_ready().await;
    let orders_metrics = app.orders.get("/metrics").await.expect(200).body;
    let failed = ordersys_testkit::metric(
        orders_metrics.as_str().unwrap(),
        "ordersys_outbox_failed_batches_total",
    );
    assert!(failed > 0, "the relay saw the broker go away");
    app.wait_until_settled(Duration::from_secs(120)).await;
    assert_eq!(app.assert_stock_invariant(&initial), 5);
}
