//! `cargo bench`: how fast ordersys is, next to its own ceilings.
//!
//! Builds ordersys in release mode (cargo does, for benches), starts
//! `products`, `orders` and `worker` as separate processes against the local
//! PostgreSQL and RabbitMQ on a fresh database and vhost, and measures from
//! this process (the load generator, a small HTTP/1.1 client on tokio):
//!
//! 1. HTTP: GET /produits/{id}, GET /commandes/{id}, POST /commandes-produits
//!    (requests/s, p50/p99 at a fixed concurrency);
//! 2. the pipeline: order-line changes per second from HTTP to RESERVE,
//!    sustained, and end-to-end latency at half that rate (database
//!    timestamps: accepted by the API → applied by the worker);
//! 3. the worker alone, draining a pre-filled product_queue;
//! 4. the ceilings: /healthz on the same server, a bare amiquip
//!    publish-with-confirms + consume-with-ack loop, a bare single-row
//!    UPDATE loop;
//! 5. the peak RSS of each ordersys process.
//!
//! Then it checks the stock invariant, prints one table and writes it, with
//! the machine's description, to docs/benchmarks.md.
//!
//! `cargo bench -- --smoke` runs every step for a second or so (CI does, so
//! the harness cannot rot) and writes nothing.

#[path = "../tests/it/common/broker.rs"]
#[allow(dead_code)]
mod broker;
#[path = "../tests/it/common/db.rs"]
#[allow(dead_code)]
mod db;

use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions, Publish, QueueDeclareOptions};
use broker::TestBroker;
use db::TestDb;
use diesel::prelude::*;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long and how hard each step runs.
#[derive(Clone, Copy)]
struct Plan {
    smoke: bool,
    http_secs: f64,
    concurrency: usize,
    pipeline_secs: f64,
    worker_messages: usize,
    broker_messages: usize,
    db_updates: usize,
}

impl Plan {
    fn full() -> Self {
        Plan {
            smoke: false,
            http_secs: 10.0,
            concurrency: 64,
            pipeline_secs: 20.0,
            worker_messages: 100_000,
            broker_messages: 100_000,
            db_updates: 20_000,
        }
    }

    fn smoke() -> Self {
        Plan {
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

/// A smoke-mode size from the environment, for experiments without a full run.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// A small HTTP/1.1 keep-alive client: the load generator.
// ---------------------------------------------------------------------------

struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole answer: (status, body).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(body) = body {
            let _ = write!(
                request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        } else {
            request.push_str("\r\n");
        }
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

#[derive(Default)]
struct LoadResult {
    ok: u64,
    errors: u64,
    elapsed: f64,
    latencies_us: Vec<u32>,
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies_us, p) / 1000.0
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64
}

/// `concurrency` connections, each sending requests back to back for
/// `secs`; `request(task, n)` gives (method, path, body).
async fn closed_loop<F>(addr: SocketAddr, concurrency: usize, secs: f64, request: F) -> LoadResult
where
    F: Fn(usize, u64) -> (&'static str, String, Option<String>) + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut conn = match Conn::open(addr).await {
                Ok(c) => c,
                Err(_) => {
                    result.errors += 1;
                    return result;
                }
            };
            let mut n = 0u64;
            while Instant::now() < deadline {
                let (method, path, body) = request(task, n);
                n += 1;
                let sent = Instant::now();
                match conn.send(method, &path, body.as_deref()).await {
                    Ok((status, _)) if status < 300 => {
                        result.ok += 1;
                        result
                            .latencies_us
                            .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Ok(_) => result.errors += 1,
                    Err(_) => {
                        result.errors += 1;
                        match Conn::open(addr).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            result
        }));
    }
    gather(tasks, started).await
}

/// Sends requests at a fixed overall `rate` (open loop) for `secs`.
async fn open_loop<F>(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    secs: f64,
    request: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> (&'static str, String, Option<String>) + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = LoadResult::default();
            let Ok(mut conn) = Conn::open(addr).await else {
                result.errors += 1;
                return result;
            };
            let offset = period.mul_f64(task as f64 / connections as f64);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0;
            loop {
                ticks.tick().await;
                if Instant::now() >= deadline {
                    break;
                }
                let (method, path, body) = request(task, n);
                n += 1;
                let sent = Instant::now();
                match conn.send(method, &path, body.as_deref()).await {
                    Ok((status, _)) if status < 300 => {
                        result.ok += 1;
                        result.latencies_us.push(sent.elapsed().as_micros() as u32);
                    }
                    _ => result.errors += 1,
                }
            }
            result
        }));
    }
    gather(tasks, started).await
}

