//! The binary's command line and configuration errors, as a user meets them.

use std::process::Command;

fn ordersys(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ordersys"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run ordersys")
}

#[test]
fn help_names_every_mode() {
    let out = ordersys(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for mode in ["orders", "products", "worker", "migrate", "--config"] {
        assert!(help.contains(mode), "{help}");
    }
    let worker = String::from_utf8_lossy(&ordersys(&["worker", "--help"], &[]).stdout).into_owned();
    assert!(
        worker.contains("--replicas") && worker.contains("--bind"),
        "{worker}"
    );
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("ORDERSYS__AMQP__PREFETCH", "lots")], "amqp.prefetch"),
        (
            &[("ORDERSYS__DATABASE__POOL_SIZE", "0")],
            "database.pool_size",
        ),
        (&[("DATABASE_URL", "mysql://localhost/x")], "database.url"),
    ];
    for (env, key) in cases {
        let out = ordersys(&["migrate"], env);
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
    let out = ordersys(&["--config", "/nonexistent.toml", "products"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn a_config_file_overrides_the_defaults() {
    let dir = std::env::temp_dir().join(format!("ordersys-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[worker]\nreplicas = \"many\"\n").unwrap();
    let out = ordersys(&["--config", file.to_str().unwrap(), "migrate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker.replicas"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sigterm_stops_a_service_cleanly() {
    let db = crate::common::TestDb::empty();
    let port = crate::common::process::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordersys"))
        .args(["products", "--bind", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start ordersys products");
    answers_200(&mut child, &format!("http://127.0.0.1:{port}/readyz"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_runs_the_whole_system_in_one_process() {
    use crate::common::process::free_port;
    use crate::common::{wait_for, Client, TestBroker, TestDb};
    use serde_json::json;
    use std::time::Duration;
    let (db, broker) = (TestDb::empty(), TestBroker::create());
    let ports = [free_port(), free_port(), free_port()];
    let bind = |port: u16| format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordersys"))
        .args(["all", "--replicas", "1"])
        .args([
            "--products-bind",
            &bind(ports[0]),
            "--orders-bind",
            &bind(ports[1]),
        ])
        .args(["--worker-bind", &bind(ports[2])])
        .env("DATABASE_URL", &db.url)
        .env("AMQP_URL", &broker.url)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start ordersys all");
    let addr = |port: u16| bind(port).parse().unwrap();
    let (products, orders) = (
        Client::new_at(addr(ports[0])),
        Client::new_at(addr(ports[1])),
    );
    for port in ports {
        let ready = format!("http://127.0.0.1:{port}/readyz");
        wait_for(&ready, Duration::from_secs(30), || async {
            (ordersys::probe::get_status(&ready) == Ok(200)).then_some(())
        })
        .await;
    }
    let body = json!({"nom": "all", "prix": 1, "quantite_en_stock": 10});
    let product = products.post("/produits/", body).await.expect(201).body;
    let order = orders.post("/commandes", json!({})).await.expect(201).body;
    let line = json!({"commande_id": order["id"], "produit_id": product["id"], "quantite": 4});
    let line = orders
        .post("/commandes-produits", line)
        .await
        .expect(201)
        .body;
    let path = format!("/produits/{}", product["id"]);
    wait_for(
        "the worker to reserve 4",
        Duration::from_secs(30),
        || async { (products.get(&path).await.body["quantite_en_stock"] == 6).then_some(()) },
    )
    .await;
    let line = orders
        .get(&format!("/commandes-produits/{}", line["id"]))
        .await;
    assert_eq!(line.body["statut_stock"], "RESERVE");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(kill.unwrap().success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    assert!(
        status.unwrap().success(),
        "every mode stops cleanly on SIGTERM"
    );
}

#[test]
fn an_open_api_refuses_a_network_address_unless_told_it_is_wanted() {
    use crate::common::process::free_port;
    let any = |port: u16| format!("0.0.0.0:{port}");
    // The attack: `ordersys all` (or one API) in open mode on every
    // interface, anyone who reaches the port changing stock and orders.
    let runs: [&[&str]; 3] = [
        &["orders", "--bind", &any(free_port())],
        &["products", "--bind", &any(free_port())],
        &[
            "all",
            "--products-bind",
            &any(free_port()),
            "--orders-bind",
            "127.0.0.1:0",
            "--worker-bind",
            "127.0.0.1:0",
        ],
    ];
    for args in runs {
        let out = ordersys(args, &[("RUST_LOG", "info")]);
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for words in [
            "auth.mode",
            "change stock and orders",
            "allow_open_on_network",
        ] {
            assert!(stderr.contains(words), "{args:?}: {stderr}");
        }
    }
    // Said on purpose, it serves.
    let db = crate::common::TestDb::empty();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ordersys"))
        .args(["products", "--bind", &any(port)])
        .env("DATABASE_URL", &db.url)
        .env("ORDERSYS__HTTP__ALLOW_OPEN_ON_NETWORK", "true")
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start ordersys products");
    answers_200(&mut child, &format!("http://127.0.0.1:{port}/healthz"));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Polls `url` until it answers 200 (30 s at most); fails if `child`
/// exits first.
fn answers_200(child: &mut std::process::Child, url: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while ordersys::probe::get_status(url) != Ok(200) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the process exited with {status} before {url} answered");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} never answered 200"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
