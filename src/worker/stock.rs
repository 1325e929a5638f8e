//! The stock transaction: a batch of changes applied by one call to the
//! `ordersys_apply_stock` SQL function (migration `..._stock`), its alerts
//! written to the outbox, all in one transaction. No broker types here: the
//! consumer is a thin shell around [`apply`], which tests call directly.
//!
//! Why SQL: every stock change is a single guarded UPDATE (never
//! read-modify-write), and a batch of hundreds of messages costs one round
//! trip instead of several per message.

use super::change::StockChange;
use crate::messages::{AlertEvent, StockAlert};
use crate::orders::model::StockStatus;
use crate::outbox;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; for a tracked message, the line's new `statut_stock`.
    Applied(Option<StockStatus>),
    /// This message id was already applied.
    Duplicate,
    /// A newer version of the line was already applied.
    Stale,
    /// The product does not exist: dead-letter.
    UnknownProduct,
    /// Seed format only: not enough stock, and no line to mark REJETE: dead-letter.
    InsufficientStock,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Integer)]
    o_idx: i32,
    #[diesel(sql_type = Text)]
    o_outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    o_statut: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    o_alert: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    o_alert_produit: Option<i64>,
    #[diesel(sql_type = Nullable<Integer>)]
    o_alert_stock: Option<i32>,
}

fn unexpected(what: String) -> diesel::result::Error {
    diesel::result::Error::DeserializationError(what.into())
}

/// Applies `changes` in order, in one transaction, and returns one outcome
/// per change. Alerts for thresholds crossed go to the outbox in the same
/// transaction; the second value says whether any did.
pub fn apply(
    conn: &mut PgConnection,
    changes: &[StockChange],
    low_threshold: i32,
) -> QueryResult<(Vec<Outcome>, bool)> {
    if changes.is_empty() {
        return Ok((Vec::new(), false));
    }
    conn.transaction(|conn| {
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT * FROM ordersys_apply_stock($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind::<Array<Nullable<SqlUuid>>, _>(
            changes.iter().map(|c| c.message_id).collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<BigInt>>, _>(changes.iter().map(|c| c.ligne_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(changes.iter().map(|c| c.version).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            changes
                .iter()
                .map(|c| c.action.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<BigInt>, _>(changes.iter().map(|c| c.produit_id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(changes.iter().map(|c| c.quantite).collect::<Vec<_>>())
        .bind::<Array<BigInt>, _>(changes.iter().map(|c| c.commande_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(
            changes
                .iter()
                .map(|c| c.ancien.map(|a| a.0))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Integer>>, _>(
            changes
                .iter()
                .map(|c| c.ancien.map(|a| a.1))
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Nullable<Timestamptz>>, _>(
            changes.iter().map(|c| c.occurred_at).collect::<Vec<_>>(),
        )
        .bind::<Integer, _>(low_threshold)
        .load(conn)?;
        if rows.len() != changes.len() {
            return Err(unexpected(format!(
                "{} outcomes for {} changes",
                rows.len(),
                changes.len()
            )));
        }
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut alerts = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            if row.o_idx as usize != i + 1 {
                return Err(unexpected(format!("outcome {} out of order", row.o_idx)));
            }
            let outcome = match row.o_outcome.as_str() {
                "applied" => Outcome::Applied(
                    row.o_statut
                        .as_deref()
                        .map(StockStatus::parse)
                        .transpose()
                        .map_err(unexpected)?,
                ),
                "duplicate" => Outcome::Duplicate,
                "stale" => Outcome::Stale,
                "unknown_product" => Outcome::UnknownProduct,
                "insufficient_stock" => Outcome::InsufficientStock,
                other => return Err(unexpected(format!("unknown outcome {other}"))),
            };
            outcomes.push(outcome);
            let event = match row.o_alert.as_deref() {
                Some("STOCK_EPUISE") => AlertEvent::StockEpuise,
                Some("STOCK_BAS") => AlertEvent::StockBas,
                _ => continue,
            };
            if let (Some(produit_id), Some(quantite_en_stock)) =
                (row.o_alert_produit, row.o_alert_stock)
            {
                alerts.push(StockAlert {
                    event,
                    produit_id,
                    quantite_en_stock,
                    seuil: low_threshold,
                });
            }
        }
        outbox::enqueue_alerts(conn, &alerts)?;
        Ok((outcomes, !alerts.is_empty()))
    })
}

/// Forgets processed message ids older than `retention_secs`. Safe: a
/// tracked message that old is also older than its line's applied version.
pub fn purge_processed(conn: &mut PgConnection, retention_secs: u64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM messages_traites WHERE message_id IN (SELECT message_id FROM messages_traites \
         WHERE traite_le < now() - make_interval(secs => $1) LIMIT 10000)",
    )
    .bind::<diesel::sql_types::Double, _>(retention_secs as f64)
    .execute(conn)
}
