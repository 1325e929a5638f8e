//! Stock partitions (`amqp.stock_partitions`): the relay routes each change
//! to its product's partition queue, the workers share the partitions out
//! and hand them over when one stops, dies or freezes, and what was queued
//! on `product_queue` before is applied too. Every change reaches stock
//! once whatever happens.

use crate::common::load::{self, ids};
use crate::common::process::Process;
use crate::common::{wait_for, Running, TestApp};
use ordersys::messages::{
    stock_queue, stock_routing_key, DEAD_LETTER_QUEUE, PRODUCT_EXCHANGE, PRODUCT_QUEUE,
};
use ordersys::Mode;
use serde_json::json;
use std::time::Duration;

const PARTITIONS: u16 = 4;
const SETTLE: Duration = Duration::from_secs(90);

/// A worker process with 2 consumers sharing `PARTITIONS` partitions,
/// holding a lease for a second; a frozen one is given up on by the broker
/// after a few seconds (its heartbeat).
fn worker(settings: &ordersys::settings::Settings) -> Process {
    let partitions = PARTITIONS.to_string();
    Process::spawn_with(
        settings,
        &["worker", "--replicas", "2", "--bind", "127.0.0.1:0"],
        &[
            ("ORDERSYS__AMQP__STOCK_PARTITIONS", &partitions),
            ("ORDERSYS__WORKER__PARTITION_LEASE_MS", "1000"),
            ("ORDERSYS__AMQP__HEARTBEAT_SECS", "2"),
        ],
    )
}

/// How many partitions each worker holds (live leases), most first.
fn shares(app: &TestApp) -> Vec<i64> {
    let holders = app.db.count(
        "SELECT count(DISTINCT worker) AS n FROM partitions_stock \
         WHERE worker IS NOT NULL AND expire_le > now()",
    );
    let most = app.db.count(
        "SELECT coalesce(max(n), 0) AS n FROM (SELECT count(*) AS n FROM partitions_stock \
         WHERE worker IS NOT NULL AND expire_le > now() GROUP BY worker) s",
    );
    let held = app.db.count(
        "SELECT count(*) AS n FROM partitions_stock WHERE worker IS NOT NULL AND expire_le > now()",
    );
    vec![holders, most, held]
}

