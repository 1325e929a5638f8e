//! Coalesces concurrent reads by key into one query (the "data loader"
//! pattern), for hot single-row reads such as `GET /produits/{id}`.
//!
//! A read joins a shared queue. At most `runners` blocking tasks drain it,
//! each taking everything queued and answering it with one
//! `WHERE key = ANY(...)` round trip. With no contention a read runs at once,
//! alone: there is no timer and no added latency. Under load, reads that
//! arrive while the runners are busy share the next round trip, which cuts
//! the database work and the thread hand-offs per request by the batch size.
//!
//! Freshness is unchanged: every batch is queried after all of its requests
//! arrived, so a read never sees data older than the request. When a batch
//! fails (database down, pool exhausted), each of its requests falls back to
//! its own query through [`Database::run`], so errors are exactly those of an
//! uncoalesced read.

use super::{Database, DbFailure};
use diesel::{PgConnection, QueryResult};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Loads the rows for some keys; keys without a row are simply absent.
pub type LoadMany<K, V> = fn(&mut PgConnection, &[K]) -> QueryResult<Vec<(K, V)>>;

/// The most reads one round trip answers.
const MAX_BATCH: usize = 256;

pub struct Coalescer<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Coalescer {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K, V> {
    db: Database,
    load: LoadMany<K, V>,
    runners: usize,
    queue: Mutex<Queue<K, V>>,
}

/// `None` answers "not loaded: query it yourself".
type Reply<V> = oneshot::Sender<Option<Option<V>>>;

struct Queue<K, V> {
    waiting: Vec<(K, Reply<V>)>,
    running: usize,
}

impl<K, V> Coalescer<K, V>
where
    K: Copy + Eq + Hash + Send + 'static,
    V: Clone + Send + 'static,
{
    /// `runners`: how many batches may be in flight at once (at least 1).
    pub fn new(db: Database, runners: usize, load: LoadMany<K, V>) -> Self {
        Coalescer {
            inner: Arc::new(Inner {
                db,
                load,
                runners: runners.max(1),
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    running: 0,
                }),
            }),
        }
    }

    /// The row for `key`, if any.
    pub async fn get<E>(&self, key: K) -> Result<Option<V>, E>
    where
        E: DbFailure + From<diesel::result::Error> + Send + 'static,
    {
        if self.inner.db.is_ready() {
            let (reply, answer) = oneshot::channel();
            let start_runner = {
                let mut queue = self.inner.lock();
                queue.waiting.push((key, reply));
                let start = queue.running < self.inner.runners;
                if start {
                    queue.running += 1;
                }
                start
            };
            if start_runner {
                let inner = self.inner.clone();
                tokio::task::spawn_blocking(move || inner.drain());
            }
            if let Ok(Some(found)) = answer.await {
                return Ok(found);
            }
        }
        let load = self.inner.load;
        self.inner
            .db
            .run(move |conn| Ok(load(conn, &[key])?.pop().map(|(_, v)| v)))
            .await
    }
}

impl<K, V> Inner<K, V>
where
    K: Copy + Eq + Hash,
    V: Clone,
{
    fn lock(&self) -> MutexGuard<'_, Queue<K, V>> {
        // No code panics while holding the lock; recover anyway.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers queued reads, a batch per round trip, until none is left.
    fn drain(&self) {
        let mut runner = Runner {
            inner: self,
            finished: false,
        };
        loop {
            let batch: Vec<(K, Reply<V>)> = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.running -= 1;
                    runner.finished = true;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).collect()
            };
            let keys: Vec<K> = batch.iter().map(|(key, _)| *key).collect();
            let rows = self
                .db
                .run_blocking(|conn| (self.load)(conn, &keys))
                .map(|rows| rows.into_iter().collect::<HashMap<K, V>>());
            match rows {
                Ok(rows) => {
                    for (key, reply) in batch {
                        let _ = reply.send(Some(rows.get(&key).cloned()));
                    }
                }
                Err(_) => {
                    // Each request retries alone and reports its own error.
                    for (_, reply) in batch {
                        let _ = reply.send(None);
                    }
                }
            }
        }
    }
}

/// Keeps the queue usable if a runner unwinds (a panic in a query): it gives
/// up its slot and drops the queued replies, so their requests fall back to
/// their own query instead of waiting for a runner that is gone.
struct Runner<'a, K, V>
where
    K: Copy + Eq + Hash,
    V: Clone,
{
    inner: &'a Inner<K, V>,
    finished: bool,
}

impl<K, V> Drop for Runner<'_, K, V>
where
    K: Copy + Eq + Hash,
    V: Clone,
{
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.inner.lock();
            queue.running -= 1;
            queue.waiting.clear();
        }
    }
}
