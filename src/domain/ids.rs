//! The ids of orders, order lines and products, and the version of a line,
//! each its own type: a line id and a version (both `BIGINT`) swapped in a
//! tuple, a map key or a call no longer compile. Each is an `i64` as it
//! crosses the wire (serde `transparent`: the JSON is the bare number) and
//! as it is stored (`BIGINT`: it binds and loads directly), so the types
//! change nothing outside the process.

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::BigInt;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares an `i64` newtype mapped to `BIGINT` and to a JSON number.
macro_rules! bigint_id {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
            AsExpression, FromSqlRow,
        )]
        #[diesel(sql_type = BigInt)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl $name {
            /// The bare number, for an edge that has no type for it.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        /// Logged as the bare number.
        impl log::kv::ToValue for $name {
            fn to_value(&self) -> log::kv::Value<'_> {
                log::kv::Value::from(self.0)
            }
        }

        impl ToSql<BigInt, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                <i64 as ToSql<BigInt, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<BigInt, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                <i64 as FromSql<BigInt, Pg>>::from_sql(bytes).map($name)
            }
        }
    };
}

bigint_id!(
    /// An order (`commandes.id`).
    OrderId
);

bigint_id!(
    /// An order line (`commandes_produits.id`).
    LineId
);

bigint_id!(
    /// A product (`produits.id`).
    ProductId
);

bigint_id!(
    /// The version of an order line: bumped by every change to it, so the
    /// worker applies the newest and knows an older one as stale. 0 is
    /// "never seen"; a line starts at 1.
    #[derive(Default)]
    Version
);

impl Version {
    /// The version a line's first change produces.
    pub const FIRST: Version = Version(1);

    /// The version the line's next change produces.
    pub const fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bare_numbers_on_the_wire() {
        assert_eq!(serde_json::to_string(&LineId(17)).unwrap(), "17");
        assert_eq!(serde_json::from_str::<Version>("4").unwrap(), Version(4));
        assert_eq!(ProductId(5).to_string(), "5");
        assert_eq!(Version::default().next(), Version::FIRST);
    }
}
