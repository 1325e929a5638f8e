//! Starting and stopping one mode: bind first (so tests can use port 0 and
//! read the port back), start the background threads, serve, and on
//! shutdown stop in order — HTTP requests first, then the relay's batch and
//! the consumers' messages in hand — within the grace period.
//!
//! Two latches: `stopping`, which SIGTERM (or [`Application::shutdown_handle`])
//! sets, and `shutdown`, which the background threads watch. Between them
//! lies the drain (`http.shutdown_drain_secs`, 0 by default): the process
//! still does everything — serves, relays, consumes — while its HTTP port
//! says it is going (`crate::http` answers `/readyz` with 503 and closes
//! every connection after its answer), so a load balancer moves away first.

use crate::auth::Authenticator;
use crate::consume::Assignment;
use crate::db::{migrate, Database};
use crate::dependencies::{BrokerUse, Dependencies};
use crate::http::{self, AppState};
use crate::metrics::{Metrics, Parts};
use crate::outbox::relay::Relay;
use crate::outbox::Waker;
use crate::saga;
use crate::settings::{AuthMode, DatabaseSettings, Settings};
use crate::shutdown::{Shutdown, Trigger};
use crate::worker::{consumer, lease};
use anyhow::Context;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Orders,
    Products,
    Worker,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Orders => "orders",
            Mode::Products => "products",
            Mode::Worker => "worker",
        }
    }
}

/// A running mode.
pub struct Application {
    mode: Mode,
    addr: SocketAddr,
    server: actix_web::dev::Server,
    /// Set by SIGTERM or a test: the drain begins.
    stopping: Shutdown,
    /// Set after the drain: the background threads finish and return.
    shutdown: Shutdown,
    background: Background,
    drain: Duration,
    grace: Duration,
}

/// Background threads, each reporting on `done` when it returns.
struct Background {
    threads: Vec<JoinHandle<()>>,
    done_tx: crossbeam_channel::Sender<()>,
    done: crossbeam_channel::Receiver<()>,
}

impl Background {
    fn new() -> Self {
        let (done_tx, done) = crossbeam_channel::unbounded();
        Background {
            threads: Vec::new(),
            done_tx,
            done,
        }
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> anyhow::Result<()> {
        let done = self.done_tx.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Reports even if `f` panics.
                struct Report(crossbeam_channel::Sender<()>);
                impl Drop for Report {
                    fn drop(&mut self) {
                        let _ = self.0.send(());
                    }
                }
                let _report = Report(done);
                f()
            })
            .with_context(|| format!("cannot start thread {name}"))?;
        self.threads.push(thread);
        Ok(())
    }

    /// Waits for every thread until `deadline`; false if some did not finish.
    fn join(self, deadline: Instant) -> bool {
        for _ in 0..self.threads.len() {
            if self.done.recv_deadline(deadline).is_err() {
                for thread in self.threads.iter().filter(|t| !t.is_finished()) {
                    log::warn!(
                        "{} did not finish within the grace period",
                        thread.thread().name().unwrap_or("a background thread")
                    );
                }
                return false;
            }
        }
        for thread in self.threads {
            if thread.join().is_err() {
                log::error!("a background thread panicked");
            }
        }
        true
    }
}

