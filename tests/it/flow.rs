//! The message flow, followed by one request id (the server's own; a
//! client's id is kept beside it, never in its place): the HTTP response,
//! the outbox row, the AMQP message, the worker's movement and log line, the
//! line's history; dead letters keep it; the dashboard's queries name only
//! series a running ordersys exposes.

use crate::common::process::Process;
use crate::common::{id, wait_for, Client, Running, TestApp, TestBroker, TestDb};
use amiquip::{AmqpProperties, AmqpValue, Publish};
use ordersys::messages::{DEAD_LETTER_QUEUE, PRODUCT_EXCHANGE, PRODUCT_QUEUE, PRODUCT_ROUTING_KEY};
use ordersys::request_id::{trace_id_of, RequestId};
use ordersys::Mode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn header(properties: &AmqpProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.get(name)? {
        AmqpValue::LongString(s) => Some(s.clone()),
        other => panic!("{name} is {other:?}"),
    }
}

async fn history(app: &TestApp, line: i64) -> Vec<Value> {
    let answer = app
        .orders
        .get(&format!("/commandes-produits/{line}/historique"))
        .await
        .expect(200);
    answer.body.as_array().expect("a list").clone()
}

async fn wait_for_history(app: &TestApp, line: i64, changes: usize) -> Vec<Value> {
    // The worker may stamp a change applied before the relay's transaction,
    // which stamps it published once the broker confirmed it, commits.
    let settled = |c: &Value| !c["publie_le"].is_null() && !c["applique_le"].is_null();
    wait_for(
        &format!("{changes} published and applied changes in line {line}'s history"),
        Duration::from_secs(20),
        || async {
            let h = history(app, line).await;
            (h.len() == changes && h.iter().all(settled)).then_some(h)
        },
    )
    .await
}

/// Adds 3 of `p` to `order` under the client's request id `client_id`;
/// the server's own id and the line.
async fn add_line_as(app: &TestApp, order: i64, p: i64, client_id: &str) -> (String, i64) {
    let answer = app
        .orders
        .with_header("X-Request-Id", client_id)
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": 3}),
        )
        .await
        .expect(201);
    let server_id = answer.header("x-request-id").expect("an id").to_owned();
    (server_id, id(&answer.body))
}

#[tokio::test]
async fn one_request_id_follows_a_line_from_the_response_to_the_stock() {
    // No worker yet: the message waits in product_queue to be looked at.
    let mut app = TestApp::spawn().await;
    let p = app.create_product("traced", 2.0, 10).await;
    let order = app.create_order().await;
    let (server_id, line) = add_line_as(&app, order, p, "checkout-42").await;
    // The server's own id, never the client's: anyone could send another
    // request's id.
    assert_ne!(server_id, "checkout-42");
    assert_eq!(server_id.len(), 32, "{server_id}");

    // The outbox row keeps it…
    assert_eq!(
        app.db.text("SELECT request_id AS id FROM outbox"),
        server_id
    );
    // …and the relay puts it on the message: correlation_id, traceparent.
    let message = wait_for(
        "the message in product_queue",
        Duration::from_secs(20),
        || async { app.broker.drain(PRODUCT_QUEUE).pop() },
    )
    .await;
    let (body, properties) = message;
    assert_eq!(
        properties.correlation_id().as_deref(),
        Some(server_id.as_str())
    );
    let traceparent = header(&properties, "traceparent").expect("a traceparent header");
    assert_eq!(trace_id_of(&traceparent), Some(server_id.clone()));
    let message_id = properties.message_id().clone().expect("a message id");
    assert!(
        traceparent.contains(&message_id.replace('-', "")[..16]),
        "the span is the message: {traceparent} / {message_id}"
    );
    // Published (stamped once the relay's transaction commits, which may
    // be just after the broker took the message), not applied yet.
    let before = wait_for(
        "the change stamped published",
        Duration::from_secs(20),
        || async {
            let h = history(&app, line).await;
            h.iter().all(|c| !c["publie_le"].is_null()).then_some(h)
        },
    )
    .await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["request_id"], server_id.as_str());
    assert_eq!(before[0]["client_request_id"], "checkout-42");
    assert_eq!(before[0]["message_id"], message_id.as_str());
    assert!(!before[0]["publie_le"].is_null(), "{before:?}");
    assert!(before[0]["applique_le"].is_null(), "{before:?}");

    // Back in the queue as it was, and a worker applies it.
    app.broker.with_channel(|channel| {
        channel
            .basic_publish(
                PRODUCT_EXCHANGE,
                Publish::with_properties(&body, PRODUCT_ROUTING_KEY, properties.clone()),
            )
            .expect("publish")
    });
    app.worker = Some(Running::start(Mode::Worker, &app.settings).await);
    app.wait_for_stock(p, 7).await;
    assert_eq!(
        app.db.text(&format!(
            "SELECT request_id AS id FROM mouvements WHERE ligne_id = {line}"
        )),
        server_id
    );
}

