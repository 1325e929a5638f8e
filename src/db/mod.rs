//! PostgreSQL: the connection pool, the bridge that runs diesel (which is
//! blocking) off the async threads, and migrations.
//!
//! HTTP handlers call [`Database::run`], which takes a pooled connection on
//! tokio's blocking pool, runs a plain `fn(&mut PgConnection) -> Result`, and
//! throws away a connection that broke underneath it. Background loops (the
//! outbox relay, stock consumers) own a dedicated connection from
//! [`connect`] and reconnect with backoff themselves.

pub mod coalesce;
pub mod fixed;
pub mod gather;
pub mod migrate;
mod pool;
pub mod processed;
pub mod schema;

pub use pool::{connect, Database, DbUnavailable};

use diesel::result::{DatabaseErrorKind, Error};
use diesel::{PgConnection, QueryResult};

/// Deletes rows past retention with `delete_chunk` (given the retention in
/// seconds, a fixed `DELETE` of at most [`PURGE_CHUNK`] rows older than
/// that, on an indexed column), chunk after chunk until one comes back
/// short or [`PURGE_BUDGET`] is spent: retention keeps up with sustained
/// load, and one purge never holds its caller for long. Returns the rows
/// deleted.
pub fn purge<S: fixed::Fixed>(
    conn: &mut PgConnection,
    delete_chunk: impl Fn(f64) -> S,
    retention: std::time::Duration,
) -> QueryResult<usize> {
    let started = std::time::Instant::now();
    let mut total = 0;
    loop {
        let deleted = delete_chunk(retention.as_secs_f64()).execute(conn)?;
        total += deleted;
        if deleted < PURGE_CHUNK || started.elapsed() >= PURGE_BUDGET {
            return Ok(total);
        }
    }
}

/// Rows one purge statement deletes at most.
pub const PURGE_CHUNK: usize = 5000;
/// How long one purge may go on.
pub const PURGE_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// How often to purge a table whose rows are kept `retention`: twice per
/// retention period, at most every `max`, at least every second.
pub fn purge_interval(
    retention: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    (retention / 2).clamp(std::time::Duration::from_secs(1), max)
}

/// Deletes a table's rows older than the duration given; returns how many.
pub type Forget = fn(&mut PgConnection, std::time::Duration) -> QueryResult<usize>;

/// One table kept for a while, then forgotten: the chunked `DELETE`
/// ([`purge`]) run now and then by a background loop (a consumer, the
/// relay, the saga's sweeper) on its own connection, with its log line.
pub struct Retention {
    /// What the rows are called in the log ("processed message ids").
    pub rows: &'static str,
    /// Deletes the rows older than its duration ([`purge`] with a fixed
    /// chunked `DELETE`); returns how many.
    pub forget: Forget,
    pub keep: std::time::Duration,
    /// The level of the line that counts what was forgotten.
    pub level: log::Level,
    /// How often: see [`purge_interval`].
    every: std::time::Duration,
    /// None: never purged yet (an Instant in the past may not exist so
    /// soon after boot).
    last: Option<std::time::Instant>,
}

impl Retention {
    /// Rows kept `keep`, purged at most every `max` (and first at once).
    pub fn new(
        rows: &'static str,
        forget: Forget,
        keep: std::time::Duration,
        max: std::time::Duration,
        level: log::Level,
    ) -> Retention {
        Retention {
            rows,
            forget,
            keep,
            level,
            every: purge_interval(keep, max),
            last: None,
        }
    }

    /// Purges when it is due; logs what was forgotten, or why not (a
    /// failure is only logged: the next round tries again).
    pub fn purge_if_due(&mut self, conn: &mut PgConnection) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        match (self.forget)(conn, self.keep) {
            Ok(n) if n > 0 => {
                log::log!(self.level, "forgot {n} {} past retention", self.rows)
            }
            Ok(_) => {}
            Err(e) => log::warn!("could not purge {}: {e}", self.rows),
        }
    }
}

