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
//! - **`--history FILE`.** Every change request is recorded with its own
//!   `X-Request-Id`, its times and its outcome (ok, failed, unknown); with
//!   `--verify`, the history is then checked against the final state
//!   ([`check`]: nothing acknowledged lost, nothing applied twice, nothing
//!   refused applied, every validation decided). `ordersys check-history`
//!   checks a file later.
//! - **HTTPS.** `https://` URLs are verified against the system's roots and
//!   `--ca-file`'s certificates (an edge proxy's own CA). A request that gets
//!   no answer (refused, reset, a certificate refused) counts as status 0;
//!   the first one's cause is printed once, so that a run of `no-answer`s
//!   says why.

mod audit;
mod ca;
pub mod check;
pub mod history;
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
use std::time::{Duration, Instant};

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
    /// Where to record every change request and its outcome.
    pub history: Option<PathBuf>,
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
    /// With `--history` and `--verify`: the history checked.
    pub checked: Option<Checked>,
}

/// A history checked against the final state (or why it could not be).
#[derive(Debug)]
pub struct Checked {
    pub findings: Result<check::Findings, String>,
    pub settled_in: Duration,
}

impl Checked {
    pub fn holds(&self) -> bool {
        self.findings.as_ref().is_ok_and(check::Findings::holds)
    }

    pub fn describe(&self) -> String {
        match &self.findings {
            Ok(findings) => format!(
                "{} (settled in {:.1}s)",
                findings.describe(),
                self.settled_in.as_secs_f64()
            ),
            Err(why) => format!(
                "history: FAILED: the state could not be read in {:.1}s: {why}",
                self.settled_in.as_secs_f64()
            ),
        }
    }
}

