//! The r2d2 pool of diesel connections, tuned for a service: no ping on
//! every checkout (a broken connection is detected by the error it gives and
//! discarded), a short wait for a free connection (then 503), and quiet
//! logging: the pool's connection errors update the database's health,
//! which logs once per change of state.

use super::DbFailure;
use crate::dependencies::Dependency;
use crate::settings::DatabaseSettings;
use crate::shutdown::{Shutdown, Trigger};
use diesel::connection::SimpleConnection;
use diesel::r2d2::R2D2Connection;
use diesel::{Connection, ConnectionError, PgConnection};
use std::sync::Arc;
use std::time::Duration;

/// The database cannot serve this request now (down, pool exhausted, or
/// migrations not applied yet): `reason` may be shown to a client,
/// `detail` (libpq's or the pool's words: host names, roles) only logged.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DbUnavailable {
    pub reason: &'static str,
    pub detail: String,
}

impl DbUnavailable {
    pub fn new(reason: &'static str, detail: impl std::fmt::Display) -> Self {
        DbUnavailable {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// Opens one connection, named after the process mode in `pg_stat_activity`:
/// a consumer's, a relay's, a sweeper's — a thread's own, running batch
/// statements, each planned for its own arrays ([`Plans::Custom`]).
pub fn connect(
    settings: &DatabaseSettings,
    application: &str,
) -> Result<PgConnection, ConnectionError> {
    PgConnection::establish(&connection_url(settings, application, Plans::Custom))
}

/// How the server plans a connection's prepared statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's default: after five runs, a generic plan if it looks
    /// no worse. The request path's statements (a few rows by primary key)
    /// keep the same plan at any table size, and planning each run costs
    /// them throughput (docs/performance.md).
    Generic,
    /// Every run planned for its parameters (`plan_cache_mode =
    /// force_custom_plan`). A generic plan is made once, from the
    /// statistics of that moment, and kept: made while a table was nearly
    /// empty (a fresh database, before autovacuum analyzed it), a batch
    /// statement joining `unnest($1, …)` to it keeps a sequential scan and
    /// a hash join as the table grows: the worker's batch took 2 s on a
    /// table of 100k lines, and the pipeline collapsed to 61 changes/s.
    /// Planned with its arrays, it knows their length and the tables' size.
    Custom,
}

/// Adds what bounds a connection's waits unless the URL sets it:
/// `connect_timeout`; `application_name`; libpq's TCP keepalives and
/// `tcp_user_timeout`, so that a query waiting on a silently partitioned
/// server fails within `tcp_user_timeout_ms` instead of the kernel's
/// minutes or hours; and, for the server's side (`options=-c …`), the
/// statement timeout, the same TCP settings (a backend whose client
/// vanished ends, releasing its locks), the idle-in-transaction timeout
/// (a client frozen in a transaction) and, for [`Plans::Custom`], custom
/// plans. Values are percent-encoded as libpq
/// reads them (`%20`, never `+`).
///
/// A URL that is not a URL (a `key=value` string, or several `host:port`s,
/// which the `url` crate cannot parse) is used as given: write those
/// settings into it (libpq's `host=a,b&port=5432,5433` form parses).
fn connection_url(settings: &DatabaseSettings, application: &str, plans: Plans) -> String {
    let Ok(mut url) = url::Url::parse(&settings.url) else {
        return settings.url.clone();
    };
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let given = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut query: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "options")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    for (key, value) in client_parameters(settings, application) {
        if given(key).is_none() {
            query.push(format!("{key}={}", encode(&value)));
        }
    }
    // Options the URL gives are kept, and win over ours.
    let mut options = given("options").unwrap_or_default();
    for (key, value) in server_parameters(settings, plans) {
        if !options.contains(key) {
            options = format!("{options} -c {key}={value}");
        }
    }
    query.push(format!("options={}", encode(options.trim_start())));
    url.set_query(Some(&query.join("&")));
    url.to_string()
}

/// libpq's own parameters: the connect timeout (whole seconds, at least 2,
/// as libpq counts them), the name, and keepalives that probe an idle
/// connection after a third of `tcp_user_timeout_ms`, which caps the whole.
fn client_parameters(
    settings: &DatabaseSettings,
    application: &str,
) -> Vec<(&'static str, String)> {
    let connect_secs = settings.connect_timeout_ms.div_ceil(1000).max(2);
    let probe_secs = (settings.tcp_user_timeout_ms / 3000).max(1);
    vec![
        ("connect_timeout", connect_secs.to_string()),
        ("application_name", application.to_owned()),
        ("keepalives", "1".to_owned()),
        ("keepalives_idle", probe_secs.to_string()),
        ("keepalives_interval", probe_secs.to_string()),
        ("keepalives_count", "3".to_owned()),
        ("tcp_user_timeout", settings.tcp_user_timeout_ms.to_string()),
    ]
}

/// The server's settings for this session (`-c key=value`).
fn server_parameters(settings: &DatabaseSettings, plans: Plans) -> Vec<(&'static str, String)> {
    let probe_secs = (settings.tcp_user_timeout_ms / 3000).max(1);
    let mut parameters = vec![
        (
            "statement_timeout",
            settings.statement_timeout_ms.to_string(),
        ),
        (
            "idle_in_transaction_session_timeout",
            settings.idle_in_transaction_timeout_ms.to_string(),
        ),
        ("tcp_keepalives_idle", probe_secs.to_string()),
        ("tcp_keepalives_interval", probe_secs.to_string()),
        ("tcp_keepalives_count", "3".to_owned()),
        ("tcp_user_timeout", settings.tcp_user_timeout_ms.to_string()),
    ];
    if plans == Plans::Custom {
        parameters.push(("plan_cache_mode", "force_custom_plan".to_owned()));
    }
    parameters
}

/// Percent-encodes a query value as libpq reads it (`%20`, never `+`).
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> DatabaseSettings {
        DatabaseSettings {
            url: url.into(),
            pool_size: 1,
            pool_timeout_ms: 1,
            connect_timeout_ms: 5000,
            statement_timeout_ms: 250,
            tcp_user_timeout_ms: 15000,
            idle_in_transaction_timeout_ms: 60000,
            migrate_on_start: true,
        }
    }

