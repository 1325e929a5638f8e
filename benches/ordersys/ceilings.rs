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
