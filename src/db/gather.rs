//! Gathers concurrent requests into batches, each run in one database
//! round trip or transaction: coalesced reads ([`super::coalesce`]) and
//! group-committed writes (`crate::orders::group`).
//!
//! A request joins a shared queue. At most `runners` blocking tasks drain
//! it, each taking everything queued (up to [`MAX_BATCH`]) and running it
//! as one batch. With no contention a request runs at once, alone: there
//! is no timer and no added latency. Under load, requests that arrive
//! while the runners are busy share the next batch, which cuts the
//! database work and the thread hand-offs per request by the batch size;
//! a request waits at most for the batch in flight when it arrived.
//!
//! A batch answers each of its requests, in order, only after it returned
//! (for writes, after its commit). When a batch fails as a whole (database
//! down, pool exhausted, a constraint that aborts its transaction), each of
//! its requests runs alone through [`Database::run`], so that its outcome
//! and error are exactly those of an ungathered request.

use super::{Database, DbFailure, DbUnavailable};
use diesel::PgConnection;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// Runs a batch: one answer per request, in the requests' order.
pub type RunMany<Q, A> =
    Box<dyn Fn(&mut PgConnection, &[Q]) -> Result<Vec<A>, BatchFailed> + Send + Sync>;

/// A batch that failed as a whole. Unless it may have written (its commit
/// was cut off: nobody knows whether it happened), each of its requests
/// then runs alone; if it may have, each answers that its outcome is
/// unknown, as an ungathered write cut off at its commit would.
#[derive(Debug)]
pub struct BatchFailed {
    pub error: diesel::result::Error,
    pub maybe_written: bool,
}

impl From<diesel::result::Error> for BatchFailed {
    fn from(error: diesel::result::Error) -> Self {
        BatchFailed {
            error,
            maybe_written: false,
        }
    }
}

impl From<DbUnavailable> for BatchFailed {
    fn from(error: DbUnavailable) -> Self {
        diesel::result::Error::from(error).into()
    }
}

impl DbFailure for BatchFailed {
    fn is_connection_error(&self) -> bool {
        self.error.is_connection_error()
    }
}

/// The most requests one batch takes.
pub const MAX_BATCH: usize = 256;

pub struct Gatherer<Q, A> {
    inner: Arc<Inner<Q, A>>,
}

impl<Q, A> Clone for Gatherer<Q, A> {
    fn clone(&self) -> Self {
        Gatherer {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<Q, A> {
    db: Database,
    batch: RunMany<Q, A>,
    runners: usize,
    queue: Mutex<Queue<Q, A>>,
}

/// What a request hears from the batch it was put in.
enum Outcome<A> {
    Answer(A),
    /// Not run: run it yourself.
    Alone,
    /// Its batch may or may not have been committed.
    Unknown,
}

type Reply<A> = oneshot::Sender<Outcome<A>>;

struct Queue<Q, A> {
    waiting: Vec<(Q, Reply<A>)>,
    running: usize,
}

impl<Q, A> Gatherer<Q, A>
where
    Q: Clone + Send + 'static,
    A: Send + 'static,
{
    /// `runners`: how many batches may be in flight at once (at least 1).
    pub fn new(db: Database, runners: usize, batch: RunMany<Q, A>) -> Self {
        Gatherer {
            inner: Arc::new(Inner {
                db,
                batch,
                runners: runners.max(1),
                queue: Mutex::new(Queue {
                    waiting: Vec::new(),
                    running: 0,
                }),
            }),
        }
    }

    /// `request`'s answer from a batch, or from `alone` (a pooled
    /// connection of its own) when its batch failed or the database is not
    /// ready.
    pub async fn run<E, F>(&self, request: Q, alone: F) -> Result<A, E>
    where
        E: DbFailure + Send + 'static,
        F: FnOnce(&mut PgConnection, Q) -> Result<A, E> + Send + 'static,
    {
        if self.inner.db.is_ready() {
            let (reply, answer) = oneshot::channel();
            let start_runner = {
                let mut queue = self.inner.lock();
                queue.waiting.push((request.clone(), reply));
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
            match answer.await {
                Ok(Outcome::Answer(answer)) => return Ok(answer),
                Ok(Outcome::Alone) => {}
                Ok(Outcome::Unknown) => {
                    let reason = "the database connection was lost while this change was \
                                  committing: it may or may not have been applied";
                    return Err(DbUnavailable::new(reason, "a batch's commit was cut off").into());
                }
                // The batch's runner panicked: what it wrote is unknown.
                Err(_) => {
                    let reason = "the batch this request was part of failed; retry";
                    return Err(DbUnavailable::new(reason, "its runner panicked").into());
                }
            }
        }
        self.inner.db.run(move |conn| alone(conn, request)).await
    }
}

impl<Q, A> Inner<Q, A> {
    fn lock(&self) -> MutexGuard<'_, Queue<Q, A>> {
        // No code panics while holding the lock; recover anyway.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs queued requests, a batch at a time, until none is left.
    fn drain(&self) {
        let mut runner = Runner {
            inner: self,
            finished: false,
        };
        loop {
            let (requests, replies): (Vec<Q>, Vec<Reply<A>>) = {
                let mut queue = self.lock();
                if queue.waiting.is_empty() {
                    queue.running -= 1;
                    runner.finished = true;
                    return;
                }
                let take = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..take).unzip()
            };
            let outcomes: Vec<Outcome<A>> =
                match self.db.run_blocking(|conn| (self.batch)(conn, &requests)) {
                    Ok(answers) => answers.into_iter().map(Outcome::Answer).collect(),
                    Err(failed) if failed.maybe_written => {
                        replies.iter().map(|_| Outcome::Unknown).collect()
                    }
                    // Each request runs alone and reports its own outcome.
                    Err(_) => replies.iter().map(|_| Outcome::Alone).collect(),
                };
            // One outcome per request; a batch that broke that rule leaves
            // the rest unanswered (an error, never a rerun).
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Keeps the queue usable if a runner unwinds (a panic in a batch): it
/// gives up its slot and sends the requests still queued to run alone. (The
/// batch that panicked had its replies dropped: its requests answer an
/// error, since what it wrote is unknown.)
struct Runner<'a, Q, A> {
    inner: &'a Inner<Q, A>,
    finished: bool,
}

impl<Q, A> Drop for Runner<'_, Q, A> {
    fn drop(&mut self) {
        if !self.finished {
            let mut queue = self.inner.lock();
            queue.running -= 1;
            for (_, reply) in queue.waiting.drain(..) {
                let _ = reply.send(Outcome::Alone);
            }
        }
    }
}