impl Application {
    /// Binds `bind` (port 0 picks a free port) and starts everything the
    /// mode runs; serving begins with [`run_until_stopped`](Self::run_until_stopped).
    pub fn build(mode: Mode, settings: &Settings, bind: SocketAddr) -> anyhow::Result<Self> {
        let listener = listen(mode, settings, bind)?;
        let addr = listener.local_addr()?;
        let (stopping, shutdown) = (Shutdown::new(), Shutdown::new());
        let deps = Dependencies::new(broker_use(mode));
        let metrics = Arc::new(Metrics::new(mode.name(), parts(mode)));
        let application = format!("ordersys-{}", mode.name());
        let db = Database::new(
            &pool_settings(mode, settings),
            &application,
            deps.database.clone(),
        );
        let mut background = Background::new();
        start_migration(settings, &application, &db, &shutdown, &mut background)?;
        // What every background thread is given.
        let context = crate::context::Context {
            settings: settings.clone(),
            db: db.clone(),
            deps: deps.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        let waker = start_pipeline(mode, &context, &mut background)?;
        let api = match mode {
            Mode::Orders => http::orders::api(&db, settings.validation.timeout()),
            Mode::Products => http::products::api(&db),
            Mode::Worker => http::worker_api(),
        };
        let state = AppState {
            mode: mode.name(),
            relay_exchanges: relay_exchanges(mode),
            db,
            deps,
            metrics,
            waker,
            stopping: stopping.clone(),
            started: Trigger::new(),
        };
        let auth = Arc::new(Authenticator::new(&settings.auth)?);
        warn_if_unprotected(&auth, &api, addr);
        let server = http::server(listener, settings, state, api, auth)?;
        log::info!("ordersys {} listening on http://{addr}", mode.name());
        Ok(Application {
            mode,
            addr,
            server,
            stopping,
            shutdown,
            background,
            drain: settings.http.shutdown_drain(),
            grace: settings.grace_period(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Triggers this application's shutdown — the drain, then the graceful
    /// stop (SIGTERM does the same in `main`).
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stopping.clone()
    }

    /// Serves until the shutdown is triggered, drains, then stops gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            mode,
            server,
            stopping,
            shutdown,
            background,
            drain,
            grace,
            ..
        } = self;
        let handle = server.handle();
        let mut serving = tokio::spawn(server);
        tokio::select! {
            _ = stopping.wait() => drain_for(mode, drain).await,
            ended = &mut serving => {
                stopping.trigger();
                shutdown.trigger();
                ended.context("HTTP server task failed")?.context("HTTP server failed")?;
            }
        }
        shutdown.trigger();
        let deadline = Instant::now() + grace;
        log::info!(
            "ordersys {} stopping: finishing in-flight work (up to {grace:?})",
            mode.name()
        );
        handle.stop(true).await;
        let joined = tokio::task::spawn_blocking(move || background.join(deadline))
            .await
            .unwrap_or(false);
        if joined {
            log::info!("ordersys {} stopped", mode.name());
        }
        Ok(())
    }
}

/// The drain: `drain` more of serving as usual while `/readyz` says the
/// process is going (no drain when 0).
async fn drain_for(mode: Mode, drain: Duration) {
    if drain.is_zero() {
        return;
    }
    log::info!(
        "ordersys {} draining for {drain:?} before stopping: /readyz answers 503, \
         every answer closes its connection",
        mode.name()
    );
    tokio::time::sleep(drain).await;
}

/// Binds the mode's port, unless an API that changes things would be open
/// on the network (the worker's port serves probes and metrics only).
fn listen(mode: Mode, settings: &Settings, bind: SocketAddr) -> anyhow::Result<TcpListener> {
    if mode != Mode::Worker {
        if let Some(refusal) = settings.open_bind_refusal(bind) {
            anyhow::bail!("ordersys {}: {refusal}", mode.name());
        }
    }
    TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))
}

/// How much a mode needs the broker to be ready.
fn broker_use(mode: Mode) -> BrokerUse {
    match mode {
        Mode::Products => BrokerUse::None,
        Mode::Orders => BrokerUse::Buffered,
        Mode::Worker => BrokerUse::Required,
    }
}

/// The parts of the pipeline a mode runs, for its metrics.
fn parts(mode: Mode) -> Parts {
    Parts {
        relay: mode != Mode::Products,
        consumer: mode == Mode::Worker,
        saga: mode == Mode::Orders,
    }
}

/// The database pool's settings: the worker's pool only answers /readyz
/// (its consumers hold their own connections), so two connections.
fn pool_settings(mode: Mode, settings: &Settings) -> DatabaseSettings {
    match mode {
        Mode::Worker => DatabaseSettings {
            pool_size: 2,
            ..settings.database.clone()
        },
        _ => settings.database.clone(),
    }
}

/// Prepares the database (migrations, with retries) in the background and
/// marks it ready when done.
fn start_migration(
    settings: &Settings,
    application: &str,
    db: &Database,
    shutdown: &Shutdown,
    background: &mut Background,
) -> anyhow::Result<()> {
    let (settings, db, shutdown) = (settings.clone(), db.clone(), shutdown.clone());
    let application = application.to_owned();
    background.spawn("migrate", move || {
        if migrate::prepare_with_retry(&settings, &application, db.health(), &shutdown) {
            db.mark_ready();
        }
    })
}

