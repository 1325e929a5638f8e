//! Stock partitions shared out among the workers (when
//! `amqp.stock_partitions` is set): each partition queue is consumed by the
//! one worker that holds its lease, so two workers never apply changes of
//! the same product at once (a line moved to another product touches both
//! products' rows: the one case where two may still wait on each other).
//!
//! One thread per worker keeps its leases (`lease.sql`), on a database
//! connection of its own, every fifth of `worker.partition_lease_ms`: it
//! renews its membership and the leases it holds, gives back those beyond
//! its share (the partitions dealt out evenly among the live workers, the
//! first few by id taking one more: a worker that joins gets its share as
//! the others give theirs back), and takes free or expired ones up to its
//! share. Then it tells its consumer threads which partition queues each
//! consumes ([`assign`]: partition k to consumer k mod their number); a
//! consumer whose set changed finishes its batch and starts over on it.
//!
//! A worker that stops gives its leases back once its consumers finished;
//! one killed, frozen or cut off loses them when they expire, and the
//! others take them. One that cannot renew stops consuming its partitions
//! once its leases may have expired; one whose consumer is not consuming
//! (its broker away, a queue refused, a panic) leaves, so that the others
//! share every partition meanwhile.
//! A lease is for speed, not for correctness: a frozen worker that wakes up
//! may apply the batch in its hands after its lease passed to another;
//! the processed-id ledger and the line versions still apply every change
//! once.

use crate::consume::{Assignment, COMES_ROUND_EVERY};
use crate::context::Context;
use crate::db;
use crate::db::fixed::fixed_sql;
use crate::messages::stock_queue;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, SmallInt, Uuid as SqlUuid};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Keeps this worker's leases until the shutdown, then gives them back.
/// `consumers` are its consumer threads' assignments.
pub fn run(ctx: &Context, consumers: &[Assignment]) {
    let partitions = ctx.settings.amqp.stock_partitions;
    if partitions == 0 || !ctx.db.wait_ready(&ctx.shutdown) {
        return;
    }
    let lease = Duration::from_millis(ctx.settings.worker.partition_lease_ms);
    let mut keeper = Keeper {
        ctx,
        me: Uuid::new_v4(),
        partitions,
        lease,
        conn: None,
        held: Vec::new(),
        valid_until: None,
        failing: false,
        member: false,
    };
    log::info!(
        "sharing {partitions} stock partitions with the other workers (lease {} ms, worker {})",
        lease.as_millis(),
        keeper.me
    );
    // A consumer that has not come round for this long is not consuming.
    let consuming_within = lease.max(COMES_ROUND_EVERY * 3);
    loop {
        if consumers.iter().all(|c| c.consuming(consuming_within)) {
            keeper.tick();
        } else {
            keeper.step_aside();
        }
        assign(consumers, &keeper.held);
        if ctx.shutdown.sleep(lease / 5) {
            break;
        }
    }
    // The consumers finish their batches first: the next holders would
    // wait on those rows.
    let deadline = Instant::now() + lease;
    while Instant::now() < deadline && !consumers.iter().all(Assignment::ended) {
        std::thread::sleep(Duration::from_millis(20));
    }
    keeper.give_back();
}

/// The partition queues each consumer consumes: partition k to consumer
/// k mod the consumers, so that a partition stays with its consumer while
/// the others come and go.
pub fn assign(consumers: &[Assignment], held: &[u16]) {
    for (i, consumer) in consumers.iter().enumerate() {
        let queues = held
            .iter()
            .filter(|&&k| usize::from(k) % consumers.len() == i)
            .map(|&k| stock_queue(k))
            .collect();
        consumer.set(queues);
    }
}

struct Keeper<'a> {
    ctx: &'a Context,
    /// This worker, for as long as the process runs.
    me: Uuid,
    partitions: u16,
    lease: Duration,
    conn: Option<PgConnection>,
    /// The partitions held, in order.
    held: Vec<u16>,
    /// Until when the last renewal holds them, at the latest.
    valid_until: Option<Instant>,
    /// Whether the last tick failed (logged once per outage).
    failing: bool,
    /// Whether this worker renewed its membership (and may hold leases).
    member: bool,
}

