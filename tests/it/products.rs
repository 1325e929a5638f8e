//! The products API, route by route, status by status (docs/contract.md §3).

use crate::common::TestApp;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn create_answers_201_with_location_and_the_stored_product() {
    let app = TestApp::spawn().await;
    let created = app
        .products
        .post(
            "/produits/",
            json!({"nom": "Stylo", "description": "bleu", "prix": 19.99, "quantite_en_stock": 12}),
        )
        .await
        .expect(201);
    let id = created.body["id"].as_i64().unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/produits/{id}").as_str())
    );
    assert_eq!(
        created.body,
        json!({"id": id, "nom": "Stylo", "description": "bleu", "prix": 19.99, "quantite_en_stock": 12})
    );
    let fetched = app
        .products
        .get(&format!("/produits/{id}"))
        .await
        .expect(200);
    assert_eq!(fetched.body, created.body);
    // The seed zeroed the stock of a new product; ordersys keeps it.
    assert_eq!(
        app.db.count(&format!(
            "SELECT quantite_en_stock::bigint AS n FROM produits WHERE id = {id}"
        )),
        12
    );
    // Without a trailing slash too, and stock defaults to 0.
    let bare = app
        .products
        .post("/produits", json!({"nom": "Gomme", "prix": 0}))
        .await
        .expect(201);
    assert_eq!(bare.body["quantite_en_stock"], 0);
    assert_eq!(bare.body["description"], json!(null));
}

#[tokio::test]
async fn invalid_products_get_422_listing_every_field_and_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let answer = app
        .products
        .post(
            "/produits/",
            json!({"nom": "", "prix": -1.234, "quantite_en_stock": -3}),
        )
        .await
        .expect(422);
    assert_eq!(answer.error_fields(), ["nom", "prix", "quantite_en_stock"]);
    let answer = app
        .products
        .post("/produits/", json!({"description": "sans nom"}))
        .await
        .expect(422);
    assert_eq!(answer.error_fields(), ["nom", "prix"]);
    let long = "x".repeat(201);
    let answer = app
        .products
        .post("/produits/", json!({"nom": long, "prix": 1}))
        .await
        .expect(422);
    assert_eq!(answer.error_fields(), ["nom"]);
    let answer = app
        .products
        .post("/produits/", json!({"nom": "x", "prix": 1.001}))
        .await
        .expect(422);
    assert!(answer.body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("two decimals"));
    assert_eq!(app.db.count("SELECT count(*) AS n FROM produits"), 0);
}

#[tokio::test]
async fn malformed_bodies_get_400_415_or_413() {
    let app = TestApp::spawn().await;
    for (body, field) in [
        (json!({"nom": "x", "prix": "cher"}), "prix"),
        (json!({"nom": 5, "prix": 1}), "nom"),
        (
            json!({"nom": "x", "prix": 1, "quantite_en_stock": 1u64 << 40}),
            "quantite_en_stock",
        ),
    ] {
        let wrong = app.products.post("/produits/", body).await.expect(400);
        assert_eq!(wrong.error_fields(), [field]);
    }
    for (content_type, body, status) in [
        (Some("application/json"), &b"{\"nom\": "[..], 400),
        (Some("application/json"), b"[]", 400),
        (Some("text/plain"), b"{}", 415),
        (None, b"{}", 415),
    ] {
        app.products
            .raw(
                Method::POST,
                "/produits/",
                content_type,
                Some(body.to_vec()),
            )
            .await
            .expect(status);
    }
    let huge = format!(
        r#"{{"nom": "x", "prix": 1, "description": "{}"}}"#,
        "a".repeat(70_000)
    );
    let answer = app
        .products
        .raw(
            Method::POST,
            "/produits/",
            Some("application/json"),
            Some(huge.into_bytes()),
        )
        .await
        .expect(413);
    assert!(answer.body["detail"].as_str().unwrap().contains("65536"));
    assert_eq!(app.db.count("SELECT count(*) AS n FROM produits"), 0);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let app = TestApp::spawn().await;
    app.products.get("/produits/424242").await.expect(404);
    app.products
        .put("/produits/424242", json!({"nom": "x"}))
        .await
        .expect(404);
    app.products.delete("/produits/424242").await.expect(404);
    app.products
        .get("/produits/424242/mouvements")
        .await
        .expect(404);
    let bad = app.products.get("/produits/abc").await.expect(400);
    assert_eq!(bad.error_fields(), ["id"]);
    app.products
        .get("/produits/99999999999999999999")
        .await
        .expect(400);
    app.products.get("/nulle-part").await.expect(404);
    app.products
        .raw(Method::PATCH, "/produits/1", None, None)
        .await
        .expect(405);
}

#[tokio::test]
async fn concurrent_reads_each_get_their_own_product() {
    // Concurrent GETs are answered by shared queries (db::coalesce): every
    // reader must still get exactly its product, or 404.
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let created = app
            .products
            .post(
                "/produits/",
                json!({"nom": format!("p{i}"), "prix": i as f64 + 0.25, "quantite_en_stock": i}),
            )
            .await
            .expect(201);
        ids.push(created.body["id"].as_i64().unwrap());
    }
    let missing = ids[ids.len() - 1] + 1_000;
    let wanted: Vec<i64> = (0..300)
        .map(|n| {
            if n % 7 == 6 {
                missing
            } else {
                ids[n % ids.len()]
            }
        })
        .collect();
    let client = &app.products;
    let answers = futures_util::future::join_all(
        wanted
            .iter()
            .map(|id| async move { client.get(&format!("/produits/{id}")).await }),
    )
    .await;
    for (id, answer) in wanted.iter().zip(answers) {
        if *id == missing {
            answer.expect(404);
        } else {
            let i = ids.iter().position(|x| x == id).unwrap();
            let body = answer.expect(200).body;
            assert_eq!(
                body,
                json!({"id": id, "nom": format!("p{i}"), "description": null, "prix": i as f64 + 0.25, "quantite_en_stock": i})
            );
        }
    }
}

