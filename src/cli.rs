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
    /// serves /healthz, /readyz, /startedz and /metrics
    Worker(WorkerArgs),
    /// Run products, orders and a worker pool in one process (a whole
    /// system for local development: needs only PostgreSQL and RabbitMQ)
    All(AllArgs),
    /// Apply pending database migrations and exit
    Migrate,
    /// Exit 0 if GET URL answers 2xx within 2 s (container health checks)
    Probe(ProbeArgs),
    /// Print a bearer token (JWT): signed with an Ed25519 private key
    /// (--private-key, EdDSA), or with the HS256 secret of auth.jwt_secret_file
    Token(TokenArgs),
    /// Put a steady open-loop load on a running ordersys (its own products,
    /// orders and lines), with a live view and a closing summary
    Load(LoadArgs),
    /// Check a history that `ordersys load --history FILE` recorded against
    /// the system's state now: nothing acknowledged lost, nothing applied
    /// twice, nothing refused applied, every validation decided
    CheckHistory(CheckHistoryArgs),
}

/// Where the APIs are and how to reach them (`load`, `check-history`).
#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of the products API
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8000",
        env = "ORDERSYS_LOAD_PRODUCTS_URL"
    )]
    pub products_url: String,

    /// Base URL of the orders API
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8081",
        env = "ORDERSYS_LOAD_ORDERS_URL"
    )]
    pub orders_url: String,

    /// Bearer token for deployments with auth.mode = jwt (products:read,
    /// products:write, orders:read, orders:write)
    #[arg(
        long,
        value_name = "JWT",
        env = "ORDERSYS_LOAD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// A PEM file of CA certificates to trust besides the system's, for https://
    /// URLs behind an edge with its own (e.g. self-signed) certificate;
    /// certificates are always verified
    #[arg(long, value_name = "PATH", env = "ORDERSYS_LOAD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub api: ApiArgs,

    /// Requests per second, sent on schedule whether or not earlier ones answered
    #[arg(long, value_name = "N", default_value_t = 200.0, value_parser = rate)]
    pub rate: f64,

    /// How long to send, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = seconds)]
    pub duration: f64,

    /// Requests in flight at most; a request due beyond it is not sent, and counted
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// The operation mix, name=weight,… (read_product, read_order, create_order,
    /// create_line, change_quantity, change_product, delete_line, cancel_order,
    /// validate_order)
    #[arg(long, value_name = "MIX", default_value = crate::load::mix::DEFAULT_MIX,
          value_parser = crate::load::mix::Mix::parse)]
    pub mix: crate::load::mix::Mix,

    /// Products to create for the run
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,

    /// Initial stock of each product created
    #[arg(long, value_name = "N", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(i32).range(0..=1_000_000_000))]
    pub stock: i32,

    /// Order these existing products instead of creating some (ids,
    /// comma-separated; --verify assumes no one else orders them meanwhile)
    #[arg(long, value_name = "ID[,ID…]", value_delimiter = ',')]
    pub use_products: Vec<i64>,

    /// Exit 1 when errors and requests not sent exceed this share (0–1)
    #[arg(long, value_name = "SHARE", default_value_t = 0.01, value_parser = share)]
    pub max_error_rate: f64,

    /// After the load, wait for the pipeline to settle and check the stock invariant
    #[arg(long)]
    pub verify: bool,

    /// How long --verify waits for the lines to leave EN_ATTENTE, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, value_parser = seconds)]
    pub settle_timeout: f64,

    /// Seed of the operation choices (printed at start; the same seed draws
    /// the same sequence, though which requests find their target busy
    /// depends on timing)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Seconds between two lines of the plain view (when not on a terminal)
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = seconds)]
    pub report_every: f64,

    /// Record every change request (its X-Request-Id, times, status and
    /// outcome: ok, failed or unknown) in FILE, one JSON object per line;
    /// with --verify, check that history against the final state
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

