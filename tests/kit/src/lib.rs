//! The test kit of ordersys, shared by the integration tests (`tests/it`),
//! the broker-restart test and the benchmark: real PostgreSQL (a fresh
//! database per test, cloned from a migrated template), a RabbitMQ vhost per
//! test, the services in-process on port 0 or as child processes, one HTTP
//! client, one `wait_for`, load generators and fault injection, with
//! helpers that read like the user's story (`app.create_product(...)`).

pub mod auth;
pub mod broker;
pub mod browser;
pub mod db;
pub mod load;
pub mod process;
pub mod proxy;
pub mod tls;

pub use broker::TestBroker;
pub use db::TestDb;

use ordersys::settings::Settings;
use ordersys::shutdown::Shutdown;
use ordersys::{Application, Mode};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Settings for a test: defaults, pointed at `db` and `broker`, sized
/// small, retrying fast.
pub fn settings(db: &TestDb, broker: &TestBroker) -> Settings {
    let mut s = Settings::load_from(None, &[], &|_| None).expect("default settings load");
    s.database.url = db.url.clone();
    s.database.pool_size = 4;
    s.amqp.url = broker.url.clone();
    s.http.workers = 1;
    s.shutdown.grace_secs = 10;
    s.retry.initial_backoff_ms = 20;
    s.retry.max_backoff_ms = 500;
    s.outbox.poll_interval_ms = 200;
    s
}

/// Waits until `check` returns `Some`, polling, or panics after `timeout`
/// with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One mode running in-process.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub async fn start(mode: Mode, settings: &Settings) -> Running {
        let app = Application::build(mode, settings, "127.0.0.1:0".parse().unwrap())
            .expect("application builds");
        let addr = app.addr();
        let shutdown = app.shutdown_handle();
        let task = tokio::spawn(app.run_until_stopped());
        let running = Running {
            addr,
            shutdown,
            task: Some(task),
        };
        running.wait_ready().await;
        running
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn wait_ready(&self) {
        let client = http_client();
        let url = self.url("/readyz");
        let last = std::sync::Mutex::new(String::new());
        let what = format!("{url} to answer 200");
        wait_for(&what, Duration::from_secs(30), || {
            let request = client.get(&url).send();
            let last = &last;
            async move {
                match request.await {
                    Ok(r) if r.status() == StatusCode::OK => Some(()),
                    Ok(r) => {
                        *last.lock().unwrap() = r.text().await.unwrap_or_default();
                        None
                    }
                    Err(e) => {
                        *last.lock().unwrap() = e.to_string();
                        None
                    }
                }
            }
        })
        .await;
    }

    /// Stops gracefully and waits for the end.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            task.await
                .expect("application task")
                .expect("application stops cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The fields named in a problem+json `errors` list.
    pub fn error_fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts the status, and that errors are problem+json.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {self:#?}");
        if status >= 400 {
            assert_eq!(
                self.header("content-type"),
                Some("application/problem+json"),
                "{self:#?}"
            );
            assert_eq!(self.body["status"], status, "{self:#?}");
            assert!(
                self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{self:#?}"
            );
        }
        self
    }
}

/// The tests' HTTP client. Idle connections are dropped after 2 s, before
/// the servers' keep-alive (actix: 5 s) closes them: a request sent on a
/// connection the server is closing gets no answer, a flaky transport
/// error in a test that expects none.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client")
}

/// A client of one service.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer …` with every request.
    token: Option<String>,
    /// Sent with every request.
    headers: Vec<(String, String)>,
}

impl Client {
    pub fn new(running: &Running) -> Self {
        Self::new_at(running.addr)
    }

    pub fn new_at(addr: SocketAddr) -> Self {
        Client {
            base: format!("http://{addr}"),
            http: http_client(),
            token: None,
            headers: Vec::new(),
        }
    }

