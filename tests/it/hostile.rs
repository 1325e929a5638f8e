//! Hostile input: whatever a client or a producer sends, the answer is a
//! clear 4xx naming the problem or a dead letter with its reason, never a
//! 500, a leak of the database's words, a stall or unbounded growth.

use crate::common::broker::error_header;
use crate::common::{id, wait_for, Client, TestApp, TestBroker, TestDb};
use ordersys::messages::{
    DEAD_LETTER_QUEUE, ORDER_EVENTS_QUEUE, PRODUCT_EXCHANGE, PRODUCT_QUEUE, PRODUCT_ROUTING_KEY,
};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[tokio::test]
async fn control_characters_and_overlong_texts_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"nom": "a\u{0}b", "prix": 1}), "nom"),
        (json!({"nom": "bell\u{7}", "prix": 1}), "nom"),
        (
            json!({"nom": "ok", "prix": 1, "description": "x\u{0}"}),
            "description",
        ),
        (
            json!({"nom": "ok", "prix": 1, "description": "é".repeat(2001)}),
            "description",
        ),
        (json!({"nom": "n".repeat(201), "prix": 1}), "nom"),
    ];
    for (body, field) in cases {
        let answer = app.products.post("/produits/", body).await.expect(422);
        assert_eq!(answer.error_fields(), [field], "{answer:?}");
    }
    let multiline = json!({"nom": "ok", "prix": 1, "description": "line 1\nline 2\ttab"});
    app.products.post("/produits/", multiline).await.expect(201);
    let p = app.create_product("p", 1.0, 1).await;
    let answer = app
        .products
        .put(&format!("/produits/{p}"), json!({"nom": "\u{1b}[31m"}))
        .await;
    assert_eq!(answer.expect(422).error_fields(), ["nom"]);
}

/// POSTs a product body as written (numbers exactly as in the text).
async fn post_product(app: &TestApp, body: String) -> crate::common::Answer {
    let json = Some("application/json");
    let method = reqwest::Method::POST;
    app.products
        .raw(method, "/produits/", json, Some(body.into_bytes()))
        .await
}

#[tokio::test]
async fn numbers_have_bounds_that_keep_arithmetic_far_from_overflow() {
    let app = TestApp::spawn().await;
    let product = |stock: i64, prix: &str| {
        format!(r#"{{"nom":"x","prix":{prix},"quantite_en_stock":{stock}}}"#)
    };
    for (body, field) in [
        (product(1_000_000_001, "1"), "quantite_en_stock"),
        (product(-1, "1"), "quantite_en_stock"),
        (product(1, "1000000000.01"), "prix"),
    ] {
        let answer = post_product(&app, body).await;
        assert_eq!(answer.expect(422).error_fields(), [field]);
    }
    let ceiling = product(1_000_000_000, "1000000000");
    let p = id(&post_product(&app, ceiling).await.expect(201).body);
    let order = app.create_order().await;
    for quantite in [0, 1_000_001] {
        let line = json!({"commande_id": order, "produit_id": p, "quantite": quantite});
        let answer = app
            .orders
            .post("/commandes-produits", line)
            .await
            .expect(422);
        assert_eq!(answer.error_fields(), ["quantite"]);
    }
    let answer = app.products.get("/produits/?skip=100001").await.expect(422);
    assert_eq!(answer.error_fields(), ["skip"]);
    app.products
        .get("/produits/?skip=100000&limit=1000")
        .await
        .expect(200);
}

#[tokio::test]
async fn an_order_holds_at_most_a_hundred_lines() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let (full, other) = (app.create_order().await, app.create_order().await);
    for _ in 0..100 {
        app.create_line(full, p, 1).await;
    }
    let line = json!({"commande_id": full, "produit_id": p, "quantite": 1});
    let answer = app
        .orders
        .post("/commandes-produits", line)
        .await
        .expect(409);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("100 lines"),
        "{answer:?}"
    );
    let moving = id(&app.create_line(other, p, 1).await);
    let moved = app
        .orders
        .put(
            &format!("/commandes-produits/{moving}"),
            json!({"commande_id": full}),
        )
        .await;
    moved.expect(409);
    let orders = app
        .orders
        .get("/commandes?limit=1000")
        .await
        .expect(200)
        .body;
    assert_eq!(orders[0]["lignes"].as_array().unwrap().len(), 100);
}

