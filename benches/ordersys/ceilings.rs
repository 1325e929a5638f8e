//! The ceilings the figures are compared with, measured in the same run:
//! the broker alone (amiquip publish with confirms, consume with acks) and
//! the database alone (single-row UPDATEs).

use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use diesel::prelude::*;
use ordersys_testkit::{TestBroker, TestDb};
use std::time::Instant;

/// The broker's own ceiling: publish `n` persistent messages with confirms
/// in windows of 100, then consume them with acks (every 100, `multiple`).
pub fn broker(broker: &TestBroker, n: usize) -> (f64, f64) {
    let mut connection = broker.connect();
    let channel = connection.open_channel(None).unwrap();
    let queue = "bench.ceiling";
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    let body = br#"{"action":"CREATED","produit_id":1,"quantite":1,"commande_id":1}"#;
    let started = Instant::now();
    let mut smoother = amiquip::ConfirmSmoother::new();
    let mut confirmed = 0;
    for i in 0..n {
        let properties = AmqpProperties::default().with_delivery_mode(2);
        channel
            .basic_publish("", Publish::with_properties(body, queue, properties))
            .unwrap();
        if (i + 1) % 100 == 0 || i + 1 == n {
            while confirmed < i + 1 {
                for _ in smoother.process(confirms.recv().unwrap()) {
                    confirmed += 1;
                }
            }
        }
    }
    let publish_rate = n as f64 / started.elapsed().as_secs_f64();
    channel.qos(0, 500, false).unwrap();
    let consumer = channel
        .basic_consume(queue, ConsumerOptions::default())
        .unwrap();
    let started = Instant::now();
    let mut received = 0;
    for message in consumer.receiver().iter() {
        if let ConsumerMessage::Delivery(delivery) = message {
            received += 1;
            if received % 100 == 0 || received == n {
                consumer.ack_multiple(delivery).unwrap();
            }
            if received == n {
                break;
            }
        }
    }
    let consume_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(consumer);
    let _ = channel.close();
    let _ = connection.close();
    (publish_rate, consume_rate)
}

/// The database's ceiling: single-row UPDATEs, one after the other, autocommit.
pub fn database(db: &TestDb, n: usize) -> f64 {
    let mut conn = db.conn();
    diesel::sql_query("CREATE TABLE bench_ceiling (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query("INSERT INTO bench_ceiling VALUES (1, 0)")
        .execute(&mut conn)
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        diesel::sql_query("UPDATE bench_ceiling SET n = n + 1 WHERE id = 1")
            .execute(&mut conn)
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The database's ceiling for the request path: [`create_line`] (the two
/// statements of `POST /commandes-produits`) from `threads` connections at
/// once for `secs`, each on orders of its own, on a database of its own with
/// no service attached. Returns the lines written per second and where the
/// CPU went meanwhile.
///
/// [`create_line`]: ordersys::orders::queries::create_line
pub fn line_writes(threads: usize, secs: f64) -> (f64, String) {
    use ordersys::domain::{OrderId, ProductId};
    use ordersys::orders::model::NewLine;
    use ordersys::orders::queries::create_line;
    use ordersys::request_id::RequestId;
    let db = TestDb::migrated();
    let mut conn = db.conn();
    for sql in [
        "INSERT INTO produits (nom, prix, quantite_en_stock) \
         SELECT 'p' || i, 1.50, 1000000 FROM generate_series(1, 50) i",
        "INSERT INTO commandes (statut) SELECT 'EN_ATTENTE' FROM generate_series(1, 5000)",
    ] {
        diesel::sql_query(sql).execute(&mut conn).unwrap();
    }
    let ids = |sql: &str, conn: &mut PgConnection| -> Vec<i64> {
        diesel::dsl::sql::<diesel::sql_types::BigInt>(sql)
            .load(conn)
            .unwrap()
    };
    let products = ids("SELECT id FROM produits ORDER BY id", &mut conn);
    let orders = ids("SELECT id FROM commandes ORDER BY id", &mut conn);
    // Connected before the first CPU sample and closed after the last, so
    // that their backends' CPU time is counted.
    let mut connections: Vec<PgConnection> = (0..threads).map(|_| db.conn()).collect();
    let cpu_before = crate::cpu::CpuSample::take(&[]);
    let started = Instant::now();
    let written: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = connections
            .iter_mut()
            .enumerate()
            .map(|(t, conn)| {
                let (products, orders) = (&products, &orders);
                scope.spawn(move || {
                    let mut n = 0;
                    while started.elapsed().as_secs_f64() < secs {
                        let new = NewLine {
                            commande_id: OrderId(orders[(t + n * threads) % orders.len()]),
                            produit_id: ProductId(products[n % products.len()]),
                            quantite: 1,
                        };
                        create_line(conn, &RequestId::generate(), new).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = crate::cpu::CpuSample::take(&[]).since(&cpu_before, elapsed);
    drop(connections);
    (written as f64 / elapsed, cpu)
}
