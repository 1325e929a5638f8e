//! A fresh PostgreSQL database per test, dropped when the test ends.

use diesel::prelude::*;
use diesel::sql_types::BigInt;

/// The server every test database lives on; `ORDERSYS_TEST_DATABASE_URL`
/// overrides it (any database on the server: it is used for admin work).
///
/// The default turns TLS off: the server is on loopback, and a test binary
/// exits while in-process services still hold connections on background
/// threads; with TLS, OpenSSL's exit-time cleanup raced those threads once
/// ("double free or corruption" after every test had passed).
pub fn server_url() -> String {
    std::env::var("ORDERSYS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into())
}

fn url_for(name: &str) -> String {
    let mut url = url::Url::parse(&server_url()).expect("ORDERSYS_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn admin() -> PgConnection {
    match PgConnection::establish(&server_url()) {
        Ok(conn) => conn,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {} ({e}). The tests need a real server: start it \
             (see README) or set ORDERSYS_TEST_DATABASE_URL.",
            server_url()
        ),
    }
}

/// The migrated template's name: one per version of the migrations (a
/// hash of their files), made once, by whichever test process comes first.
fn template() -> &'static str {
    static TEMPLATE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let name = format!("ordersys_template_{:016x}", migrations_hash());
        let mut admin = admin();
        // Other test processes wait here while one makes the template.
        diesel::sql_query("SELECT pg_advisory_lock(7362872)")
            .execute(&mut admin)
            .expect("lock");
        let exists = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM pg_database WHERE datname = '{name}'"
        ))
        .get_result::<N>(&mut admin)
        .expect("look for the template")
        .n > 0;
        if !exists {
            let building = format!("{name}_building");
            for sql in [
                format!("DROP DATABASE IF EXISTS {building}"),
                format!("CREATE DATABASE {building}"),
            ] {
                diesel::sql_query(sql)
                    .execute(&mut admin)
                    .expect("template");
            }
            let mut conn = PgConnection::establish(&url_for(&building)).expect("connect");
            ordersys::db::migrate::run_pending(&mut conn).expect("migrate the template");
            drop(conn);
            diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {name}"))
                .execute(&mut admin)
                .expect("name the template");
        }
        diesel::sql_query("SELECT pg_advisory_unlock(7362872)")
            .execute(&mut admin)
            .expect("unlock");
        name
    })
}

/// A hash of every migration file, so a changed migration gets a new template.
fn migrations_hash() -> u64 {
    use std::hash::{Hash, Hasher};
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"));
    let mut files: Vec<_> = walk(root);
    files.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        file.strip_prefix(root).unwrap().hash(&mut hasher);
        std::fs::read(&file).unwrap().hash(&mut hasher);
    }
    hasher.finish()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// An empty database (no schema: the application migrates it).
    pub fn empty() -> Self {
        Self::create("")
    }

    /// A database with every migration applied, cloned from a migrated
    /// template database (as crates.io does): a copy takes milliseconds,
    /// a migration run much longer.
    pub fn migrated() -> Self {
        Self::create(&format!("TEMPLATE {}", template()))
    }

    fn create(options: &str) -> Self {
        let name = format!("ordersys_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name} {options}"))
            .execute(&mut admin())
            .expect("create test database");
        let url = url_for(&name);
        TestDb { name, url }
    }

    /// This database's URL for another role of the server (no password:
    /// the test server trusts loopback connections).
    pub fn url_as(&self, role: &str) -> String {
        let mut url = url::Url::parse(&self.url).expect("test database URL");
        url.set_username(role)
            .expect("a URL with a host takes a user");
        url.set_password(None)
            .expect("a URL with a host takes a password");
        url.to_string()
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }

    /// The text of any query returning one text column called `id`.
    pub fn text(&self, sql: &str) -> String {
        #[derive(QueryableByName)]
        struct Text {
            #[diesel(sql_type = diesel::sql_types::Text)]
            id: String,
        }
        diesel::sql_query(sql)
            .get_result::<Text>(&mut self.conn())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .id
    }

    /// Counts rows of any query returning one bigint called `n`.
    pub fn count(&self, sql: &str) -> i64 {
        diesel::sql_query(sql)
            .get_result::<N>(&mut self.conn())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
    }

    /// Runs `sql` as `role`; the error text when PostgreSQL refuses.
    pub fn run_as(&self, role: &str, sql: &str) -> Result<(), String> {
        let mut conn = PgConnection::establish(&self.url_as(role)).map_err(|e| e.to_string())?;
        diesel::sql_query(sql)
            .execute(&mut conn)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = diesel::sql_query(drop).execute(&mut admin()) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// The database role each mode connects as.
pub fn role(mode: ordersys::Mode) -> &'static str {
    match mode {
        ordersys::Mode::Products => "ordersys_products",
        ordersys::Mode::Orders => "ordersys_orders",
        ordersys::Mode::Worker => "ordersys_worker",
    }
}
