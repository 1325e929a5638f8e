//! The status words of orders and order lines, defined once: the API's
//! JSON, the database's VARCHAR columns (and their CHECK constraints, which a
//! test compares with [`OrderStatus::ALL`] and [`StockStatus::ALL`]) and the
//! worker's rules all use these.

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Text;
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};

/// Maps a Rust enum to the VARCHAR column holding its contract name.
macro_rules! text_enum {
    ($name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a contract name; the error lists the valid ones.
            pub fn parse(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value {other:?}, expected one of {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as FromSql<Text, Pg>>::from_sql(bytes)?;
                Ok($name::parse(&text)?)
            }
        }
    };
}

/// The life of an order. `ANNULEE` and `EXPEDIEE` are final.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    EnAttente,
    EnCours,
    Expediee,
    Annulee,
}

text_enum!(OrderStatus {
    EnAttente = "EN_ATTENTE",
    EnCours = "EN_COURS",
    Expediee = "EXPEDIEE",
    Annulee = "ANNULEE",
});

impl OrderStatus {
    /// Lines of a closed order can no longer change.
    pub fn is_closed(self) -> bool {
        matches!(self, OrderStatus::Expediee | OrderStatus::Annulee)
    }
}

/// Where a line stands with the stock worker.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockStatus {
    /// Not yet applied by the worker.
    EnAttente,
    /// Its quantity is reserved from the product's stock.
    Reserve,
    /// Not enough stock: reserves nothing, re-tried when the line is updated.
    Rejete,
    /// Its order was cancelled: its stock was released.
    Libere,
}

text_enum!(StockStatus {
    EnAttente = "EN_ATTENTE",
    Reserve = "RESERVE",
    Rejete = "REJETE",
    Libere = "LIBERE",
});

/// Where an order's validation (the saga) stands; `null` on an order that
/// was never validated.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Apiv2Schema, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValidationStatus {
    /// Waiting for the worker's outcome of each line.
    EnCours,
    /// Every line holds its stock; the order is `EN_COURS`.
    Confirmee,
    /// A line could not be reserved, or the validation timed out: every
    /// line was released and the order is `ANNULEE`.
    Refusee,
}

text_enum!(ValidationStatus {
    EnCours = "EN_COURS",
    Confirmee = "CONFIRMEE",
    Refusee = "REFUSEE",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_their_spec_names() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Ok(*status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in StockStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert!(OrderStatus::parse("LIVREE")
            .unwrap_err()
            .contains("EN_ATTENTE, EN_COURS"));
    }
}