#[tokio::test]
async fn a_line_s_history_keeps_each_change_s_request_ids_after_the_line_is_gone() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("traced", 2.0, 10).await;
    let order = app.create_order().await;
    let (server_id, line) = add_line_as(&app, order, p, "checkout-42").await;
    app.wait_for_stock(p, 7).await;
    // A change under a W3C traceparent (no X-Request-Id) keeps its trace
    // id as the client's.
    let parent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let changed = app
        .orders
        .with_header("traceparent", &parent)
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"quantite": 5}),
        )
        .await
        .expect(200);
    let changed_id = changed.header("x-request-id").expect("an id").to_owned();
    assert_ne!(changed_id, TRACE);
    // Applied before the deletion follows (else the worker may find it
    // superseded already).
    app.wait_for_stock(p, 5).await;
    // Without either, one is made up and returned.
    let deleted = app
        .orders
        .delete(&format!("/commandes-produits/{line}"))
        .await
        .expect(204);
    let made_up = deleted.header("x-request-id").expect("an id").to_owned();
    assert_eq!(made_up.len(), 32, "{made_up}");
    app.wait_for_stock(p, 10).await;

    // The line is gone; its history stays, the message flow of each change.
    let h = wait_for_history(&app, line, 3).await;
    let fields = |c: &Value| {
        (
            c["version"].as_i64().unwrap(),
            c["action"].as_str().unwrap().to_owned(),
            c["request_id"].as_str().unwrap().to_owned(),
            c["client_request_id"].as_str().map(str::to_owned),
            c["resultat"].as_str().unwrap().to_owned(),
        )
    };
    let (checkout, reserved) = (Some("checkout-42".into()), "RESERVE".to_owned());
    assert_eq!(
        h.iter().map(fields).collect::<Vec<_>>(),
        [
            (1, "CREATED".into(), server_id, checkout, reserved.clone()),
            (
                2,
                "UPDATED".into(),
                changed_id,
                Some(TRACE.into()),
                reserved
            ),
            (3, "DELETED".into(), made_up, None, "LIBERE".into()),
        ]
    );
    for c in &h {
        let at =
            |field: &str| chrono::DateTime::parse_from_rfc3339(c[field].as_str().unwrap()).unwrap();
        assert!(at("accepte_le") <= at("publie_le"), "{c}");
        assert!(at("publie_le") <= at("applique_le"), "{c}");
        assert_eq!(c["ligne_id"], line);
        assert_eq!(c["commande_id"], order);
    }
}

#[tokio::test]
async fn the_history_of_an_unknown_or_malformed_line_is_404_or_400() {
    let app = TestApp::spawn().await;
    app.orders
        .get("/commandes-produits/987654/historique")
        .await
        .expect(404);
    app.orders
        .get("/commandes-produits/abc/historique")
        .await
        .expect(400);
}

