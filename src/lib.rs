//! # ordersys
//!
//! An order-management system built as distributed software. One binary
//! plays every role (its subcommands: [`cli`]); three of them make up the
//! running system:
//!
//! - **products** ([`products`]): REST CRUD of the catalog, with stock.
//! - **orders** ([`orders`]): REST CRUD of orders and their lines. Every
//!   line change is written, in the same transaction, to an outbox table
//!   ([`outbox`]); a relay thread publishes it to RabbitMQ with publisher
//!   confirms. It also runs the order-validation saga ([`saga`]): it
//!   consumes the line events of `order_events` and confirms an order, or
//!   refuses it and releases its lines.
//! - **worker** ([`worker`]): consumes the durable work queue
//!   `product_queue` and applies each change to product stock, exactly once,
//!   acknowledging only after the database commit; a validation's line
//!   outcomes leave through its own outbox as events on `order_events`.
//!
//! The other subcommands: `all` (the three in one process), `migrate`,
//! `probe` ([`probe`], the container health check), `token` (a bearer
//! token for [`auth`]) and `load` ([`load`], a load generator).
//!
//! The data path of an order line: HTTP request → transaction (line +
//! outbox row) → relay → broker confirm → `product_queue` → worker →
//! transaction (stock + dedupe record + line status) → ack.
//!
//! Shared by all modes: [`settings`], the diesel schema and migrations
//! ([`db`]), the wire messages ([`messages`]), the HTTP plumbing ([`http`]).

pub mod amqp;
pub mod app;
pub mod auth;
pub mod cli;
pub mod consume;
pub mod context;
pub mod db;
pub mod dependencies;
pub mod domain;
pub mod http;
pub mod load;
pub mod logging;
pub mod messages;
pub mod metrics;
pub mod orders;
pub mod outbox;
pub mod probe;
pub mod products;
pub mod request_id;
pub mod retry;
pub mod saga;
pub mod settings;
pub mod shutdown;
pub mod worker;

pub use app::{Application, Mode};
