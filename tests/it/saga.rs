//! Order validation as a saga (`POST /commandes/{id}/validation`), on the
//! real PostgreSQL and RabbitMQ: confirmed only when every line holds its
//! stock, otherwise refused with every line released — through races,
//! duplicate and reordered events, a killed `orders` process, dropped
//! broker connections and a worker that never answers.

use crate::common::process::Process;
use crate::common::{
    assert_stock_invariant, id, metric, settings, wait_for, Client, Running, TestApp, TestBroker,
    TestDb,
};
use ordersys::messages::ORDER_EVENTS_EXCHANGE;
use ordersys::Mode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(90);

async fn order(client: &Client, id: i64) -> Value {
    client
        .get(&format!("/commandes/{id}"))
        .await
        .expect(200)
        .body
}

/// Waits until the order's validation is over; returns the order.
async fn finished(client: &Client, id: i64) -> Value {
    wait_for(
        &format!("order {id}'s validation to end"),
        SETTLE,
        || async {
            let (status, body) = client.try_get(&format!("/commandes/{id}")).await?;
            let ended = body["validation"] == "CONFIRMEE" || body["validation"] == "REFUSEE";
            (status == 200 && ended).then_some(body)
        },
    )
    .await
}

async fn validate(client: &Client, id: i64) -> Value {
    let answer = client
        .post(&format!("/commandes/{id}/validation"), json!({}))
        .await
        .expect(202);
    assert_eq!(
        answer.header("location"),
        Some(&*format!("/commandes/{id}"))
    );
    assert_eq!(answer.body["validation"], "EN_COURS", "{}", answer.body);
    answer.body
}

