//! The stock worker (`ordersys worker`): N consumers of the work queue
//! `product_queue` and of the stock partitions this worker holds
//! ([`lease`]), each applying order-line changes to product stock exactly
//! once, plus a relay for the stock alerts they write to the outbox.
//!
//! One batch of deliveries goes through four steps:
//! [`change`] parses each body, [`store`] loads the snapshot the batch
//! touches under row locks, [`plan`] decides (pure: the stock rules live
//! there and nowhere else), [`store`] writes the plan; [`consumer`] is the
//! broker shell around them that acknowledges and dead-letters.

pub mod change;
pub mod consumer;
pub mod lease;
pub mod plan;
pub mod store;
