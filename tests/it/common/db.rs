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

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// An empty database (no schema: the application migrates it).
    pub fn empty() -> Self {
        let name = format!("ordersys_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin())
            .expect("create test database");
        let url = url_for(&name);
        TestDb { name, url }
    }

    /// A database with every migration applied.
    pub fn migrated() -> Self {
        let db = Self::empty();
        ordersys::db::migrate::run_pending(&mut db.conn()).expect("migrate test database");
        db
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }

    /// Counts rows of any query returning one bigint called `n`.
    pub fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        diesel::sql_query(sql)
            .get_result::<N>(&mut self.conn())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .n
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