#[tokio::test]
async fn a_client_id_never_becomes_the_server_s_and_every_answer_has_one() {
    let app = TestApp::spawn().await;
    for bad in ["has space", &"x".repeat(129), "<script>"] {
        let answer = app
            .products
            .with_header("X-Request-Id", bad)
            .get("/produits/")
            .await
            .expect(200);
        let id = answer.header("x-request-id").expect("an id");
        assert_ne!(id, bad);
        assert!(RequestId::parse(id).is_some(), "{id}");
    }
    // Errors, refusals and unknown routes too.
    for path in ["/produits/0", "/nowhere", "/produits/abc"] {
        let answer = app
            .products
            .with_header("X-Request-Id", "e-1")
            .get(path)
            .await;
        assert!(answer.status.is_client_error(), "{path}: {answer:?}");
        let id = answer.header("x-request-id").expect("an id");
        assert_ne!(id, "e-1", "{path}");
        assert!(RequestId::parse(id).is_some(), "{id}");
    }
}

#[tokio::test]
async fn reusing_another_request_s_id_does_not_pass_for_that_request() {
    // The attack: a client sends the id of someone else's request, hoping
    // its change is recorded under it.
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let first = app
        .orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": 1}),
        )
        .await
        .expect(201);
    let victim = first.header("x-request-id").expect("an id").to_owned();
    let line = id(&first.body);
    let forged = app
        .orders
        .with_header("X-Request-Id", &victim)
        .put(
            &format!("/commandes-produits/{line}"),
            json!({"quantite": 2}),
        )
        .await
        .expect(200);
    let own = forged.header("x-request-id").expect("an id");
    assert_ne!(own, victim);
    let h = history(&app, line).await;
    let ids: Vec<(&str, Option<&str>)> = h
        .iter()
        .map(|c| {
            (
                c["request_id"].as_str().unwrap(),
                c["client_request_id"].as_str(),
            )
        })
        .collect();
    // Each change under its own server id; the reused one only as the
    // client's word.
    assert_eq!(ids, [(victim.as_str(), None), (own, Some(victim.as_str()))]);
    assert_eq!(
        app.db.count(&format!(
            "SELECT count(*) AS n FROM outbox WHERE request_id = '{victim}'"
        )),
        1
    );
}

