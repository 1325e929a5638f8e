//! The stock worker (`ordersys worker`): consumes `product_queue` and
//! applies each order-line change to product stock.

use crate::http::Api;

/// The worker's HTTP port serves only health and metrics.
pub const API: Api = Api {
    title: "ordersys worker",
    description: "Health and metrics of a stock worker process.",
    routes: |_| {},
};
