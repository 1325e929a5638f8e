//! The stock worker (`ordersys worker`): N competing consumers of the work
//! queue `product_queue`, each applying order-line changes to product stock
//! exactly once ([`consumer`] is the broker side, [`stock`] the database
//! side, [`change`] the parsing between them), plus a relay for the stock
//! alerts they write to the outbox.

pub mod change;
pub mod consumer;
pub mod stock;

use crate::http::Api;

/// The worker's HTTP port serves only health and metrics.
pub const API: Api = Api {
    title: "ordersys worker",
    description: "Health and metrics of a stock worker process.",
    routes: |_| {},
};
