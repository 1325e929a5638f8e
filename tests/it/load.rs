//! `ordersys load` against services on the real PostgreSQL and RabbitMQ:
//! what it counts as done is on the server, `--verify` finds the invariant
//! holding, a service stopped mid-run shows as errors by status (and why),
//! the plain output parses, and behind a TLS edge it trusts `--ca-file`
//! and nothing else.

use crate::common::process::{binary, Process};
use crate::common::tls::{Protocol, TestCa, TlsFront};
use crate::common::TestApp;
use ordersys::load::mix::{Mix, Op, DEFAULT_MIX};
use ordersys::load::{self, Options};
use std::time::Duration;

fn options_for(app_products: &str, app_orders: &str) -> Options {
    Options {
        products_url: app_products.to_owned(),
        orders_url: app_orders.to_owned(),
        rate: 150.0,
        duration: Duration::from_secs(3),
        concurrency: 64,
        mix: Mix::parse(DEFAULT_MIX).unwrap(),
        products: 5,
        stock: 1_000_000,
        use_products: Vec::new(),
        max_error_rate: 0.0,
        verify: true,
        settle_timeout: Duration::from_secs(60),
        seed: 42,
        token: None,
        ca_file: None,
        report_every: Duration::from_secs(1),
        history: None,
    }
}

fn ok(report: &load::Report, op: Op) -> i64 {
    report.stats.ops.get(&op).map_or(0, |s| {
        s.statuses
            .iter()
            .filter(|(st, _)| (200..300).contains(*st))
            .map(|(_, n)| *n)
            .sum::<u64>() as i64
    })
}

#[tokio::test]
async fn what_the_load_counts_as_done_is_on_the_server_and_the_stock_adds_up() {
    let app = TestApp::with_worker().await;
    let options = options_for(&app.products_server.url(""), &app.orders_server.url(""));
    let report = load::run(&options).await.expect("the load runs");
    assert_eq!(
        report.stats.count() + report.stats.over_cap,
        450,
        "every scheduled request"
    );
    assert_eq!(
        report.stats.errors(),
        0,
        "{}",
        report.stats.errors_by_status()
    );
    let db = |sql: &str| app.db.count(sql);
    assert_eq!(db("SELECT count(*) AS n FROM produits"), 5);
    assert_eq!(
        db("SELECT count(*) AS n FROM commandes"),
        ok(&report, Op::CreateOrder)
    );
    assert_eq!(
        db("SELECT count(*) AS n FROM commandes WHERE statut = 'ANNULEE'"),
        ok(&report, Op::CancelOrder)
    );
    assert_eq!(
        db("SELECT count(*) AS n FROM commandes_produits"),
        ok(&report, Op::CreateLine) - ok(&report, Op::DeleteLine)
    );
    assert!(ok(&report, Op::ChangeQuantity) > 0 && ok(&report, Op::ReadProduct) > 0);
    let verified = report.verified.expect("verified");
    assert!(verified.holds(), "{}", verified.describe());
    assert_eq!(verified.products, 5);
    // The database agrees with what --verify read through the APIs.
    app.wait_until_settled(Duration::from_secs(30)).await;
    assert_eq!(
        db(
            "SELECT count(*) AS n FROM produits p WHERE quantite_en_stock <> 1000000 - coalesce(\
            (SELECT sum(quantite) FROM commandes_produits l \
              WHERE l.produit_id = p.id AND l.statut_stock = 'RESERVE'), 0)"
        ),
        0
    );
}

#[tokio::test]
async fn a_service_stopped_mid_run_shows_as_errors_by_status() {
    let app = TestApp::spawn().await;
    let orders = Process::serve(&app.settings, "orders", &[]);
    orders.wait_ready().await;
    let mut options = options_for(
        &app.products_server.url(""),
        &format!("http://{}", orders.addr()),
    );
    options.verify = false;
    options.duration = Duration::from_secs(4);
    let run = tokio::spawn(async move { load::run(&options).await });
    // Killed once the run is under way: lines are being created.
    crate::common::wait_for(
        "the load to create lines",
        Duration::from_secs(20),
        || async {
            (app.db.count("SELECT count(*) AS n FROM commandes_produits") >= 20).then_some(())
        },
    )
    .await;
    orders.kill();
    let report = run.await.unwrap().expect("the load runs to its end");
    let by = report.stats.errors_by_status();
    assert!(by.contains("no-answer×"), "{by}");
    let why = report
        .no_answer
        .as_deref()
        .expect("the first no-answer's cause");
    assert!(why.contains("/commande"), "{why}");
    assert!(
        ok(&report, Op::ReadProduct) > 0,
        "the products API still answered"
    );
    assert!(report.stats.error_rate() > 0.0);
    let strict = Options {
        max_error_rate: 0.01,
        ..options_for("http://unused", "http://unused")
    };
    assert!(!report.passed(&strict), "the run fails its threshold");
}

