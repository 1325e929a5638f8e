//! The orders API (docs/contract.md §3) and the outbox messages each line change writes
//! in the same transaction (docs/contract.md §4).

use crate::common::{id, TestApp};
use serde_json::{json, Value};

#[tokio::test]
async fn orders_are_created_with_location_default_status_and_the_status_alias() {
    let app = TestApp::spawn().await;
    let created = app.orders.post("/commandes", json!({})).await.expect(201);
    let order = id(&created.body);
    assert_eq!(
        created.header("location"),
        Some(format!("/commandes/{order}").as_str())
    );
    assert_eq!(created.body["statut"], "EN_ATTENTE");
    assert_eq!(created.body["total"], json!(0.00));
    assert_eq!(created.body["lignes"], json!([]));
    assert!(created.body["timestamp"].as_str().unwrap().ends_with('Z'));

    let aliased = app
        .orders
        .post("/api/v1/commandes", json!({"status": "EN_COURS"}))
        .await
        .expect(201);
    assert_eq!(aliased.body["statut"], "EN_COURS");
    let unknown = app
        .orders
        .post("/commandes", json!({"statut": "LIVREE"}))
        .await
        .expect(422);
    assert_eq!(unknown.error_fields(), ["statut"]);
    let wrong_type = app
        .orders
        .post("/commandes", json!({"statut": 3}))
        .await
        .expect(400);
    assert_eq!(wrong_type.error_fields(), ["statut"]);
    app.orders
        .get(&format!("/commandes/{order}"))
        .await
        .expect(200);
    app.orders
        .get(&format!("/api/v1/commandes/{order}"))
        .await
        .expect(200);
    app.orders.get("/commandes/987654").await.expect(404);
    assert_eq!(
        app.orders
            .get("/commandes/x")
            .await
            .expect(400)
            .error_fields(),
        ["id"]
    );
}

#[tokio::test]
async fn lines_capture_the_price_and_totals_are_exact_money() {
    let app = TestApp::spawn().await;
    let stylo = app.create_product("stylo", 19.99, 100).await;
    let clou = app.create_product("clou", 0.10, 100).await;
    let order = app.create_order().await;
    let created = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": stylo, "quantite": 2}),
        )
        .await
        .expect(201);
    let line = id(&created.body);
    assert_eq!(
        created.header("location"),
        Some(format!("/commandes-produits/{line}").as_str())
    );
    assert_eq!(
        created.body,
        json!({"id": line, "commande_id": order, "produit_id": stylo, "quantite": 2,
               "prix_unitaire": 19.99, "statut_stock": "EN_ATTENTE"})
    );
    app.create_line(order, clou, 3).await;
    // A later price change does not touch existing lines.
    app.products
        .put(&format!("/produits/{stylo}"), json!({"prix": 25}))
        .await
        .expect(200);
    let fetched = app
        .orders
        .get(&format!("/commandes/{order}"))
        .await
        .expect(200);
    assert_eq!(fetched.body["total"], json!(40.28));
    assert_eq!(fetched.body["lignes"][0]["prix_unitaire"], json!(19.99));
    assert_eq!(fetched.body["lignes"].as_array().unwrap().len(), 2);
    let via_alias = app
        .orders
        .get(&format!("/api/v1/commandes_produits/{line}"))
        .await
        .expect(200);
    assert_eq!(via_alias.body, created.body);
}

/// Products a (2.00) and b (3.00), and an order with a line of 4 a.
async fn a_line_of_four_a(app: &TestApp) -> (i64, i64, i64, i64) {
    let a = app.create_product("a", 2.0, 50).await;
    let b = app.create_product("b", 3.0, 50).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, a, 4).await);
    (a, b, order, line)
}

#[tokio::test]
async fn a_new_line_writes_its_created_message_in_the_same_transaction() {
    let app = TestApp::spawn().await;
    let (a, _, order, line) = a_line_of_four_a(&app).await;
    let messages = app.outbox();
    assert_eq!(messages.len(), 1);
    let created = &messages[0];
    assert_eq!(created["action"], "CREATED");
    assert_eq!(
        (
            created["produit_id"].as_i64(),
            created["quantite"].as_i64(),
            created["commande_id"].as_i64()
        ),
        (Some(a), Some(4), Some(order))
    );
    assert_eq!(
        (created["ligne_id"].as_i64(), created["version"].as_i64()),
        (Some(line), Some(1))
    );
    assert_eq!(created["message_id"].as_str().unwrap().len(), 36);
    assert!(created["occurred_at"].is_string());
}

