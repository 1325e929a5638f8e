//! What every background thread of a mode is given (the consumers, the
//! outbox relay, the saga's sweeper): one struct, cloned per thread.

use crate::db::Database;
use crate::dependencies::Dependencies;
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use std::sync::Arc;

#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    /// The pool; a background thread only waits on it for the migrations
    /// ([`Database::wait_ready`]) and holds a connection of its own.
    pub db: Database,
    /// Where the thread reports PostgreSQL and RabbitMQ up or down.
    pub deps: Dependencies,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
}
