//! How long and how hard each step runs, and the targets the figures are
//! held to.

/// Stock of every benchmark product: large enough never to reject a line.
pub const STOCK: i64 = 1_000_000_000;
/// Products the HTTP and pipeline steps use.
pub const CATALOG: usize = 50;
/// Products the worker-alone step's messages reserve.
pub const WORKER_CATALOG: usize = 20;
/// Orders read by `GET /commandes/{id}`, each with this many lines.
pub const SAMPLE_ORDERS: usize = 100;
pub const LINES_PER_ORDER: usize = 3;
/// Stock partitions of the orders and worker processes
/// (`amqp.stock_partitions`); `ORDERSYS_BENCH_STOCK_PARTITIONS` overrides
/// it (0: `product_queue` alone, as before partitions existed).
pub fn stock_partitions() -> u16 {
    env_or("ORDERSYS_BENCH_STOCK_PARTITIONS", 8)
}

/// Connections of the paced (open-loop) latency step, at most.
pub const PACED_CONNECTIONS: usize = 32;

/// The targets, as the benchmark's table states them.
pub mod target {
    /// `GET /produits/{id}` against the same server's `/healthz`.
    pub const READ_SHARE_OF_HEALTHZ: f64 = 0.4;
    /// Line changes per second from HTTP to `RESERVE`, sustained.
    pub const PIPELINE_RATE: f64 = 3000.0;
    /// Change-to-applied p99 at half the sustained rate, in milliseconds.
    pub const PIPELINE_P99_MS: f64 = 100.0;
    /// The worker alone, messages per second, exactly once.
    pub const WORKER_RATE: f64 = 10_000.0;
    /// Peak resident memory of each process, MiB.
    pub const PEAK_RSS_MIB: f64 = 64.0;
}

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub smoke: bool,
    pub http_secs: f64,
    pub concurrency: usize,
    pub pipeline_secs: f64,
    pub worker_messages: usize,
    pub broker_messages: usize,
    pub db_updates: usize,
}

/// Connections of the request path's database ceiling (the orders
/// service's pool holds up to 10).
pub const LINE_WRITERS: usize = 8;

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            smoke: false,
            http_secs: 10.0,
            concurrency: 64,
            pipeline_secs: 20.0,
            worker_messages: 100_000,
            broker_messages: 100_000,
            db_updates: 20_000,
        }
    }

    /// A second or so per step (CI), each size overridable for experiments.
    pub fn smoke() -> Self {
        Sizes {
            smoke: true,
            http_secs: env_or("ORDERSYS_BENCH_SMOKE_HTTP_SECS", 1.0),
            concurrency: env_or("ORDERSYS_BENCH_SMOKE_CONCURRENCY", 8),
            pipeline_secs: env_or("ORDERSYS_BENCH_SMOKE_PIPELINE_SECS", 2.0),
            worker_messages: env_or("ORDERSYS_BENCH_SMOKE_MESSAGES", 2_000),
            broker_messages: 2_000,
            db_updates: 500,
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