#[tokio::test]
async fn dead_letters_keep_the_request_id_and_the_reason_class() {
    let app = TestApp::with_worker().await;
    app.broker.with_channel(|channel| {
        let properties = AmqpProperties::default()
            .with_delivery_mode(2)
            .with_message_id("not-a-stock-message".into())
            .with_correlation_id("poison-7".into());
        channel
            .basic_publish(
                PRODUCT_EXCHANGE,
                Publish::with_properties(b"{oops", PRODUCT_ROUTING_KEY, properties),
            )
            .expect("publish")
    });
    let (_, properties) = wait_for("the dead letter", Duration::from_secs(20), || async {
        app.broker.drain(DEAD_LETTER_QUEUE).pop()
    })
    .await;
    assert_eq!(properties.correlation_id().as_deref(), Some("poison-7"));
    assert_eq!(
        header(&properties, "x-ordersys-error-class").as_deref(),
        Some("malformed")
    );
    let metric = app
        .worker_metric(r#"ordersys_stock_dead_letters_total{mode="worker",reason="malformed"}"#)
        .await;
    assert_eq!(metric, 1);
}

/// Reserves 2 of a new product (5 in stock) through the processes, under
/// the client's request id `client_id`; the line, once reserved.
async fn reserve_as(db: &TestDb, products: &Process, orders: &Process, client_id: &str) -> i64 {
    let p = Client::new_at(products.addr())
        .post(
            "/produits/",
            json!({"nom": "logged", "prix": 1.0, "quantite_en_stock": 5}),
        )
        .await
        .expect(201);
    let p = id(&p.body);
    let client = Client::new_at(orders.addr()).with_header("X-Request-Id", client_id);
    let order = id(&client.post("/commandes", json!({})).await.expect(201).body);
    let line = client
        .post(
            "/commandes-produits",
            json!({"commande_id": order, "produit_id": p, "quantite": 2}),
        )
        .await
        .expect(201);
    let stock = || {
        db.count(&format!(
            "SELECT quantite_en_stock::bigint AS n FROM produits WHERE id = {p}"
        ))
    };
    wait_for("the stock reserved", Duration::from_secs(20), || async {
        (stock() == 3).then_some(())
    })
    .await;
    id(&line.body)
}

/// The server's id of the line added under `client_id`, read from the JSON
/// access line (the client's id beside the server's), and every JSON log
/// line of `orders` under it once there are at least two.
async fn json_lines_of_the_line_added_as(
    orders: &Process,
    client_id: &str,
) -> (String, Vec<Value>) {
    let parse = |l: &str| {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"))
    };
    let access = wait_for("the access line", Duration::from_secs(10), || async {
        orders.stderr().lines().map(parse).find(|v: &Value| {
            v["client_request_id"] == client_id
                && v["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("POST /commandes-produits 201"))
        })
    })
    .await;
    let server_id = access["request_id"]
        .as_str()
        .expect("the server's id")
        .to_owned();
    let json_lines = wait_for("the orders' log lines", Duration::from_secs(10), || async {
        let lines: Vec<Value> = orders
            .stderr()
            .lines()
            .map(parse)
            .filter(|v: &Value| v["request_id"] == server_id.as_str())
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    (server_id, json_lines)
}

#[tokio::test]
async fn the_processes_log_the_request_id_in_text_and_in_json() {
    // Processes only: an in-process relay would race theirs for the row.
    let db = TestDb::migrated();
    let broker = TestBroker::create();
    let settings = crate::common::settings(&db, &broker);
    let products = Process::serve(&settings, "products", &[]);
    let orders = Process::serve_capturing(
        &settings,
        "orders",
        &[("RUST_LOG", "info"), ("ORDERSYS__LOG__FORMAT", "json")],
    );
    let worker = Process::serve_capturing(&settings, "worker", &[("RUST_LOG", "info")]);
    for process in [&products, &orders, &worker] {
        process.wait_ready().await;
    }
    let line = reserve_as(&db, &products, &orders, "logged-1").await;

    // orders, as JSON: the access line and the relay's, each one object,
    // under the server's id.
    let (server_id, json_lines) = json_lines_of_the_line_added_as(&orders, "logged-1").await;
    assert_ne!(server_id, "logged-1");
    let targets: BTreeSet<&str> = json_lines
        .iter()
        .map(|v| v["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from(["ordersys::access", "ordersys::flow"]),
        "{json_lines:?}"
    );
    for v in &json_lines {
        assert_eq!(v["level"], "INFO");
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    }
    // The worker, as text: one line naming the line, its outcome and the id.
    let text = wait_for("the worker's log line", Duration::from_secs(10), || async {
        let log = worker.stderr();
        log.lines()
            .find(|l| l.contains(&format!("line {line} v1")))
            .map(str::to_owned)
    })
    .await;
    assert!(text.contains("RESERVE"), "{text}");
    assert!(text.contains(&format!("request_id={server_id}")), "{text}");
}

/// Every series a dashboard panel queries.
fn dashboard_series() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/dashboards/ordersys.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).unwrap();
    let mut exprs = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "the dashboard has its panels: {exprs:?}");
    let mut series = BTreeSet::new();
    for expr in &exprs {
        let mut word = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
            } else {
                if word.starts_with("ordersys_") || word.starts_with("process_") {
                    series.insert(std::mem::take(&mut word));
                }
                word.clear();
            }
        }
    }
    series
}

/// The series names of an exposition that have samples.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_series_the_dashboard_queries_is_exposed() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("watched", 1.0, 5).await;
    let order = app.create_order().await;
    app.create_line(order, p, 2).await;
    app.wait_for_stock(p, 3).await;
    let mut all = BTreeSet::new();
    let worker = Client::new(app.worker.as_ref().unwrap());
    for client in [&app.products, &app.orders, &worker] {
        client.get("/healthz").await.expect(200);
        let text = client.get("/metrics").await.expect(200).body;
        all.extend(exposed(text.as_str().unwrap()));
    }
    let wanted = dashboard_series();
    let missing: Vec<_> = wanted.difference(&all).collect();
    assert!(
        missing.is_empty(),
        "queried but not exposed: {missing:?}\nexposed: {all:?}"
    );
}

