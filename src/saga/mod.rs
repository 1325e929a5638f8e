//! Order validation as a saga, by choreography over the broker.
//!
//! `POST /commandes/{id}/validation` ([`store::start`]) sends every line of
//! the order to the stock worker again, marked as part of a validation. The
//! worker, in the transaction that applies a batch, writes one
//! [`crate::messages::LineEvent`] per such line (reserved, rejected,
//! released) to its outbox; its relay publishes them to `order_events`.
//! Each `orders` process consumes that queue ([`consumer`]) and advances
//! the sagas ([`store::apply_events`], rules in [`machine`]): all lines
//! reserved confirms the order; a rejected one refuses it, and the refusal
//! releases every line through the outbox (the compensation). A validation
//! that does not finish in time is refused the same way ([`store::time_out`],
//! run by each `orders` process's sweeper).

pub mod consumer;
pub mod machine;
pub mod store;