/// Sums the clients' results.
async fn gather(tasks: Vec<tokio::task::JoinHandle<LoadResult>>, started: Instant) -> LoadResult {
    let mut total = LoadResult::default();
    for task in tasks {
        let r = task.await.expect("load task");
        total.ok += r.ok;
        total.errors += r.errors;
        total.latencies_us.extend(r.latencies_us);
    }
    total.elapsed = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

/// `GET {prefix}{id}` for the `ids` in turn, at the plan's concurrency.
async fn get_each(addr: SocketAddr, plan: &Plan, prefix: &'static str, ids: &[i64]) -> LoadResult {
    let ids = ids.to_vec();
    closed_loop(addr, plan.concurrency, plan.http_secs, move |t, n| {
        let id = ids[(t * 7 + n as usize) % ids.len()];
        ("GET", format!("{prefix}{id}"), None)
    })
    .await
}

// ---------------------------------------------------------------------------
// The processes under test.
// ---------------------------------------------------------------------------

struct Service {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Service {
    fn start(
        name: &'static str,
        args: &[&str],
        db: &TestDb,
        broker: &TestBroker,
        env: &[(&str, String)],
    ) -> Service {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ordersys"))
            .args(args)
            .args(["--bind", &addr.to_string()])
            .env("DATABASE_URL", &db.url)
            .env("AMQP_URL", &broker.url)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .expect("start ordersys");
        Service { name, child, addr }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut conn) = Conn::open(self.addr).await {
                if let Ok((200, _)) = conn.send("GET", "/readyz", None).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory (VmHWM) so far, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time used so far, per party: each ordersys process, PostgreSQL (all
/// its processes), RabbitMQ (the Erlang VM), this load generator.
struct CpuSample(Vec<(String, f64)>);

impl CpuSample {
    fn take(services: &[(&str, u32)]) -> CpuSample {
        let ticks: f64 = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        let mut parties: Vec<(String, f64)> = services
            .iter()
            .map(|(name, _)| (name.to_string(), 0.0))
            .chain(
                ["postgres", "rabbitmq", "load generator", "other"].map(|n| (n.to_string(), 0.0)),
            )
            .collect();
        let me = std::process::id();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid …": after the comm, utime is the 12th field.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let used = fields
                .get(11)
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0)
                + fields
                    .get(12)
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0);
            let party = if let Some((name, _)) = services.iter().find(|(_, p)| *p == pid) {
                name.to_string()
            } else if pid == me {
                "load generator".into()
            } else if comm == "postgres" {
                "postgres".into()
            } else if comm.starts_with("beam") || comm == "epmd" || comm == "erl_child_setup" {
                "rabbitmq".into()
            } else {
                "other".into()
            };
            if let Some(slot) = parties.iter_mut().find(|(n, _)| *n == party) {
                slot.1 += used / ticks;
            }
        }
        CpuSample(parties)
    }

    /// Shares of one core between `earlier` and this sample, over `secs`.
    fn since(&self, earlier: &CpuSample, secs: f64) -> String {
        self.0
            .iter()
            .zip(&earlier.0)
            .map(|((name, now), (_, then))| format!("{name} {:.0}%", (now - then) / secs * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------
// The report.
// ---------------------------------------------------------------------------

struct Row {
    figure: String,
    value: String,
    ceiling: String,
    ratio: String,
    target: String,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    fn add(
        &mut self,
        figure: &str,
        value: String,
        ceiling: Option<(f64, &str)>,
        of: f64,
        target: &str,
    ) {
        let (ceiling, ratio) = match ceiling {
            Some((c, unit)) if c.is_finite() && c > 0.0 => {
                (format!("{c:.0} {unit}"), format!("{:.0}%", 100.0 * of / c))
            }
            _ => ("—".into(), "—".into()),
        };
        self.rows.push(Row {
            figure: figure.into(),
            value,
            ceiling,
            ratio,
            target: target.into(),
        });
    }

    fn table(&self) -> String {
        let mut out =
            String::from("| figure | value | ceiling | ratio | target |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.figure, r.value, r.ceiling, r.ratio, r.target
            );
        }
        out
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    let version = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "{cores} cores ({cpu}), {memory} RAM; {}; RabbitMQ {}; rustc {}; PostgreSQL, RabbitMQ, the three ordersys \
         processes and the load generator all share the machine",
        version("psql", &["--version"]),
        version("rabbitmqctl", &["version"]),
        version("rustc", &["--version"]).trim_start_matches("rustc "),
    )
}

// ---------------------------------------------------------------------------
// The steps.
// ---------------------------------------------------------------------------

/// Creates `n` products named `{prefix}-{i}`; returns their ids.
async fn create_products(
    conn: &mut Conn,
    prefix: &str,
    n: usize,
    prix: Value,
    stock: i64,
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body =
            json!({"nom": format!("{prefix}-{i}"), "prix": prix, "quantite_en_stock": stock});
        ids.push(
            post_json(conn, "/produits/", body).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    ids
}

async fn post_json(conn: &mut Conn, path: &str, body: Value) -> Value {
    let (status, bytes) = conn
        .send("POST", path, Some(&body.to_string()))
        .await
        .expect("request");
    assert!(
        status < 300,
        "POST {path} answered {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).expect("JSON answer")
}

fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .map(|r| r.n)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn seconds(conn: &mut PgConnection, sql: &str) -> f64 {
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        s: Option<f64>,
    }
    diesel::sql_query(sql)
        .get_result::<S>(conn)
        .map(|r| r.s.unwrap_or(f64::NAN))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Waits until `check` is true; returns the time it took.
async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        // The checks are counts over growing tables: polled more often, they
        // would take a visible share of the database from what is measured.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// Waits until no order line waits for the worker.
async fn until_applied(pg: &mut PgConnection, what: &str, timeout: Duration) -> Duration {
    until(what, timeout, || {
        count(
            pg,
            "SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = 'EN_ATTENTE'",
        ) == 0
    })
    .await
}

/// The broker's own ceiling: publish `n` persistent messages with confirms
/// in windows of 100, then consume them with acks (every 100, `multiple`).
fn broker_ceiling(broker: &TestBroker, n: usize) -> (f64, f64) {
    let mut connection = broker.connect();
    let channel = connection.open_channel(None).unwrap();
    let queue = "bench.ceiling";
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        )
        .unwrap();
    let confirms = channel.listen_for_publisher_confirms().unwrap();
    channel.enable_publisher_confirms().unwrap();
    let body = br#"{"action":"CREATED","produit_id":1,"quantite":1,"commande_id":1}"#;
    let started = Instant::now();
    let mut smoother = amiquip::ConfirmSmoother::new();
    let mut confirmed = 0;
    for i in 0..n {
        let properties = AmqpProperties::default().with_delivery_mode(2);
        channel
            .basic_publish("", Publish::with_properties(body, queue, properties))
            .unwrap();
        if (i + 1) % 100 == 0 || i + 1 == n {
            while confirmed < i + 1 {
                for _ in smoother.process(confirms.recv().unwrap()) {
                    confirmed += 1;
                }
            }
        }
    }
    let publish_rate = n as f64 / started.elapsed().as_secs_f64();
    channel.qos(0, 500, false).unwrap();
    let consumer = channel
        .basic_consume(queue, ConsumerOptions::default())
        .unwrap();
    let started = Instant::now();
    let mut received = 0;
    for message in consumer.receiver().iter() {
        if let ConsumerMessage::Delivery(delivery) = message {
            received += 1;
            if received % 100 == 0 || received == n {
                consumer.ack_multiple(delivery).unwrap();
            }
            if received == n {
                break;
            }
        }
    }
    let consume_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(consumer);
    let _ = channel.close();
    let _ = connection.close();
    (publish_rate, consume_rate)
}

/// The database's ceiling: single-row UPDATEs, one after the other, autocommit.
fn database_ceiling(db: &TestDb, n: usize) -> f64 {
    let mut conn = db.conn();
    diesel::sql_query("CREATE TABLE bench_ceiling (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .execute(&mut conn)
        .unwrap();
    diesel::sql_query("INSERT INTO bench_ceiling VALUES (1, 0)")
        .execute(&mut conn)
        .unwrap();
    let started = Instant::now();
    for _ in 0..n {
        diesel::sql_query("UPDATE bench_ceiling SET n = n + 1 WHERE id = 1")
            .execute(&mut conn)
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Pre-fills product_queue with `n` tracked CREATED messages for lines that
/// exist only in the messages, on `products`; returns the units reserved
/// per product.
fn prefill(broker: &TestBroker, products: &[i64], n: usize) -> std::collections::HashMap<i64, i64> {
    let mut reserved = std::collections::HashMap::new();
    let mut connection = broker.connect();
    let channel = connection.open_channel(None).unwrap();
    ordersys::amqp::declare_topology(&channel).unwrap();
    let mut publisher = ordersys::amqp::ConfirmingChannel::new(channel).unwrap();
    for i in 0..n {
        let product = products[i % products.len()];
        let message_id = uuid::Uuid::new_v4().to_string();
        let body = json!({"action": "CREATED", "produit_id": product, "quantite": 1, "commande_id": 1,
                          "message_id": message_id, "ligne_id": 10_000_000 + i as i64, "version": 1});
        publisher
            .publish(
                ordersys::messages::PRODUCT_EXCHANGE,
                ordersys::messages::PRODUCT_ROUTING_KEY,
                body.to_string().as_bytes(),
                ordersys::amqp::properties(&message_id),
            )
            .unwrap();
        *reserved.entry(product).or_insert(0) += 1;
        if (i + 1) % 500 == 0 {
            publisher
                .wait_for_confirms(Duration::from_secs(60))
                .unwrap();
        }
    }
    publisher
        .wait_for_confirms(Duration::from_secs(60))
        .unwrap();
    publisher.close();
    let _ = connection.close();
    reserved
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    let db = TestDb::empty();
    let broker = TestBroker::create();
    let mut pg = db.conn();
    let mut report = Report::default();
    eprintln!(
        "benchmarking ordersys ({}) …",
        if smoke { "smoke mode" } else { "full run" }
    );

    let products = Service::start("products", &["products"], &db, &broker, &[]);
    products.wait_ready().await;
    let orders = Service::start("orders", &["orders"], &db, &broker, &[]);
    orders.wait_ready().await;

    // Catalog: stock large enough never to reject.
    const STOCK: i64 = 1_000_000_000;
    let mut conn = Conn::open(products.addr).await.unwrap();
    let catalog = create_products(&mut conn, "bench", 50, json!(9.99), STOCK).await;
    let worker_catalog = create_products(&mut conn, "queue", 20, json!(1), STOCK).await;
    // Orders with a few lines each, for GET /commandes/{id}.
    let mut oconn = Conn::open(orders.addr).await.unwrap();
    let mut sample_orders = Vec::new();
    for i in 0..100 {
        let o = post_json(&mut oconn, "/commandes", json!({})).await;
        let id = o["id"].as_i64().unwrap();
        for k in 0..3 {
            post_json(
                &mut oconn,
                "/commandes-produits",
                json!({"commande_id": id, "produit_id": catalog[(i * 3 + k) % catalog.len()], "quantite": 1}),
            )
            .await;
        }
        sample_orders.push(id);
    }

    // 4a. The HTTP ceiling, and 1. the HTTP figures.
    let c = plan.concurrency;
    let healthz = closed_loop(products.addr, c, plan.http_secs, |_, _| {
        ("GET", "/healthz".into(), None)
    })
    .await;
    let get_product = get_each(products.addr, &plan, "/produits/", &catalog).await;
    let orders_healthz = closed_loop(orders.addr, c, plan.http_secs, |_, _| {
        ("GET", "/healthz".into(), None)
    })
    .await;
    let get_order = get_each(orders.addr, &plan, "/commandes/", &sample_orders).await;

    // The worker joins now; lines created from here on are reserved.
    let worker = Service::start("worker", &["worker"], &db, &broker, &[]);
    worker.wait_ready().await;
    until_applied(
        &mut pg,
        "sample lines to be reserved",
        Duration::from_secs(120),
    )
    .await;

    // A new connection: the server closes keep-alive connections idle for 5 s.
    let mut oconn = Conn::open(orders.addr).await.unwrap();
    let mut bench_orders = Vec::new();
    for _ in 0..c {
        bench_orders.push(
            post_json(&mut oconn, "/commandes", json!({})).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let post_line = {
        let (orders_ids, products_ids) = (bench_orders.clone(), catalog.clone());
        closed_loop(orders.addr, c, plan.http_secs, move |t, n| {
            let body = json!({"commande_id": orders_ids[t], "produit_id": products_ids[(t + n as usize) % products_ids.len()], "quantite": 1});
            ("POST", "/commandes-produits".into(), Some(body.to_string()))
        })
        .await
    };
    for (name, r, ceiling) in [
        ("GET /produits/{id}", &get_product, &healthz),
        ("GET /commandes/{id}", &get_order, &orders_healthz),
        ("POST /commandes-produits", &post_line, &orders_healthz),
    ] {
        let target = if name == "GET /produits/{id}" {
            format!(
                "≥ 40% of /healthz: {}",
                verdict(r.rate() >= 0.4 * ceiling.rate())
            )
        } else {
            String::new()
        };
        report.add(
            &format!("{name} (c={c})"),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                r.rate(),
                r.percentile_ms(50.0),
                r.percentile_ms(99.0),
                r.errors
            ),
            Some((ceiling.rate(), "req/s (/healthz)")),
            r.rate(),
            &target,
        );
    }
    report.add(
        "GET /healthz, products (HTTP ceiling)",
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            healthz.rate(),
            healthz.percentile_ms(50.0),
            healthz.percentile_ms(99.0)
        ),
        None,
        0.0,
        "",
    );
    report.add(
        "GET /healthz, orders (HTTP ceiling)",
        format!("{:.0} req/s", orders_healthz.rate()),
        None,
        0.0,
        "",
    );

    // 2. The pipeline, saturated: line creations from HTTP to RESERVE.
    until_applied(
        &mut pg,
        "earlier lines to be reserved",
        Duration::from_secs(300),
    )
    .await;
    let before = count(&mut pg, "SELECT count(*) AS n FROM outbox");
    let pids = [
        ("orders", &orders),
        ("worker", &worker),
        ("products", &products),
    ]
    .map(|(name, service)| (name, service.child.id()));
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let saturated = {
        let (orders_ids, products_ids) = (bench_orders.clone(), catalog.clone());
        closed_loop(orders.addr, c, plan.pipeline_secs, move |t, n| {
            let body = json!({"commande_id": orders_ids[t], "produit_id": products_ids[(t * 13 + n as usize) % products_ids.len()], "quantite": 1 + (n % 3)});
            ("POST", "/commandes-produits".into(), Some(body.to_string()))
        })
        .await
    };
    let drained = until_applied(
        &mut pg,
        "the pipeline to apply every change",
        Duration::from_secs(600),
    )
    .await;
    let total = started.elapsed().as_secs_f64();
    let cpu = CpuSample::take(&pids).since(&cpu_before, total);
    let changes = count(&mut pg, "SELECT count(*) AS n FROM outbox") - before;
    let pipeline_rate = changes as f64 / total;
    report.add(
        &format!("pipeline: line changes HTTP → RESERVE, {:.0} s sustained", plan.pipeline_secs),
        format!(
            "{pipeline_rate:.0} changes/s ({changes} changes; HTTP accepted {:.0}/s; last applied {:.2} s after the load stopped)",
            saturated.rate(),
            drained.as_secs_f64()
        ),
        Some((post_line.rate(), "req/s (POST alone)")),
        pipeline_rate,
        &format!("≥ 3000/s: {}", verdict(pipeline_rate >= 3000.0)),
    );
    report.add(
        "CPU during the pipeline step (% of one core; the machine has 2)",
        cpu,
        None,
        0.0,
        "",
    );

    // 2b. End-to-end latency at half that rate.
    let half = (pipeline_rate / 2.0).max(10.0);
    let window_start = count(
        &mut pg,
        "SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint AS n",
    );
    let paced = {
        let (orders_ids, products_ids) = (bench_orders.clone(), catalog.clone());
        open_loop(orders.addr, c.min(32), half, plan.pipeline_secs, move |t, n| {
            let body = json!({"commande_id": orders_ids[t], "produit_id": products_ids[(t * 17 + n as usize) % products_ids.len()], "quantite": 1});
            ("POST", "/commandes-produits".into(), Some(body.to_string()))
        })
        .await
    };
    until_applied(
        &mut pg,
        "paced changes to be applied",
        Duration::from_secs(300),
    )
    .await;
    let latency = |p: f64, pg: &mut PgConnection| {
        seconds(
            pg,
            &format!(
                "SELECT (percentile_cont({p}) WITHIN GROUP (ORDER BY extract(epoch from applique_le - occurred_at)))::float8 AS s \
                 FROM mouvements WHERE occurred_at >= to_timestamp({window_start} / 1000000.0)"
            ),
        ) * 1000.0
    };
    let (p50, p99) = (latency(0.5, &mut pg), latency(0.99, &mut pg));
    report.add(
        &format!("pipeline latency at {half:.0} changes/s (half), accepted → applied"),
        format!(
            "p50 {p50:.1} ms, p99 {p99:.1} ms ({} requests, HTTP p99 {:.2} ms)",
            paced.ok,
            paced.percentile_ms(99.0)
        ),
        None,
        0.0,
        &format!("p99 ≤ 100 ms: {}", verdict(p99 <= 100.0)),
    );
    // Where that time goes, from the timestamps each step leaves: the line's
    // change (occurred_at, before commit), the relay claiming its outbox row
    // (sent_at is the claiming transaction's start), the worker's batch
    // transaction starting (traite_le) and the movement being written
    // (applique_le, just before that batch commits).
    let stage = |p: f64, from: &str, to: &str, pg: &mut PgConnection| {
        seconds(
            pg,
            &format!(
                "SELECT (percentile_cont({p}) WITHIN GROUP (ORDER BY extract(epoch from {to} - {from})))::float8 AS s \
                 FROM mouvements m JOIN outbox o USING (message_id) JOIN messages_traites t USING (message_id) \
                 WHERE m.occurred_at >= to_timestamp({window_start} / 1000000.0)"
            ),
        ) * 1000.0
    };
    let stages = [
        ("change → relay claim", "m.occurred_at", "o.sent_at"),
        ("claim → worker batch", "o.sent_at", "t.traite_le"),
        ("batch → applied", "t.traite_le", "m.applique_le"),
    ]
    .map(|(name, from, to)| {
        format!(
            "{name} p50 {:.1} / p99 {:.1} ms",
            stage(0.5, from, to, &mut pg),
            stage(0.99, from, to, &mut pg)
        )
    });
    report.add(
        "pipeline latency by stage (same window)",
        stages.join("; "),
        None,
        0.0,
        "",
    );

    // 3. The worker alone, draining a pre-filled queue.
    worker.stop();
    let reserved = prefill(&broker, &worker_catalog, plan.worker_messages);
    let processed_before = count(&mut pg, "SELECT count(*) AS n FROM messages_traites");
    let worker = Service::start("worker", &["worker"], &db, &broker, &[]);
    let pids = [("worker", worker.child.id())];
    // The clock starts when the worker is ready (its start-up is not
    // consumption); what it applied before that is not counted.
    worker.wait_ready().await;
    let cpu_before = CpuSample::take(&pids);
    let started = Instant::now();
    let at_start = count(&mut pg, "SELECT count(*) AS n FROM messages_traites");
    let target = processed_before + plan.worker_messages as i64;
    until(
        "the worker to drain the queue",
        Duration::from_secs(600),
        || count(&mut pg, "SELECT count(*) AS n FROM messages_traites") >= target,
    )
    .await;
    let worker_secs = started.elapsed().as_secs_f64();
    let worker_rate = (target - at_start) as f64 / worker_secs;
    let worker_cpu = CpuSample::take(&pids).since(&cpu_before, worker_secs);

    // 4b, 4c. The broker's and the database's ceilings.
    let (publish_ceiling, consume_ceiling) =
        tokio::task::block_in_place(|| broker_ceiling(&broker, plan.broker_messages));
    let db_ceiling = tokio::task::block_in_place(|| database_ceiling(&db, plan.db_updates));
    report.add(
        &format!(
            "worker alone: drain {} queued messages, exactly once",
            plan.worker_messages
        ),
        format!("{worker_rate:.0} msg/s"),
        Some((consume_ceiling, "msg/s (bare consume+ack)")),
        worker_rate,
        &format!("≥ 10000 msg/s: {}", verdict(worker_rate >= 10_000.0)),
    );
    report.add(
        "CPU while the worker drains (% of one core; the machine has 2)",
        worker_cpu,
        None,
        0.0,
        "",
    );
    report.add(
        "broker ceiling: amiquip publish with confirms (windows of 100)",
        format!("{publish_ceiling:.0} msg/s"),
        None,
        0.0,
        "",
    );
    report.add(
        "broker ceiling: amiquip consume with acks",
        format!("{consume_ceiling:.0} msg/s"),
        None,
        0.0,
        "",
    );
    report.add(
        "database ceiling: single-row UPDATE loop, autocommit",
        format!("{db_ceiling:.0} updates/s"),
        None,
        0.0,
        "",
    );

    // 5. Peak memory.
    for service in [&products, &orders, &worker] {
        let rss = service.peak_rss_mib();
        report.add(
            &format!("peak RSS, ordersys {}", service.name),
            format!("{rss:.1} MiB"),
            None,
            0.0,
            &format!("≤ 64 MiB: {}", verdict(rss <= 64.0)),
        );
    }

    // The invariant, after everything: no lost or doubled change.
    let reserved_lines = count(
        &mut pg,
        "SELECT count(*) AS n FROM produits p WHERE p.quantite_en_stock <> 1000000000 - coalesce((SELECT sum(l.quantite) \
         FROM commandes_produits l WHERE l.produit_id = p.id AND l.statut_stock = 'RESERVE'), 0) \
         - coalesce((SELECT sum(r.quantite) FROM reservations r WHERE r.produit_id = p.id AND r.ligne_id >= 10000000), 0)",
    );
    let waiting = count(
        &mut pg,
        "SELECT count(*) AS n FROM commandes_produits WHERE statut_stock <> 'RESERVE'",
    );
    let queued_units: i64 = reserved.values().sum();
    let applied_units = count(&mut pg, "SELECT coalesce(sum(quantite), 0)::bigint AS n FROM reservations WHERE ligne_id >= 10000000");
    let invariant = reserved_lines == 0 && waiting == 0 && queued_units == applied_units;
    report.notes.push(format!(
        "Stock invariant after the run: {} ({} products checked; {} lines not RESERVE; {} of {} queued units applied).",
        if invariant { "holds" } else { "VIOLATED" },
        catalog.len() + worker_catalog.len(),
        waiting,
        applied_units,
        queued_units
    ));

    worker.stop();
    orders.stop();
    products.stop();

    let table = report.table();
    println!("\n{table}");
    for note in &report.notes {
        println!("{note}");
    }
    assert!(
        invariant,
        "the stock invariant does not hold after the benchmark"
    );
    if !plan.smoke {
        let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
        let doc = format!(
            "# ordersys benchmarks\n\nProduced by `cargo bench --bench ordersys` on {now}; overwritten by each full run. \
             What bounds each figure and what would move it: [performance.md](performance.md).\n\nMachine: {}.\n\n{table}\n{}\n",
            machine(),
            report.notes.join("\n")
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/docs"))
            .expect("create docs/");
        std::fs::write(path, doc).expect("write docs/benchmarks.md");
        eprintln!("wrote {path}");
    }
}