#[tokio::test]
async fn the_command_prints_plain_progress_lines_and_a_summary_that_parse() {
    let app = TestApp::with_worker().await;
    let (products, orders) = (app.products_server.url(""), app.orders_server.url(""));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args([
                "load",
                "--products-url",
                &products,
                "--orders-url",
                &orders,
                "--rate",
                "100",
                "--duration",
                "3",
                "--report-every",
                "1",
                "--verify",
                "--seed",
                "7",
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("ordersys load runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let progress: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("load: t="))
        .collect();
    assert!(progress.len() >= 2, "{stderr}");
    for line in &progress {
        let fields: Vec<&str> = line["load: ".len()..].split(' ').collect();
        let keys: Vec<&str> = fields
            .iter()
            .map(|f| f.split('=').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            ["t", "sent", "done", "rate", "errors", "p50", "p99", "over_cap"],
            "{line}"
        );
    }
    let all = stdout
        .lines()
        .find(|l| l.starts_with("all "))
        .expect("a total row");
    let count: u64 = all.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(count, 300, "{stdout}");
    assert!(stdout.contains("achieved "), "{stdout}");
    assert!(stdout.contains("verify: settled in"), "{stdout}");
    assert!(
        stdout.contains("the stock invariant holds for 20 products"),
        "{stdout}"
    );
}

/// products and orders behind TLS, as behind an edge proxy terminating it
/// with a certificate of the test's own CA (for 127.0.0.1).
struct Edge {
    ca: TestCa,
    products: TlsFront,
    orders: TlsFront,
}

impl Edge {
    async fn in_front_of(app: &TestApp) -> Edge {
        let ca = TestCa::new();
        let products = TlsFront::start(&ca, Protocol::Direct, app.products_server.addr).await;
        let orders = TlsFront::start(&ca, Protocol::Direct, app.orders_server.addr).await;
        Edge {
            ca,
            products,
            orders,
        }
    }

    fn urls(&self) -> (String, String) {
        let url = |front: &TlsFront| format!("https://127.0.0.1:{}", front.addr.port());
        (url(&self.products), url(&self.orders))
    }
}

#[tokio::test]
async fn over_https_the_load_trusts_its_ca_file_and_refuses_an_unknown_certificate() {
    let app = TestApp::with_worker().await;
    let edge = Edge::in_front_of(&app).await;
    let (products, orders) = edge.urls();
    let mut options = options_for(&products, &orders);
    options.ca_file = Some(edge.ca.ca_file.clone());
    options.duration = Duration::from_secs(2);
    let report = load::run(&options).await.expect("the load runs over https");
    assert_eq!(
        report.stats.errors(),
        0,
        "{}",
        report.stats.errors_by_status()
    );
    assert_eq!(report.no_answer, None);
    let verified = report.verified.expect("verified");
    assert!(verified.holds(), "{}", verified.describe());
    assert!(edge.products.handshakes() > 0 && edge.orders.handshakes() > 0);
    // Without the edge's CA, or with another one: no request is answered,
    // and the run stops at its first, saying why.
    for ca_file in [None, Some(edge.ca.stranger_ca_file.clone())] {
        let refused = Options {
            ca_file,
            ..options.clone()
        };
        let err = format!("{:#}", load::run(&refused).await.unwrap_err());
        assert!(err.contains("certificate verify failed"), "{err}");
        assert!(err.contains(&products), "{err}");
    }
}

#[tokio::test]
async fn the_command_names_a_bad_ca_file_and_a_refused_certificate_before_any_load() {
    let app = TestApp::with_worker().await;
    let edge = Edge::in_front_of(&app).await;
    let (products, orders) = edge.urls();
    let not_pem = edge.ca.ca_file.with_file_name("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let load = |env: Vec<(&'static str, String)>| {
        let (products, orders) = (products.clone(), orders.clone());
        tokio::task::spawn_blocking(move || {
            let output = std::process::Command::new(binary())
                .args(["load", "--products-url", &products, "--orders-url", &orders])
                .args(["--products", "2", "--rate", "20", "--duration", "1"])
                .env_remove("ORDERSYS_LOAD_CA_FILE")
                .envs(env)
                .output()
                .expect("ordersys load runs");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            (output.status.code(), stderr)
        })
    };
    let ca = |path: &std::path::Path| vec![("ORDERSYS_LOAD_CA_FILE", path.display().to_string())];
    let missing = edge.ca.ca_file.with_file_name("missing.pem");
    for (env, words) in [
        (ca(&missing), vec![missing.display().to_string()]),
        (ca(&not_pem), vec![not_pem.display().to_string()]),
        (
            Vec::new(),
            vec!["certificate verify failed".to_owned(), products.clone()],
        ),
    ] {
        let (code, stderr) = load(env).await.unwrap();
        assert_eq!(code, Some(2), "{stderr}");
        for word in words {
            assert!(stderr.contains(&word), "{word}: {stderr}");
        }
    }
    assert_eq!(app.db.count("SELECT count(*) AS n FROM produits"), 0);
    let (code, stderr) = load(ca(&edge.ca.ca_file)).await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
}

/// `--history` records every change and its outcome; the check finds the
/// final state agreeing with it, and finds what was changed behind its back.
#[tokio::test]
async fn a_recorded_history_checks_clean_and_tampering_is_found() {
    let app = TestApp::with_worker().await;
    let path = std::env::temp_dir().join(format!("ordersys-history-{}.jsonl", std::process::id()));
    let mut options = options_for(&app.products_server.url(""), &app.orders_server.url(""));
    // Every kind of change, and orders enough that some are idle (no
    // request in flight) with lines when a validation is drawn.
    options.mix = Mix::parse(
        "read_order=6,create_order=10,create_line=35,change_quantity=15,change_product=10,\
         delete_line=8,cancel_order=4,validate_order=12",
    )
    .unwrap();
    options.rate = 80.0;
    options.duration = Duration::from_secs(5);
    // Few requests in flight, so that orders stay idle between them however
    // slow the machine answers (a validation needs an idle order).
    options.concurrency = 8;
    options.history = Some(path.clone());
    let report = load::run(&options).await.expect("the load runs");
    let checked = report.checked.as_ref().expect("checked with --verify");
    assert!(checked.holds(), "{}", checked.describe());
    let findings = checked.findings.as_ref().unwrap();
    let history = load::history::read(&path).expect("the history reads back");
    assert_eq!(findings.operations, history.records.len());
    assert_eq!(findings.ok, findings.operations, "{}", checked.describe());
    assert!(ok(&report, Op::CreateLine) > 0 && ok(&report, Op::ValidateOrder) > 0);
    let verified = report.verified.as_ref().expect("verified");
    assert!(verified.holds(), "{}", verified.describe());

    let check_options = load::CheckOptions {
        products_url: options.products_url.clone(),
        orders_url: options.orders_url.clone(),
        token: None,
        ca_file: None,
        settle_timeout: Duration::from_secs(10),
    };
    // Three units taken from a product outside the pipeline: "taken twice".
    let product = *history.run.products.keys().next().unwrap();
    app.db
        .run_as(
            "postgres",
            &format!("UPDATE produits SET quantite_en_stock = quantite_en_stock - 3 WHERE id = {product}"),
        )
        .unwrap();
    let checked = load::check_recorded(&check_options, &path).await.unwrap();
    let findings = checked.findings.as_ref().unwrap();
    assert!(!checked.holds());
    assert_eq!(findings.doubled.len(), 1, "{}", checked.describe());
    assert!(
        findings.doubled[0].contains("3 units taken twice"),
        "{}",
        checked.describe()
    );
    app.db
        .run_as(
            "postgres",
            &format!("UPDATE produits SET quantite_en_stock = quantite_en_stock + 3 WHERE id = {product}"),
        )
        .unwrap();

    // A created line the history forgets: its change is one the run "never sent".
    let text = std::fs::read_to_string(&path).unwrap();
    let forgotten = text
        .lines()
        .position(|l| l.contains("\"create_line\"") && l.contains("\"ok\""))
        .expect("a created line");
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != forgotten)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let checked = load::check_recorded(&check_options, &path).await.unwrap();
    let findings = checked.findings.as_ref().unwrap();
    assert!(
        findings
            .unexpected
            .iter()
            .any(|u| u.contains("a request the run never sent")),
        "{}",
        checked.describe()
    );
    std::fs::remove_file(&path).unwrap();
}
