//! The one consumer loop (`ordersys::consume`) driven by a handler of its
//! own, on the real broker and a real database, failing in each way a
//! handler can: a database that gives way, a batch the database refuses, a
//! message that cannot be decoded, and a connection lost between the commit
//! and the ack. The handler is small (a number per message, recorded in a
//! table whose primary key is the record of what was applied); the loop is
//! the one the worker and the saga run.

use crate::common::broker::error_header;
use crate::common::{wait_for, TestBroker, TestDb};
use amiquip::{AmqpValue, Delivery};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use ordersys::consume::{self, Handler, Queue};
use ordersys::context::Context;
use ordersys::db::Database;
use ordersys::dependencies::{BrokerUse, Dependencies};
use ordersys::messages::{
    DeadLetterClass, Refusal, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ERROR_CLASS_HEADER,
    PRODUCT_EXCHANGE, PRODUCT_QUEUE, PRODUCT_ROUTING_KEY,
};
use ordersys::metrics::{Metrics, Parts};
use ordersys::settings::Settings;
use ordersys::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the handler saw, in order: committed, or dead-lettered once the
/// broker confirmed it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Applied(i64),
    Duplicate(i64),
    DeadLettered(Option<i64>, DeadLetterClass),
}

type AfterCommit = Box<dyn FnMut() + Send>;

/// Applies numbers: `applied`'s primary key records each one, so a
/// redelivered number changes nothing.
struct Numbers {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Run once, after the first commit.
    after_commit: Option<AfterCommit>,
}

impl Handler for Numbers {
    type Item = i64;

    fn decode(&mut self, delivery: &Delivery) -> Result<i64, Refusal> {
        let text = String::from_utf8_lossy(&delivery.body);
        text.parse().map_err(|_| {
            Refusal::new(
                DeadLetterClass::Malformed,
                format!("not a number: {text:?}"),
            )
        })
    }

    fn apply(
        &mut self,
        conn: &mut PgConnection,
        items: &[i64],
    ) -> QueryResult<Vec<Option<Refusal>>> {
        let fresh = conn.transaction(|conn| {
            items
                .iter()
                .map(|n| {
                    diesel::sql_query("INSERT INTO applied (n) VALUES ($1) ON CONFLICT DO NOTHING")
                        .bind::<BigInt, _>(n)
                        .execute(conn)
                        .map(|inserted| inserted == 1)
                })
                .collect::<QueryResult<Vec<bool>>>()
        })?;
        let mut seen = self.seen.lock().unwrap();
        for (n, fresh) in items.iter().zip(fresh) {
            seen.push(match fresh {
                true => Seen::Applied(*n),
                false => Seen::Duplicate(*n),
            });
        }
        drop(seen);
        if let Some(mut hook) = self.after_commit.take() {
            hook();
        }
        Ok(vec![None; items.len()])
    }

    fn dead_lettered(&mut self, _: Option<&mut PgConnection>, n: Option<&i64>, refusal: &Refusal) {
        let seen = Seen::DeadLettered(n.copied(), refusal.class);
        self.seen.lock().unwrap().push(seen);
    }
}

/// A database with the handler's table; `faults` adds triggers.
fn database(faults: &str) -> TestDb {
    let db = TestDb::empty();
    db.conn()
        .batch_execute(&format!(
            "CREATE TABLE applied (n bigint PRIMARY KEY); {faults}"
        ))
        .unwrap();
    db
}

