//! The products service (`ordersys products`, port 8000): CRUD of the
//! catalog at `/produits/`, and the stock movements the worker applied.
//!
//! Stock is only *read* here after creation, apart from an explicit
//! `quantite_en_stock` in a PUT (an inventory correction); reservations are
//! the worker's business.

pub mod model;
pub mod queries;

use crate::db::coalesce::Coalescer;
use crate::db::Database;
use model::Product;

/// Batches of `GET /produits/{id}` in flight at once. Measured on 2 cores
/// (bench smoke, 8 clients): uncoalesced 6.7k req/s; 1 runner 13.7k;
/// 2 runners 11.9k; 4 runners 10.0k. One round trip answers up to 256 reads,
/// so one runner is not the bound; more only add contention.
const READ_RUNNERS: usize = 1;

/// Product reads by id, coalesced.
pub type ProductReads = Coalescer<i64, Product>;

/// `GET /produits/{id}` reads: concurrent ones share a query.
pub fn reads(db: Database) -> ProductReads {
    Coalescer::new(db, READ_RUNNERS, queries::find_many)
}
