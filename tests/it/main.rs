//! Integration tests: every test talks to the real PostgreSQL (and, for the
//! pipeline, RabbitMQ) through its own database, and fails, never skips,
//! when they are unreachable.

mod cli;
mod consume;
mod drain;
use ordersys_testkit as common;
mod faults;
mod flow;
mod hostile;
mod load;
mod migrations;
mod openapi;
mod orders;
mod partitions;
mod pipeline;
mod prepared;
mod products;
mod saga;
mod security;
mod swagger_ui;