/// One consumer loop of `product_queue` on its own thread.
struct Loop {
    shutdown: Shutdown,
    thread: std::thread::JoinHandle<()>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Loop {
    fn start(settings: &Settings, after_commit: Option<AfterCommit>) -> Loop {
        let deps = Dependencies::new(BrokerUse::Required);
        let db = Database::new(&settings.database, "consume-test", deps.database.clone());
        db.mark_ready();
        let shutdown = Shutdown::new();
        let ctx = Context {
            settings: settings.clone(),
            db,
            deps,
            metrics: Arc::new(Metrics::new(
                "worker",
                Parts {
                    relay: false,
                    consumer: true,
                    saga: false,
                },
            )),
            shutdown: shutdown.clone(),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Numbers {
            seen: seen.clone(),
            after_commit,
        };
        let thread = std::thread::spawn(move || {
            let queue = Queue {
                queue: PRODUCT_QUEUE,
                also: None,
                dead_letter_exchange: DEAD_LETTER_EXCHANGE,
                noun: "number",
                batch_size: 50,
                connection_name: "consume-test".into(),
                database_name: "consume-test",
                depth_of: Vec::new(),
                retention: None,
            };
            consume::run(&ctx, queue, handler)
        });
        Loop {
            shutdown,
            thread,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Triggers the shutdown and waits for the loop to return.
    async fn stop(self) -> Vec<Seen> {
        self.shutdown.trigger();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .expect("the loop returns at the shutdown");
        let seen = self.seen.lock().unwrap().clone();
        seen
    }
}

fn setup(faults: &str) -> (TestDb, TestBroker, Settings) {
    let db = database(faults);
    let broker = TestBroker::create();
    let settings = crate::common::settings(&db, &broker);
    // The queues exist before anything is published.
    broker.with_channel(|_| ());
    (db, broker, settings)
}

fn publish(broker: &TestBroker, bodies: &[&str]) {
    for body in bodies {
        broker.publish(PRODUCT_EXCHANGE, PRODUCT_ROUTING_KEY, body.as_bytes(), None);
    }
}

fn applied(db: &TestDb) -> Vec<i64> {
    diesel::sql_query("SELECT n FROM applied ORDER BY n")
        .load::<N>(&mut db.conn())
        .unwrap()
        .into_iter()
        .map(|r| r.n)
        .collect()
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_gives_way_is_retried_unacknowledged_then_applied_once() {
    // Deadlocks for as long as `outage` has a row; `attempts` counts them
    // (a sequence: its count survives the rollbacks).
    let (db, broker, settings) = setup(
        "CREATE TABLE outage (); INSERT INTO outage DEFAULT VALUES; CREATE SEQUENCE attempts; \
         CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF EXISTS (SELECT FROM outage) THEN PERFORM nextval('attempts'); \
         RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER flaky BEFORE INSERT ON applied FOR EACH ROW EXECUTE FUNCTION flaky()",
    );
    publish(&broker, &["7"]);
    let consumer = Loop::start(&settings, None);
    wait_for("three failed attempts", Duration::from_secs(20), || async {
        let attempts = db.count("SELECT last_value AS n FROM attempts");
        (attempts >= 3).then_some(())
    })
    .await;
    // Stopped mid-outage: nothing was acknowledged, nothing dead-lettered.
    assert_eq!(consumer.stop().await, []);
    wait_for(
        "the message back in its queue",
        Duration::from_secs(10),
        || async { (broker.ready(PRODUCT_QUEUE) == 1).then_some(()) },
    )
    .await;
    assert_eq!(broker.ready(DEAD_LETTER_QUEUE), 0);
    assert_eq!(applied(&db), Vec::<i64>::new());

    // The database comes back while a loop holds on to the message.
    let consumer = Loop::start(&settings, None);
    let attempts = db.count("SELECT last_value AS n FROM attempts");
    wait_for("a failed attempt more", Duration::from_secs(20), || async {
        (db.count("SELECT last_value AS n FROM attempts") > attempts).then_some(())
    })
    .await;
    db.conn().batch_execute("DELETE FROM outage").unwrap();
    wait_for("the number applied", Duration::from_secs(20), || async {
        (!consumer.seen().is_empty()).then_some(())
    })
    .await;
    assert_eq!(consumer.stop().await, [Seen::Applied(7)]);
    assert_eq!(applied(&db), [7]);
    assert_eq!(broker.ready(PRODUCT_QUEUE), 0, "acknowledged once applied");
    assert_eq!(broker.ready(DEAD_LETTER_QUEUE), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_bisected_and_only_the_culprit_and_the_unreadable_dead_lettered() {
    let (db, broker, settings) = setup(
        "CREATE FUNCTION refuse_666() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.n = 666 THEN RAISE EXCEPTION 'number 666 refused by a test trigger' \
         USING ERRCODE = '23514'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON applied FOR EACH ROW EXECUTE FUNCTION refuse_666()",
    );
    // Queued before the loop starts: one batch.
    publish(&broker, &["1", "2", "3", "666", "4", "five", "6", "7"]);
    let consumer = Loop::start(&settings, None);
    wait_for("two dead letters", Duration::from_secs(20), || async {
        (broker.ready(DEAD_LETTER_QUEUE) == 2).then_some(())
    })
    .await;
    let seen = consumer.stop().await;
    assert_eq!(broker.ready(PRODUCT_QUEUE), 0, "the batch acknowledged");
    assert_eq!(applied(&db), [1, 2, 3, 4, 6, 7], "the others applied");
    for n in [1, 2, 3, 4, 6, 7] {
        assert_eq!(
            seen.iter().filter(|s| **s == Seen::Applied(n)).count(),
            1,
            "{seen:?}"
        );
    }
    // In delivery order, each with its reason and class.
    let dead = broker.drain(DEAD_LETTER_QUEUE);
    let reasons: Vec<(String, String, String)> = dead
        .iter()
        .map(|(body, properties)| {
            let class = match properties
                .headers()
                .as_ref()
                .unwrap()
                .get(ERROR_CLASS_HEADER)
            {
                Some(AmqpValue::LongString(class)) => class.clone(),
                other => panic!("no class: {other:?}"),
            };
            let body = String::from_utf8_lossy(body).into_owned();
            (body, class, error_header(properties.headers()).unwrap())
        })
        .collect();
    assert_eq!(reasons[0].0, "666");
    assert_eq!(reasons[0].1, "refused");
    assert!(
        reasons[0].2.contains("refused it") && reasons[0].2.contains("number 666"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "five");
    assert_eq!(reasons[1].1, "malformed");
    assert_eq!(reasons[1].2, r#"not a number: "five""#);
    assert!(seen.contains(&Seen::DeadLettered(Some(666), DeadLetterClass::Refused)));
    assert!(seen.contains(&Seen::DeadLettered(None, DeadLetterClass::Malformed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_between_commit_and_ack_redelivers_and_changes_nothing() {
    let (db, broker, settings) = setup("");
    publish(&broker, &["42"]);
    // Right after the commit, before the ack: every connection of the vhost
    // is closed, as a network failure would.
    let broker = Arc::new(broker);
    let cut = {
        let broker = broker.clone();
        Box::new(move || {
            assert!(broker.close_all_connections() > 0);
        })
    };
    let consumer = Loop::start(&settings, Some(cut));
    wait_for("the redelivery", Duration::from_secs(30), || async {
        (consumer.seen().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        consumer.stop().await,
        [Seen::Applied(42), Seen::Duplicate(42)],
        "applied once, then seen again as a duplicate"
    );
    assert_eq!(
        broker.ready(PRODUCT_QUEUE),
        0,
        "the redelivery acknowledged"
    );
    assert_eq!(applied(&db), [42]);
    assert_eq!(broker.ready(DEAD_LETTER_QUEUE), 0);
}