impl Report {
    /// Whether the run passes: error rate within bounds, invariant held.
    pub fn passed(&self, options: &Options) -> bool {
        self.stats.error_rate() <= options.max_error_rate
            && self.verified.as_ref().is_none_or(|v| v.holds())
            && self.checked.as_ref().is_none_or(Checked::holds)
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

/// How long [`Api::read`] waits out a rate limit before it gives the 429.
const READ_PATIENCE: Duration = Duration::from_secs(60);

/// Where `ordersys check-history` finds the system.
#[derive(Clone)]
pub struct CheckOptions {
    pub products_url: String,
    pub orders_url: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub settle_timeout: Duration,
}

impl Api {
    fn new(options: &Options) -> anyhow::Result<Api> {
        Api::connect(
            &CheckOptions {
                products_url: options.products_url.clone(),
                orders_url: options.orders_url.clone(),
                token: options.token.clone(),
                ca_file: options.ca_file.clone(),
                settle_timeout: options.settle_timeout,
            },
            options.concurrency,
        )
    }

    fn connect(options: &CheckOptions, concurrency: usize) -> anyhow::Result<Api> {
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(concurrency)
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
        self.send_as(None, method, url, body).await
    }

    /// Sends one request with `X-Request-Id: id` (when given).
    pub(crate) async fn send_as(
        &self,
        id: Option<&str>,
        method: Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let what = format!("{method} {url}");
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = id {
            request = request.header(crate::request_id::HEADER, id);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, _, body) = self.exchange(what, request).await;
        (status, body)
    }

    /// GETs `url`, waiting out a rate limit on the way (the edge's, which
    /// counts every request of this client): a 429 is asked again after its
    /// `Retry-After` (1 s when it gives none; 0.2 s to 10 s), for up to
    /// [`READ_PATIENCE`]. A read changes nothing, so asking again is safe;
    /// the load's changes are never retried (a 429 is their outcome).
    pub(crate) async fn read(&self, url: String) -> (u16, Value) {
        let started = Instant::now();
        loop {
            let mut request = self.http.get(&url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let (status, retry_after, body) = self.exchange(format!("GET {url}"), request).await;
            if status != 429 || started.elapsed() >= READ_PATIENCE {
                return (status, body);
            }
            let wait = retry_after.unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(wait.clamp(Duration::from_millis(200), Duration::from_secs(10)))
                .await;
        }
    }

    /// Sends a built request: status (0 when no answer came), the
    /// `Retry-After` it asked for (in seconds), and the body.
    async fn exchange(
        &self,
        what: String,
        request: reqwest::RequestBuilder,
    ) -> (u16, Option<Duration>, Value) {
        match request.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let retry_after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (
                    status,
                    retry_after,
                    answer.json().await.unwrap_or(Value::Null),
                )
            }
            Err(e) => {
                let _ = self.no_answer.set(format!("{what}: {}", causes(e)));
                (0, None, Value::Null)
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
    let recorder = match &options.history {
        Some(path) => Some(Arc::new(Recorder::create(path, &products)?)),
        None => None,
    };
    let shared = Shared {
        api: api.clone(),
        pool: Arc::new(Mutex::new(Pool::new(products.keys().copied().collect()))),
        stats: Arc::default(),
        window: Arc::default(),
        recorder,
    };
    let view = View::new(options, &api);
    let mut rng = Rng::new(options.seed);
    let mut next_report = view.every;
    let ran = schedule::open_loop(
        options.rate,
        options.duration,
        options.concurrency,
        |n, due| {
            let op = options.mix.pick(rng.next_u64());
            let prepared = shared.pool.lock().expect("pool").prepare(op, &mut rng);
            shared.clone().request(n, due, prepared)
        },
        |elapsed, so_far| {
            if elapsed >= next_report {
                next_report = elapsed + view.every;
                let last = std::mem::take(&mut *shared.window.lock().expect("window"));
                view.tick(elapsed, so_far, &shared.stats.lock().expect("stats"), &last);
            }
        },
    )
    .await;
    let elapsed = ran.elapsed;
    let span = ran.span;
    view.finish();
    let mut stats = shared.stats.lock().expect("stats").clone();
    stats.over_cap = ran.over_cap;
    let (orders_created, lines_created) = {
        let pool = shared.pool.lock().expect("pool");
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
    let mut checked = None;
    if let (Some(recorder), Some(path)) = (&shared.recorder, &options.history) {
        recorder.finish()?;
        if options.verify {
            checked = Some(check_history(&api, path, options.settle_timeout).await?);
        }
    }
    Ok(Report {
        stats,
        elapsed,
        span,
        verified,
        orders_created,
        lines_created,
        no_answer: api.no_answer().map(str::to_owned),
        checked,
    })
}

/// Whether a 2xx answer to `op` carries the order or line it made.
fn answers_with_body(op: Op) -> bool {
    matches!(
        op,
        Op::CreateOrder | Op::CreateLine | Op::ChangeQuantity | Op::ChangeProduct
    )
}

/// What every request of a run shares.
#[derive(Clone)]
struct Shared {
    api: Api,
    pool: Arc<Mutex<Pool>>,
    stats: Arc<Mutex<Stats>>,
    /// The requests answered since the last line of the live view.
    window: Arc<Mutex<Stats>>,
    recorder: Option<Arc<Recorder>>,
}

impl Shared {
    /// Sends request `n` (due at `due`), records its answer, frees its target.
    async fn request(self, n: u64, due: tokio::time::Instant, prepared: Prepared) {
        let id = self.recorder.as_ref().map(|r| r.id(n));
        let start = self.recorder.as_ref().map(|r| r.now_ms());
        let (status, body) = send(&self.api, id.as_deref(), &prepared).await;
        if let (Some(recorder), Some(id), Some(start)) = (&self.recorder, id, start) {
            recorder.record(id, &prepared, start, status, &body);
        }
        let latency = due.elapsed();
        self.pool
            .lock()
            .expect("pool")
            .settle(&prepared, status, &body);
        for stats in [&self.stats, &self.window] {
            stats
                .lock()
                .expect("stats")
                .record(prepared.op, status, latency);
        }
    }
}

/// `ordersys check-history`: a recorded history against the system's state now.
pub async fn check_recorded(
    options: &CheckOptions,
    path: &std::path::Path,
) -> anyhow::Result<Checked> {
    let api = Api::connect(options, 16)?;
    check_history(&api, path, options.settle_timeout).await
}

async fn check_history(
    api: &Api,
    path: &std::path::Path,
    settle_timeout: Duration,
) -> anyhow::Result<Checked> {
    let history = history::read(path)?;
    let (observed, settled_in) = audit::settle_and_observe(api, &history, settle_timeout).await;
    Ok(Checked {
        findings: observed.map(|observed| check::check(&history, &observed)),
        settled_in,
    })
}

/// Writes `--history`: each change request's id, times and outcome.
struct Recorder {
    writer: history::Writer,
    prefix: String,
    started: std::time::Instant,
}

impl Recorder {
    fn create(
        path: &std::path::Path,
        products: &std::collections::BTreeMap<i64, i64>,
    ) -> anyhow::Result<Recorder> {
        // Unique to the run, so that the check tells its requests apart.
        let prefix = format!("ld{}-", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let run = history::Run {
            kind: "run".into(),
            prefix: prefix.clone(),
            products: products.clone(),
        };
        Ok(Recorder {
            writer: history::Writer::create(path, &run)?,
            prefix,
            started: std::time::Instant::now(),
        })
    }

    fn id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a change request's answer (reads are not recorded). A
    /// history that cannot be written is said once, on standard error.
    fn record(&self, id: String, prepared: &Prepared, start_ms: u64, status: u16, body: &Value) {
        if matches!(prepared.op, Op::ReadProduct | Op::ReadOrder) {
            return;
        }
        let created = match prepared.op {
            Op::CreateOrder | Op::CreateLine if status == 201 => body["id"].as_i64(),
            _ => None,
        };
        let answer = match (body["produit_id"].as_i64(), body["quantite"].as_i64()) {
            (Some(product), Some(quantite)) if (200..300).contains(&status) => {
                Some((product, quantite as i32))
            }
            _ => None,
        };
        let record = history::Record {
            kind: "op".into(),
            id,
            op: prepared.op.name().into(),
            order: prepared.order,
            line: prepared.line,
            product: prepared.product,
            quantite: prepared.quantite,
            start_ms,
            end_ms: self.now_ms(),
            status,
            // A 2xx whose line or order could not be read from its body
            // says it was committed, not what: the check counts it unknown.
            outcome: match history::Outcome::of(status) {
                history::Outcome::Ok if answers_with_body(prepared.op) && body.is_null() => {
                    history::Outcome::Unknown
                }
                outcome => outcome,
            },
            created,
            answer,
        };
        if let Err(e) = self.writer.record(&record) {
            static TOLD: AtomicBool = AtomicBool::new(false);
            if !TOLD.swap(true, Ordering::Relaxed) {
                eprintln!("load: the history cannot be written: {e}");
            }
        }
    }

    fn finish(&self) -> anyhow::Result<()> {
        self.writer.finish()
    }
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
            let (status, answer) = api.read(api.product(&format!("/produits/{id}"))).await;
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

async fn send(api: &Api, id: Option<&str>, prepared: &Prepared) -> (u16, Value) {
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
        Op::ValidateOrder => (
            Method::POST,
            api.order(&format!("/commandes/{}/validation", prepared.order)),
            None,
        ),
    };
    api.send_as(id, method, url, body).await
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
