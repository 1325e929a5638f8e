//! `ordersys load`: a steady, open-loop load on a running ordersys — local,
//! compose or Swarm — with a live view and a closing summary.
//!
//! - **Open loop.** Request n is due at `start + n / rate`, whether or not
//!   earlier ones have answered; its latency is measured from that time, so
//!   a slow server cannot hide its delays (no coordinated omission). When
//!   `concurrency` requests are already in flight a due request is not
//!   sent, and counted (`over_cap`), never silently absorbed.
//! - **Its own data.** It creates its products (or uses the ones given) and
//!   only ever touches them and the orders and lines it created, so it is
//!   safe against a system holding other data.
//! - **`--verify`.** Afterwards it waits until none of its lines is
//!   `EN_ATTENTE`, then checks the stock invariant for its products:
//!   stock = initial − Σ quantite of their `RESERVE` lines.
//! - **HTTPS.** `https://` URLs are verified against the system's roots and
//!   `--ca-file`'s certificates (an edge proxy's own CA). A request that gets
//!   no answer (refused, reset, a certificate refused) counts as status 0;
//!   the first one's cause is printed once, so that a run of `no-answer`s
//!   says why.

mod ca;
pub mod http;
pub mod mix;
mod pool;
pub mod schedule;
pub mod stats;
mod verify;

use anyhow::Context;
use mix::{Mix, Op, Rng};
use pool::{Pool, Prepared};
use reqwest::Method;
use serde_json::{json, Value};
use stats::Stats;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use verify::Verified;

/// What a run does (the command line's `ordersys load`). Not `Debug`: it
/// holds the token.
#[derive(Clone)]
pub struct Options {
    pub products_url: String,
    pub orders_url: String,
    /// Requests per second.
    pub rate: f64,
    pub duration: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
    pub mix: Mix,
    /// Products to create (when `use_products` is empty), each with `stock`.
    pub products: usize,
    pub stock: i32,
    /// Existing products to order instead (their stock is read at start).
    pub use_products: Vec<i64>,
    /// Exit non-zero above this share of errors (and requests not sent).
    pub max_error_rate: f64,
    pub verify: bool,
    pub settle_timeout: Duration,
    pub seed: u64,
    /// Sent as `Authorization: Bearer …` (deployments with `auth.mode = jwt`).
    pub token: Option<String>,
    /// A PEM file of CA certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How often the plain (non-terminal) view prints a line.
    pub report_every: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub stats: Stats,
    /// From the first due time to the last answer.
    pub elapsed: Duration,
    /// From the first due time to the last.
    pub span: Duration,
    pub verified: Option<Verified>,
    /// What the server holds of this run: orders and lines created.
    pub orders_created: Vec<i64>,
    pub lines_created: usize,
    /// Why the first request without an answer got none (its cause chain).
    pub no_answer: Option<String>,
}

impl Report {
    /// Whether the run passes: error rate within bounds, invariant held.
    pub fn passed(&self, options: &Options) -> bool {
        self.stats.error_rate() <= options.max_error_rate
            && self.verified.as_ref().is_none_or(|v| v.holds())
    }
}

/// The HTTP side: one client, both base URLs.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    products: String,
    orders: String,
    token: Option<String>,
    /// The cause of the first request that got no answer.
    no_answer: Arc<OnceLock<String>>,
}

impl Api {
    fn new(options: &Options) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(options.concurrency)
            // Below the servers' keep-alive (actix: 5 s), so that no request
            // goes out on a connection the server is closing.
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30));
        if let Some(path) = &options.ca_file {
            for certificate in ca::read(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(Api {
            http: builder.build()?,
            products: options.products_url.trim_end_matches('/').to_owned(),
            orders: options.orders_url.trim_end_matches('/').to_owned(),
            token: options.token.clone(),
            no_answer: Arc::default(),
        })
    }

    /// Why the first request without an answer got none, if one did.
    pub(crate) fn no_answer(&self) -> Option<&str> {
        self.no_answer.get().map(String::as_str)
    }

    /// Sends one request: the status (0 when no answer came) and the body.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let what = format!("{method} {url}");
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                (status, answer.json().await.unwrap_or(Value::Null))
            }
            Err(e) => {
                let _ = self.no_answer.set(format!("{what}: {}", causes(e)));
                (0, Value::Null)
            }
        }
    }

    pub(crate) fn product(&self, path: &str) -> String {
        format!("{}{path}", self.products)
    }

    pub(crate) fn order(&self, path: &str) -> String {
        format!("{}{path}", self.orders)
    }
}