/// Starts the mode's pipeline threads: the outbox relay (orders, worker),
/// the stock consumers (worker), the saga's consumer and sweeper (orders).
/// Returns the handle that wakes the relay, if any.
fn start_pipeline(
    mode: Mode,
    context: &crate::context::Context,
    background: &mut Background,
) -> anyhow::Result<Option<Waker>> {
    if mode == Mode::Products {
        return Ok(None);
    }
    let waker = start_relay(mode, context, background)?;
    match mode {
        Mode::Worker => start_consumers(context, &waker, background)?,
        Mode::Orders => start_saga(context, &waker, background)?,
        Mode::Products => {}
    }
    Ok(Some(waker))
}

/// Starts the saga's consumer and its sweeper (orders).
fn start_saga(
    context: &crate::context::Context,
    waker: &Waker,
    background: &mut Background,
) -> anyhow::Result<()> {
    background.spawn("saga-consumer", {
        let (context, waker) = (context.clone(), waker.clone());
        move || saga::consumer::run(context, waker)
    })?;
    let (context, waker) = (context.clone(), waker.clone());
    background.spawn("saga-sweeper", move || {
        saga::consumer::sweep(context, waker)
    })
}

/// Warns when anyone who reaches `addr` may change things (open mode) or
/// read without a token (jwt mode without protected reads).
fn warn_if_unprotected(auth: &Authenticator, api: &http::Api, addr: SocketAddr) {
    if let (AuthMode::Open, Some(_)) = (auth.mode(), api.scopes) {
        log::warn!(
            "auth.mode is open: anyone who reaches http://{addr} may {} \
             (set auth.mode = \"jwt\" to require bearer tokens)",
            api.writes
        );
    }
    if auth.mode() == AuthMode::Jwt && !auth.protect_reads() && api.scopes.is_some() {
        log::warn!(
            "auth.protect_reads is false: anyone who reaches http://{addr} may read \
             without a token (set it to true to require products:read / orders:read)"
        );
    }
}

/// Starts the outbox relay thread; returns the handle that wakes it.
fn start_relay(
    mode: Mode,
    context: &crate::context::Context,
    background: &mut Background,
) -> anyhow::Result<Waker> {
    let (waker, wakeups) = crate::outbox::wake_channel();
    let relay = Relay {
        name: format!("ordersys-{}-relay", mode.name()),
        ctx: context.clone(),
        wakeups,
        exchanges: relay_exchanges(mode),
    };
    background.spawn("outbox-relay", move || relay.run())?;
    Ok(waker)
}

/// The exchanges of the outbox rows a mode's relay publishes (its broker
/// user may publish to no other): the orders' stock changes, or a worker's
/// alerts; none for products, which has no relay.
fn relay_exchanges(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::Products => &[],
        Mode::Orders => &[crate::messages::PRODUCT_EXCHANGE],
        Mode::Worker => &[
            crate::messages::ALERTS_EXCHANGE,
            crate::messages::ORDER_EVENTS_EXCHANGE,
        ],
    }
}

/// Starts `worker.replicas` consumer threads.
fn start_consumers(
    context: &crate::context::Context,
    waker: &Waker,
    background: &mut Background,
) -> anyhow::Result<()> {
    let replicas = context.settings.worker.replicas;
    let partitioned = context.settings.amqp.stock_partitions > 0;
    let assignments: Vec<Assignment> = match partitioned {
        true => (0..replicas).map(|_| Assignment::default()).collect(),
        false => Vec::new(),
    };
    for index in 0..replicas {
        let (context, waker) = (context.clone(), waker.clone());
        let partitions = assignments.get(index).cloned();
        background.spawn(&format!("consumer-{index}"), move || {
            consumer::run(index, context, waker, partitions)
        })?;
    }
    if partitioned {
        let context = context.clone();
        background.spawn("partitions", move || lease::run(&context, &assignments))?;
    }
    log::info!("{replicas} stock consumer(s) starting");
    Ok(())
}

/// Runs applications side by side (one mode, or every mode for `ordersys
/// all`) until SIGTERM/SIGINT or until one of them stops, then stops them
/// all gracefully.
pub async fn run_together(apps: Vec<Application>) -> anyhow::Result<()> {
    let handles: Vec<Shutdown> = apps.iter().map(Application::shutdown_handle).collect();
    tokio::spawn(async move {
        let any_stopped =
            futures_util::future::select_all(handles.iter().map(|h| Box::pin(h.wait())));
        tokio::select! {
            _ = crate::shutdown::signal() => {}
            _ = any_stopped => {}
        }
        for handle in &handles {
            handle.trigger();
        }
    });
    let results =
        futures_util::future::join_all(apps.into_iter().map(|a| a.run_until_stopped())).await;
    results.into_iter().collect()
}