#[tokio::test]
async fn every_line_change_writes_its_message_in_the_same_transaction() {
    let app = TestApp::spawn().await;
    let (a, b, _, line) = a_line_of_four_a(&app).await;
    let path = format!("/commandes-produits/{line}");
    let updated = app
        .orders
        .put(&path, json!({"quantite": 6}))
        .await
        .expect(200);
    assert_eq!(updated.body["quantite"], 6);
    assert_eq!(updated.body["prix_unitaire"], json!(2.00));
    let moved = app
        .orders
        .put(
            &format!("/api/v1/commandes_produits/{line}"),
            json!({"produit_id": b}),
        )
        .await
        .expect(200);
    assert_eq!(
        moved.body["prix_unitaire"],
        json!(3.00),
        "a new product brings its own price"
    );
    // Changing nothing writes nothing.
    app.orders
        .put(&path, json!({"quantite": 6}))
        .await
        .expect(200);
    app.orders.delete(&path).await.expect(204);
    app.orders.get(&path).await.expect(404);
    app.orders.delete(&path).await.expect(404);

    let messages = app.outbox();
    let summary: Vec<(String, i64, i64, i64, Value, Value)> = messages
        .iter()
        .map(|m| {
            (
                m["action"].as_str().unwrap().to_owned(),
                m["version"].as_i64().unwrap(),
                m["produit_id"].as_i64().unwrap(),
                m["quantite"].as_i64().unwrap(),
                m["ancien_produit_id"].clone(),
                m["ancienne_quantite"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("CREATED".into(), 1, a, 4, json!(null), json!(null)),
            ("UPDATED".into(), 2, a, 6, json!(a), json!(4)),
            ("UPDATED".into(), 3, b, 6, json!(a), json!(6)),
            ("DELETED".into(), 4, b, 6, json!(null), json!(null)),
        ]
    );
    let ids: std::collections::HashSet<&str> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "every message has its own id");
}

#[tokio::test]
async fn the_outbox_payload_starts_with_the_seed_fields() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 5).await;
    let order = app.create_order().await;
    app.create_line(order, p, 1).await;
    use diesel::prelude::*;
    use ordersys::db::schema::outbox;
    let (payload, exchange, routing_key): (String, String, String) = outbox::table
        .select((outbox::payload, outbox::exchange, outbox::routing_key))
        .first(&mut app.db.conn())
        .unwrap();
    assert!(
        payload.starts_with(r#"{"action":"CREATED","produit_id":"#),
        "{payload}"
    );
    assert!(
        payload.contains(r#","quantite":1,"commande_id":"#),
        "{payload}"
    );
    assert_eq!(
        (exchange.as_str(), routing_key.as_str()),
        ("product_exchange", "product.update")
    );
}

#[tokio::test]
async fn invalid_lines_get_422_and_write_nothing() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 5).await;
    let order = app.create_order().await;
    let both = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": 999, "produit_id": 998, "quantite": 1}),
        )
        .await
        .expect(422);
    assert_eq!(both.error_fields(), ["commande_id", "produit_id"]);
    let product = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": 998, "quantite": 1}),
        )
        .await
        .expect(422);
    assert_eq!(product.error_fields(), ["produit_id"]);
    let rules = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": 0}),
        )
        .await
        .expect(422);
    assert_eq!(rules.error_fields(), ["quantite"]);
    let missing = app
        .orders
        .post("/commandes-produits", json!({}))
        .await
        .expect(422);
    assert_eq!(
        missing.error_fields(),
        ["commande_id", "produit_id", "quantite"]
    );
    let typed = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": "deux"}),
        )
        .await
        .expect(400);
    assert_eq!(typed.error_fields(), ["quantite"]);
    let line = id(&app.create_line(order, p, 1).await);
    let bad_update = app
        .orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"produit_id": 31337, "quantite": -2}),
        )
        .await
        .expect(422);
    assert_eq!(bad_update.error_fields(), ["quantite"]);
    let bad_update = app
        .orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"produit_id": 31337}),
        )
        .await
        .expect(422);
    assert_eq!(bad_update.error_fields(), ["produit_id"]);
    app.orders
        .put("/commandes-produits/777", json!({"quantite": 2}))
        .await
        .expect(404);
    assert_eq!(
        app.outbox().len(),
        1,
        "only the one valid line wrote a message"
    );
}