impl Keeper<'_> {
    fn tick(&mut self) {
        let sent = Instant::now();
        match self.renew() {
            // Renewed too late to count on (a lock wait, a slow server).
            Ok(_) if sent.elapsed() >= self.lease => {
                log::warn!("renewing the stock partition leases took longer than a lease");
                self.held.clear();
            }
            Ok(held) => {
                if held != self.held || self.failing || !self.member {
                    log::info!("holding stock partitions {held:?} of {}", self.partitions);
                }
                self.held = held;
                self.valid_until = Some(sent + self.lease);
                self.failing = false;
                self.member = true;
            }
            Err(e) => {
                self.conn = None;
                if !self.failing {
                    log::warn!("cannot renew the stock partition leases: {e}");
                    self.failing = true;
                }
                if self.valid_until.is_none_or(|t| Instant::now() >= t) && !self.held.is_empty() {
                    log::warn!(
                        "stock partitions {:?} may be another worker's now: no longer consuming them",
                        self.held
                    );
                    self.held.clear();
                }
            }
        }
    }

    /// A consumer is not consuming (its broker is away, a queue refused,
    /// it ended): its partitions would wait for it. The worker leaves, and
    /// the others share every partition until it is back.
    fn step_aside(&mut self) {
        if self.member {
            log::warn!(
                "a stock consumer of this worker is not consuming: leaving partitions {:?} to the others",
                self.held
            );
            self.give_back();
            self.member = false;
        }
        self.held.clear();
    }

    fn renew(&mut self) -> Result<Vec<u16>, String> {
        let conn = match self.conn.as_mut() {
            Some(conn) => conn,
            None => {
                let settings = &self.ctx.settings.database;
                let mut conn =
                    db::connect(settings, "ordersys-worker-lease").map_err(|e| e.to_string())?;
                // A renewal that waits longer is worth nothing.
                let timeout = (self.lease / 5).as_millis().max(100);
                diesel::sql_query(format!("SET statement_timeout = {timeout}"))
                    .execute(&mut conn)
                    .map_err(|e| e.to_string())?;
                Slots {
                    partitions: self.partitions.into(),
                }
                .execute(&mut conn)
                .map_err(|e| e.to_string())?;
                self.conn.insert(conn)
            }
        };
        let rows: Vec<Held> = Renew {
            me: self.me,
            partitions: self.partitions.into(),
            lease_ms: i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX),
        }
        .load(conn)
        .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|r| r.partition as u16).collect())
    }

    /// At the shutdown: the others need not wait for the leases to expire.
    fn give_back(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match (GiveBack {
            me: self.me,
            me_again: self.me,
        })
        .execute(conn)
        {
            Ok(_) => log::info!("gave the stock partitions back"),
            Err(e) => log::warn!("could not give the stock partitions back (they expire): {e}"),
        }
    }
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = SmallInt)]
    partition: i16,
}

fixed_sql!(
    "INSERT INTO partitions_stock (partition) SELECT generate_series(0, $1 - 1) \
     ON CONFLICT DO NOTHING",
    /// A row per partition, free until a worker takes it.
    struct Slots {
        partitions: i32 as Integer,
    }
);

fixed_sql!(include_str!("lease.sql"),
    /// Renews this worker's membership and leases, gives back what is
    /// beyond its share, takes up to its share; returns what it holds.
    struct Renew {
        me: Uuid as SqlUuid,
        partitions: i32 as Integer,
        lease_ms: i64 as BigInt,
    }
);

fixed_sql!(
    "WITH released AS (UPDATE partitions_stock SET worker = NULL, expire_le = NULL \
     WHERE worker = $1 RETURNING 1) DELETE FROM workers_stock WHERE worker = $2",
    /// Gives every lease of this worker back, and leaves.
    struct GiveBack {
        me: Uuid as SqlUuid,
        me_again: Uuid as SqlUuid,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_stays_with_its_consumer_whatever_else_is_held() {
        let consumers = vec![Assignment::default(), Assignment::default()];
        assign(&consumers, &[0, 3, 4, 7, 9]);
        assert_eq!(consumers[0].get().1, ["product_queue.0", "product_queue.4"]);
        assert_eq!(
            consumers[1].get().1,
            ["product_queue.3", "product_queue.7", "product_queue.9"]
        );
        let (first, _) = consumers[0].get();
        let (second, _) = consumers[1].get();
        // Partition 2 comes: consumer 1 is left as it is.
        assign(&consumers, &[0, 2, 3, 4, 7, 9]);
        assert_eq!(consumers[1].get().0, second, "the same set is no change");
        assert!(consumers[0].get().0 > first);
        assign(&consumers, &[]);
        assert!(consumers[0].get().1.is_empty() && consumers[1].get().1.is_empty());
    }
}