#[tokio::test]
async fn request_metrics_have_bounded_labels() {
    let app = TestApp::spawn().await;
    app.products.get("/produits/1").await.expect(404);
    app.products.get("/produits/2").await.expect(404);
    app.products.get("/no/such/route/1").await.expect(404);
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    app.products
        .raw(brew, "/produits/", None, None)
        .await
        .expect(405);
    let text = app.products.get("/metrics").await.expect(200).body;
    let text = text.as_str().unwrap();
    let count = |labels: &str| {
        crate::common::metric(
            text,
            &format!("ordersys_http_request_duration_seconds_count{{mode=\"products\",{labels}}}"),
        )
    };
    // One series per route template, not per path; unknown methods pooled.
    assert_eq!(
        count(r#"method="GET",route="/produits/{id}",status="4xx""#),
        2
    );
    assert_eq!(count(r#"method="GET",route="unmatched",status="4xx""#), 1);
    assert_eq!(
        count(r#"method="other",route="/produits/",status="4xx""#),
        1,
        "{text}"
    );
    assert!(!text.contains("BREW"), "{text}");
}

#[tokio::test]
async fn hostile_message_properties_are_ignored_not_logged_as_sent() {
    let db = TestDb::migrated();
    let broker = TestBroker::create();
    let settings = crate::common::settings(&db, &broker);
    let worker = Process::serve_capturing(&settings, "worker", &[("RUST_LOG", "info")]);
    worker.wait_ready().await;
    let p = db.count(
        "INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('p', 1, 10) RETURNING id AS n",
    );
    let message_id = uuid::Uuid::new_v4();
    let body = json!({
        "action": "CREATED", "produit_id": p, "quantite": 4, "commande_id": 1,
        "message_id": message_id, "ligne_id": 700_001, "version": 1,
    });
    let forged = "x\n[2026-12-03T00:00:00Z INFO  ordersys::flow] forged";
    broker.with_channel(|channel| {
        let properties = AmqpProperties::default()
            .with_delivery_mode(2)
            .with_message_id(forged.into())
            .with_correlation_id(forged.into());
        channel
            .basic_publish(
                PRODUCT_EXCHANGE,
                Publish::with_properties(
                    body.to_string().as_bytes(),
                    PRODUCT_ROUTING_KEY,
                    properties,
                ),
            )
            .expect("publish")
    });
    let stock = || {
        db.count(&format!(
            "SELECT quantite_en_stock::bigint AS n FROM produits WHERE id = {p}"
        ))
    };
    wait_for("the change applied", Duration::from_secs(20), || async {
        (stock() == 6).then_some(())
    })
    .await;
    // The bad correlation_id is no request id; the body's message id is the one logged.
    assert_eq!(
        db.count("SELECT count(*) AS n FROM mouvements WHERE request_id IS NULL"),
        1
    );
    let log = wait_for("the worker's line", Duration::from_secs(10), || async {
        let log = worker.stderr();
        log.contains("line 700001 v1").then_some(log)
    })
    .await;
    assert!(!log.contains("forged"), "{log}");
    let line = log.lines().find(|l| l.contains("line 700001 v1")).unwrap();
    assert!(line.contains(&message_id.to_string()), "{line}");
}

#[tokio::test]
async fn line_history_is_forgotten_after_its_retention() {
    let app = TestApp::build(true, |s| s.outbox.history_retention_secs = 1).await;
    let p = app.create_product("brief", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 1).await);
    app.wait_for_stock(p, 9).await;
    wait_for("the history purged", Duration::from_secs(20), || async {
        let rows = app.db.count("SELECT count(*) AS n FROM historique_lignes");
        (rows == 0).then_some(())
    })
    .await;
    // The line is still there: an empty history, not a 404.
    assert_eq!(history(&app, line).await, Vec::<Value>::new());
}
