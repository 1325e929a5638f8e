//! Fault injection (docs/contract.md §5): whatever is killed, dropped or cut, once the
//! system settles every product's stock equals its initial stock minus what
//! its RESERVE lines hold, and no line is left waiting.

use crate::common::load::{self, ids};
use crate::common::process::Process;
use crate::common::proxy::Proxy;
use crate::common::{wait_for, Client, Running, TestApp};
use ordersys::messages::PRODUCT_QUEUE;
use ordersys::Mode;
use serde_json::{json, Value};
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    let initial = load::products(&app, 6, 25).await;
    // A backlog first, and small batches, so the kill lands in the middle.
    let report = load::run(std::slice::from_ref(&app.orders), &ids(&initial), 600, 8, 1).await;
    assert!(report.accepted > 450, "{report:?}");
    let args = ["worker", "--replicas", "2", "--bind", "127.0.0.1:0"];
    let worker = Process::spawn_with(
        &app.settings,
        &args,
        &[("ORDERSYS__WORKER__BATCH_SIZE", "5")],
    );
    wait_for(
        "the worker to be mid-stream",
        Duration::from_secs(30),
        || async {
            (app.db.count("SELECT count(*) AS n FROM messages_traites") >= 60).then_some(())
        },
    )
    .await;
    worker.kill();
    let processed = app.db.count("SELECT count(*) AS n FROM messages_traites");
    let sent = app.db.count("SELECT count(*) AS n FROM outbox");
    assert!(
        processed < sent,
        "the kill happened with work left ({processed} of {sent})"
    );
    let _replacement = Process::worker(&app.settings, 2);
    load::run(std::slice::from_ref(&app.orders), &ids(&initial), 200, 4, 2).await;
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_and_relays_under_concurrent_load() {
    let app = TestApp::spawn().await;
    let second_orders = Running::start(Mode::Orders, &app.settings).await;
    let initial = load::products(&app, 5, 25).await;
    let _workers = [
        Process::worker(&app.settings, 2),
        Process::worker(&app.settings, 2),
    ];
    let in_process = Running::start(Mode::Worker, &app.settings).await;
    let clients = [app.orders.clone(), Client::new(&second_orders)];
    let report = load::run(&clients, &ids(&initial), 600, 12, 3).await;
    assert_eq!(report.failed, 0, "{report:?}");
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 5);
    in_process.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_dropped_mid_batch() {
    let app = TestApp::with_worker().await;
    let initial = load::products(&app, 5, 60).await;
    let traffic = tokio::spawn({
        let (orders, products) = (app.orders.clone(), ids(&initial));
        async move { load::run(&[orders], &products, 500, 8, 4).await }
    });
    let mut dropped = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await; // spacing between faults, not a wait for a result
        dropped += app.broker.close_all_connections();
    }
    let report = traffic.await.unwrap();
    assert!(dropped > 0);
    assert_eq!(
        report.failed, 0,
        "the API does not depend on the broker: {report:?}"
    );
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_load() {
    let app = TestApp::with_worker().await;
    let initial = load::products(&app, 5, 60).await;
    let traffic = tokio::spawn({
        let (orders, products) = (app.orders.clone(), ids(&initial));
        async move { load::run(&[orders], &products, 500, 8, 5).await }
    });
    let mut killed = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await; // spacing between faults
        killed += app.db.count(&format!(
            "SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()) AS killed",
            app.db.name
        ));
    }
    traffic.await.unwrap();
    assert!(killed > 0);
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_accepting_writes_while_the_broker_is_down() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = TestApp::build(false, |s| {
        s.amqp.url = s
            .amqp
            .url
            .replace("127.0.0.1:5672", &proxy.addr.to_string());
    })
    .await;
    let p = app.create_product("p", 1.0, 100).await;
    let order = app.create_order().await;
    proxy.cut();
    wait_for(
        "orders to report the broker down, and stay ready",
        Duration::from_secs(20),
        || async {
            let ready = app.orders.get("/readyz").await;
            (ready.status == 200 && ready.body["checks"]["broker"] == "down").then_some(())
        },
    )
    .await;
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(app.create_line(order, p, 1).await["id"].as_i64().unwrap());
    }
    for q in 2..=4 {
        for line in &lines {
            app.orders
                .put(
                    &format!("/commandes-produits/{line}"),
                    json!({"quantite": q}),
                )
                .await
                .expect(200);
        }
    }
    app.orders
        .delete(&format!("/commandes-produits/{}", lines[0]))
        .await
        .expect(204);
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"),
        13
    );
    let metrics = app.orders.get("/metrics").await.expect(200).body;
    let metrics = metrics.as_str().unwrap();
    assert_eq!(crate::common::metric(metrics, "ordersys_outbox_unsent"), 13);

    proxy.restore();
    app.orders_server.wait_ready().await;
    wait_for(
        "13 messages in product_queue",
        Duration::from_secs(30),
        || async { (app.broker.ready(PRODUCT_QUEUE) == 13).then_some(()) },
    )
    .await;
    let mut versions: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    for (body, _) in app.broker.drain(PRODUCT_QUEUE) {
        let m: Value = serde_json::from_slice(&body).unwrap();
        versions
            .entry(m["ligne_id"].as_i64().unwrap())
            .or_default()
            .push(m["version"].as_i64().unwrap());
    }
    assert_eq!(versions[&lines[0]], [1, 2, 3, 4, 5]);
    assert_eq!(versions[&lines[1]], [1, 2, 3, 4]);
    assert_eq!(versions[&lines[2]], [1, 2, 3, 4]);
}