#[tokio::test]
async fn lists_are_ordered_by_id_and_paginated() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_product(&format!("p{i}"), 1.0, 1).await);
    }
    let all = app.products.get("/produits/").await.expect(200);
    let listed: Vec<i64> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids);
    let page = app
        .products
        .get("/produits?skip=1&limit=2")
        .await
        .expect(200);
    let listed: Vec<i64> = page
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids[1..3]);
    let past = app.products.get("/produits/?skip=10").await.expect(200);
    assert_eq!(past.body, json!([]));
    let answer = app.products.get("/produits/?limit=1001").await.expect(422);
    assert_eq!(answer.error_fields(), ["limit"]);
    let answer = app.products.get("/produits/?skip=-1").await.expect(422);
    assert_eq!(answer.error_fields(), ["skip"]);
    let answer = app
        .products
        .get("/produits/?limit=beaucoup")
        .await
        .expect(400);
    assert_eq!(answer.error_fields(), ["limit"]);
}

#[tokio::test]
async fn put_is_partial() {
    let app = TestApp::spawn().await;
    let id = app.create_product("Cahier", 3.5, 7).await;
    let path = format!("/produits/{id}");
    let updated = app
        .products
        .put(&path, json!({"prix": 4.25}))
        .await
        .expect(200);
    assert_eq!(
        updated.body,
        json!({"id": id, "nom": "Cahier", "description": null, "prix": 4.25, "quantite_en_stock": 7})
    );
    let updated = app
        .products
        .put(&path, json!({"description": "A5", "quantite_en_stock": 9}))
        .await
        .expect(200);
    assert_eq!(updated.body["description"], "A5");
    assert_eq!(updated.body["prix"], 4.25);
    assert_eq!(updated.body["quantite_en_stock"], 9);
    let cleared = app
        .products
        .put(&path, json!({"description": null}))
        .await
        .expect(200);
    assert_eq!(cleared.body["description"], json!(null));
    let unchanged = app.products.put(&path, json!({})).await.expect(200);
    assert_eq!(unchanged.body, cleared.body);
    let refused = app
        .products
        .put(&path, json!({"nom": null, "prix": -1}))
        .await
        .expect(422);
    assert_eq!(refused.error_fields(), ["nom", "prix"]);
    assert_eq!(app.products.get(&path).await.expect(200).body, cleared.body);
}

#[tokio::test]
async fn money_is_exact() {
    let app = TestApp::spawn().await;
    for prix in ["0.10", "19.99", "1234567.89", "0"] {
        let body = format!(r#"{{"nom": "p", "prix": {prix}}}"#);
        let created = app
            .products
            .raw(
                Method::POST,
                "/produits/",
                Some("application/json"),
                Some(body.into_bytes()),
            )
            .await
            .expect(201);
        let id = created.body["id"].as_i64().unwrap();
        let stored = app.db.count(&format!(
            "SELECT (prix * 100)::bigint AS n FROM produits WHERE id = {id}"
        ));
        let expected = (prix.parse::<f64>().unwrap() * 100.0).round() as i64;
        assert_eq!(stored, expected, "{prix}");
    }
}

#[tokio::test]
async fn delete_answers_204_then_404_and_409_while_lines_reference_it() {
    let app = TestApp::spawn().await;
    let free = app.create_product("libre", 1.0, 1).await;
    app.products
        .delete(&format!("/produits/{free}"))
        .await
        .expect(204);
    app.products
        .get(&format!("/produits/{free}"))
        .await
        .expect(404);
    app.products
        .delete(&format!("/produits/{free}"))
        .await
        .expect(404);

    let used = app.create_product("commandé", 1.0, 10).await;
    let order = app.create_order().await;
    let line = app.create_line(order, used, 1).await;
    let conflict = app
        .products
        .delete(&format!("/produits/{used}"))
        .await
        .expect(409);
    assert!(conflict.body["detail"]
        .as_str()
        .unwrap()
        .contains("order line"));
    app.orders
        .delete(&format!("/commandes-produits/{}", line["id"]))
        .await
        .expect(204);
    app.products
        .delete(&format!("/produits/{used}"))
        .await
        .expect(204);
}

#[tokio::test]
async fn movements_of_a_product_start_empty() {
    let app = TestApp::spawn().await;
    let id = app.create_product("p", 1.0, 1).await;
    let movements = app
        .products
        .get(&format!("/produits/{id}/mouvements"))
        .await
        .expect(200);
    assert_eq!(movements.body, json!([]));
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let health = app.products.get("/healthz").await.expect(200);
    assert_eq!(health.body["status"], "ok");
    let ready = app.products.get("/readyz").await.expect(200);
    assert_eq!(ready.body["checks"]["database"], "up");
    app.products.get("/produits/1").await.expect(404);
    let metrics = app.products.get("/metrics").await.expect(200);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("ordersys_http_responses_total{mode=\"products\",class=\"4xx\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_service_stops_gracefully_on_request() {
    let db = crate::common::TestDb::empty();
    let broker = crate::common::TestBroker::create();
    let settings = crate::common::settings(&db, &broker);
    let running = crate::common::Running::start(ordersys::Mode::Products, &settings).await;
    let client = crate::common::Client::new(&running);
    client.get("/produits/").await.expect(200);
    running.stop().await;
}