/// What a database error says about what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection is gone or unusable (server restarted or shutting
    /// down, backend terminated, too many connections, network cut, or a
    /// server that no longer takes writes: a standby, a demoted primary):
    /// drop it, reconnect (libpq's target_session_attrs=read-write then
    /// finds the primary), try again.
    Connection,
    /// Anything else the server reports (a deadlock, a serialization
    /// failure, a statement or lock timeout, a concurrent insert of the
    /// same key, a full disk, a missing privilege): not the data's fault;
    /// try again.
    Transient,
    /// The data breaks a rule of the schema (a constraint, a value out of
    /// range or of the wrong form): trying again changes nothing.
    Refused,
}

/// Classifies `error`. Only what the data itself breaks is `Refused`: a
/// change is dead-lettered for nothing else. diesel names some kinds; the
/// others are told by PostgreSQL's message (English unless the server's
/// `lc_messages` says otherwise; an unrecognised message counts as
/// transient, so a translated one delays, it never dead-letters).
pub fn classify(error: &Error) -> Failure {
    use DatabaseErrorKind as Kind;
    let (kind, info) = match error {
        Error::DatabaseError(kind, info) => (kind, info),
        Error::BrokenTransactionManager => return Failure::Connection,
        Error::RollbackErrorOnCommit { commit_error, .. } => return classify(commit_error),
        // Errors of ours (building or reading a query): deterministic.
        _ => return Failure::Refused,
    };
    let message = info.message();
    let has = |needle: &str| message.contains(needle);
    match kind {
        // 25006: this server is read-only now; the same connection would
        // say so for ever.
        Kind::ClosedConnection | Kind::UnableToSendCommand | Kind::ReadOnlyTransaction => {
            Failure::Connection
        }
        Kind::CheckViolation
        | Kind::NotNullViolation
        | Kind::ForeignKeyViolation
        | Kind::RestrictViolation
        | Kind::ExclusionViolation => Failure::Refused,
        _ if has("terminating connection")
            || has("too many clients")
            || has("the database system is")
            || has("server closed the connection") =>
        {
            Failure::Connection
        }
        _ if has("out of range")
            || has("invalid input")
            || has("value too long")
            || has("violates check constraint")
            || has("division by zero") =>
        {
            Failure::Refused
        }
        _ => Failure::Transient,
    }
}

/// Errors that may mean "the connection is gone", as opposed to an error in
/// the query.
pub fn is_connection_error(error: &Error) -> bool {
    classify(error) == Failure::Connection
}

/// Errors that callers of [`Database::run`] return: they must say when the
/// connection itself failed, so the pool can discard it.
pub trait DbFailure: From<DbUnavailable> {
    fn is_connection_error(&self) -> bool;
}

impl DbFailure for Error {
    fn is_connection_error(&self) -> bool {
        is_connection_error(self)
    }
}

impl From<DbUnavailable> for Error {
    fn from(error: DbUnavailable) -> Self {
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new(error.to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn errors_are_classified_by_what_to_do_next() {
        use DatabaseErrorKind as Kind;
        let cases = [
            (database(Kind::ClosedConnection, "x"), Failure::Connection),
            (
                database(
                    Kind::Unknown,
                    "terminating connection due to administrator command",
                ),
                Failure::Connection,
            ),
            (
                database(Kind::Unknown, "sorry, too many clients already"),
                Failure::Connection,
            ),
            (
                database(Kind::SerializationFailure, "x"),
                Failure::Transient,
            ),
            (
                database(Kind::Unknown, "deadlock detected"),
                Failure::Transient,
            ),
            (
                database(
                    Kind::Unknown,
                    "canceling statement due to statement timeout",
                ),
                Failure::Transient,
            ),
            (
                database(
                    Kind::ReadOnlyTransaction,
                    "cannot execute INSERT in a read-only transaction",
                ),
                Failure::Connection,
            ),
            (database(Kind::CheckViolation, "x"), Failure::Refused),
            (
                database(Kind::Unknown, "integer out of range"),
                Failure::Refused,
            ),
            (
                database(Kind::Unknown, "could not extend file: No space left"),
                Failure::Transient,
            ),
            (
                database(Kind::Unknown, "impasse détectée"),
                Failure::Transient,
            ),
            (Error::NotFound, Failure::Refused),
        ];
        for (error, expected) in cases {
            assert_eq!(classify(&error), expected, "{error}");
        }
    }
}
