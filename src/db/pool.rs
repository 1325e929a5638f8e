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

/// Opens one connection, named after the process mode in `pg_stat_activity`.
pub fn connect(
    settings: &DatabaseSettings,
    application: &str,
) -> Result<PgConnection, ConnectionError> {
    PgConnection::establish(&connection_url(settings, application))
}

/// Adds `connect_timeout`, `application_name` and the statement timeout
/// (`options=-c statement_timeout=…`) unless the URL sets them. Values are
/// percent-encoded as libpq reads them (`%20`, never `+`).
fn connection_url(settings: &DatabaseSettings, application: &str) -> String {
    let Ok(mut url) = url::Url::parse(&settings.url) else {
        return settings.url.clone();
    };
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let given = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    // libpq counts whole seconds and treats values below 2 as 2.
    let connect_secs = settings
        .connect_timeout_ms
        .div_ceil(1000)
        .max(2)
        .to_string();
    // Options the URL gives are kept; a statement timeout it sets wins.
    let timeout = format!("-c statement_timeout={}", settings.statement_timeout_ms);
    let options = match given("options") {
        Some(options) if options.contains("statement_timeout") => options,
        Some(options) => format!("{options} {timeout}"),
        None => timeout,
    };
    let mut query: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k != "options")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    for (key, value) in [
        ("connect_timeout", connect_secs.as_str()),
        ("application_name", application),
    ] {
        if given(key).is_none() {
            query.push(format!("{key}={}", encode(value)));
        }
    }
    query.push(format!("options={}", encode(&options)));
    url.set_query(Some(&query.join("&")));
    url.to_string()
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
            migrate_on_start: true,
        }
    }

    #[test]
    fn the_statement_timeout_joins_the_options_the_url_gives() {
        let url = connection_url(&settings("postgres://u@h/db?sslmode=disable"), "app");
        assert!(url.contains("sslmode=disable"), "{url}");
        assert!(
            url.contains("options=%2Dc%20statement%5Ftimeout%3D250"),
            "{url}"
        );
        let url = connection_url(
            &settings("postgres://u@h/db?options=-c%20search_path%3Dx"),
            "app",
        );
        assert!(
            url.contains("search%5Fpath%3Dx%20%2Dc%20statement%5Ftimeout%3D250"),
            "{url}"
        );
        let url = connection_url(
            &settings("postgres://u@h/db?options=-c%20statement_timeout%3D9"),
            "a",
        );
        assert!(
            url.contains("statement%5Ftimeout%3D9") && !url.contains("250"),
            "{url}"
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
                url: connection_url(settings, application),
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