async fn until_shared(app: &TestApp, what: &str, holders: i64, most: i64) {
    wait_for(what, Duration::from_secs(30), || async {
        let now = shares(app);
        (now == [holders, most, i64::from(PARTITIONS)]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_partitions_and_hand_them_over_when_one_freezes_or_dies() {
    let app = TestApp::build(false, |s| s.amqp.stock_partitions = PARTITIONS).await;
    let initial = load::products(&app, 6, 40).await;
    let first = worker(&app.settings);
    until_shared(&app, "the first worker to hold every partition", 1, 4).await;
    let second = worker(&app.settings);
    until_shared(&app, "two workers to hold two partitions each", 2, 2).await;
    let orders = std::slice::from_ref(&app.orders);
    let report = load::run(orders, &ids(&initial), 300, 6, 1).await;
    assert_eq!(report.failed, 0, "{report:?}");

    // Frozen: its leases expire and the other worker takes them; woken up,
    // it gets its share back.
    first.signal("STOP");
    until_shared(
        &app,
        "the live worker to take the frozen one's partitions",
        1,
        4,
    )
    .await;
    let report = load::run(orders, &ids(&initial), 300, 6, 2).await;
    assert_eq!(report.failed, 0, "{report:?}");
    app.wait_until_settled(SETTLE).await;
    first.signal("CONT");
    until_shared(&app, "the woken worker to get its share back", 2, 2).await;

    // Killed mid-load: the survivor takes everything, nothing is lost or
    // applied twice.
    let applied = "SELECT count(*) AS n FROM messages_traites";
    let before = app.db.count(applied);
    let load = {
        let (orders, products) = (orders.to_vec(), ids(&initial));
        tokio::spawn(async move { load::run(&orders, &products, 400, 6, 3).await })
    };
    wait_for(
        "the load to be under way",
        Duration::from_secs(30),
        || async { (app.db.count(applied) > before + 30).then_some(()) },
    )
    .await;
    second.kill();
    until_shared(&app, "the survivor to hold every partition", 1, 4).await;
    let report = load.await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    app.wait_until_settled(SETTLE).await;
    assert_eq!(app.assert_stock_invariant(&initial), 6);
    for k in 0..PARTITIONS {
        assert_eq!(
            app.broker.ready(&stock_queue(k)),
            0,
            "partition {k} drained"
        );
    }
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_queued_before_the_partitions_are_applied_after_the_upgrade() {
    // Before: orders without partitions, no worker; the changes wait in
    // product_queue.
    let app = TestApp::spawn().await;
    let product = app
        .products
        .post(
            "/produits/",
            json!({"nom": "p", "prix": 1, "quantite_en_stock": 100}),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let order = |client: crate::common::Client| async move {
        let id = client.post("/commandes", json!({})).await.expect(201).body["id"]
            .as_i64()
            .unwrap();
        for _ in 0..3 {
            let line = json!({"commande_id": id, "produit_id": product, "quantite": 2});
            client.post("/commandes-produits", line).await.expect(201);
        }
    };
    order(app.orders.clone()).await;
    wait_for(
        "3 changes in product_queue",
        Duration::from_secs(30),
        || async { (app.broker.ready(PRODUCT_QUEUE) == 3).then_some(()) },
    )
    .await;

    // After: orders with partitions in its place, whose changes go to the
    // product's partition. (The old one is stopped first: two relays
    // share the outbox, and the old one would publish the new changes to
    // product_queue, which is also applied, but not what this checks.)
    app.orders_server.stop().await;
    let mut partitioned = app.settings.clone();
    partitioned.amqp.stock_partitions = PARTITIONS;
    // As `ordersys migrate` of the new version does.
    let mut connection = app.broker.connect();
    ordersys::amqp::declare_topology(&mut connection, &partitioned.amqp).unwrap();
    let _ = connection.close();
    let upgraded = Running::start(Mode::Orders, &partitioned).await;
    order(crate::common::Client::new(&upgraded)).await;
    let k = ordersys::messages::stock_partition(ordersys::domain::ProductId(product), PARTITIONS);
    wait_for(
        "3 changes in the product's partition",
        Duration::from_secs(30),
        || async { (app.broker.ready(&stock_queue(k)) == 3).then_some(()) },
    )
    .await;
    assert_eq!(
        app.broker.ready(PRODUCT_QUEUE),
        3,
        "the old ones still wait"
    );

    // A partitioned worker applies both.
    let _worker = worker(&app.settings);
    wait_for("every line reserved", SETTLE, || async {
        let reserved = app
            .db
            .count("SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = 'RESERVE'");
        (reserved == 6).then_some(())
    })
    .await;
    let stock = app
        .products
        .get(&format!("/produits/{product}"))
        .await
        .expect(200);
    assert_eq!(stock.body["quantite_en_stock"], 88);
    assert_eq!(app.broker.ready(PRODUCT_QUEUE), 0);
    assert_eq!(app.broker.ready(&stock_queue(k)), 0);
    upgraded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_in_a_partition_is_dead_lettered_with_its_reason() {
    let app = TestApp::build(false, |s| s.amqp.stock_partitions = PARTITIONS).await;
    let _worker = worker(&app.settings);
    until_shared(&app, "the worker to hold every partition", 1, 4).await;
    let p = app.create_product("p", 1.0, 10).await;
    let k = ordersys::messages::stock_partition(ordersys::domain::ProductId(p), PARTITIONS);
    for body in [
        "not json".to_owned(),
        json!({"action": "RESERVED?", "produit_id": p, "quantite": 1, "commande_id": 1})
            .to_string(),
    ] {
        app.broker.publish(
            PRODUCT_EXCHANGE,
            &stock_routing_key(k),
            body.as_bytes(),
            None,
        );
    }
    wait_for("two dead letters", Duration::from_secs(30), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 2).then_some(())
    })
    .await;
    let reasons = app.broker.dead_letter_reasons(DEAD_LETTER_QUEUE);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().all(|r| !r.is_empty()), "{reasons:?}");
    assert_eq!(app.broker.ready(&stock_queue(k)), 0, "nothing left behind");
    let stock = app
        .products
        .get(&format!("/produits/{p}"))
        .await
        .expect(200);
    assert_eq!(stock.body["quantite_en_stock"], 10, "nothing applied");
}