#[tokio::test]
async fn cancelling_releases_every_line_and_is_final() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.5, 20).await;
    let order = app.create_order().await;
    let first = id(&app.create_line(order, p, 2).await);
    let second = id(&app.create_line(order, p, 3).await);
    let cancelled = app
        .orders
        .put(&format!("/commandes/{order}"), json!({"statut": "ANNULEE"}))
        .await
        .expect(200);
    assert_eq!(cancelled.body["statut"], "ANNULEE");
    assert_eq!(
        cancelled.body["total"],
        json!(7.50),
        "lines are kept on a cancelled order"
    );

    let released: Vec<(i64, i64)> = app
        .outbox()
        .iter()
        .filter(|m| m["action"] == "DELETED")
        .map(|m| {
            (
                m["ligne_id"].as_i64().unwrap(),
                m["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(released, [(first, 2), (second, 2)]);

    let before = app.outbox().len();
    app.orders
        .put(
            &format!("/commandes/{order}"),
            json!({"statut": "EN_COURS"}),
        )
        .await
        .expect(409);
    app.orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": 1}),
        )
        .await
        .expect(409);
    app.orders
        .put(
            &format!("/commandes-produits/{first}"),
            json!({"quantite": 9}),
        )
        .await
        .expect(409);
    app.orders
        .delete(&format!("/commandes-produits/{first}"))
        .await
        .expect(409);
    // Asking for the status it already has changes nothing.
    app.orders
        .put(&format!("/commandes/{order}"), json!({"statut": "ANNULEE"}))
        .await
        .expect(200);
    assert_eq!(
        app.outbox().len(),
        before,
        "refused requests write no message"
    );

    // Deleting a cancelled order removes it without releasing twice.
    app.orders
        .delete(&format!("/commandes/{order}"))
        .await
        .expect(204);
    assert_eq!(app.outbox().len(), before);
    app.orders
        .get(&format!("/commandes-produits/{first}"))
        .await
        .expect(404);
}

#[tokio::test]
async fn deleting_an_order_releases_its_lines_and_a_pending_line_keeps_it_from_shipping() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 20).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 2).await);
    app.orders
        .delete(&format!("/api/v1/commandes/{order}"))
        .await
        .expect(204);
    app.orders
        .get(&format!("/commandes/{order}"))
        .await
        .expect(404);
    app.orders
        .get(&format!("/commandes-produits/{line}"))
        .await
        .expect(404);
    let last = app.outbox().pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["ligne_id"].as_i64()),
        (Some("DELETED"), Some(line))
    );
    app.orders
        .delete(&format!("/commandes/{order}"))
        .await
        .expect(404);

    // No worker here: a line still EN_ATTENTE keeps its order from shipping.
    let waiting = app.create_order().await;
    app.create_line(waiting, p, 1).await;
    let answer = app
        .orders
        .put(
            &format!("/commandes/{waiting}"),
            json!({"statut": "EXPEDIEE"}),
        )
        .await
        .expect(409);
    assert_eq!(
        answer.body["detail"],
        format!(
            "order {waiting} ships only once every line is RESERVE: 1 of its 1 lines are not \
             (1 EN_ATTENTE)"
        )
    );
    assert_eq!(
        app.orders
            .get(&format!("/commandes/{waiting}"))
            .await
            .expect(200)
            .body["statut"],
        "EN_ATTENTE"
    );
}

/// Asks for `order` to be shipped.
async fn ship(app: &TestApp, order: i64) -> crate::common::Answer {
    let path = format!("/commandes/{order}");
    app.orders.put(&path, json!({"statut": "EXPEDIEE"})).await
}

/// The problem's detail.
fn detail(answer: &crate::common::Answer) -> String {
    answer.body["detail"].as_str().unwrap().to_owned()
}

