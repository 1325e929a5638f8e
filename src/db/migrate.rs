//! Schema migrations, embedded in the binary and applied under a PostgreSQL
//! advisory lock, so any number of processes may start at once: the first
//! applies them, the others wait for the lock and find nothing to do.
//!
//! A service connected as its own least-privileged role
//! (`database.migrate_on_start = false`) only checks that every migration
//! is applied, and waits until `ordersys migrate`, run as the owner, has
//! applied them ([`check_applied`]). That one also gives the services'
//! roles their passwords ([`set_role_passwords`]).

use crate::dependencies::Dependency;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use diesel::migration::MigrationSource;
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

/// The migrations this binary has that the database lacks; needs only
/// `SELECT` on diesel's bookkeeping table (no `CREATE`, unlike diesel's own
/// check, which first creates that table if it is missing).
pub fn missing(conn: &mut PgConnection) -> Result<Vec<String>, BoxError> {
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = diesel::sql_types::Text)]
        version: String,
    }
    let applied: Vec<Applied> =
        match diesel::sql_query("SELECT version FROM __diesel_schema_migrations").load(conn) {
            Ok(rows) => rows,
            // No migration ever ran here.
            Err(diesel::result::Error::DatabaseError(_, info))
                if info.message().contains("does not exist") =>
            {
                Vec::new()
            }
            Err(e) => return Err(e.into()),
        };
    let applied: std::collections::HashSet<String> =
        applied.into_iter().map(|a| a.version).collect();
    let known = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)?;
    Ok(known
        .iter()
        .map(|m| m.name().version().to_string())
        .filter(|v| !applied.contains(v))
        .collect())
}

/// Fails unless every migration of this binary is applied.
pub fn check_applied(conn: &mut PgConnection) -> Result<(), BoxError> {
    let missing = missing(conn)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "waiting for `ordersys migrate`: {} migration(s) not applied ({}); \
             database.migrate_on_start is false",
            missing.len(),
            missing.join(", ")
        )
        .into())
    }
}

/// Sets each role's password from its file (`migrate.*_password_file`).
/// Only its SCRAM-SHA-256 verifier, computed here with a fresh salt, is sent
/// (what `psql`'s `\password` does): the password itself never reaches the
/// server, its logs or `pg_stat_activity`. The statement is built by
/// PostgreSQL's `format('%I', '%L')`.
pub fn set_role_passwords(
    conn: &mut PgConnection,
    roles: &[(&'static str, &str)],
) -> Result<Vec<&'static str>, BoxError> {
    #[derive(diesel::QueryableByName)]
    struct Statement {
        #[diesel(sql_type = diesel::sql_types::Text)]
        sql: String,
    }
    let mut done = Vec::new();
    for (role, file) in roles {
        let password = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password of {role} from {file}: {e}"))?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(format!("the password of {role} in {file} is empty").into());
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let statement: Statement =
            diesel::sql_query("SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1, $2) AS sql")
                .bind::<diesel::sql_types::Text, _>(*role)
                .bind::<diesel::sql_types::Text, _>(verifier)
                .get_result(conn)?;
        diesel::sql_query(statement.sql).execute(conn)?;
        done.push(*role);
    }
    Ok(done)
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
    let migrate = settings.database.migrate_on_start;
    loop {
        let attempt = if migrate {
            ensure_database(&settings.database.url).and_then(|()| {
                let mut conn = super::connect(&settings.database, application)?;
                run_pending(&mut conn)
            })
        } else {
            super::connect(&settings.database, application)
                .map_err(BoxError::from)
                .and_then(|mut conn| check_applied(&mut conn))
                .map(|()| Vec::new())
        };
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
