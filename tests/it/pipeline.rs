//! The stock pipeline (docs/contract.md §4): order-line changes reach stock through the
//! outbox, RabbitMQ and the worker — once, in the right state, whatever the
//! order or number of deliveries.

use crate::common::{id, wait_for, TestApp};
use ordersys::messages::{DEAD_LETTER_QUEUE, PRODUCT_EXCHANGE, PRODUCT_QUEUE, PRODUCT_ROUTING_KEY};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn a_line_s_life_moves_stock() {
    let app = TestApp::with_worker().await;
    let a = app.create_product("a", 1.0, 20).await;
    let b = app.create_product("b", 1.0, 20).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, a, 5).await);
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(a), 15);

    app.orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"quantite": 8}),
        )
        .await
        .expect(200);
    app.wait_for_stock(a, 12).await;
    app.wait_for_line(line, "RESERVE").await;

    app.orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"produit_id": b}),
        )
        .await
        .expect(200);
    app.wait_for_stock(b, 12).await;
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(a), 20, "the old product got its stock back");

    app.orders
        .delete(&format!("/commandes-produits/{line}"))
        .await
        .expect(204);
    app.wait_for_stock(b, 20).await;

    let movements = app
        .products
        .get(&format!("/produits/{a}/mouvements"))
        .await
        .expect(200)
        .body;
    let deltas: Vec<i64> = movements
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["delta"].as_i64().unwrap())
        .collect();
    assert_eq!(
        deltas,
        [8, -3, -5],
        "newest first: released all 8 (moved to b), reserved 3 more, reserved 5"
    );
    let newest = &movements[0];
    assert_eq!(newest["action"], "UPDATED");
    assert_eq!(newest["ligne_id"], line);
    assert_eq!(newest["quantite_en_stock"], 20);
    app.wait_until_settled(Duration::from_secs(20)).await;
}

#[tokio::test]
async fn not_enough_stock_rejects_the_line_until_it_is_updated() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("rare", 1.0, 4).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 5).await);
    app.wait_for_line(line, "REJETE").await;
    assert_eq!(app.stock(p), 4, "a rejected line reserves nothing");
    let fetched = app
        .orders
        .get(&format!("/commandes-produits/{line}"))
        .await
        .expect(200);
    assert_eq!(fetched.body["statut_stock"], "REJETE");

    app.orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"quantite": 4}),
        )
        .await
        .expect(200);
    app.wait_for_line(line, "RESERVE").await;
    assert_eq!(app.stock(p), 0);

    // Asking for more than is left keeps nothing reserved: the line holds 4,
    // stock 0 + 4 < 6.
    app.orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"quantite": 6}),
        )
        .await
        .expect(200);
    app.wait_for_line(line, "REJETE").await;
    assert_eq!(app.stock(p), 4);
}

#[tokio::test]
async fn cancelling_and_deleting_orders_release_every_line() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("p", 2.0, 50).await;
    let q = app.create_product("q", 2.0, 50).await;
    let cancelled = app.create_order().await;
    let l1 = id(&app.create_line(cancelled, p, 3).await);
    let l2 = id(&app.create_line(cancelled, q, 4).await);
    let deleted = app.create_order().await;
    let l3 = id(&app.create_line(deleted, p, 5).await);
    for line in [l1, l2, l3] {
        app.wait_for_line(line, "RESERVE").await;
    }
    assert_eq!((app.stock(p), app.stock(q)), (42, 46));

    app.orders
        .put(
            &format!("/commandes/{cancelled}"),
            json!({"statut": "ANNULEE"}),
        )
        .await
        .expect(200);
    app.wait_for_line(l1, "LIBERE").await;
    app.wait_for_line(l2, "LIBERE").await;
    assert_eq!(app.stock(q), 50);
    app.orders
        .delete(&format!("/commandes/{deleted}"))
        .await
        .expect(204);
    app.wait_for_stock(p, 50).await;
    let order = app
        .orders
        .get(&format!("/commandes/{cancelled}"))
        .await
        .expect(200)
        .body;
    let statuses: Vec<&str> = order["lignes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["statut_stock"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["LIBERE", "LIBERE"]);
    app.wait_until_settled(Duration::from_secs(20)).await;
}

fn tracked(
    action: &str,
    line: i64,
    version: i64,
    product: i64,
    quantite: i32,
    message_id: &str,
) -> Vec<u8> {
    let mut m = json!({
        "action": action, "produit_id": product, "quantite": quantite, "commande_id": 1,
        "message_id": message_id, "ligne_id": line, "version": version,
    });
    if action == "UPDATED" {
        m["ancien_produit_id"] = json!(product);
        m["ancienne_quantite"] = json!(0);
    }
    m.to_string().into_bytes()
}

