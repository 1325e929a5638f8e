//! The products service (`ordersys products`, port 8000): CRUD of the
//! catalog at `/produits/`, and the stock movements the worker applied.
//!
//! Stock is only *read* here after creation, apart from an explicit
//! `quantite_en_stock` in a PUT (an inventory correction); reservations are
//! the worker's business.

pub mod model;
pub mod queries;
mod routes;

pub use routes::API;
