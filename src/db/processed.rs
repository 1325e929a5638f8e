//! The de-duplication ledgers: the ids of the messages already applied,
//! recorded in the transaction that applies them — the worker's stock
//! changes (`messages_traites`) and the saga's line events
//! (`evenements_traites`) — and forgotten after a retention. Both are
//! written and purged the same way, by fixed statements.

use super::fixed::fixed_sql;
use diesel::prelude::*;
use diesel::sql_types::{Array, Double, Uuid as SqlUuid};
use std::collections::HashSet;
use uuid::Uuid;

/// Which messages a ledger holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ledger {
    /// Stock changes applied by the worker.
    StockChanges,
    /// Line events applied by the validation saga.
    LineEvents,
}

/// Records `ids` as applied, in the order given (give them sorted, so that
/// batches sharing ids lock them in one order); returns those recorded now
/// (the others were applied before). A concurrent transaction recording
/// one of them waits until this one ends, then finds it applied.
pub fn record(conn: &mut PgConnection, ledger: Ledger, ids: &[Uuid]) -> QueryResult<HashSet<Uuid>> {
    let recorded: Vec<Recorded> = match ledger {
        Ledger::StockChanges => RecordStockChanges { ids }.load(conn)?,
        Ledger::LineEvents => RecordLineEvents { ids }.load(conn)?,
    };
    Ok(recorded.into_iter().map(|r| r.message_id).collect())
}

/// Forgets ids recorded longer than `retention` ago.
pub fn purge(
    conn: &mut PgConnection,
    ledger: Ledger,
    retention: std::time::Duration,
) -> QueryResult<usize> {
    match ledger {
        Ledger::StockChanges => super::purge(conn, |secs| PurgeStockChanges { secs }, retention),
        Ledger::LineEvents => super::purge(conn, |secs| PurgeLineEvents { secs }, retention),
    }
}

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = SqlUuid)]
    message_id: Uuid,
}

fixed_sql!(
    "INSERT INTO messages_traites (message_id) SELECT unnest($1) \
     ON CONFLICT DO NOTHING RETURNING message_id",
    struct RecordStockChanges<'a> {
        ids: &'a [Uuid] as Array<SqlUuid>,
    }
);

fixed_sql!(
    "INSERT INTO evenements_traites (message_id) SELECT unnest($1) \
     ON CONFLICT DO NOTHING RETURNING message_id",
    struct RecordLineEvents<'a> {
        ids: &'a [Uuid] as Array<SqlUuid>,
    }
);

fixed_sql!(
    "DELETE FROM messages_traites WHERE message_id IN (SELECT message_id FROM messages_traites \
     WHERE traite_le < now() - make_interval(secs => $1) LIMIT 5000)",
    struct PurgeStockChanges {
        secs: f64 as Double,
    }
);

fixed_sql!(
    "DELETE FROM evenements_traites WHERE message_id IN (SELECT message_id FROM evenements_traites \
     WHERE traite_le < now() - make_interval(secs => $1) LIMIT 5000)",
    struct PurgeLineEvents {
        secs: f64 as Double,
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::fixed::check;

    #[test]
    fn the_statements_are_numbered_as_their_fields() {
        let ids = [Uuid::nil()];
        check(&RecordStockChanges { ids: &ids });
        check(&RecordLineEvents { ids: &ids });
        check(&PurgeStockChanges { secs: 1.0 });
        check(&PurgeLineEvents { secs: 1.0 });
    }

    #[test]
    fn a_purge_chunk_is_the_chunk_size() {
        for sql in [
            <PurgeStockChanges as crate::db::fixed::Fixed>::SQL,
            <PurgeLineEvents as crate::db::fixed::Fixed>::SQL,
        ] {
            assert!(sql.ends_with(&format!("LIMIT {})", crate::db::PURGE_CHUNK)));
        }
    }
}