async fn wait_for_processed(app: &TestApp, n: u64) {
    wait_for(
        &format!("{n} messages handled"),
        Duration::from_secs(20),
        || async {
            let mut handled = 0;
            for outcome in ["applied", "rejected", "duplicate", "stale", "dead_lettered"] {
                handled += app
                    .worker_metric(&format!(
                        r#"ordersys_stock_messages_total{{mode="worker",outcome="{outcome}"}}"#
                    ))
                    .await;
            }
            (handled >= n).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn the_same_message_delivered_twice_is_applied_once() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("p", 1.0, 10).await;
    let mid = uuid::Uuid::new_v4().to_string();
    let body = tracked("CREATED", 900_001, 1, p, 3, &mid);
    app.broker
        .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, &body, Some(&mid));
    app.broker
        .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, &body, Some(&mid));
    wait_for_processed(&app, 2).await;
    assert_eq!(app.stock(p), 7);
    assert_eq!(
        app.worker_metric(r#"ordersys_stock_messages_total{mode="worker",outcome="duplicate"}"#)
            .await,
        1
    );
    assert_eq!(app.db.count("SELECT count(*) AS n FROM mouvements"), 1);
}

#[tokio::test]
async fn changes_of_one_line_delivered_out_of_order_converge() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("p", 1.0, 10).await;
    let q = app.create_product("q", 1.0, 10).await;
    let m = || uuid::Uuid::new_v4().to_string();
    // Line 1: v2 (5 of p) arrives before v1 (3 of p): 5 stays reserved.
    // Line 2: v3 (deleted) arrives before v2 (4 of q) and v1 (2 of q): nothing stays.
    let sequence = [
        tracked("UPDATED", 800_001, 2, p, 5, &m()),
        tracked("DELETED", 800_002, 3, q, 4, &m()),
        tracked("CREATED", 800_001, 1, p, 3, &m()),
        tracked("UPDATED", 800_002, 2, q, 4, &m()),
        tracked("CREATED", 800_002, 1, q, 2, &m()),
    ];
    for body in &sequence {
        app.broker
            .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, body, None);
    }
    wait_for_processed(&app, 5).await;
    assert_eq!((app.stock(p), app.stock(q)), (5, 10));
    // Each line holds what its newest version says. (How many messages were
    // stale depends on how the two consumers interleaved, so it is not
    // asserted; none may be dead-lettered.)
    assert_eq!(
        app.db.count("SELECT quantite::bigint AS n FROM reservations WHERE ligne_id = 800001 AND version = 2"),
        5
    );
    assert_eq!(
        app.db.count("SELECT quantite::bigint AS n FROM reservations WHERE ligne_id = 800002 AND version = 3 AND produit_id IS NULL"),
        0
    );
    assert_eq!(
        app.worker_metric(
            r#"ordersys_stock_messages_total{mode="worker",outcome="dead_lettered"}"#
        )
        .await,
        0
    );
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reason_and_the_worker_goes_on() {
    // Seed-format messages are read here, so that their own faults show.
    let app = TestApp::build(true, |s| s.worker.accept_seed_format = true).await;
    let p = app.create_product("p", 1.0, 10).await;
    let poison: [(&[u8], &str); 5] = [
        (b"{not json", "malformed message"),
        (br#"{"action":"SHIPPED","produit_id":1,"quantite":1,"commande_id":1}"#, "unknown variant"),
        (br#"{"action":"CREATED","produit_id":424242,"quantite":1,"commande_id":1}"#, "unknown product 424242"),
        (br#"{"action":"UPDATED","produit_id":1,"quantite":1,"commande_id":1}"#, "old values"),
        (br#"{"action":"CREATED","produit_id":1,"quantite":1,"commande_id":1,"ligne_id":5,"version":1}"#, "needs a message_id"),
    ];
    for (body, _) in &poison {
        app.broker
            .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, body, None);
    }
    let good = json!({"action": "CREATED", "produit_id": p, "quantite": 2, "commande_id": 1});
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        good.to_string().as_bytes(),
        None,
    );
    app.wait_for_stock(p, 8).await;
    wait_for_processed(&app, 6).await;

    // Two consumers share the queue, so the dead letters' order across them
    // is not fixed: match each one to what was sent by its body.
    let dead = app.broker.drain(DEAD_LETTER_QUEUE);
    assert_eq!(dead.len(), poison.len());
    for (sent, why) in &poison {
        let (_, properties) = dead
            .iter()
            .find(|(body, _)| body.as_slice() == *sent)
            .unwrap_or_else(|| {
                panic!(
                    "{:?} dead-lettered, its body kept",
                    String::from_utf8_lossy(sent)
                )
            });
        let reason =
            crate::common::broker::error_header(properties.headers()).expect("x-ordersys-error");
        assert!(reason.contains(why), "{reason:?} should mention {why:?}");
    }
    assert_eq!(
        app.broker.ready(PRODUCT_QUEUE),
        0,
        "nothing left behind, nothing dropped"
    );
}

#[tokio::test]
async fn seed_format_messages_are_applied_as_deltas() {
    // Off by default: a migration period beside the seed's own services.
    let app = TestApp::build(true, |s| s.worker.accept_seed_format = true).await;
    let p = app.create_product("p", 1.0, 10).await;
    let q = app.create_product("q", 1.0, 10).await;
    let seed = |action: &str, product: i64, quantite: i32| {
        json!({"action": action, "produit_id": product, "quantite": quantite, "commande_id": 7})
            .to_string()
    };
    // No de-duplication for the seed format: two CREATED reserve twice.
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        seed("CREATED", p, 3).as_bytes(),
        None,
    );
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        seed("CREATED", p, 3).as_bytes(),
        None,
    );
    app.wait_for_stock(p, 4).await;
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        seed("DELETED", p, 3).as_bytes(),
        None,
    );
    app.wait_for_stock(p, 7).await;
    let moved = json!({"action": "UPDATED", "produit_id": q, "quantite": 2, "commande_id": 7,
                       "ancien_produit_id": p, "ancienne_quantite": 3});
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        moved.to_string().as_bytes(),
        None,
    );
    app.wait_for_stock(q, 8).await;
    assert_eq!(app.stock(p), 10);
    // More than the stock: no line to reject, so it is dead-lettered.
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        seed("CREATED", q, 99).as_bytes(),
        None,
    );
    wait_for_processed(&app, 5).await;
    let dead = app.broker.drain(DEAD_LETTER_QUEUE);
    for (b, p) in &dead {
        eprintln!(
            "DEAD {} {:?}",
            String::from_utf8_lossy(b),
            crate::common::broker::error_header(p.headers())
        );
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(app.stock(q), 8);
}