/// A database outage takes a service out of routing (`/readyz`) but not out
/// of its container's health (`/startedz`): Swarm replaces unhealthy tasks,
/// and a replacement would only come back after the database did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_makes_a_service_not_ready_but_it_stays_started() {
    let mut database: Option<url::Url> = None;
    let app = TestApp::build(false, |s| {
        database = Some(url::Url::parse(&s.database.url).unwrap())
    })
    .await;
    let mut url = database.unwrap();
    let server = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let proxy = Proxy::start(server.parse().unwrap()).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let mut settings = app.settings.clone();
    settings.database.url = url.to_string();
    let products = Running::start(Mode::Products, &settings).await;
    let health = Client::new(&products);
    health.get("/readyz").await.expect(200);
    let started = health.get("/startedz").await.expect(200);
    assert_eq!(started.body["status"], "started");

    proxy.cut();
    let not_ready = wait_for(
        "products to report the database down",
        Duration::from_secs(20),
        || async {
            let ready = health.get("/readyz").await;
            (ready.status == 503).then_some(ready)
        },
    )
    .await;
    let detail = not_ready.body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("database"), "{}", not_ready.body);
    health.get("/startedz").await.expect(200);
    health.get("/healthz").await.expect(200);

    proxy.restore();
    wait_for(
        "products to be ready again",
        Duration::from_secs(20),
        || async { (health.get("/readyz").await.status == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_broker_is_down_waits_for_it() {
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    proxy.cut();
    let app = TestApp::spawn().await;
    let mut settings = app.settings.clone();
    settings.amqp.url = settings
        .amqp
        .url
        .replace("127.0.0.1:5672", &proxy.addr.to_string());
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = app.create_line(order, p, 4).await["id"].as_i64().unwrap();
    let worker =
        ordersys::Application::build(Mode::Worker, &settings, "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let health = Client::new_at(worker.addr());
    let shutdown = worker.shutdown_handle();
    let task = tokio::spawn(worker.run_until_stopped());
    health.get("/healthz").await.expect(200);
    let not_ready = health.get("/readyz").await.expect(503);
    assert!(not_ready.body["detail"]
        .as_str()
        .unwrap()
        .contains("broker"));
    // Not started either: never ready yet, its container is not healthy.
    let not_started = health.get("/startedz").await.expect(503);
    assert!(not_started.body["detail"]
        .as_str()
        .unwrap()
        .contains("broker"));
    proxy.restore();
    app.wait_for_line(line, "RESERVE").await;
    health.get("/readyz").await.expect(200);
    health.get("/startedz").await.expect(200);
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_worker_finish_its_batch_and_exit_0() {
    let app = TestApp::spawn().await;
    let initial = load::products(&app, 4, 20).await;
    load::run(std::slice::from_ref(&app.orders), &ids(&initial), 300, 6, 6).await;
    let args = ["worker", "--replicas", "2", "--bind", "127.0.0.1:0"];
    let mut worker = Process::spawn_capturing(&app.settings, &args, &[]);
    wait_for("the worker to be busy", Duration::from_secs(30), || async {
        (app.db.count("SELECT count(*) AS n FROM messages_traites") >= 30).then_some(())
    })
    .await;
    let (status, worker) =
        tokio::task::spawn_blocking(move || (worker.terminate(Duration::from_secs(15)), worker))
            .await
            .unwrap();
    assert!(status.success(), "{status}");
    let log = worker.stderr();
    assert!(
        !log.contains(" ERROR "),
        "a clean stop logs no ERROR: {log}"
    );
    let _next = Process::worker(&app.settings, 1);
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 4);
}

/// `amqp.url` naming two brokers (two proxies to the one RabbitMQ, standing
/// in for a cluster's nodes): the node every process connected to first is
/// lost under load; each reconnects to the other, the API never fails a
/// write, and the stock is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_broker_addresses_a_lost_node_is_left_for_the_other() {
    let first = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let second = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let app = TestApp::build(true, |s| {
        let via = |proxy: &Proxy| {
            s.amqp
                .url
                .replace("127.0.0.1:5672", &proxy.addr.to_string())
        };
        s.amqp.url = format!("{}, {}", via(&first), via(&second));
    })
    .await;
    let initial = load::products(&app, 5, 60).await;
    let traffic = tokio::spawn({
        let (orders, products) = (app.orders.clone(), ids(&initial));
        async move { load::run(&[orders], &products, 500, 8, 6).await }
    });
    wait_for(
        "stock to be reserved through the first node",
        Duration::from_secs(30),
        || async {
            (app.db.count(
                "SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = 'RESERVE'",
            ) >= 20)
                .then_some(())
        },
    )
    .await;
    first.cut();
    let report = traffic.await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    // With the first node gone for good, every change from here on can
    // only be published and applied through the second.
    let after = load::run(std::slice::from_ref(&app.orders), &ids(&initial), 200, 4, 7).await;
    assert_eq!(after.failed, 0, "{after:?}");
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 5);
}