fn statuses(order: &Value) -> Vec<String> {
    order["lignes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["statut_stock"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until no validation runs, nothing waits in the pipeline, and
/// every refused order's lines are released.
async fn all_sagas_done(db: &TestDb, broker: &TestBroker) {
    wait_for("every saga to finish", SETTLE, || async {
        let running = db.count("SELECT count(*) AS n FROM commandes WHERE validation = 'EN_COURS'");
        let unsent = db.count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL");
        let waiting = db.count(
            "SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = 'EN_ATTENTE'",
        );
        let queued = broker.ready(ordersys::messages::PRODUCT_QUEUE)
            + broker.ready(ordersys::messages::ORDER_EVENTS_QUEUE);
        // Every outcome recorded by its saga (an event may be delivered and
        // not yet acknowledged: not "ready", not applied either).
        let unrecorded = db.count(
            "SELECT count(*) AS n FROM validation_lignes v JOIN commandes c ON c.id = v.commande_id \
             WHERE v.resultat IS DISTINCT FROM CASE c.validation WHEN 'CONFIRMEE' THEN 'RESERVE' \
                                                                  WHEN 'REFUSEE' THEN 'LIBERE' END",
        );
        (running == 0 && unsent == 0 && waiting == 0 && queued == 0 && unrecorded == 0)
            .then_some(())
    })
    .await;
    // Every confirmed order holds all its lines; every refused one none.
    assert_eq!(
        db.count(
            "SELECT count(*) AS n FROM commandes c JOIN commandes_produits l ON l.commande_id = c.id \
             WHERE (c.validation = 'CONFIRMEE' AND (c.statut <> 'EN_COURS' OR l.statut_stock <> 'RESERVE')) \
                OR (c.validation = 'REFUSEE' AND (c.statut <> 'ANNULEE' OR l.statut_stock <> 'LIBERE'))"
        ),
        0,
        "a finished saga left a line in the wrong state"
    );
}

#[tokio::test]
async fn every_line_reservable_confirms_and_freezes_the_order() {
    let app = TestApp::with_worker().await;
    let a = app.create_product("a", 2.0, 10).await;
    let b = app.create_product("b", 3.0, 5).await;
    let o = app.create_order().await;
    let l1 = id(&app.create_line(o, a, 3).await);
    app.create_line(o, b, 5).await;
    assert!(order(&app.orders, o).await["validation"].is_null());

    validate(&app.orders, o).await;
    let done = finished(&app.orders, o).await;
    assert_eq!(done["validation"], "CONFIRMEE", "{done}");
    assert_eq!(done["statut"], "EN_COURS");
    assert!(done["motif"].is_null());
    assert_eq!(statuses(&done), ["RESERVE", "RESERVE"]);
    assert_eq!((app.stock(a), app.stock(b)), (7, 0));

    // A validated order's lines no longer change; a second start is refused.
    let again = app
        .orders
        .post(&format!("/commandes/{o}/validation"), json!({}))
        .await
        .expect(409);
    assert!(again.body["detail"].as_str().unwrap().contains("CONFIRMEE"));
    let change = app
        .orders
        .put(&format!("/commandes-produits/{l1}"), json!({"quantite": 1}))
        .await
        .expect(409);
    assert!(
        change.body["detail"]
            .as_str()
            .unwrap()
            .contains("can no longer change"),
        "{}",
        change.body
    );
    let back = app
        .orders
        .put(&format!("/commandes/{o}"), json!({"statut": "EN_ATTENTE"}))
        .await
        .expect(409);
    assert!(
        back.body["detail"].as_str().unwrap().contains("EN_ATTENTE"),
        "{}",
        back.body
    );
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!(
        app.assert_stock_invariant(&HashMap::from([(a, 10), (b, 5)])),
        2
    );
}

#[tokio::test]
async fn one_line_short_refuses_names_it_and_releases_every_line() {
    let app = TestApp::with_worker().await;
    let a = app.create_product("a", 2.0, 10).await;
    let b = app.create_product("b", 3.0, 2).await;
    let o = app.create_order().await;
    app.create_line(o, a, 3).await;
    let short = id(&app.create_line(o, b, 5).await);
    app.wait_for_line(short, "REJETE").await;

    validate(&app.orders, o).await;
    let done = finished(&app.orders, o).await;
    assert_eq!(done["validation"], "REFUSEE", "{done}");
    assert_eq!(done["statut"], "ANNULEE");
    assert_eq!(
        done["motif"],
        format!("line {short}: asked 5 of product {b}, 2 available")
    );
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!(statuses(&order(&app.orders, o).await), ["LIBERE", "LIBERE"]);
    assert_eq!(
        (app.stock(a), app.stock(b)),
        (10, 2),
        "every unit came back"
    );
    assert_eq!(
        app.assert_stock_invariant(&HashMap::from([(a, 10), (b, 2)])),
        2
    );
}

#[tokio::test]
async fn bad_starts_of_a_validation_get_clear_answers() {
    let app = TestApp::spawn().await;
    let missing = app
        .orders
        .post("/commandes/999999/validation", json!({}))
        .await
        .expect(404);
    assert!(missing.body["detail"].as_str().unwrap().contains("999999"));
    let empty = app.create_order().await;
    let answer = app
        .orders
        .post(&format!("/commandes/{empty}/validation"), json!({}))
        .await
        .expect(409);
    assert!(answer.body["detail"].as_str().unwrap().contains("no lines"));
    let running = app
        .orders
        .post("/commandes", json!({"statut": "EN_COURS"}))
        .await
        .expect(201);
    let answer = app
        .orders
        .post(
            &format!("/commandes/{}/validation", id(&running.body)),
            json!({}),
        )
        .await
        .expect(409);
    assert!(answer.body["detail"]
        .as_str()
        .unwrap()
        .contains("EN_ATTENTE"));
}

/// A 409 saying the order is being validated.
fn being_validated(answer: crate::common::Answer) {
    let answer = answer.expect(409);
    let detail = answer.body["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("being validated"), "{}", answer.body);
}

#[tokio::test]
async fn an_order_being_validated_refuses_a_second_start_and_every_change() {
    // No worker: the validation stays EN_COURS.
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let o = app.create_order().await;
    let line = id(&app.create_line(o, p, 2).await);
    validate(&app.orders, o).await;
    let again = app
        .orders
        .post(&format!("/commandes/{o}/validation"), json!({}))
        .await
        .expect(409);
    assert!(again.body["detail"].as_str().unwrap().contains("EN_COURS"));
    let (orders, line_path) = (&app.orders, format!("/commandes-produits/{line}"));
    let new_line = json!({"commande_id": o, "produit_id": p, "quantite": 1});
    being_validated(orders.post("/commandes-produits", new_line).await);
    being_validated(orders.put(&line_path, json!({"quantite": 1})).await);
    being_validated(orders.delete(&line_path).await);
    let order_path = format!("/commandes/{o}");
    being_validated(orders.put(&order_path, json!({"statut": "ANNULEE"})).await);
    being_validated(orders.delete(&order_path).await);
}

#[tokio::test]
async fn orders_that_never_use_validation_behave_as_before() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 10).await;
    let plain = app.create_order().await;
    let l = id(&app.create_line(plain, p, 1).await);
    app.orders
        .put(&format!("/commandes-produits/{l}"), json!({"quantite": 4}))
        .await
        .expect(200);
    assert!(order(&app.orders, plain).await["validation"].is_null());
}

#[tokio::test]
async fn two_orders_racing_for_the_last_units_one_wins_the_other_is_compensated() {
    let app = TestApp::spawn().await;
    let p = app.create_product("p", 1.0, 5).await;
    let other = app.create_product("q", 1.0, 10).await;
    let (a, b) = (app.create_order().await, app.create_order().await);
    for o in [a, b] {
        app.create_line(o, other, 2).await;
        app.create_line(o, p, 3).await;
    }
    // Both validations start before any line is applied.
    let (va, vb) = tokio::join!(validate(&app.orders, a), validate(&app.orders, b));
    assert_eq!((va["id"].as_i64(), vb["id"].as_i64()), (Some(a), Some(b)));
    let worker = Running::start(Mode::Worker, &app.settings).await;
    let (da, db) = tokio::join!(finished(&app.orders, a), finished(&app.orders, b));
    let mut results = [
        da["validation"].as_str().unwrap(),
        db["validation"].as_str().unwrap(),
    ];
    results.sort();
    assert_eq!(results, ["CONFIRMEE", "REFUSEE"], "{da}\n{db}");
    let refused = if da["validation"] == "REFUSEE" {
        &da
    } else {
        &db
    };
    assert!(
        refused["motif"]
            .as_str()
            .unwrap()
            .contains(&format!("asked 3 of product {p}, 2 available")),
        "{refused}"
    );
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!((app.stock(p), app.stock(other)), (2, 8));
    assert_eq!(
        app.assert_stock_invariant(&HashMap::from([(p, 5), (other, 10)])),
        2
    );
    worker.stop().await;
}

/// The worker's line events, as they went out (the outbox keeps sent rows).
fn line_events(db: &TestDb) -> Vec<(String, String)> {
    use diesel::prelude::*;
    use ordersys::db::schema::outbox;
    outbox::table
        .filter(outbox::exchange.eq(ORDER_EVENTS_EXCHANGE))
        .order(outbox::id)
        .select((outbox::message_id, outbox::payload))
        .load::<(uuid::Uuid, String)>(&mut db.conn())
        .unwrap()
        .into_iter()
        .map(|(id, payload)| (id.to_string(), payload))
        .collect()
}

fn publish_event(broker: &TestBroker, message_id: &str, payload: &str) {
    broker.publish(
        ORDER_EVENTS_EXCHANGE,
        ordersys::messages::ORDER_EVENTS_ROUTING_KEY,
        payload.as_bytes(),
        Some(message_id),
    );
}

#[tokio::test]
async fn duplicate_and_reordered_events_change_nothing() {
    let app = TestApp::with_worker().await;
    let p = app.create_product("p", 1.0, 4).await;
    let (ok, ko) = (app.create_order().await, app.create_order().await);
    let first = id(&app.create_line(ok, p, 3).await);
    // Reserved before ko's lines exist: ok is the one confirmed.
    app.wait_for_line(first, "RESERVE").await;
    app.create_line(ko, p, 3).await;
    app.create_line(ko, p, 1).await;
    for o in [ok, ko] {
        validate(&app.orders, o).await;
        finished(&app.orders, o).await;
    }
    all_sagas_done(&app.db, &app.broker).await;
    let before = (order(&app.orders, ok).await, order(&app.orders, ko).await);
    assert_eq!(
        (&before.0["validation"], &before.1["validation"]),
        (&json!("CONFIRMEE"), &json!("REFUSEE"))
    );
    let events = line_events(&app.db);
    // 2 outcomes for `ko`'s lines, 1 for `ok`'s, 2 releases of `ko`'s.
    assert_eq!(events.len(), 5, "{events:?}");
    let saga_metric = |text: &str, outcome: &str| {
        metric(
            text,
            &format!(r#"ordersys_saga_events_total{{mode="orders",outcome="{outcome}"}}"#),
        )
    };
    let text = app.orders.get("/metrics").await.expect(200).body;
    let duplicates_before = saga_metric(text.as_str().unwrap(), "duplicate");
    let ignored_before = saga_metric(text.as_str().unwrap(), "ignored");
    // Every event again, newest first, twice, under its own id…
    for _ in 0..2 {
        for (message_id, payload) in events.iter().rev() {
            publish_event(&app.broker, message_id, payload);
        }
    }
    // …and once under new ids, as a worker that forgot it would send them.
    for (_, payload) in &events {
        publish_event(&app.broker, &uuid::Uuid::new_v4().to_string(), payload);
    }
    wait_for("the copies to be handled", SETTLE, || async {
        let text = app.orders.get("/metrics").await.expect(200).body;
        let text = text.as_str()?.to_owned();
        let duplicates = saga_metric(&text, "duplicate") - duplicates_before;
        let ignored = saga_metric(&text, "ignored") - ignored_before;
        (duplicates == 10 && ignored == 5).then_some(())
    })
    .await;
    assert_eq!(order(&app.orders, ok).await, before.0);
    assert_eq!(order(&app.orders, ko).await, before.1);
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!(app.stock(p), 1);
    assert_eq!(app.assert_stock_invariant(&HashMap::from([(p, 4)])), 1);
}

#[tokio::test]
async fn an_unreadable_event_is_dead_lettered_with_its_reason() {
    let app = TestApp::with_worker().await;
    publish_event(&app.broker, "not-a-uuid", r#"{"event":"LIGNE_RESERVEE"}"#);
    publish_event(
        &app.broker,
        &uuid::Uuid::new_v4().to_string(),
        r#"{"event":"LIGNE_PERDUE","commande_id":1,"ligne_id":1,"version":1,"produit_id":1,"quantite":1}"#,
    );
    let dlq = ordersys::messages::ORDER_EVENTS_DEAD_LETTER_QUEUE;
    wait_for("two dead letters", SETTLE, || async {
        (app.broker.ready(dlq) == 2).then_some(())
    })
    .await;
    let dead = app.broker.drain(dlq);
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, props)| crate::common::broker::error_header(props.headers()).expect("a reason"))
        .collect();
    assert!(reasons[0].contains("not a UUID"), "{reasons:?}");
    assert!(reasons[1].contains("unknown variant"), "{reasons:?}");
    // The consumer goes on.
    let p = app.create_product("p", 1.0, 1).await;
    let o = app.create_order().await;
    app.create_line(o, p, 1).await;
    validate(&app.orders, o).await;
    assert_eq!(finished(&app.orders, o).await["validation"], "CONFIRMEE");
}

/// Products and a worker in-process, orders as its own process (to be
/// SIGKILLed), on a fresh database and vhost.
struct Split {
    db: TestDb,
    broker: TestBroker,
    settings: ordersys::settings::Settings,
    products: Running,
    worker: Option<Running>,
}

impl Split {
    async fn start() -> Split {
        let db = TestDb::migrated();
        let broker = TestBroker::create();
        let settings = settings(&db, &broker);
        let products = Running::start(Mode::Products, &settings).await;
        Split {
            db,
            broker,
            settings,
            products,
            worker: None,
        }
    }

    async fn orders(&self) -> (Process, Client) {
        let process = Process::serve(&self.settings, "orders", &[]);
        process.wait_ready().await;
        let client = Client::new_at(process.addr());
        (process, client)
    }
}

/// `orders` × `lines` lines of 1–3 units over `products` products with
/// scarce stock, none applied yet; returns the initial stock and the orders.
async fn scarce_orders(
    products: &Client,
    orders: &Client,
    count: usize,
) -> (HashMap<i64, i64>, Vec<i64>) {
    let mut initial = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..4 {
        let answer = products
            .post(
                "/produits/",
                json!({"nom": format!("p{i}"), "prix": 1.0, "quantite_en_stock": 12}),
            )
            .await
            .expect(201);
        ids.push(id(&answer.body));
        initial.insert(id(&answer.body), 12);
    }
    let mut created = Vec::new();
    for n in 0..count {
        let o = id(&orders.post("/commandes", json!({})).await.expect(201).body);
        for k in 0..2 {
            orders
                .post(
                    "/commandes-produits",
                    json!({"commande_id": o, "produit_id": ids[(n + k) % 4], "quantite": 1 + (n + k) % 3}),
                )
                .await
                .expect(201);
        }
        created.push(o);
    }
    (initial, created)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orders_process_killed_mid_saga_and_restarted_finishes_every_saga() {
    let mut split = Split::start().await;
    let products = Client::new(&split.products);
    let (orders, client) = split.orders().await;
    let (initial, created) = scarce_orders(&products, &client, 60).await;
    // Ten sagas run to the end; the other fifty are started with no worker
    // to answer them, so the kill finds them mid-saga however fast the
    // machine is (their reservations in the outbox or the queue).
    let (first, rest) = created.split_at(10);
    let mut slow = split.settings.clone();
    slow.worker.batch_size = 2;
    let worker = Running::start(Mode::Worker, &slow).await;
    for o in first {
        validate(&client, *o).await;
    }
    for o in first {
        finished(&client, *o).await;
    }
    worker.stop().await;
    for o in rest {
        validate(&client, *o).await;
    }
    orders.kill();
    let running = split
        .db
        .count("SELECT count(*) AS n FROM commandes WHERE validation = 'EN_COURS'");
    assert_eq!(running, 50, "the kill happened mid-saga");
    split.worker = Some(Running::start(Mode::Worker, &slow).await);
    let (_restarted, client) = split.orders().await;
    all_sagas_done(&split.db, &split.broker).await;
    let confirmed = split
        .db
        .count("SELECT count(*) AS n FROM commandes WHERE validation = 'CONFIRMEE'");
    let refused = split
        .db
        .count("SELECT count(*) AS n FROM commandes WHERE validation = 'REFUSEE'");
    eprintln!("{running} sagas running at the kill; {confirmed} confirmed, {refused} refused");
    assert_eq!(confirmed + refused, 60);
    assert!(confirmed > 0 && refused > 0, "the stock is scarce");
    assert_eq!(assert_stock_invariant(&split.db, &initial), 4);
    assert_eq!(finished(&client, created[0]).await["id"], created[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_dropped_mid_saga_with_two_orders_replicas() {
    let app = TestApp::spawn().await;
    // A second orders replica: the two compete for the line events.
    let second = Running::start(Mode::Orders, &app.settings).await;
    let (initial, created) = scarce_orders(&app.products, &app.orders, 60).await;
    for o in &created {
        validate(&app.orders, *o).await;
    }
    let mut slow = app.settings.clone();
    slow.worker.batch_size = 2;
    let worker = Running::start(Mode::Worker, &slow).await;
    let mut mid_saga = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await; // spacing between faults
        let running = app
            .db
            .count("SELECT count(*) AS n FROM commandes WHERE validation = 'EN_COURS'");
        if app.broker.close_all_connections() > 0 && running > 0 {
            mid_saga += 1;
        }
    }
    assert!(mid_saga > 0, "no connection was dropped while a saga ran");
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!(
        app.db.count(
            "SELECT count(*) AS n FROM commandes WHERE validation IN ('CONFIRMEE', 'REFUSEE')"
        ),
        60
    );
    assert_eq!(app.assert_stock_invariant(&initial), 4);
    // Each event id was applied by one replica, once: what both counted as
    // new (applied or ignored; redeliveries count as duplicates) is what
    // was recorded.
    let new_events = |client: Client| async move {
        let text = client.get("/metrics").await.expect(200).body;
        let text = text.as_str().unwrap().to_owned();
        let of = |outcome: &str| {
            metric(
                &text,
                &format!(r#"ordersys_saga_events_total{{mode="orders",outcome="{outcome}"}}"#),
            )
        };
        of("applied") + of("ignored")
    };
    let second_client = Client::new(&second);
    let (a, b) = wait_for(
        "both replicas' counts to match the recorded events",
        SETTLE,
        || async {
            let (a, b) = (
                new_events(app.orders.clone()).await,
                new_events(second_client.clone()).await,
            );
            let recorded = app.db.count("SELECT count(*) AS n FROM evenements_traites");
            (a + b == recorded as u64).then_some((a, b))
        },
    )
    .await;
    eprintln!("line events: {a} taken by one replica, {b} by the other");
    worker.stop().await;
    second.stop().await;
}

/// Validations refused 1.5 s after their start, looked for every 100 ms.
fn short_deadline(s: &mut ordersys::settings::Settings) {
    s.validation.timeout_ms = 1500;
    s.validation.sweep_interval_ms = 100;
}

#[tokio::test]
async fn a_worker_down_past_the_deadline_refuses_by_timeout_and_compensates() {
    let app = TestApp::build(false, short_deadline).await;
    let p = app.create_product("p", 1.0, 10).await;
    let o = app.create_order().await;
    let l = id(&app.create_line(o, p, 4).await);
    validate(&app.orders, o).await;
    let done = finished(&app.orders, o).await;
    assert_eq!(done["validation"], "REFUSEE", "{done}");
    assert_eq!(done["statut"], "ANNULEE");
    assert_eq!(
        done["motif"],
        format!("timeout: no outcome within 1.5 s for line(s) {l}")
    );
    // Counted once the sweeper's transaction committed.
    wait_for("the timeout to be counted", SETTLE, || async {
        let text = app.orders.get("/metrics").await.expect(200).body;
        let series = r#"ordersys_validations_total{mode="orders",result="timed_out"}"#;
        (metric(text.as_str()?, series) == 1).then_some(())
    })
    .await;
    // The worker comes back: the line's creation, its validation and its
    // release all arrive; the release is the newest and wins.
    let worker = Running::start(Mode::Worker, &app.settings).await;
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!(app.line_status(l), "LIBERE");
    assert_eq!(app.stock(p), 10);
    assert_eq!(app.assert_stock_invariant(&HashMap::from([(p, 10)])), 1);
    worker.stop().await;
}

/// An event naming a real order, line and version, published by whoever
/// holds a broker login that may publish to `order_events`.
fn forge(app: &TestApp, event: &str, order: i64, line: i64, product: i64, quantite: i32) {
    // The version the validation sent: readable by anyone from the history.
    let history = app.db.count(&format!(
        "SELECT max(version) AS n FROM historique_lignes WHERE ligne_id = {line}"
    ));
    let payload = json!({
        "event": event, "commande_id": order, "ligne_id": line, "version": history,
        "produit_id": product, "quantite": quantite, "disponible": 0,
    });
    publish_event(
        &app.broker,
        &uuid::Uuid::new_v4().to_string(),
        &payload.to_string(),
    );
}

/// Runs `publish` (two forged events) and waits until the orders service
/// has handled both as ignored.
async fn forged_and_ignored(app: &TestApp, publish: impl FnOnce()) {
    let series = r#"ordersys_saga_events_total{mode="orders",outcome="ignored"}"#;
    let ignored = || async {
        let text = app.orders.get("/metrics").await.expect(200).body;
        metric(text.as_str().unwrap(), series)
    };
    let before = ignored().await;
    publish();
    wait_for("both forged events to be handled", SETTLE, || async {
        (ignored().await - before == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn forged_line_events_neither_confirm_nor_refuse_an_order() {
    // No worker yet: nothing the worker wrote can explain a move.
    let app = TestApp::build(false, |_| {}).await;
    let scarce = app.create_product("scarce", 1.0, 1).await;
    let plenty = app.create_product("plenty", 1.0, 10).await;
    let (short, fine) = (app.create_order().await, app.create_order().await);
    let short_line = id(&app.create_line(short, scarce, 5).await);
    let fine_line = id(&app.create_line(fine, plenty, 2).await);
    validate(&app.orders, short).await;
    validate(&app.orders, fine).await;
    // The attack: "reserved" for the line the stock cannot cover, and
    // "rejected" for the one it can.
    let forge_both = || async {
        forged_and_ignored(&app, || {
            forge(&app, "LIGNE_RESERVEE", short, short_line, scarce, 5);
            forge(&app, "LIGNE_REJETEE", fine, fine_line, plenty, 2);
        })
        .await
    };
    forge_both().await;
    for o in [short, fine] {
        let now = order(&app.orders, o).await;
        assert_eq!(
            (&now["validation"], &now["statut"]),
            (&json!("EN_COURS"), &json!("EN_ATTENTE")),
            "a forged event moved order {o}: {now}"
        );
        assert_eq!(statuses(&now), ["EN_ATTENTE"]);
    }

    // The genuine outcomes decide, when the worker writes them.
    let worker = Running::start(Mode::Worker, &app.settings).await;
    let refused = finished(&app.orders, short).await;
    assert_eq!(refused["validation"], "REFUSEE", "{refused}");
    assert_eq!(
        refused["motif"],
        format!("line {short_line}: asked 5 of product {scarce}, 1 available")
    );
    assert_eq!(finished(&app.orders, fine).await["validation"], "CONFIRMEE");
    all_sagas_done(&app.db, &app.broker).await;
    assert_eq!((app.stock(scarce), app.stock(plenty)), (1, 8));
    // Forged again once decided: nothing moves either.
    let decided = (
        order(&app.orders, short).await,
        order(&app.orders, fine).await,
    );
    forge_both().await;
    assert_eq!(order(&app.orders, short).await, decided.0);
    assert_eq!(order(&app.orders, fine).await, decided.1);
    assert_eq!(
        app.assert_stock_invariant(&HashMap::from([(scarce, 1), (plenty, 10)])),
        2
    );
    worker.stop().await;
}

/// The worker applied every line (its outcomes are in the database) but
/// no line event reached the orders service before the deadline (the
/// broker down, a backlog): the deadline reads the database first.
#[tokio::test]
async fn a_deadline_reads_the_outcomes_already_written_before_refusing() {
    use diesel::RunQueryDsl;
    // A deadline long enough that the outcome below is written before it
    // passes, even on a loaded machine (at 1.5 s, a CI run's parallel
    // tests once delayed the write past it).
    let app = TestApp::build(false, |s| {
        short_deadline(s);
        s.validation.timeout_ms = 5000;
    })
    .await;
    let p = app.create_product("p", 1.0, 10).await;
    let (applied, silent) = (app.create_order().await, app.create_order().await);
    app.create_line(applied, p, 2).await;
    let silent_line = id(&app.create_line(silent, p, 3).await);
    validate(&app.orders, applied).await;
    // As the worker writes an outcome (for the version the validation
    // sent), with no event published.
    diesel::sql_query(format!(
        "UPDATE commandes_produits SET statut_stock = 'RESERVE' WHERE commande_id = {applied}"
    ))
    .execute(&mut app.db.conn())
    .unwrap();
    validate(&app.orders, silent).await;
    let done = finished(&app.orders, applied).await;
    assert_eq!(
        (&done["validation"], &done["statut"]),
        (&json!("CONFIRMEE"), &json!("EN_COURS")),
        "{done}"
    );
    // The one the database says nothing of is refused by its deadline.
    let refused = finished(&app.orders, silent).await;
    assert_eq!(
        refused["motif"],
        format!("timeout: no outcome within 5.0 s for line(s) {silent_line}")
    );
}