#[tokio::test]
async fn crossing_a_threshold_publishes_a_stock_alert() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("p", 1.0, 8).await;
    let order = app.create_order().await;
    let first = id(&app.create_line(order, p, 2).await); // 8 → 6: above the threshold (5)
    app.wait_for_line(first, "RESERVE").await;
    let second = id(&app.create_line(order, p, 3).await); // 6 → 3: STOCK_BAS
    app.wait_for_line(second, "RESERVE").await;
    let third = id(&app.create_line(order, p, 3).await); // 3 → 0: STOCK_EPUISE
    app.wait_for_line(third, "RESERVE").await;
    let alerts = wait_for("two alerts", Duration::from_secs(20), || async {
        let n = app.broker.ready(ordersys::messages::ALERTS_QUEUE);
        (n >= 2).then(|| app.broker.drain(ordersys::messages::ALERTS_QUEUE))
    })
    .await;
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(b, _)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(
        alerts,
        [
            json!({"event": "STOCK_BAS", "produit_id": p, "quantite_en_stock": 3, "seuil": 5}),
            json!({"event": "STOCK_EPUISE", "produit_id": p, "quantite_en_stock": 0, "seuil": 5}),
        ]
    );
}

#[tokio::test]
async fn messages_go_out_persistent_with_their_id_and_in_order_per_line() {
    let app = TestApp::spawn().await; // no worker: messages stay in the queue
    let p = app.create_product("p", 1.0, 100).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 1).await);
    for q in 2..=5 {
        app.orders
            .put(
                &format!("/commandes-produits/{line}"),
                json!({"quantite": q}),
            )
            .await
            .expect(200);
    }
    app.orders
        .delete(&format!("/commandes-produits/{line}"))
        .await
        .expect(204);
    wait_for(
        "six messages in product_queue",
        Duration::from_secs(20),
        || async { (app.broker.ready(PRODUCT_QUEUE) == 6).then_some(()) },
    )
    .await;
    let messages = app.broker.drain(PRODUCT_QUEUE);
    let versions: Vec<i64> = messages
        .iter()
        .map(|(body, properties)| {
            let m: Value = serde_json::from_slice(body).unwrap();
            assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
            assert_eq!(
                properties.content_type().as_deref(),
                Some("application/json")
            );
            assert_eq!(properties.message_id().as_deref(), m["message_id"].as_str());
            m["version"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        app.db
            .count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL"),
        0
    );
}