/// Why a request got no answer: reqwest's words say only "error sending
/// request"; the cause (refused, reset, certificate verify failed) is
/// further down the chain. A cause already said (native-tls repeats
/// OpenSSL's) is left out.
fn causes(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut said = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        let words = e.to_string();
        if !said.contains(&words) {
            said = format!("{said}: {words}");
        }
        cause = e.source();
    }
    said
}

/// Runs the load; the live view goes to standard error.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    let api = Api::new(options)?;
    let products = setup(&api, options).await?;
    anyhow::ensure!(!products.is_empty(), "no product to order");
    eprintln!(
        "load: {} products, {:.1} req/s for {:.0}s, at most {} in flight, seed {}",
        products.len(),
        options.rate,
        options.duration.as_secs_f64(),
        options.concurrency,
        options.seed
    );
    let pool = Arc::new(Mutex::new(Pool::new(products.keys().copied().collect())));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let window = Arc::new(Mutex::new(Stats::default()));
    let view = View::new(options, &api);
    let mut rng = Rng::new(options.seed);
    let mut next_report = view.every;
    let ran = schedule::open_loop(
        options.rate,
        options.duration,
        options.concurrency,
        |_, due| {
            let op = options.mix.pick(rng.next_u64());
            let prepared = pool.lock().expect("pool").prepare(op, &mut rng);
            let (api, pool, stats, window) =
                (api.clone(), pool.clone(), stats.clone(), window.clone());
            async move {
                let (status, body) = send(&api, &prepared).await;
                let latency = due.elapsed();
                pool.lock().expect("pool").settle(&prepared, status, &body);
                stats
                    .lock()
                    .expect("stats")
                    .record(prepared.op, status, latency);
                window
                    .lock()
                    .expect("window")
                    .record(prepared.op, status, latency);
            }
        },
        |elapsed, so_far| {
            if elapsed >= next_report {
                next_report = elapsed + view.every;
                let last = std::mem::take(&mut *window.lock().expect("window"));
                view.tick(elapsed, so_far, &stats.lock().expect("stats"), &last);
            }
        },
    )
    .await;
    let elapsed = ran.elapsed;
    let span = ran.span;
    view.finish();
    let mut stats = stats.lock().expect("stats").clone();
    stats.over_cap = ran.over_cap;
    let (orders_created, lines_created) = {
        let pool = pool.lock().expect("pool");
        (pool.orders_created.clone(), pool.lines_created)
    };
    let verified = if options.verify {
        Some(
            verify::settle_and_check(&api, &products, &orders_created, options.settle_timeout)
                .await,
        )
    } else {
        None
    };
    Ok(Report {
        stats,
        elapsed,
        span,
        verified,
        orders_created,
        lines_created,
        no_answer: api.no_answer().map(str::to_owned),
    })
}

