//! The drain before a stop (`http.shutdown_drain_secs`), as a load
//! balancer meets it during a rolling update: after SIGTERM `/readyz`
//! answers 503 saying it is draining, every other route still answers, and
//! every answer closes its connection — a keep-alive connection opened
//! before the signal included; the background work goes on; then the
//! process stops cleanly, not before the drain is over.

use crate::common::process::Process;
use crate::common::{wait_for, Client, TestApp, TestBroker, TestDb};
use ordersys::{Application, Mode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends `GET path` on `stream` and reads the answer's head (lowercase)
/// and body.
fn exchange(stream: &mut TcpStream, path: &str) -> (String, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buffer).expect("an answer");
        assert!(n > 0, "closed before answering {path}");
        received.extend_from_slice(&buffer[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while received.len() < head_end + length {
        let n = stream.read(&mut buffer).expect("the body");
        assert!(n > 0, "closed in the body of {path}");
        received.extend_from_slice(&buffer[..n]);
    }
    let body = String::from_utf8_lossy(&received[head_end..]).into_owned();
    (head, body)
}

/// Waits until `/readyz` answers 503; returns its body.
async fn draining(addr: SocketAddr) -> serde_json::Value {
    let client = Client::new_at(addr);
    wait_for("/readyz to answer 503", Duration::from_secs(10), || async {
        let (status, body) = client.try_get("/readyz").await?;
        (status == 503).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_service_drains_its_readiness_and_connections_then_exits_0() {
    let (db, broker) = (TestDb::migrated(), TestBroker::create());
    let settings = crate::common::settings(&db, &broker);
    let env = [
        ("ORDERSYS__HTTP__SHUTDOWN_DRAIN_SECS", "4"),
        ("RUST_LOG", "info"),
    ];
    let mut products = Process::serve_capturing(&settings, "products", &env);
    products.wait_ready().await;
    let addr = products.addr();
    // A proxy's pooled connection: opened, and used, before the signal.
    let (mut pooled, (before, _)) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let answer = exchange(&mut stream, "/produits/");
        (stream, answer)
    })
    .await
    .unwrap();
    assert!(before.starts_with("http/1.1 200"), "{before}");
    assert!(!before.contains("connection: close"), "{before}");
    products.sigterm();
    let signalled = Instant::now();
    let readyz = draining(addr).await;
    let detail = readyz["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("draining"), "{readyz}");
    let (during, closed) = tokio::task::spawn_blocking(move || {
        let during = exchange(&mut pooled, "/produits/");
        let mut rest = Vec::new();
        let closed = pooled.read_to_end(&mut rest).map(|_| rest.is_empty());
        (during, closed.unwrap_or(false))
    })
    .await
    .unwrap();
    assert!(during.0.starts_with("http/1.1 200"), "{}", during.0);
    assert!(during.0.contains("connection: close"), "{}", during.0);
    assert_eq!(during.1, "[]");
    assert!(
        closed,
        "the server closes the pooled connection after its answer"
    );
    let (status, products) = tokio::task::spawn_blocking(move || {
        (products.exit_status(Duration::from_secs(30)), products)
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status after the drain: {status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "stopped early"
    );
    let log = products.stderr();
    assert_eq!(log.matches("draining for 4s").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_says_it_is_going_and_still_applies_stock_changes() {
    let app = TestApp::spawn().await;
    let mut settings = app.settings.clone();
    settings.http.shutdown_drain_secs = 5;
    let worker = Application::build(Mode::Worker, &settings, "127.0.0.1:0".parse().unwrap())
        .expect("the worker builds");
    let addr = worker.addr();
    let health = Client::new_at(addr);
    let shutdown = worker.shutdown_handle();
    let task = tokio::spawn(worker.run_until_stopped());
    wait_for(
        "the worker to be ready",
        Duration::from_secs(30),
        || async { (health.try_get("/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    let p = app.create_product("p", 1.0, 10).await;
    let order = app.create_order().await;
    shutdown.trigger();
    let triggered = Instant::now();
    let readyz = draining(addr).await;
    assert!(readyz.to_string().contains("draining"), "{readyz}");
    let metrics = health.get("/metrics").await.expect(200);
    assert_eq!(metrics.header("connection"), Some("close"));
    // Its consumers still work: a line created now is reserved.
    let line = app.create_line(order, p, 4).await["id"].as_i64().unwrap();
    app.wait_for_line(line, "RESERVE").await;
    task.await.unwrap().expect("the worker stops cleanly");
    assert!(
        triggered.elapsed() >= Duration::from_secs(5),
        "stopped early"
    );
}
