//! The orders service (`ordersys orders`, port 8081): orders at
//! `/commandes`, their lines at `/commandes-produits` (and the seed's
//! `/api/v1/...` aliases), and the outbox relay that carries every line
//! change to the stock worker.
//!
//! A line change and its message are written in one transaction
//! ([`crate::outbox`]); after the commit the handler wakes the relay.

pub mod group;
pub(crate) mod locks;
pub mod model;
pub mod queries;

use crate::db::coalesce::Coalescer;
use crate::db::Database;
use model::Order;

/// Batches of `GET /commandes/{id}` in flight at once (one answers up to
/// 256 reads with two round trips, the orders and their lines), as for
/// products' reads.
const READ_RUNNERS: usize = 1;

/// Order reads by id, coalesced.
pub type OrderReads = Coalescer<i64, Order>;

/// `GET /commandes/{id}` reads: concurrent ones share their queries.
pub fn reads(db: Database) -> OrderReads {
    Coalescer::new(db, READ_RUNNERS, queries::find_orders)
}
