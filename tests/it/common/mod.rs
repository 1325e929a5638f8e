//! The test harness: real PostgreSQL (a fresh database per test), real
//! HTTP servers started in-process on port 0, and helpers that read like
//! the user's story (`app.create_product(...)`).

// Helpers serve many test modules; not every build uses each one.
#![allow(dead_code)]

pub mod db;

pub use db::TestDb;

use ordersys::settings::Settings;
use ordersys::shutdown::Shutdown;
use ordersys::{Application, Mode};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Settings for a test: defaults, pointed at `db`, sized small.
pub fn settings(db: &TestDb) -> Settings {
    let mut s = Settings::load_from(None, &[], &|_| None).expect("default settings load");
    s.database.url = db.url.clone();
    s.database.pool_size = 4;
    s.http.workers = 1;
    s.shutdown.grace_secs = 10;
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
        let client = reqwest::Client::new();
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

/// A client of one service.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(running: &Running) -> Self {
        Client {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::new(),
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
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
}

/// products and orders on a fresh database.
pub struct TestApp {
    pub products: Client,
    pub orders: Client,
    pub settings: Settings,
    // Field order is drop order: servers stop before the database goes.
    pub products_server: Running,
    pub orders_server: Running,
    pub db: TestDb,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        let db = TestDb::empty();
        let settings = settings(&db);
        Self::spawn_with(db, settings).await
    }

    pub async fn spawn_with(db: TestDb, settings: Settings) -> TestApp {
        let products_server = Running::start(Mode::Products, &settings).await;
        let orders_server = Running::start(Mode::Orders, &settings).await;
        TestApp {
            products: Client::new(&products_server),
            orders: Client::new(&orders_server),
            settings,
            products_server,
            orders_server,
            db,
        }
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

    /// The outbox's messages, oldest first, as JSON.
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
}
