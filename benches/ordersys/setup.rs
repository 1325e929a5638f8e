//! The system under test: products and orders as separate processes on a
//! fresh database and vhost, a catalog, and sample orders.

use crate::sizes::{
    stock_partitions, Sizes, CATALOG, LINES_PER_ORDER, SAMPLE_ORDERS, STOCK, WORKER_CATALOG,
};
use diesel::prelude::*;
use ordersys::domain::limits::LINES_PER_ORDER_MAX;
use ordersys::settings::Settings;
use ordersys_testkit::process::Process;
use ordersys_testkit::{Client, TestBroker, TestDb};
use serde_json::{json, Value};

/// Orders one load connection uses in turn.
pub const ORDERS_PER_CONNECTION: usize = 500;

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// The orders of a load, [`ORDERS_PER_CONNECTION`] per connection.
#[derive(Clone)]
pub struct LoadOrders(Vec<i64>);

impl LoadOrders {
    /// The order of connection `t`'s `n`-th line: the next one every
    /// hundred lines.
    pub fn for_request(&self, t: usize, n: u64) -> i64 {
        let turn = (n / LINES_PER_ORDER_MAX as u64) as usize % ORDERS_PER_CONNECTION;
        self.0[t * ORDERS_PER_CONNECTION + turn]
    }
}

pub struct Bench {
    pub sizes: Sizes,
    /// Environment given to the orders and worker processes.
    pub env: Vec<(&'static str, &'static str)>,
    pub settings: Settings,
    pub pg: PgConnection,
    pub products: Process,
    pub orders: Option<Process>,
    pub broker: TestBroker,
    pub db: TestDb,
}

impl Bench {
    /// A fresh database and vhost, and the products service.
    pub async fn start(sizes: Sizes) -> Bench {
        let db = TestDb::migrated();
        let broker = TestBroker::create();
        let mut settings = ordersys_testkit::settings(&db, &broker);
        let partitions = stock_partitions();
        settings.amqp.stock_partitions = partitions;
        let products = Process::serve(&settings, "products", &[]);
        products.wait_ready().await;
        let partitions: &'static str = Box::leak(partitions.to_string().into_boxed_str());
        Bench {
            sizes,
            env: vec![("ORDERSYS__AMQP__STOCK_PARTITIONS", partitions)],
            pg: db.conn(),
            settings,
            products,
            orders: None,
            broker,
            db,
        }
    }

    /// Starts the orders service.
    pub async fn start_orders(&mut self) -> &Process {
        let orders = Process::serve(&self.settings, "orders", &self.env);
        orders.wait_ready().await;
        self.orders.insert(orders)
    }

    pub fn orders(&self) -> &Process {
        self.orders.as_ref().expect("orders started")
    }

    /// A worker, ready.
    pub async fn start_worker(&self) -> Process {
        let worker = Process::serve(&self.settings, "worker", &self.env);
        worker.wait_ready().await;
        worker
    }

    /// A worker process with `replicas` consumers (`worker.replicas`).
    pub async fn start_worker_with(&self, replicas: usize) -> Process {
        let replicas: &'static str = Box::leak(replicas.to_string().into_boxed_str());
        let mut env = self.env.clone();
        env.push(("ORDERSYS__WORKER__REPLICAS", replicas));
        let worker = Process::serve(&self.settings, "worker", &env);
        worker.wait_ready().await;
        worker
    }

    pub fn client(process: &Process) -> Client {
        Client::new_at(process.addr.expect("an HTTP port"))
    }

    /// Creates `n` products named `{prefix}-{i}`; returns their ids.
    pub async fn create_products(&self, prefix: &str, n: usize, prix: Value) -> Vec<i64> {
        let products = Self::client(&self.products);
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let body =
                json!({"nom": format!("{prefix}-{i}"), "prix": prix, "quantite_en_stock": STOCK});
            ids.push(
                products.post("/produits/", body).await.expect(201).body["id"]
                    .as_i64()
                    .unwrap(),
            );
        }
        ids
    }

    pub async fn catalog(&self) -> (Vec<i64>, Vec<i64>) {
        (
            self.create_products("bench", CATALOG, json!(9.99)).await,
            self.create_products("queue", WORKER_CATALOG, json!(1))
                .await,
        )
    }

    /// Orders with a few lines each, for `GET /commandes/{id}`.
    pub async fn sample_orders(&self, catalog: &[i64]) -> Vec<i64> {
        let orders = Self::client(self.orders());
        let mut ids = Vec::with_capacity(SAMPLE_ORDERS);
        for i in 0..SAMPLE_ORDERS {
            ids.push(self.new_order(&orders).await);
            for k in 0..LINES_PER_ORDER {
                let product = catalog[(i * LINES_PER_ORDER + k) % catalog.len()];
                let line = json!({"commande_id": ids[i], "produit_id": product, "quantite": 1});
                orders.post("/commandes-produits", line).await.expect(201);
            }
        }
        ids
    }

    /// Fresh empty orders for a load of line creations over `connections`
    /// connections: [`ORDERS_PER_CONNECTION`] each (made in one statement),
    /// taken in turn by [`LoadOrders::for_request`] so that none reaches the
    /// limit of lines per order.
    pub fn load_orders(&mut self, connections: usize) -> LoadOrders {
        let n = connections * ORDERS_PER_CONNECTION;
        let ids = diesel::sql_query(format!(
            "INSERT INTO commandes (statut) SELECT 'EN_ATTENTE' FROM generate_series(1, {n}) RETURNING id"
        ))
        .load::<Id>(&mut self.pg)
        .expect("create load orders");
        LoadOrders(ids.into_iter().map(|r| r.id).collect())
    }

    async fn new_order(&self, orders: &Client) -> i64 {
        orders.post("/commandes", json!({})).await.expect(201).body["id"]
            .as_i64()
            .unwrap()
    }
}