    /// The query's parameters, decoded.
    fn parameters(url: &str) -> Vec<(String, String)> {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    fn parameter(url: &str, key: &str) -> Option<String> {
        parameters(url)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn the_servers_settings_join_the_options_the_url_gives() {
        let url = connection_url(
            &settings("postgres://u@h/db?sslmode=disable"),
            "app",
            Plans::Generic,
        );
        assert_eq!(parameter(&url, "sslmode").as_deref(), Some("disable"));
        assert_eq!(
            parameter(&url, "options").as_deref(),
            Some(
                "-c statement_timeout=250 -c idle_in_transaction_session_timeout=60000 \
                 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 \
                 -c tcp_user_timeout=15000"
            )
        );
        assert!(
            url.contains("options=%2Dc%20statement%5Ftimeout%3D250%20"),
            "{url}"
        );
        let url = connection_url(
            &settings("postgres://u@h/db?options=-c%20search_path%3Dx"),
            "app",
            Plans::Generic,
        );
        let options = parameter(&url, "options").unwrap();
        assert!(
            options.starts_with("-c search_path=x -c statement_timeout=250 "),
            "{options}"
        );
        let url = connection_url(
            &settings("postgres://u@h/db?options=-c%20statement_timeout%3D9"),
            "a",
            Plans::Generic,
        );
        let options = parameter(&url, "options").unwrap();
        assert!(
            options.starts_with("-c statement_timeout=9 -c idle_in") && !options.contains("250"),
            "{options}"
        );
    }

    #[test]
    fn a_silent_server_is_given_up_on_after_the_tcp_user_timeout() {
        let url = connection_url(&settings("postgres://u@h/db"), "worker", Plans::Generic);
        for (key, value) in [
            ("connect_timeout", "5"),
            ("application_name", "worker"),
            ("keepalives", "1"),
            ("keepalives_idle", "5"),
            ("keepalives_interval", "5"),
            ("keepalives_count", "3"),
            ("tcp_user_timeout", "15000"),
        ] {
            assert_eq!(
                parameter(&url, key).as_deref(),
                Some(value),
                "{key} in {url}"
            );
        }
        // What the URL sets wins.
        let url = connection_url(
            &settings("postgres://u@h/db?tcp_user_timeout=900"),
            "w",
            Plans::Generic,
        );
        let given: Vec<_> = parameters(&url)
            .into_iter()
            .filter(|(k, _)| k == "tcp_user_timeout")
            .collect();
        assert_eq!(given, [("tcp_user_timeout".to_owned(), "900".to_owned())]);
    }

    #[test]
    fn a_threads_own_connection_plans_each_statement_for_its_parameters() {
        let options = |plans| {
            let url = connection_url(&settings("postgres://u@h/db"), "w", plans);
            parameter(&url, "options").unwrap()
        };
        assert!(options(Plans::Custom).ends_with(" -c plan_cache_mode=force_custom_plan"));
        assert!(!options(Plans::Generic).contains("plan_cache_mode"));
    }

    #[test]
    fn several_hosts_on_one_port_keep_their_settings() {
        let url = connection_url(
            &settings("postgres://u@db1,db2/ordersys?target_session_attrs=read-write"),
            "orders",
            Plans::Generic,
        );
        assert!(url.starts_with("postgres://u@db1,db2/ordersys?"), "{url}");
        assert_eq!(
            parameter(&url, "target_session_attrs").as_deref(),
            Some("read-write")
        );
        assert_eq!(
            parameter(&url, "tcp_user_timeout").as_deref(),
            Some("15000")
        );
    }
}

/// A pooled connection and whether it was seen to break.
pub struct PooledPg {
    conn: PgConnection,
    broken: bool,
}

struct Manager {
    url: String,
}

impl r2d2::ManageConnection for Manager {
    type Connection = PooledPg;
    type Error = ConnectionError;

    fn connect(&self) -> Result<PooledPg, ConnectionError> {
        PgConnection::establish(&self.url).map(|conn| PooledPg {
            conn,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut PooledPg) -> Result<(), ConnectionError> {
        conn.conn
            .batch_execute("SELECT 1")
            .map_err(ConnectionError::CouldntSetupConfiguration)
    }

    fn has_broken(&self, conn: &mut PooledPg) -> bool {
        conn.broken || conn.conn.is_broken()
    }
}

/// Routes the pool's background connection errors to the health state.
#[derive(Debug)]
struct HealthErrorHandler(Arc<Dependency>);

impl r2d2::HandleError<ConnectionError> for HealthErrorHandler {
    fn handle_error(&self, error: ConnectionError) {
        self.0.set_down(&error);
    }
}

/// The pool and the process's view of the database.
#[derive(Clone)]
pub struct Database {
    pool: r2d2::Pool<Manager>,
    ready: Trigger,
    health: Arc<Dependency>,
}

impl Database {
    /// Builds the pool without connecting: a database that is down at start
    /// is retried in the background, and requests get 503 meanwhile.
    pub fn new(settings: &DatabaseSettings, application: &str, health: Arc<Dependency>) -> Self {
        let pool = r2d2::Pool::builder()
            .max_size(settings.pool_size)
            .min_idle(Some(0))
            .connection_timeout(Duration::from_millis(settings.pool_timeout_ms))
            .test_on_check_out(false)
            .error_handler(Box::new(HealthErrorHandler(health.clone())))
            .build_unchecked(Manager {
                url: connection_url(settings, application, Plans::Generic),
            });
        Database {
            pool,
            ready: Trigger::new(),
            health,
        }
    }

    /// Called once migrations are applied: requests are served from then on.
    pub fn mark_ready(&self) {
        self.ready.trigger();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.is_triggered()
    }

    /// Blocks until migrations are applied (true) or the shutdown (false).
    pub fn wait_ready(&self, shutdown: &Shutdown) -> bool {
        self.ready.wait_unless(shutdown)
    }

    pub fn health(&self) -> &Arc<Dependency> {
        &self.health
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: DbFailure + Send + 'static,
    {
        if !self.is_ready() {
            let reason = "the database is not ready yet (connecting or migrating)";
            return Err(DbUnavailable::new(reason, "not migrated yet").into());
        }
        let db = self.clone();
        match tokio::task::spawn_blocking(move || db.run_blocking(f)).await {
            Ok(result) => result,
            Err(join) => Err(DbUnavailable::new("the database task failed", join).into()),
        }
    }

    /// The blocking half of [`run`](Self::run), for code already on a blocking thread.
    pub fn run_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E>,
        E: DbFailure,
    {
        let mut pooled = self.pool.get().map_err(|e| {
            DbUnavailable::new("no database connection is available; retry later", e)
        })?;
        let result = f(&mut pooled.conn);
        match &result {
            Err(e) if e.is_connection_error() => {
                pooled.broken = true;
                self.health.set_down(&"a query lost its connection");
            }
            _ => self.health.set_up(),
        }
        result
    }

    /// A live round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), DbUnavailable> {
        let db = self.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let unavailable = |e: &dyn std::fmt::Display| DbUnavailable::new("down", e);
            let mut pooled = db.pool.get().map_err(|e| unavailable(&e))?;
            let result = pooled.conn.batch_execute("SELECT 1");
            if result.is_err() {
                pooled.broken = true;
            }
            result.map_err(|e| unavailable(&e))
        })
        .await
        .map_err(|e| DbUnavailable::new("down", e))?;
        match &outcome {
            Ok(()) => self.health.set_up(),
            Err(e) => self.health.set_down(e),
        }
        outcome
    }
}