/// The lines of `order`, counted in the lines' table.
fn lines_of(app: &TestApp, order: i64) -> i64 {
    app.db.count(&format!(
        "SELECT count(*) AS n FROM commandes_produits WHERE commande_id = {order}"
    ))
}

/// The order's own count of its lines.
fn counted(app: &TestApp, order: i64) -> i64 {
    app.db.count(&format!(
        "SELECT nb_lignes::bigint AS n FROM commandes WHERE id = {order}"
    ))
}

/// `n` lines of one `p` each added to `order`, one after the other.
async fn add_lines(app: &TestApp, order: i64, p: i64, n: usize) -> Vec<i64> {
    let mut lines = Vec::new();
    for _ in 0..n {
        lines.push(id(&app.create_line(order, p, 1).await));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_additions_stop_at_a_hundred_lines_each_counted_once() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    add_lines(&app, order, p, 95).await;
    let client = &app.orders;
    let line = json!({"commande_id": order, "produit_id": p, "quantite": 1});
    let answers = futures_util::future::join_all(
        (0..20).map(|_| async { client.post("/commandes-produits", line.clone()).await }),
    )
    .await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let full: Vec<_> = answers.iter().filter(|a| a.status == 409).collect();
    assert_eq!((created, full.len()), (5, 15), "{answers:?}");
    for answer in full {
        let detail = answer.body["detail"].as_str().unwrap();
        assert!(detail.contains("already has 100 lines"), "{detail}");
    }
    // Counted where the lines are: the order's own count, and one message
    // per line created, none for a refused one.
    assert_eq!((lines_of(&app, order), counted(&app, order)), (100, 100));
    let created_messages = app
        .outbox()
        .iter()
        .filter(|m| m["commande_id"] == order && m["action"] == "CREATED")
        .count();
    assert_eq!(created_messages, 100);
}

/// A deleted line and a line moved away each make room for one more, and
/// so does a line written by a replica that predates the count.
#[tokio::test]
async fn deleted_moved_and_uncounted_lines_each_make_room_for_one_more() {
    use diesel::connection::SimpleConnection;
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let (order, other) = (app.create_order().await, app.create_order().await);
    let lines = add_lines(&app, order, p, 100).await;
    let line = json!({"commande_id": order, "produit_id": p, "quantite": 1});
    app.orders
        .delete(&format!("/commandes-produits/{}", lines[0]))
        .await
        .expect(204);
    app.orders
        .put(
            &format!("/commandes-produits/{}", lines[1]),
            json!({"commande_id": other}),
        )
        .await
        .expect(200);
    assert_eq!(counted(&app, order), 98);
    app.db
        .conn()
        .batch_execute(&format!(
            "INSERT INTO commandes_produits (commande_id, produit_id, quantite, prix_unitaire) \
         VALUES ({order}, {p}, 1, 1)"
        ))
        .unwrap();
    app.create_line(order, p, 1).await;
    app.orders
        .post("/commandes-produits", line.clone())
        .await
        .expect(409);
    app.db
        .conn()
        .batch_execute(&format!(
            "DELETE FROM commandes_produits WHERE id = {}",
            lines[2]
        ))
        .unwrap();
    let back = id(&app.create_line(other, p, 1).await);
    app.orders
        .put(
            &format!("/commandes-produits/{back}"),
            json!({"commande_id": order}),
        )
        .await
        .expect(200);
    app.orders
        .post("/commandes-produits", line.clone())
        .await
        .expect(409);
    assert_eq!((lines_of(&app, order), counted(&app, order)), (100, 100));
    assert_eq!((lines_of(&app, other), counted(&app, other)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_answers_never_carry_the_database_s_words() {
    let db = TestDb::empty();
    let broker = TestBroker::create();
    let mut settings = crate::common::settings(&db, &broker);
    settings.database.url = "postgres://secret_role:hunter2@127.0.0.1:1/secret_db".into();
    let app = ordersys::Application::build(
        ordersys::Mode::Products,
        &settings,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client = Client::new_at(app.addr());
    let shutdown = app.shutdown_handle();
    let task = tokio::spawn(app.run_until_stopped());
    for path in ["/produits/1", "/readyz"] {
        let answer = client.get(path).await.expect(503);
        let text = answer.body.to_string();
        for secret in [
            "secret_role",
            "hunter2",
            "secret_db",
            "127.0.0.1",
            "Connection refused",
        ] {
            assert!(!text.contains(secret), "{path} leaks {secret}: {text}");
        }
    }
    shutdown.trigger();
    task.await.unwrap().unwrap();
}

/// Sends `head` (and nothing more), then reads what the server answers
/// before closing; returns the status line and how long it took.
fn stall(addr: std::net::SocketAddr, head: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    (
        text.lines().next().unwrap_or("").to_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let app = TestApp::build(false, |s| {
        s.http.request_timeout_ms = 300;
        s.http.body_timeout_ms = 300;
    })
    .await;
    let addr = app.products_server.addr;
    let (headers, took) =
        tokio::task::spawn_blocking(move || stall(addr, "POST /produits/ HTTP/1.1\r\nHost: x\r\n"))
            .await
            .unwrap();
    // Cut by http.request_timeout_ms (300 ms), well before actix's own 5 s.
    assert!(
        took < Duration::from_secs(3),
        "headers never finished: cut after {took:?} ({headers})"
    );
    let body = "POST /produits/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"nom\":";
    let (status, took) = tokio::task::spawn_blocking(move || stall(addr, body))
        .await
        .unwrap();
    assert!(status.contains("408"), "{status}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn every_statement_runs_under_a_timeout() {
    let db = TestDb::migrated();
    let mut settings = ordersys::settings::Settings::load_from(None, &[], &|_| None).unwrap();
    settings.database.url = db.url.clone();
    settings.database.statement_timeout_ms = 100;
    let mut conn = ordersys::db::connect(&settings.database, "timeout-test").unwrap();
    use diesel::RunQueryDsl;
    let error = diesel::sql_query("SELECT pg_sleep(2)")
        .execute(&mut conn)
        .unwrap_err();
    assert_eq!(
        ordersys::db::classify(&error),
        ordersys::db::Failure::Transient,
        "{error}"
    );
}

#[tokio::test]
async fn oversized_or_out_of_bounds_messages_are_dead_lettered_with_their_reason() {
    let app = TestApp::build(true, |s| s.worker.max_message_bytes = 1000).await;
    let p = app.create_product("p", 1.0, 10).await;
    let padded = json!({"action": "CREATED", "produit_id": p, "quantite": 1, "commande_id": 1, "pad": "x".repeat(2000)});
    let huge =
        json!({"action": "DELETED", "produit_id": p, "quantite": 5_000_000, "commande_id": 1});
    for body in [padded, huge] {
        app.broker.publish(
            PRODUCT_EXCHANGE,
            PRODUCT_ROUTING_KEY,
            body.to_string().as_bytes(),
            None,
        );
    }
    let dead = wait_for("two dead letters", Duration::from_secs(20), || async {
        let n = app.broker.ready(DEAD_LETTER_QUEUE);
        (n >= 2).then_some(())
    });
    dead.await;
    let reasons = app.broker.dead_letter_reasons(DEAD_LETTER_QUEUE);
    assert!(
        reasons.iter().any(|r| r.contains("max_message_bytes")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("at most 1000000")),
        "{reasons:?}"
    );
    assert_eq!(app.stock(p), 10);
    assert_eq!(app.broker.ready(PRODUCT_QUEUE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_ids_and_sent_messages_are_purged_past_retention() {
    let app = TestApp::build(true, |s| {
        s.outbox.retention_secs = 1;
        s.worker.dedupe_retention_secs = 1;
    })
    .await;
    let p = app.create_product("p", 1.0, 1000).await;
    let order = app.create_order().await;
    // Each line's message id, read as soon as it is written (a sent row is
    // kept a second, so reading later could race the purge).
    let mut burst = Vec::new();
    for _ in 0..40 {
        let line = id(&app.create_line(order, p, 1).await);
        let sql = format!(
            "SELECT message_id::text AS id FROM outbox WHERE payload LIKE '%\"ligne_id\":{line},%'"
        );
        burst.push(app.db.text(&sql));
    }
    app.wait_until_settled(Duration::from_secs(30)).await;
    assert_eq!(app.stock(p), 960, "every change was applied");
    let ids = burst
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(",");
    let left = |table: &str| {
        app.db.count(&format!(
            "SELECT count(*) AS n FROM {table} WHERE message_id IN ({ids})"
        ))
    };
    // Past retention, with a trickle going on: the next batches and the
    // relay's loop purge them.
    wait_for(
        "the burst to be purged",
        Duration::from_secs(30),
        || async {
            let trickle = app.create_order().await;
            app.create_line(trickle, p, 1).await;
            (left("outbox") == 0 && left("messages_traites") == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_backlog_is_a_gauge() {
    let app = TestApp::spawn().await;
    let backlog = |text: &str| crate::common::metric(text, "ordersys_outbox_unsent");
    let metrics = app.orders.get("/metrics").await.expect(200).body;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("ordersys_outbox_oldest_unsent_seconds"));
    // No worker, but the relay publishes: the backlog drains to 0.
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    app.create_line(order, p, 1).await;
    wait_for("an empty backlog", Duration::from_secs(20), || async {
        let text = app.orders.get("/metrics").await.body;
        (backlog(text.as_str().unwrap()) == 0).then_some(())
    })
    .await;
}

/// A tracked CREATED message for `line`, one unit of `product`.
fn created(line: i64, product: i64) -> Vec<u8> {
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"action": "CREATED", "produit_id": product, "quantite": 1, "commande_id": 1,
                      "message_id": id, "ligne_id": line, "version": 1});
    body.to_string().into_bytes()
}

/// Queues one message per line before a worker starts, so that they form
/// one batch; returns the app with its worker running.
async fn one_batch(app: &mut TestApp, product: i64, lines: &[i64]) {
    for line in lines {
        app.broker.publish(
            PRODUCT_EXCHANGE,
            PRODUCT_ROUTING_KEY,
            &created(*line, product),
            None,
        );
    }
    app.worker = Some(crate::common::Running::start(ordersys::Mode::Worker, &app.settings).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_refuses_is_bisected_and_only_the_culprit_dead_lettered() {
    let mut app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 100).await;
    use diesel::connection::SimpleConnection;
    app.db.conn().batch_execute(
        "CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.ligne_id = 666 THEN RAISE EXCEPTION 'line 666 refused by a test trigger' \
         USING ERRCODE = '23514'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON reservations FOR EACH ROW EXECUTE FUNCTION refuse_666()",
    )
    .unwrap();
    one_batch(&mut app, p, &[601, 602, 603, 666, 604, 605, 606, 607]).await;
    app.wait_for_stock(p, 93).await;
    let dead = wait_for("the dead letter", Duration::from_secs(20), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 1).then_some(())
    });
    dead.await;
    let (body, properties) = app.broker.drain(DEAD_LETTER_QUEUE).remove(0);
    assert!(String::from_utf8_lossy(&body).contains("\"ligne_id\":666"));
    let reason = error_header(properties.headers()).unwrap();
    assert!(
        reason.contains("refused it") && reason.contains("line 666"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_database_errors_are_retried_not_dead_lettered() {
    let mut app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 100).await;
    use diesel::connection::SimpleConnection;
    // Five deadlocks in a row (a sequence: its count survives the rollbacks).
    app.db
        .conn()
        .batch_execute(
            "CREATE SEQUENCE attempts; \
         CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF nextval('attempts') <= 5 THEN RAISE EXCEPTION 'deadlock detected' \
         USING ERRCODE = '40P01'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER flaky BEFORE INSERT ON reservations FOR EACH ROW EXECUTE FUNCTION flaky()",
        )
        .unwrap();
    one_batch(&mut app, p, &[701, 702, 703]).await;
    app.wait_for_stock(p, 97).await;
    assert_eq!(
        app.worker_metric(
            r#"ordersys_stock_messages_total{mode="worker",outcome="dead_lettered"}"#
        )
        .await,
        0
    );
    assert_eq!(app.broker.ready(DEAD_LETTER_QUEUE), 0);
    assert!(
        app.db.count("SELECT last_value AS n FROM attempts") > 5,
        "the deadlocks happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_cannot_route_is_not_marked_sent() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    // A first change through: the relay's session is up, its topology
    // declared.
    app.create_line(order, p, 1).await;
    wait_for(
        "the first message in product_queue",
        Duration::from_secs(30),
        || async { (app.broker.ready(PRODUCT_QUEUE) == 1).then_some(()) },
    )
    .await;
    // The saga's consumer declares the topology too when it connects: once
    // it consumes, it will not bind the queue again behind the test's back.
    wait_for(
        "the saga's consumer on order_events",
        Duration::from_secs(30),
        || async { (app.broker.consumers(ORDER_EVENTS_QUEUE) == 1).then_some(()) },
    )
    .await;
    // Unroutable: product_queue no longer bound (as after an operator's
    // mistake). A plain publish would be confirmed and dropped.
    app.broker
        .with_channel(|channel| {
            let args = amiquip::FieldTable::new();
            channel.queue_unbind(PRODUCT_QUEUE, PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, args)
        })
        .unwrap();
    app.create_line(order, p, 1).await;
    // Returned, so left unsent; the relay reconnects, declares the topology
    // again (the binding is back) and sends it.
    wait_for(
        "the second message in product_queue",
        Duration::from_secs(30),
        || async { (app.broker.ready(PRODUCT_QUEUE) == 2).then_some(()) },
    )
    .await;
    let metrics = app.orders.get("/metrics").await.expect(200).body;
    let failed = crate::common::metric(
        metrics.as_str().unwrap(),
        "ordersys_outbox_failed_batches_total",
    );
    assert!(failed >= 1, "the returned publish failed its batch");
    // Marked sent once the broker confirmed it (just after it was routed).
    wait_for(
        "the row to be marked sent",
        Duration::from_secs(10),
        || async {
            let unsent = app
                .db
                .count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL");
            (unsent == 0).then_some(())
        },
    )
    .await;
    assert_eq!(app.broker.ready(PRODUCT_QUEUE), 2, "each sent once");
}

#[tokio::test]
async fn a_message_redelivered_past_the_limit_is_dead_lettered_by_the_broker() {
    let app = TestApp::build(false, |s| s.amqp.delivery_limit = 3).await;
    // The topology as the services declare it, with this delivery limit.
    let mut settings = app.broker.settings();
    settings.delivery_limit = 3;
    let mut connection = app.broker.connect();
    ordersys::amqp::declare_topology(&mut connection, &settings).unwrap();
    let body = created(900, 1);
    app.broker
        .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, &body, None);
    // A consumer that takes the message and dies with it, again and again.
    let channel = connection.open_channel(None).unwrap();
    for _ in 0..10 {
        match channel.basic_get(PRODUCT_QUEUE, false).unwrap() {
            Some(get) => get.nack(&channel, true).unwrap(),
            None => break,
        }
    }
    let _ = channel.close();
    let _ = connection.close();
    wait_for(
        "the broker to dead-letter it",
        Duration::from_secs(20),
        || async { (app.broker.ready(DEAD_LETTER_QUEUE) == 1).then_some(()) },
    )
    .await;
    assert_eq!(app.broker.ready(PRODUCT_QUEUE), 0);
}

#[tokio::test]
async fn queues_declared_by_an_older_version_are_used_as_they_are() {
    let broker = TestBroker::create();
    // The older version's queue: classic, no delivery limit.
    broker.with_raw_channel(|channel| {
        let options = amiquip::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel.queue_declare(PRODUCT_QUEUE, options).map(|_| ())
    });
    let db = TestDb::migrated();
    let settings = crate::common::settings(&db, &broker);
    let mut connection = broker.connect();
    ordersys::amqp::declare_topology(&mut connection, &settings.amqp)
        .expect("declared, with a warning");
    let _ = connection.close();
    let app = TestApp::build(true, |s| s.amqp.url = broker.url.clone()).await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 2).await);
    app.wait_for_line(line, "RESERVE").await;
}

/// An open connection that sent one request and read its answer.
fn kept_alive(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 512];
    let n = stream.read(&mut buffer).unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn() {
    // Only raw connections reach this server: no client pool holds a slot.
    let (db, broker) = (TestDb::migrated(), TestBroker::create());
    let mut settings = crate::common::settings(&db, &broker);
    settings.http.max_connections = 2;
    let app = ordersys::Application::build(
        ordersys::Mode::Products,
        &settings,
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = app.addr();
    let shutdown = app.shutdown_handle();
    let server = tokio::spawn(app.run_until_stopped());
    let verdict = tokio::task::spawn_blocking(move || {
        let first = kept_alive(addr);
        let _second = kept_alive(addr);
        // The third is accepted by the kernel, but not served while two are open.
        let mut third = std::net::TcpStream::connect(addr).unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        third
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buffer = [0u8; 512];
        let waited = third.read(&mut buffer).is_err();
        drop(first);
        third
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let served = third
            .read(&mut buffer)
            .map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned());
        (waited, served.unwrap_or_default())
    })
    .await
    .unwrap();
    assert!(
        verdict.0,
        "the third connection was served while two were open"
    );
    assert!(verdict.1.starts_with("HTTP/1.1 200"), "{}", verdict.1);
    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_producer_sends_is_logged_escaped() {
    let app = TestApp::spawn().await;
    let args = ["worker", "--replicas", "1", "--bind", "127.0.0.1:0"];
    let mut worker = crate::common::process::Process::spawn_capturing(&app.settings, &args, &[]);
    let forged = b"not json\n[2026-01-01T00:00:00Z ERROR ordersys] forged line\x1b[31m";
    app.broker
        .publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, forged, None);
    wait_for("the dead letter", Duration::from_secs(30), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 1).then_some(())
    })
    .await;
    let log = tokio::task::spawn_blocking(move || {
        worker.terminate(Duration::from_secs(15));
        worker.stderr()
    })
    .await
    .unwrap();
    assert!(
        log.contains("not json\\n[2026"),
        "escaped in the log: {log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("[2026-01-01")),
        "no forged line: {log}"
    );
    assert!(!log.contains('\x1b'), "no raw escape sequence: {log}");
}

#[tokio::test]
async fn a_line_history_is_read_a_bounded_page_at_a_time() {
    // The attack: a line with a huge history, read in one answer (80 MB
    // for 200,000 rows, the orders process far past its memory limit).
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    let line = id(&app.create_line(order, p, 1).await);
    use diesel::connection::SimpleConnection;
    app.db
        .conn()
        .batch_execute(&format!(
            "INSERT INTO historique_lignes (message_id, ligne_id, commande_id, version, action, \
                                            produit_id, quantite) \
             SELECT gen_random_uuid(), {line}, {order}, v, 'UPDATED', {p}, 1 \
               FROM generate_series(2, 1500) v"
        ))
        .unwrap();
    let versions = |body: &serde_json::Value| -> Vec<i64> {
        body.as_array()
            .expect("a list")
            .iter()
            .map(|c| c["version"].as_i64().unwrap())
            .collect()
    };
    let path = format!("/commandes-produits/{line}/historique");
    // 100 by default, oldest first.
    let first = app.orders.get(&path).await.expect(200);
    assert_eq!(versions(&first.body), (1..=100).collect::<Vec<_>>());
    let most = app
        .orders
        .get(&format!("{path}?limit=1000"))
        .await
        .expect(200);
    assert_eq!(versions(&most.body).len(), 1000);
    let last = app
        .orders
        .get(&format!("{path}?skip=1400&limit=1000"))
        .await
        .expect(200);
    assert_eq!(versions(&last.body), (1401..=1500).collect::<Vec<_>>());
    // Past the end of an existing line's history: an empty page.
    let past = app
        .orders
        .get(&format!("{path}?skip=5000"))
        .await
        .expect(200);
    assert_eq!(past.body, json!([]));
    // More than 1000 at once is refused, naming the parameter.
    for (query, field) in [
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("skip=-1", "skip"),
    ] {
        let answer = app.orders.get(&format!("{path}?{query}")).await.expect(422);
        assert_eq!(answer.error_fields(), [field], "{query}");
    }
    // A line that never existed is still a 404, whatever the page.
    app.orders
        .get("/commandes-produits/987654/historique?skip=10")
        .await
        .expect(404);
    // The document says so.
    let doc = app.orders.get("/openapi.json").await.expect(200).body;
    let operation = &doc["paths"]["/commandes-produits/{id}/historique"]["get"];
    let names: Vec<&str> = operation["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"skip") && names.contains(&"limit"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_history_stores_a_fixed_reason_never_the_database_s_words() {
    let mut app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 100).await;
    use diesel::connection::SimpleConnection;
    // Two changes as the orders service records them: 666 the database
    // refuses (a trigger with its own words), 667 names no product.
    let (refused, unknown) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    app.db
        .conn()
        .batch_execute(&format!(
            "INSERT INTO historique_lignes (message_id, ligne_id, commande_id, version, action, \
                                            produit_id, quantite) \
             VALUES ('{refused}', 666, 1, 1, 'CREATED', {p}, 1), \
                    ('{unknown}', 667, 1, 1, 'CREATED', 424242, 1); \
             CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.ligne_id = 666 THEN RAISE EXCEPTION 'secret table layout: line 666 refused' \
             USING ERRCODE = '23514'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse BEFORE INSERT ON reservations FOR EACH ROW EXECUTE FUNCTION refuse_666()"
        ))
        .unwrap();
    for (line, product, message) in [(666, p, refused), (667, 424242, unknown)] {
        let body = json!({"action": "CREATED", "produit_id": product, "quantite": 1,
                          "commande_id": 1, "message_id": message, "ligne_id": line, "version": 1});
        app.broker.publish(
            PRODUCT_EXCHANGE,
            PRODUCT_ROUTING_KEY,
            body.to_string().as_bytes(),
            None,
        );
    }
    app.worker = Some(crate::common::Running::start(ordersys::Mode::Worker, &app.settings).await);
    wait_for("two dead letters", Duration::from_secs(20), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 2).then_some(())
    })
    .await;
    // Operators keep the detail, in the dead letter.
    let reasons = app.broker.dead_letter_reasons(DEAD_LETTER_QUEUE);
    assert!(
        reasons.iter().any(|r| r.contains("secret table layout")),
        "{reasons:?}"
    );
    // What anyone may read is the class and a fixed text.
    for (line, motif) in [
        (666, "refused: the database refused the change"),
        (667, "unknown_product: the product does not exist"),
    ] {
        let h = wait_for(
            "the refusal in the history",
            Duration::from_secs(20),
            || async {
                let body = app
                    .orders
                    .get(&format!("/commandes-produits/{line}/historique"))
                    .await
                    .expect(200)
                    .body;
                (body[0]["resultat"] == "REFUSE").then_some(body)
            },
        )
        .await;
        assert_eq!(h[0]["motif"], motif, "{h}");
    }
    assert_eq!(app.stock(p), 100);
}

#[tokio::test]
async fn a_forged_seed_format_message_is_dead_lettered_by_default() {
    // The attack: a forged seed-format release, raising a stock from 1 to
    // 1,000,001. The defaults, as compose runs them, refuse it.
    let app = TestApp::with_worker().await;
    assert!(!app.settings.worker.accept_seed_format, "off by default");
    let p = app.create_product("p", 1.0, 1).await;
    let forged =
        json!({"action": "DELETED", "produit_id": p, "quantite": 1_000_000, "commande_id": 999});
    app.broker.publish(
        PRODUCT_EXCHANGE,
        PRODUCT_ROUTING_KEY,
        forged.to_string().as_bytes(),
        None,
    );
    wait_for("the dead letter", Duration::from_secs(20), || async {
        (app.broker.ready(DEAD_LETTER_QUEUE) == 1).then_some(())
    })
    .await;
    let (body, properties) = app.broker.drain(DEAD_LETTER_QUEUE).remove(0);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        forged
    );
    let reason = error_header(properties.headers()).unwrap();
    assert!(reason.contains("accept_seed_format"), "{reason}");
    assert_eq!(app.stock(p), 1, "the forged release changed no stock");
}

/// Declares `queue` with `arguments` on a fresh channel: Ok, or the
/// broker's reply code when it refuses (406: the queue exists with other
/// arguments).
fn redeclare(
    connection: &mut amiquip::Connection,
    queue: &str,
    arguments: &[(&str, amiquip::AmqpValue)],
) -> Result<(), u16> {
    let channel = connection.open_channel(None).unwrap();
    let mut table = amiquip::FieldTable::new();
    for (name, value) in arguments {
        table.insert((*name).into(), value.clone());
    }
    let options = amiquip::QueueDeclareOptions {
        durable: true,
        arguments: table,
        ..Default::default()
    };
    match channel.queue_declare(queue, options) {
        Ok(_) => Ok(()),
        Err(amiquip::Error::ServerClosedChannel { code, .. }) => Err(code),
        Err(e) => panic!("declaring {queue}: {e}"),
    }
}

#[tokio::test]
async fn every_queue_is_a_bounded_quorum_queue() {
    use amiquip::AmqpValue::{LongLongInt, LongString};
    use ordersys::amqp::{
        ALERTS_MAX_LENGTH, ALERTS_TTL_MS, DEAD_LETTER_MAX_LENGTH, WORK_QUEUE_MAX_LENGTH,
    };
    use ordersys::messages::{
        ALERTS_QUEUE, DEAD_LETTER_EXCHANGE, ORDER_EVENTS_DEAD_LETTER_EXCHANGE,
        ORDER_EVENTS_DEAD_LETTER_QUEUE, ORDER_EVENTS_QUEUE,
    };
    let broker = TestBroker::create();
    let settings = broker.settings();
    let mut connection = broker.connect();
    ordersys::amqp::declare_topology(&mut connection, &settings).unwrap();
    let limit = i64::from(settings.delivery_limit);
    let work = |dlx: &str| {
        vec![
            ("x-dead-letter-exchange", LongString(dlx.into())),
            ("x-max-length", LongLongInt(WORK_QUEUE_MAX_LENGTH)),
            ("x-overflow", LongString("reject-publish".into())),
            ("x-queue-type", LongString("quorum".into())),
            ("x-delivery-limit", LongLongInt(limit)),
        ]
    };
    let dead = vec![
        ("x-queue-type", LongString("quorum".into())),
        ("x-max-length", LongLongInt(DEAD_LETTER_MAX_LENGTH)),
    ];
    for (queue, arguments) in [
        (PRODUCT_QUEUE, work(DEAD_LETTER_EXCHANGE)),
        (ORDER_EVENTS_QUEUE, work(ORDER_EVENTS_DEAD_LETTER_EXCHANGE)),
        (DEAD_LETTER_QUEUE, dead.clone()),
        (ORDER_EVENTS_DEAD_LETTER_QUEUE, dead),
        (
            ALERTS_QUEUE,
            vec![
                ("x-queue-type", LongString("quorum".into())),
                ("x-max-length", LongLongInt(ALERTS_MAX_LENGTH)),
                ("x-message-ttl", LongLongInt(ALERTS_TTL_MS)),
            ],
        ),
    ] {
        // The broker accepts exactly these arguments…
        assert_eq!(
            redeclare(&mut connection, queue, &arguments),
            Ok(()),
            "{queue}"
        );
        // …and refuses the same without the length bound: it is declared.
        let unbounded: Vec<_> = arguments
            .iter()
            .filter(|(name, _)| !matches!(*name, "x-max-length" | "x-overflow"))
            .cloned()
            .collect();
        assert_eq!(
            redeclare(&mut connection, queue, &unbounded),
            Err(406),
            "{queue} is bounded"
        );
    }
    let _ = connection.close();
}
