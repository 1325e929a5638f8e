//! PostgreSQL: the connection pool, the bridge that runs diesel (which is
//! blocking) off the async threads, and migrations.
//!
//! HTTP handlers call [`Database::run`], which takes a pooled connection on
//! tokio's blocking pool, runs a plain `fn(&mut PgConnection) -> Result`, and
//! throws away a connection that broke underneath it. Background loops (the
//! outbox relay, stock consumers) own a dedicated connection from
//! [`connect`] and reconnect with backoff themselves.

pub mod coalesce;
pub mod migrate;
mod pool;
pub mod schema;

pub use pool::{connect, Database, DbUnavailable};

use diesel::result::{DatabaseErrorKind, Error};

/// Errors that may mean "the connection is gone" (server restarted, backend
/// terminated, network cut), as opposed to an error in the query.
pub fn is_connection_error(error: &Error) -> bool {
    matches!(
        error,
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        ) | Error::BrokenTransactionManager
    )
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