/// The issue's attack: with an ordinary `orders:write` client, ship an
/// order whose line the stock could not cover.
#[tokio::test]
async fn an_order_ships_only_once_every_line_is_reserved_and_then_stays_shipped() {
    let app = TestApp::with_worker().await;
    let scarce = app.create_product("scarce", 1.0, 1).await;
    let plenty = app.create_product("plenty", 1.0, 10).await;
    let ship = |order: i64| ship(&app, order);

    // Never with a rejected line…
    let rejected = app.create_order().await;
    let line = id(&app.create_line(rejected, scarce, 5).await);
    app.wait_for_line(line, "REJETE").await;
    let refused = ship(rejected).await.expect(409);
    assert_eq!(
        detail(&refused),
        format!(
            "order {rejected} ships only once every line is RESERVE: 1 of its 1 lines are not \
             (1 REJETE)"
        )
    );
    // …nor created as shipped, nor empty, nor with a line still pending
    // (an order created EN_COURS, as the seed's client does, too).
    let created = app
        .orders
        .post("/commandes", json!({"statut": "EXPEDIEE"}))
        .await
        .expect(409);
    assert!(
        detail(&created).contains("new order has no line"),
        "{}",
        created.body
    );
    let running = id(&app
        .orders
        .post("/commandes", json!({"statut": "EN_COURS"}))
        .await
        .expect(201)
        .body);
    assert!(detail(&ship(running).await.expect(409)).contains("has no lines"));
    let reserved = id(&app.create_line(running, plenty, 2).await);
    app.wait_for_line(reserved, "RESERVE").await;
    let pending = id(&app.create_line(running, plenty, 1).await);
    app.wait_for_line(pending, "RESERVE").await;

    // Every line reserved: it ships, and stays shipped and kept.
    let shipped = ship(running).await.expect(200);
    assert_eq!(shipped.body["statut"], "EXPEDIEE");
    for change in ["EN_ATTENTE", "EN_COURS", "ANNULEE"] {
        app.orders
            .put(&format!("/commandes/{running}"), json!({"statut": change}))
            .await
            .expect(409);
    }
    app.orders
        .delete(&format!("/commandes/{running}"))
        .await
        .expect(409);
    app.orders
        .put(
            &format!("/commandes-produits/{reserved}"),
            json!({"quantite": 1}),
        )
        .await
        .expect(409);
    // Shipping it again changes nothing.
    ship(running).await.expect(200);
    // The rejected order is still open: the client may cancel it.
    app.orders
        .put(
            &format!("/commandes/{rejected}"),
            json!({"statut": "ANNULEE"}),
        )
        .await
        .expect(200);
    assert_eq!((app.stock(scarce), app.stock(plenty)), (1, 7));
}

#[tokio::test]
async fn lists_filter_by_status_paginate_and_aliases_agree() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for statut in ["EN_ATTENTE", "EN_COURS", "EN_ATTENTE", "ANNULEE"] {
        let created = app
            .orders
            .post("/commandes", json!({"statut": statut}))
            .await
            .expect(201);
        ids.push(id(&created.body));
    }
    let ids_of = |v: &Value| -> Vec<i64> { v.as_array().unwrap().iter().map(id).collect() };
    assert_eq!(
        ids_of(&app.orders.get("/commandes").await.expect(200).body),
        ids
    );
    assert_eq!(
        ids_of(&app.orders.get("/api/v1/commandes").await.expect(200).body),
        ids
    );
    assert_eq!(
        ids_of(
            &app.orders
                .get("/commandes?skip=1&limit=2")
                .await
                .expect(200)
                .body
        ),
        ids[1..3]
    );
    let waiting = app
        .orders
        .get("/commandes/statut/EN_ATTENTE")
        .await
        .expect(200);
    assert_eq!(ids_of(&waiting.body), [ids[0], ids[2]]);
    let waiting = app
        .orders
        .get("/api/v1/commandes/statut/EN_ATTENTE?limit=1")
        .await
        .expect(200);
    assert_eq!(ids_of(&waiting.body), [ids[0]]);
    let bad = app.orders.get("/commandes/statut/PERDUE").await.expect(400);
    assert_eq!(bad.error_fields(), ["statut"]);
    app.orders.get("/commandes?limit=0").await.expect(422);

    let p = app.create_product("p", 1.0, 10).await;
    let l1 = id(&app.create_line(ids[0], p, 1).await);
    let l2 = id(&app.create_line(ids[1], p, 1).await);
    assert_eq!(
        ids_of(&app.orders.get("/commandes-produits").await.expect(200).body),
        [l1, l2]
    );
    assert_eq!(
        ids_of(
            &app.orders
                .get("/api/v1/commandes_produits?skip=1")
                .await
                .expect(200)
                .body
        ),
        [l2]
    );
    app.orders
        .get("/commandes-produits?limit=2000")
        .await
        .expect(422);
}