    /// The same client, sending `token` as its bearer token.
    pub fn with_token(&self, token: &str) -> Client {
        Client {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same client, sending `name: value` with every request.
    pub fn with_header(&self, name: &str, value: &str) -> Client {
        let mut client = self.clone();
        client.headers.push((name.to_owned(), value.to_owned()));
        client
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = self.request(method, path);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("request is sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body is read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.raw(Method::GET, path, None, None).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.raw(Method::DELETE, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.raw(
            Method::POST,
            path,
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Answer {
        self.raw(
            Method::PUT,
            path,
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// Like `raw`, but a transport error is `None` instead of a panic (for
    /// load under fault injection).
    async fn attempt(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let mut request = self.request(method, path).timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Some((status, body))
    }

    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        self.attempt(Method::GET, path, None).await
    }

    pub async fn try_post(&self, path: &str, body: Value) -> Option<(u16, Value)> {
        self.attempt(Method::POST, path, Some(body)).await
    }

    pub async fn try_put(&self, path: &str, body: Value) -> Option<(u16, Value)> {
        self.attempt(Method::PUT, path, Some(body)).await
    }

    pub async fn try_delete(&self, path: &str) -> Option<(u16, Value)> {
        self.attempt(Method::DELETE, path, None).await
    }
}

/// products, orders (and optionally a worker) on a fresh database and vhost.
pub struct TestApp {
    pub products: Client,
    pub orders: Client,
    pub settings: Settings,
    // Field order is drop order: servers stop before the database goes.
    pub products_server: Running,
    pub orders_server: Running,
    pub worker: Option<Running>,
    pub broker: TestBroker,
    pub db: TestDb,
}

impl TestApp {
    /// products and orders; messages wait in product_queue.
    pub async fn spawn() -> TestApp {
        Self::build(false, |_| {}).await
    }

    /// products, orders and an in-process worker.
    pub async fn with_worker() -> TestApp {
        Self::build(true, |_| {}).await
    }

    pub async fn build(worker: bool, adjust: impl FnOnce(&mut Settings)) -> TestApp {
        Self::build_modes(worker, adjust, |_, _, _| {}).await
    }

    /// Like [`build`](Self::build), then `per_mode` adjusts each mode's own
    /// copy of the settings (its database role, its broker user).
    pub async fn build_modes(
        worker: bool,
        adjust: impl FnOnce(&mut Settings),
        per_mode: impl Fn(Mode, &mut Settings, &TestBroker),
    ) -> TestApp {
        let db = TestDb::migrated();
        let broker = TestBroker::create();
        let mut settings = settings(&db, &broker);
        adjust(&mut settings);
        let of = |mode| {
            let mut own = settings.clone();
            per_mode(mode, &mut own, &broker);
            own
        };
        let products_server = Running::start(Mode::Products, &of(Mode::Products)).await;
        let orders_server = Running::start(Mode::Orders, &of(Mode::Orders)).await;
        let worker = if worker {
            Some(Running::start(Mode::Worker, &of(Mode::Worker)).await)
        } else {
            None
        };
        TestApp {
            products: Client::new(&products_server),
            orders: Client::new(&orders_server),
            settings,
            products_server,
            orders_server,
            worker,
            broker,
            db,
        }
    }

    /// Like [`build`](Self::build), each mode connected as its own database
    /// role (which may not migrate: the template is migrated already).
    pub async fn as_own_roles(worker: bool) -> TestApp {
        Self::build_modes(
            worker,
            |_| {},
            |mode, s, _| {
                s.database.migrate_on_start = false;
                s.database.url = s
                    .database
                    .url
                    .replace("postgres@", &format!("{}@", db::role(mode)));
            },
        )
        .await
    }

    /// Like [`with_worker`](Self::with_worker), each service connected to
    /// the broker as its own user (the worker's, or the orders' for products
    /// and orders), the topology declared beforehand as `ordersys migrate`'s
    /// user (the services' may not declare).
    pub async fn on_broker_users() -> TestApp {
        Self::build_modes(
            true,
            |_| {},
            |mode, s, broker| {
                if mode == Mode::Products {
                    broker.declare_as_migrate(&s.amqp);
                }
                s.amqp.declare_topology = false;
                let name = match mode {
                    Mode::Worker => "ordersys_worker",
                    _ => "ordersys_orders",
                };
                s.amqp.url = broker.user_url(broker::broker_user(name));
            },
        )
        .await
    }

    pub async fn create_product(&self, nom: &str, prix: f64, stock: i32) -> i64 {
        let answer = self
            .products
            .post(
                "/produits/",
                json!({"nom": nom, "prix": prix, "quantite_en_stock": stock}),
            )
            .await
            .expect(201);
        answer.body["id"].as_i64().expect("product id")
    }

    pub async fn create_order(&self) -> i64 {
        self.orders
            .post("/commandes", json!({}))
            .await
            .expect(201)
            .body["id"]
            .as_i64()
            .expect("order id")
    }

    pub async fn create_line(&self, order: i64, product: i64, quantite: i32) -> Value {
        self.orders
            .post(
                "/commandes-produits",
                json!({"commande_id": order, "produit_id": product, "quantite": quantite}),
            )
            .await
            .expect(201)
            .body
    }

    /// The outbox's messages (sent or not), oldest first, as JSON.
    pub fn outbox(&self) -> Vec<Value> {
        use diesel::prelude::*;
        use ordersys::db::schema::outbox;
        outbox::table
            .select(outbox::payload)
            .order(outbox::id)
            .load::<String>(&mut self.db.conn())
            .expect("read outbox")
            .iter()
            .map(|p| serde_json::from_str(p).expect("outbox payload is JSON"))
            .collect()
    }

    pub fn stock(&self, product: i64) -> i64 {
        self.db.count(&format!(
            "SELECT quantite_en_stock::bigint AS n FROM produits WHERE id = {product}"
        ))
    }

    /// Waits until the product's stock is `expected`.
    pub async fn wait_for_stock(&self, product: i64, expected: i64) {
        wait_for(
            &format!("stock of product {product} to be {expected}"),
            Duration::from_secs(20),
            || async { (self.stock(product) == expected).then_some(()) },
        )
        .await
    }

    pub fn line_status(&self, line: i64) -> String {
        use diesel::prelude::*;
        use ordersys::db::schema::commandes_produits;
        commandes_produits::table
            .find(line)
            .select(commandes_produits::statut_stock)
            .first(&mut self.db.conn())
            .expect("line exists")
    }

    /// Waits until the line's statut_stock is `expected`.
    pub async fn wait_for_line(&self, line: i64, expected: &str) {
        wait_for(
            &format!("line {line} to be {expected}"),
            Duration::from_secs(20),
            || async { (self.line_status(line) == expected).then_some(()) },
        )
        .await
    }

    /// A counter of the worker's /metrics.
    pub async fn worker_metric(&self, name: &str) -> u64 {
        let worker = self.worker.as_ref().expect("a worker runs");
        let text = Client::new(worker).get("/metrics").await.expect(200).body;
        metric(text.as_str().unwrap_or_default(), name)
    }

    /// Waits until nothing is in flight: every outbox row sent, the queue
    /// empty, no line waiting for the worker, and every reservation held by
    /// a RESERVE line. Times out (failing the test) if a change was lost.
    pub async fn wait_until_settled(&self, timeout: Duration) {
        wait_for("the pipeline to settle", timeout, || async {
            let unsent = self.db.count("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL");
            let waiting = self
                .db
                .count("SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = 'EN_ATTENTE'");
            let orphans = self.db.count(
                "SELECT count(*) AS n FROM reservations r WHERE r.quantite > 0 AND NOT EXISTS \
                 (SELECT 1 FROM commandes_produits l WHERE l.id = r.ligne_id AND l.statut_stock = 'RESERVE')",
            );
            let partitions = (0..self.settings.amqp.stock_partitions).map(ordersys::messages::stock_queue);
            let queued: u32 = std::iter::once(ordersys::messages::PRODUCT_QUEUE.to_owned())
                .chain(partitions)
                .map(|queue| self.broker.ready(&queue))
                .sum();
            (unsent == 0 && waiting == 0 && orphans == 0 && queued == 0).then_some(())
        })
        .await
    }

    /// The invariant (docs/contract.md §5): see [`assert_stock_invariant`].
    pub fn assert_stock_invariant(&self, initial: &std::collections::HashMap<i64, i64>) -> usize {
        assert_stock_invariant(&self.db, initial)
    }
}

/// The invariant (docs/contract.md §5): for every product, stock = initial
/// − Σ quantite of its RESERVE lines (and never negative), and every order's
/// line count is its number of lines; returns the number of products
/// checked.
pub fn assert_stock_invariant(db: &TestDb, initial: &std::collections::HashMap<i64, i64>) -> usize {
    use diesel::prelude::*;
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        stock: i64,
        #[diesel(sql_type = BigInt)]
        reserved: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT p.id, p.quantite_en_stock::bigint AS stock, \
         coalesce(sum(l.quantite) FILTER (WHERE l.statut_stock = 'RESERVE'), 0)::bigint AS reserved \
         FROM produits p LEFT JOIN commandes_produits l ON l.produit_id = p.id GROUP BY p.id ORDER BY p.id",
    )
    .load(&mut db.conn())
    .expect("invariant query");
    for row in &rows {
        let start = initial
            .get(&row.id)
            .unwrap_or_else(|| panic!("initial stock of product {}", row.id));
        assert!(row.stock >= 0, "product {} has negative stock", row.id);
        assert_eq!(
            row.stock,
            start - row.reserved,
            "product {}: stock {} != initial {} - reserved {}",
            row.id,
            row.stock,
            start,
            row.reserved
        );
    }
    let miscounted = db.count(
        "SELECT count(*) AS n FROM commandes c WHERE c.nb_lignes <> \
         (SELECT count(*) FROM commandes_produits l WHERE l.commande_id = c.id)",
    );
    assert_eq!(
        miscounted, 0,
        "orders whose nb_lignes is not their line count"
    );
    let by_status = |status: &str| {
        db.count(&format!(
            "SELECT count(*) AS n FROM commandes_produits WHERE statut_stock = '{status}'"
        ))
    };
    eprintln!(
        "stock invariant holds for {} products: {} RESERVE, {} REJETE, {} LIBERE lines; {} movements, {} messages",
        rows.len(),
        by_status("RESERVE"),
        by_status("REJETE"),
        by_status("LIBERE"),
        db.count("SELECT count(*) AS n FROM mouvements"),
        db.count("SELECT count(*) AS n FROM outbox"),
    );
    rows.len()
}

/// Reads one counter from a Prometheus exposition.
/// The `id` of a created resource.
pub fn id(v: &serde_json::Value) -> i64 {
    v["id"].as_i64().expect("an id")
}

pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
