//! HTTP load at full speed, for the benchmark: many keep-alive HTTP/1.1
//! connections (hyper), closed loop (each connection sends its next request
//! when the last answered: the ceiling figures) or open loop (the project's
//! one schedule, [`super::schedule`], over a pool of these connections),
//! with every latency kept for percentiles.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request: method, path and JSON body.
pub type Request = (&'static str, String, Option<String>);

/// One keep-alive connection.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            host: addr.to_string(),
        })
    }

    /// Whether the server closed it.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer: (status, body).
    pub async fn send(&mut self, (method, path, body): &Request) -> anyhow::Result<(u16, Bytes)> {
        let mut request = hyper::Request::builder()
            .method(*method)
            .uri(path.as_str())
            .header("host", &self.host);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = Full::new(Bytes::from(body.clone().unwrap_or_default()));
        self.sender.ready().await?;
        let response = self.sender.send_request(request.body(body)?).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// What a load produced.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: f64,
    /// Every successful request's latency, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        let sorted = &self.latencies_us;
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
    }

    fn record(&mut self, answer: anyhow::Result<(u16, Bytes)>, sent: Instant) -> bool {
        match answer {
            Ok((status, _)) if status < 300 => {
                self.ok += 1;
                let micros = sent.elapsed().as_micros().min(u128::from(u32::MAX));
                self.latencies_us.push(micros as u32);
                true
            }
            Ok(_) => {
                self.errors += 1;
                true
            }
            Err(_) => {
                self.errors += 1;
                false
            }
        }
    }
}

/// `concurrency` connections, each sending requests back to back for
/// `secs`; `request(task, n)` gives task's n-th request.
pub async fn closed_loop<F>(
    addr: SocketAddr,
    concurrency: usize,
    secs: f64,
    request: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Request + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let tasks = (0..concurrency).map(|task| {
        let request = request.clone();
        tokio::spawn(async move {
            let mut result = LoadResult::default();
            let mut n = 0u64;
            'connections: while let Ok(mut conn) = Connection::open(addr).await {
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let answer = conn.send(&request(task, n)).await;
                    n += 1;
                    if !result.record(answer, sent) {
                        continue 'connections; // broken: a new connection
                    }
                }
                return result;
            }
            result.errors += 1;
            result
        })
    });
    gather(tasks.collect(), started).await
}

/// Requests at a fixed overall `rate` for `secs`, at most `connections`
/// in flight (each on a connection of its own, kept for the next), on the
/// project's open-loop schedule: latencies count from each request's due
/// time; requests due beyond the cap are errors (not sent).
pub async fn open_loop<F>(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    secs: f64,
    request: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Request + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let idle: Arc<std::sync::Mutex<Vec<Connection>>> = Arc::default();
    let result: Arc<std::sync::Mutex<LoadResult>> = Arc::default();
    let ran = super::schedule::open_loop(
        rate,
        Duration::from_secs_f64(secs),
        connections,
        |n, due| {
            let (request, idle, result) = (request.clone(), idle.clone(), result.clone());
            async move {
                let task = (n % connections as u64) as usize;
                // One the server closed meanwhile (keep-alive) is dropped.
                let conn = {
                    let mut idle = idle.lock().expect("idle connections");
                    std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
                };
                let conn = match conn {
                    Some(conn) => Ok(conn),
                    None => Connection::open(addr).await,
                };
                let Ok(mut conn) = conn else {
                    result.lock().expect("result").errors += 1;
                    return;
                };
                let answer = conn.send(&request(task, n)).await;
                let reusable = result
                    .lock()
                    .expect("result")
                    .record(answer, due.into_std());
                if reusable {
                    idle.lock().expect("idle connections").push(conn);
                }
            }
        },
        |_, _| {},
    )
    .await;
    let mut total = std::mem::take(&mut *result.lock().expect("result"));
    total.errors += ran.over_cap;
    total.elapsed = ran.elapsed.as_secs_f64();
    total.latencies_us.sort_unstable();
    total
}

/// Sums the connections' results.
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