#[tokio::test]
async fn a_line_can_move_to_another_open_order() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let from = app.create_order().await;
    let to = app.create_order().await;
    let line = id(&app.create_line(from, p, 1).await);
    let moved = app
        .orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"commande_id": to}),
        )
        .await
        .expect(200);
    assert_eq!(moved.body["commande_id"], to);
    let missing = app
        .orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"commande_id": 4242}),
        )
        .await
        .expect(422);
    assert_eq!(missing.error_fields(), ["commande_id"]);
    app.orders
        .put(&format!("/commandes/{from}"), json!({"statut": "ANNULEE"}))
        .await
        .expect(200);
    app.orders
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"commande_id": from}),
        )
        .await
        .expect(409);
    let last = app.outbox().pop().unwrap();
    assert_eq!(last["commande_id"], to);
}

/// A group commit (`ordersys::orders::group`) decides each request as if it
/// were alone: in one batch, lines to an open order are written, each with
/// its own request id in the outbox and the history; a missing product or
/// order, a full order and an order being validated are refused, each with
/// its own reason, and do not fail the others.
#[tokio::test]
async fn a_batch_of_line_creations_answers_each_as_if_alone() {
    use ordersys::domain::{OrderId, ProductId};
    use ordersys::orders::group::{create_lines, LineCreation};
    use ordersys::orders::model::{NewLine, OrderError};
    use ordersys::request_id::RequestId;

    let app = TestApp::spawn().await;
    let a = app.create_product("a", 2.5, 50).await;
    let open = app.create_order().await;
    let nearly_full = app.create_order().await;
    let validated = app.create_order().await;
    app.db.text(&format!(
        "UPDATE commandes SET nb_lignes = 99 WHERE id = {nearly_full} RETURNING 'x' AS id"
    ));
    app.db.text(&format!(
        "UPDATE commandes SET validation = 'EN_COURS' WHERE id = {validated} RETURNING 'x' AS id"
    ));
    let missing = 999_999;
    let creation = |order: i64, product: i64| LineCreation {
        request: RequestId::generate(),
        line: NewLine {
            commande_id: OrderId(order),
            produit_id: ProductId(product),
            quantite: 3,
        },
    };
    let requests = [
        creation(open, a),
        creation(open, missing),
        creation(nearly_full, a),
        creation(nearly_full, a),
        creation(validated, a),
        creation(missing, missing),
        creation(open, a),
    ];
    let answers = create_lines(&mut app.db.conn(), &requests).expect("the batch commits");
    assert_eq!(answers.len(), requests.len());
    let written: Vec<(usize, i64)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, answer)| answer.as_ref().ok().map(|line| (i, line.id)))
        .collect();
    assert_eq!(
        written.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 2, 6]
    );
    let refused = |i: usize| answers[i].as_ref().unwrap_err().to_string();
    assert!(
        matches!(&answers[1], Err(OrderError::Invalid(e)) if e.len() == 1),
        "{}",
        refused(1)
    );
    assert!(
        matches!(&answers[3], Err(OrderError::Conflict(m)) if m.contains("100 lines")),
        "{}",
        refused(3)
    );
    assert!(
        matches!(&answers[4], Err(OrderError::Conflict(_))),
        "{}",
        refused(4)
    );
    assert!(
        matches!(&answers[5], Err(OrderError::Invalid(e)) if e.len() == 2),
        "{}",
        refused(5)
    );
    let line = answers[0].as_ref().unwrap();
    assert_eq!(
        (line.commande_id, line.produit_id, line.quantite),
        (open, a, 3)
    );
    assert_eq!(line.prix_unitaire.to_string(), "2.50");
    assert_eq!(line.statut_stock.as_str(), "EN_ATTENTE");

    // Each line, its message and its history row, with its own request id.
    for (i, line) in &written {
        let request = requests[*i].request.as_str();
        let sql = |table: &str, column: &str| {
            format!("SELECT count(*) AS n FROM {table} WHERE {column} AND request_id = '{request}'")
        };
        assert_eq!(
            app.db.count(&format!(
                "SELECT count(*) AS n FROM commandes_produits WHERE id = {line} AND quantite = 3"
            )),
            1
        );
        assert_eq!(
            app.db.count(&sql(
                "historique_lignes",
                &format!("ligne_id = {line} AND action = 'CREATED'")
            )),
            1
        );
        assert_eq!(
            app.db.count(&sql(
                "outbox",
                &format!("(payload::json->>'ligne_id')::bigint = {line}")
            )),
            1
        );
    }
    assert_eq!(app.outbox().len(), 3);
    let count = |order: i64| {
        app.db.count(&format!(
            "SELECT nb_lignes::bigint AS n FROM commandes WHERE id = {order}"
        ))
    };
    assert_eq!(
        (count(open), count(nearly_full), count(validated)),
        (2, 100, 0)
    );
}

