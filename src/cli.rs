//! The command line: one binary, one subcommand per role.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// ordersys — orders, products and stock workers over PostgreSQL and RabbitMQ.
///
/// One binary plays every role of the system. Run `products` and `orders`
/// (the two REST APIs, Swagger UI at /docs) and one or more `worker`s (which
/// apply order changes to stock). Settings come from config/default.toml,
/// `--config FILE`, then ORDERSYS__SECTION__KEY, DATABASE_URL and AMQP_URL
/// environment variables.
#[derive(Debug, Parser)]
#[command(name = "ordersys", version, propagate_version = true)]
pub struct Cli {
    /// A TOML file overriding config/default.toml (see that file for every key)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the orders API (/commandes, /commandes-produits) and relay its
    /// outbox to RabbitMQ
    Orders(ServeArgs),
    /// Serve the products API (/produits/)
    Products(ServeArgs),
    /// Consume product_queue and apply each order change to product stock;
    /// serves /healthz, /readyz and /metrics
    Worker(WorkerArgs),
    /// Run products, orders and a worker pool in one process (a whole
    /// system for local development: needs only PostgreSQL and RabbitMQ)
    All(AllArgs),
    /// Apply pending database migrations and exit
    Migrate,
    /// Exit 0 if GET URL answers 2xx within 2 s (container health checks)
    Probe(ProbeArgs),
    /// Print a bearer token (JWT) signed with the HS256 secret of
    /// auth.jwt_secret_file, for development and tests
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The scopes it carries, comma-separated: products:read,
    /// products:write, stock:correct, orders:read, orders:write
    #[arg(long, value_name = "SCOPE[,SCOPE…]", value_parser = crate::auth::parse_scopes)]
    pub scope: std::vec::Vec<crate::auth::Scope>,

    /// How long it is valid, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub ttl: u64,

    /// Its `sub` claim: who holds it (shows in the services' debug logs)
    #[arg(long, value_name = "NAME", default_value = "ordersys-token")]
    pub subject: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8081 for orders, 0.0.0.0:8000 for products]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Competing consumers in this process, each with its own channel and
    /// database connection [default: worker.replicas]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub replicas: Option<u16>,

    /// Address of the health port (/healthz, /readyz, /metrics)
    #[arg(long, value_name = "ADDR", default_value = Command::WORKER_BIND)]
    pub bind: SocketAddr,
}

#[derive(Debug, Args)]
pub struct AllArgs {
    /// Address of the products API
    #[arg(long, value_name = "ADDR", default_value = Command::PRODUCTS_BIND)]
    pub products_bind: SocketAddr,

    /// Address of the orders API
    #[arg(long, value_name = "ADDR", default_value = Command::ORDERS_BIND)]
    pub orders_bind: SocketAddr,

    /// Address of the worker's health port (/healthz, /readyz, /metrics)
    #[arg(long, value_name = "ADDR", default_value = Command::WORKER_BIND)]
    pub worker_bind: SocketAddr,

    /// Competing stock consumers [default: worker.replicas]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub replicas: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET, e.g. http://127.0.0.1:8081/healthz [default: /readyz on
    /// the first of the default ports 8081, 8000, 8082 that answers 2xx]
    #[arg(value_name = "URL", env = "ORDERSYS_PROBE_URL")]
    pub url: Option<String>,
}

impl Command {
    pub const ORDERS_BIND: &'static str = "0.0.0.0:8081";
    pub const PRODUCTS_BIND: &'static str = "0.0.0.0:8000";
    pub const WORKER_BIND: &'static str = "0.0.0.0:8082";
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_mode() {
        let cli = Cli::parse_from([
            "ordersys",
            "--config",
            "x.toml",
            "worker",
            "--replicas",
            "4",
        ]);
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("x.toml")));
        assert!(matches!(
            cli.command,
            Command::Worker(WorkerArgs {
                replicas: Some(4),
                ..
            })
        ));
        let cli = Cli::parse_from(["ordersys", "orders", "--bind", "127.0.0.1:9000"]);
        assert!(matches!(
            cli.command,
            Command::Orders(ServeArgs { bind: Some(_) })
        ));
        assert!(Cli::try_parse_from(["ordersys", "worker", "--replicas", "0"]).is_err());
        let cli = Cli::parse_from(["ordersys", "all", "--orders-bind", "127.0.0.1:9081"]);
        let Command::All(all) = cli.command else {
            panic!("all parses")
        };
        assert_eq!(all.orders_bind.port(), 9081);
        assert_eq!(all.products_bind.port(), 8000);
        assert_eq!(all.worker_bind.port(), 8082);
        let cli = Cli::parse_from([
            "ordersys",
            "token",
            "--scope",
            "products:write,stock:correct",
            "--ttl",
            "60",
        ]);
        let Command::Token(token) = cli.command else {
            panic!("token parses")
        };
        assert_eq!(
            token.scope,
            [
                crate::auth::Scope::ProductsWrite,
                crate::auth::Scope::StockCorrect
            ]
        );
        assert!(Cli::try_parse_from(["ordersys", "token", "--scope", "root"]).is_err());
        assert!(Cli::try_parse_from([
            "ordersys",
            "token",
            "--scope",
            "orders:write",
            "--ttl",
            "0"
        ])
        .is_err());
    }
}
