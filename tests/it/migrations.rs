//! Migrations: reversible, and safe to run from many processes at once.

use crate::common::TestDb;
use std::process::Command;

/// The tables of the schema; 9 when migrated, 0 when reverted.
fn tables(db: &TestDb) -> i64 {
    db.count(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public' \
         AND table_name IN ('produits', 'mouvements', 'commandes', 'commandes_produits', 'outbox', \
         'reservations', 'messages_traites', 'validation_lignes', 'evenements_traites')",
    )
}

fn migrations_on_disk() -> i64 {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
        .count() as i64
}

#[test]
fn up_down_and_up_again() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    let applied = ordersys::db::migrate::run_pending(&mut conn).unwrap();
    assert_eq!(applied.len() as i64, migrations_on_disk(), "{applied:?}");
    assert_eq!(tables(&db), 9);
    assert!(
        ordersys::db::migrate::run_pending(&mut conn)
            .unwrap()
            .is_empty(),
        "idempotent"
    );
    let reverted = ordersys::db::migrate::revert_all(&mut conn).unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert_eq!(tables(&db), 0);
    assert_eq!(
        ordersys::db::migrate::run_pending(&mut conn).unwrap(),
        applied
    );
    assert_eq!(tables(&db), 9);
}

#[test]
fn the_schema_enforces_the_rules_too() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    use diesel::RunQueryDsl;
    let refused = [
        "INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('', 1, 1)",
        "INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('x', -1, 1)",
        "INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('x', 1, -1)",
        "INSERT INTO commandes (statut) VALUES ('PERDUE')",
        "INSERT INTO commandes_produits (commande_id, produit_id, quantite, prix_unitaire) VALUES (1, 1, 1, 1)",
    ];
    for sql in refused {
        assert!(
            diesel::sql_query(sql).execute(&mut conn).is_err(),
            "accepted: {sql}"
        );
    }
    diesel::sql_query("INSERT INTO produits (nom, prix, quantite_en_stock) VALUES ('x', 1.005, 1)")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(
        db.count("SELECT (prix * 1000)::bigint AS n FROM produits"),
        1010,
        "NUMERIC(12,2)"
    );
}

#[test]
fn two_processes_migrating_at_once_both_succeed() {
    let db = TestDb::empty();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_ordersys"))
            .arg("migrate")
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start ordersys migrate")
    };
    let children: Vec<_> = (0..3).map(|_| spawn()).collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(tables(&db), 9);
    assert_eq!(
        db.count("SELECT count(*) AS n FROM __diesel_schema_migrations"),
        migrations_on_disk()
    );
}

#[test]
fn migrate_creates_a_missing_database() {
    let db = TestDb::empty();
    let missing = format!("{}_new", db.name);
    let url = db.url.replace(&db.name, &missing);
    let status = Command::new(env!("CARGO_BIN_EXE_ordersys"))
        .arg("migrate")
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .status()
        .unwrap();
    assert!(status.success());
    // Hand it to a TestDb so it is dropped.
    let created = TestDb { name: missing, url };
    assert_eq!(tables(&created), 9);
}

/// The words a CHECK constraint on `table`.`column` allows.
fn allowed_words(db: &TestDb, table: &str, column: &str) -> std::collections::BTreeSet<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Check {
        #[diesel(sql_type = diesel::sql_types::Text)]
        definition: String,
    }
    let checks: Vec<Check> = diesel::sql_query(format!(
        "SELECT pg_get_constraintdef(c.oid) AS definition FROM pg_constraint c \
         JOIN pg_class t ON t.oid = c.conrelid \
         WHERE t.relname = '{table}' AND c.contype = 'c' \
         AND pg_get_constraintdef(c.oid) LIKE '%{column}%'"
    ))
    .load(&mut db.conn())
    .unwrap();
    assert_eq!(checks.len(), 1, "one CHECK on {table}.{column}");
    checks[0]
        .definition
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_schema_allows_exactly_the_status_words_defined_in_rust() {
    use ordersys::domain::{OrderStatus, StockStatus, ValidationStatus};
    use ordersys::messages::Action;
    let db = TestDb::migrated();
    let words = |all: Vec<&str>| all.into_iter().map(str::to_owned).collect();
    let orders: Vec<&str> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(allowed_words(&db, "commandes", "statut"), words(orders));
    let lines: Vec<&str> = StockStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        allowed_words(&db, "commandes_produits", "statut_stock"),
        words(lines)
    );
    let validations: Vec<&str> = ValidationStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        allowed_words(&db, "commandes", "validation"),
        words(validations)
    );
    let actions: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
    assert_eq!(allowed_words(&db, "mouvements", "action"), words(actions));
}
