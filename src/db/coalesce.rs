//! Coalesces concurrent reads by key into one query (the "data loader"
//! pattern), for hot single-row reads such as `GET /produits/{id}`: a
//! [`Gatherer`] whose batch is one `WHERE key = ANY(...)` round trip.
//!
//! Freshness is unchanged: every batch is queried after all of its requests
//! arrived, so a read never sees data older than the request. When a batch
//! fails (database down, pool exhausted), each of its requests falls back to
//! its own query, so errors are exactly those of an uncoalesced read.

use super::gather::Gatherer;
use super::{Database, DbFailure};
use diesel::{PgConnection, QueryResult};
use std::collections::HashMap;
use std::hash::Hash;

/// Loads the rows for some keys; keys without a row are simply absent.
pub type LoadMany<K, V> = fn(&mut PgConnection, &[K]) -> QueryResult<Vec<(K, V)>>;

pub struct Coalescer<K, V> {
    gatherer: Gatherer<K, Option<V>>,
    load: LoadMany<K, V>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Coalescer {
            gatherer: self.gatherer.clone(),
            load: self.load,
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Copy + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    /// `runners`: how many batches may be in flight at once (at least 1).
    pub fn new(db: Database, runners: usize, load: LoadMany<K, V>) -> Self {
        let batch = move |conn: &mut PgConnection, keys: &[K]| {
            let rows: HashMap<K, V> = load(conn, keys)?.into_iter().collect();
            // A key asked twice in one batch gets the row each time.
            Ok(keys.iter().map(|key| rows.get(key).cloned()).collect())
        };
        Coalescer {
            gatherer: Gatherer::new(db, runners, Box::new(batch)),
            load,
        }
    }

    /// The row for `key`, if any.
    pub async fn get<E>(&self, key: K) -> Result<Option<V>, E>
    where
        E: DbFailure + From<diesel::result::Error> + Send + 'static,
    {
        let load = self.load;
        self.gatherer
            .run(key, move |conn, key| {
                Ok(load(conn, &[key])?.pop().map(|(_, v)| v))
            })
            .await
    }
}