impl CheckHistoryArgs {
    pub fn options(&self) -> crate::load::CheckOptions {
        crate::load::CheckOptions {
            products_url: self.api.products_url.clone(),
            orders_url: self.api.orders_url.clone(),
            token: self.api.token.clone(),
            ca_file: self.api.ca_file.clone(),
            settle_timeout: std::time::Duration::from_secs_f64(self.settle_timeout),
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckHistoryArgs {
    /// The history file `ordersys load --history` wrote
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub api: ApiArgs,

    /// How long to wait for the pipeline to settle (no line EN_ATTENTE, no
    /// validation EN_COURS, every change applied), in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, value_parser = seconds)]
    pub settle_timeout: f64,
}

fn number_in(text: &str, min: f64, max: f64) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= min && v <= max => Ok(v),
        _ => Err(format!("{text:?} is not a number from {min} to {max}")),
    }
}

/// Requests per second: 0.01 to 1,000,000.
fn rate(text: &str) -> Result<f64, String> {
    number_in(text, 0.01, 1_000_000.0)
}

/// A duration in seconds: 0.01 s to 30 days.
fn seconds(text: &str) -> Result<f64, String> {
    number_in(text, 0.01, 2_592_000.0)
}

/// A share, 0 to 1.
fn share(text: &str) -> Result<f64, String> {
    number_in(text, 0.0, 1.0)
}

/// The token stays out of debug output.
impl std::fmt::Debug for ApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArgs")
            .field("products_url", &self.products_url)
            .field("orders_url", &self.orders_url)
            .field("ca_file", &self.ca_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for LoadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadArgs")
            .field("api", &self.api)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("concurrency", &self.concurrency)
            .field("verify", &self.verify)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl LoadArgs {
    pub fn options(&self) -> crate::load::Options {
        crate::load::Options {
            products_url: self.api.products_url.clone(),
            orders_url: self.api.orders_url.clone(),
            rate: self.rate,
            duration: std::time::Duration::from_secs_f64(self.duration),
            concurrency: self.concurrency as usize,
            mix: self.mix.clone(),
            products: self.products as usize,
            stock: self.stock,
            use_products: self.use_products.clone(),
            max_error_rate: self.max_error_rate,
            verify: self.verify,
            settle_timeout: std::time::Duration::from_secs_f64(self.settle_timeout),
            seed: self.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }),
            token: self.api.token.clone(),
            ca_file: self.api.ca_file.clone(),
            report_every: std::time::Duration::from_secs_f64(self.report_every),
            history: self.history.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The scopes it carries, comma-separated: products:read,
    /// products:write, stock:correct, orders:read, orders:write
    #[arg(long, value_name = "SCOPE[,SCOPE…]", value_parser = crate::auth::parse_scopes)]
    pub scope: std::vec::Vec<crate::auth::Scope>,

    /// How long it is valid, in seconds: at most auth.max_token_age_secs
    /// (default 86400), the oldest token the services accept
    #[arg(long, value_name = "SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,

    /// Its `sub` claim: who holds it (every access log line of its requests
    /// names it)
    #[arg(long, value_name = "NAME", default_value = "ordersys-token")]
    pub subject: String,

    /// Sign with this Ed25519 private key (PEM PKCS#8, as `openssl genpkey
    /// -algorithm ed25519` writes; EdDSA), for services that verify with its
    /// public key (auth.jwt_algorithm = EdDSA). Without it: HS256 with
    /// auth.jwt_secret_file
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8081 for orders, 127.0.0.1:8000 for
    /// products; in a container, 0.0.0.0:PORT]
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Competing consumers in this process, each with its own channel and
    /// database connection [default: worker.replicas]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub replicas: Option<u16>,

    /// Address of the health port (/healthz, /readyz, /startedz, /metrics)
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

    /// Address of the worker's health port (/healthz, /readyz, /startedz, /metrics)
    #[arg(long, value_name = "ADDR", default_value = Command::WORKER_BIND)]
    pub worker_bind: SocketAddr,

    /// Competing stock consumers [default: worker.replicas]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub replicas: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET, e.g. http://127.0.0.1:8081/readyz [default: /startedz on
    /// the first of the default ports 8081, 8000, 8082 that answers 2xx]
    #[arg(value_name = "URL", env = "ORDERSYS_PROBE_URL")]
    pub url: Option<String>,
}

/// Loopback by default: the default `auth.mode` is open, and an open API
/// refuses a network address unless `http.allow_open_on_network` is set.
/// Containers pass `--bind 0.0.0.0:PORT`.
impl Command {
    pub const ORDERS_BIND: &'static str = "127.0.0.1:8081";
    pub const PRODUCTS_BIND: &'static str = "127.0.0.1:8000";
    pub const WORKER_BIND: &'static str = "127.0.0.1:8082";
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
    fn load_flags_are_bounded() {
        let cli = Cli::parse_from(["ordersys", "load", "--rate", "50", "--mix", "read_order=1"]);
        let Command::Load(load) = cli.command else {
            panic!("load parses")
        };
        assert_eq!(
            (load.rate, load.duration, load.concurrency),
            (50.0, 30.0, 256)
        );
        for bad in [
            ["--rate", "0"],
            ["--rate", "1e30"],
            ["--duration", "NaN"],
            ["--settle-timeout", "1e30"],
            ["--max-error-rate", "2"],
            ["--max-error-rate", "-0.1"],
            ["--concurrency", "0"],
            ["--mix", "sell=1"],
        ] {
            let args = ["ordersys", "load", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
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
