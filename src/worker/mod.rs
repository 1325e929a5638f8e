//! The stock worker (`ordersys worker`): N competing consumers of the work
//! queue `product_queue`, each applying order-line changes to product stock
//! exactly once, plus a relay for the stock alerts they write to the outbox.
//!
//! One batch of deliveries goes through four steps:
//! [`change`] parses each body, [`store`] loads the snapshot the batch
//! touches under row locks, [`plan`] decides (pure: the stock rules live
//! there and nowhere else), [`store`] writes the plan; [`consumer`] is the
//! broker shell around them that acknowledges and dead-letters.

pub mod change;
pub mod consumer;
pub mod plan;
pub mod store;