/// Concurrent `POST /commandes-produits` (gathered into batches under load)
/// each get their own answer: the line asked for, or their own refusal,
/// and their own request id in the line's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_line_creations_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let a = app.create_product("a", 2.0, 1000).await;
    let b = app.create_product("b", 3.0, 1000).await;
    let open = app.create_order().await;
    let cancelled = app.create_order().await;
    app.orders
        .put(
            &format!("/commandes/{cancelled}"),
            json!({"statut": "ANNULEE"}),
        )
        .await
        .expect(200);
    let asks: Vec<(i64, i64, i32, u16)> = (0..60)
        .map(|i| match i % 6 {
            0 => (open, 999_999, 1, 422),
            1 => (cancelled, a, 1, 409),
            2 | 3 => (open, a, i + 1, 201),
            _ => (open, b, i + 1, 201),
        })
        .collect();
    let answers =
        futures_util::future::join_all(asks.iter().map(|&(order, product, quantite, _)| {
            app.orders.post(
                "/commandes-produits",
                json!({"commande_id": order, "produit_id": product, "quantite": quantite}),
            )
        }))
        .await;
    for (&(order, product, quantite, status), answer) in asks.iter().zip(&answers) {
        assert_eq!(answer.status.as_u16(), status, "{answer:#?}");
        if status != 201 {
            continue;
        }
        assert_eq!(
            (
                answer.body["commande_id"].as_i64(),
                answer.body["produit_id"].as_i64(),
                answer.body["quantite"].as_i64()
            ),
            (Some(order), Some(product), Some(i64::from(quantite)))
        );
        let request = answer.header("x-request-id").expect("a request id");
        assert_eq!(
            app.db.count(&format!(
                "SELECT count(*) AS n FROM historique_lignes WHERE ligne_id = {} AND request_id = '{request}'",
                id(&answer.body)
            )),
            1
        );
    }
    let order = app
        .orders
        .get(&format!("/commandes/{open}"))
        .await
        .expect(200);
    assert_eq!(order.body["lignes"].as_array().unwrap().len(), 40);
    assert_eq!(app.outbox().len(), 40);
}

/// A route that takes no body reads one sent anyway before it answers: a
/// client (or Traefik, in front) whose body arrives just after the headers
/// gets its answer and keeps its connection. Answering first and closing
/// with the body unread makes the kernel reset the connection, which can
/// destroy the answer on its way.
#[tokio::test]
async fn a_body_sent_to_a_route_that_takes_none_is_read_and_the_connection_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let product = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    app.create_line(order, product, 1).await;
    let mut stream = tokio::net::TcpStream::connect(app.orders_server.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /commandes/{order}/validation HTTP/1.1\r\nHost: orders\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stream.write_all(b"{}").await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: orders\r\n\r\n")
        .await
        .unwrap();
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    let answers = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(
                n > 0,
                "connection closed after: {}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&read).to_string();
            if text.matches("HTTP/1.1 ").count() == 2 && text.ends_with("\"ok\"}") {
                return text;
            }
        }
    })
    .await
    .expect("both answers within 10 s");
    assert!(answers.starts_with("HTTP/1.1 202 "), "{answers}");
    assert!(answers.contains("HTTP/1.1 200 "), "{answers}");
}

/// A route that takes no body still bounds one sent anyway: a client that
/// sends a delete with a body past `http.max_body_bytes` gets a 413 naming
/// the limit, and nothing is deleted.
#[tokio::test]
async fn a_body_past_the_limit_on_a_route_that_takes_none_is_refused() {
    let app = TestApp::spawn().await;
    let product = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, product, 1).await);
    let limit = app.settings.http.max_body_bytes;
    let refused = app
        .orders
        .raw(
            reqwest::Method::DELETE,
            &format!("/commandes-produits/{line}"),
            Some("application/octet-stream"),
            Some(vec![b'x'; limit + 1]),
        )
        .await
        .expect(413);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&limit.to_string()),
        "{:#?}",
        refused.body
    );
    app.orders
        .get(&format!("/commandes-produits/{line}"))
        .await
        .expect(200);
}