/// The products the run orders, with their stock at start.
async fn setup(
    api: &Api,
    options: &Options,
) -> anyhow::Result<std::collections::BTreeMap<i64, i64>> {
    let mut products = std::collections::BTreeMap::new();
    if options.use_products.is_empty() {
        let tag = format!("{:08x}", options.seed as u32);
        for i in 0..options.products {
            let body = json!({"nom": format!("load {tag} #{i}"), "prix": 1.25, "quantite_en_stock": options.stock});
            let (status, answer) = api
                .send(Method::POST, api.product("/produits/"), Some(body))
                .await;
            anyhow::ensure!(
                status == 201,
                "cannot create a product at {}: {}",
                api.product("/produits/"),
                match (status, api.no_answer()) {
                    (0, Some(why)) => format!("no answer: {why}"),
                    _ => format!("{status} {answer}"),
                }
            );
            let id = answer["id"]
                .as_i64()
                .context("the created product has no id")?;
            products.insert(id, i64::from(options.stock));
        }
    } else {
        for id in &options.use_products {
            let (status, answer) = api
                .send(Method::GET, api.product(&format!("/produits/{id}")), None)
                .await;
            anyhow::ensure!(
                status == 200,
                "product {id}: {}",
                match (status, api.no_answer()) {
                    (0, Some(why)) => format!("no answer: {why}"),
                    _ => format!("{status} {answer}"),
                }
            );
            let stock = answer["quantite_en_stock"]
                .as_i64()
                .context("a product has its stock")?;
            products.insert(*id, stock);
        }
    }
    Ok(products)
}

async fn send(api: &Api, prepared: &Prepared) -> (u16, Value) {
    let (method, url, body) = match prepared.op {
        Op::ReadProduct => (
            Method::GET,
            api.product(&format!("/produits/{}", prepared.product)),
            None,
        ),
        Op::ReadOrder => (
            Method::GET,
            api.order(&format!("/commandes/{}", prepared.order)),
            None,
        ),
        Op::CreateOrder => (Method::POST, api.order("/commandes"), Some(json!({}))),
        Op::CreateLine => (
            Method::POST,
            api.order("/commandes-produits"),
            Some(
                json!({"commande_id": prepared.order, "produit_id": prepared.product, "quantite": prepared.quantite}),
            ),
        ),
        Op::ChangeQuantity => (
            Method::PUT,
            api.order(&format!("/commandes-produits/{}", prepared.line)),
            Some(json!({"quantite": prepared.quantite})),
        ),
        Op::ChangeProduct => (
            Method::PUT,
            api.order(&format!("/commandes-produits/{}", prepared.line)),
            Some(json!({"produit_id": prepared.product})),
        ),
        Op::DeleteLine => (
            Method::DELETE,
            api.order(&format!("/commandes-produits/{}", prepared.line)),
            None,
        ),
        Op::CancelOrder => (
            Method::PUT,
            api.order(&format!("/commandes/{}", prepared.order)),
            Some(json!({"statut": "ANNULEE"})),
        ),
    };
    api.send(method, url, body).await
}

/// The live view: a progress bar on a terminal, else one plain line every
/// `report_every`; and, once, why requests get no answer.
struct View {
    bar: Option<indicatif::ProgressBar>,
    /// How often it shows: every second on a terminal, else `report_every`.
    every: Duration,
    no_answer: Arc<OnceLock<String>>,
    /// Whether the first no-answer's cause was shown.
    told: AtomicBool,
}

impl View {
    fn new(options: &Options, api: &Api) -> View {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(options.duration.as_secs().max(1));
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                    .expect("a valid template"),
            );
            bar
        });
        let every = match bar {
            Some(_) => Duration::from_secs(1),
            None => options.report_every,
        };
        View {
            bar,
            every,
            no_answer: api.no_answer.clone(),
            told: AtomicBool::new(false),
        }
    }

    fn tick(&self, elapsed: Duration, so_far: &schedule::Ran, total: &Stats, window: &Stats) {
        self.tell_no_answer();
        let line = stats::progress_line(elapsed, so_far.sent, so_far.over_cap, total, window);
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_secs());
                bar.set_message(line);
            }
            None => eprintln!("load: {line}"),
        }
    }

    /// Prints the first no-answer's cause, once.
    fn tell_no_answer(&self) {
        let Some(why) = self.no_answer.get() else {
            return;
        };
        if self.told.swap(true, Ordering::Relaxed) {
            return;
        }
        let line = format!("load: no answer (counted as status 0): {why}");
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        self.tell_no_answer();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
