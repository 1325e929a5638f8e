//! The orders service (`ordersys orders`, port 8081): orders at
//! `/commandes`, their lines at `/commandes-produits` (and the seed's
//! `/api/v1/...` aliases), and the outbox relay that carries every line
//! change to the stock worker.
//!
//! A line change and its message are written in one transaction
//! ([`crate::outbox`]); after the commit the handler wakes the relay.

pub mod model;
pub mod queries;
