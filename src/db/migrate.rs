//! Schema migrations, embedded in the binary and applied under a PostgreSQL
//! advisory lock, so any number of processes may start at once: the first
//! applies them, the others wait for the lock and find nothing to do.

use crate::dependencies::Dependency;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use diesel::pg::PgConnection;
use diesel::sql_types::BigInt;
use diesel::{Connection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The advisory lock key: "ordersys" in ASCII.
const LOCK_KEY: i64 = 0x6f72_6465_7273_7973;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies every pending migration; returns the versions applied.
pub fn run_pending(conn: &mut PgConnection) -> Result<Vec<String>, BoxError> {
    with_lock(conn, |conn| {
        Ok(conn
            .run_pending_migrations(MIGRATIONS)?
            .iter()
            .map(|v| v.to_string())
            .collect())
    })
}

/// Reverts every applied migration (tests, and going back to an empty database).
pub fn revert_all(conn: &mut PgConnection) -> Result<Vec<String>, BoxError> {
    with_lock(conn, |conn| {
        Ok(conn
            .revert_all_migrations(MIGRATIONS)?
            .iter()
            .map(|v| v.to_string())
            .collect())
    })
}

fn with_lock<T>(
    conn: &mut PgConnection,
    f: impl FnOnce(&mut PgConnection) -> Result<T, BoxError>,
) -> Result<T, BoxError> {
    // Waiting for another process's migrations, or a long migration, is
    // not a runaway statement.
    diesel::sql_query("SET statement_timeout = 0").execute(conn)?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(conn)?;
    let result = f(conn);
    let unlocked = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(LOCK_KEY)
        .execute(conn);
    let value = result?;
    unlocked?;
    Ok(value)
}

/// Creates the database named in `url` if it does not exist, connecting to
/// the server's `postgres` database to do so. Concurrent callers are fine.
pub fn ensure_database(url: &str) -> Result<(), BoxError> {
    match PgConnection::establish(url) {
        Ok(_) => return Ok(()),
        Err(diesel::ConnectionError::BadConnection(msg)) if msg.contains("does not exist") => {}
        Err(e) => return Err(e.into()),
    }
    let mut parsed = url::Url::parse(url)?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    let name = percent_encoding::percent_decode_str(&name)
        .decode_utf8()?
        .into_owned();
    if name.is_empty() {
        return Err("database.url names no database".into());
    }
    parsed.set_path("/postgres");
    let mut admin = PgConnection::establish(parsed.as_str())?;
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match diesel::sql_query(create).execute(&mut admin) {
        Ok(_) => {
            log::info!("created database {name}");
            Ok(())
        }
        // Another process created it between our two connections.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("already exists") =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Start-up of a process that needs the schema: create the database if
/// needed and apply migrations, retrying with backoff while PostgreSQL is
/// unreachable. Returns false if the shutdown came first.
pub fn prepare_with_retry(
    settings: &Settings,
    application: &str,
    health: &Dependency,
    shutdown: &Shutdown,
) -> bool {
    let mut backoff = Backoff::new(&settings.retry);
    loop {
        let attempt = ensure_database(&settings.database.url).and_then(|()| {
            let mut conn = super::connect(&settings.database, application)?;
            run_pending(&mut conn)
        });
        match attempt {
            Ok(applied) => {
                health.set_up();
                if applied.is_empty() {
                    log::info!("database schema is up to date");
                } else {
                    log::info!("applied migrations: {}", applied.join(", "));
                }
                return true;
            }
            Err(e) => {
                health.set_down(&e);
                if shutdown.sleep(backoff.next_delay()) {
                    return false;
                }
            }
        }
    }
}
