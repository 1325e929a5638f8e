//! Money: an exact decimal, NUMERIC in PostgreSQL and a JSON number in the
//! API, never a float.
//!
//! The JSON text of a number is read and written as it is (serde_json's raw
//! values), so `19.99` is 19.99 from the request to the database and back;
//! sums such as an order's `total` are computed in decimal arithmetic.

use bigdecimal::BigDecimal;
use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output, ToSql};
use diesel::sql_types::Numeric;
use paperclip::v2::models::{DataType, DefaultSchemaRaw};
use paperclip::v2::schema::Apiv2Schema;
use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::fmt;
use std::str::FromStr;

use super::limits::PRIX_MAX;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, AsExpression, FromSqlRow)]
#[diesel(sql_type = Numeric)]
pub struct Money(pub BigDecimal);

impl Money {
    pub fn zero() -> Self {
        Money(BigDecimal::from(0))
    }

    /// `self × quantity`, exactly.
    pub fn times(&self, quantity: i32) -> Money {
        Money(&self.0 * BigDecimal::from(quantity))
    }

    /// Why this amount cannot be a price, if it cannot.
    pub fn price_problem(&self) -> Option<&'static str> {
        if self.0 < 0 {
            Some("must not be negative")
        } else if self.0.normalized().fractional_digit_count() > 2 {
            Some("must have at most two decimals")
        } else if self.0 > PRIX_MAX {
            Some("must be at most 1000000000")
        } else {
            None
        }
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Money(iter.map(|m| m.0).sum())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Two decimals, plain notation: always a valid JSON number.
        f.write_str(
            &self
                .0
                .with_scale_round(2, bigdecimal::RoundingMode::HalfEven)
                .to_plain_string(),
        )
    }
}

impl FromStr for Money {
    type Err = bigdecimal::ParseBigDecimalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BigDecimal::from_str(s).map(Money)
    }
}

impl From<i64> for Money {
    fn from(value: i64) -> Self {
        Money(BigDecimal::from(value))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text = raw.get();
        let unexpected = match text.as_bytes().first() {
            Some(b'"') => Some(Unexpected::Other("a string")),
            Some(b't' | b'f') => Some(Unexpected::Other("a boolean")),
            Some(b'[') => Some(Unexpected::Seq),
            Some(b'{') => Some(Unexpected::Map),
            _ => None,
        };
        if let Some(unexpected) = unexpected {
            return Err(de::Error::invalid_type(unexpected, &"a number"));
        }
        Money::from_str(text)
            .map_err(|_| de::Error::invalid_value(Unexpected::Other(text), &"a number"))
    }
}

impl ToSql<Numeric, Pg> for Money {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> diesel::serialize::Result {
        <BigDecimal as ToSql<Numeric, Pg>>::to_sql(&self.0, out)
    }
}

impl FromSql<Numeric, Pg> for Money {
    fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
        <BigDecimal as FromSql<Numeric, Pg>>::from_sql(bytes).map(Money)
    }
}

impl Apiv2Schema for Money {
    fn raw_schema() -> DefaultSchemaRaw {
        DefaultSchemaRaw {
            data_type: Some(DataType::Number),
            description: Some(
                "An exact amount of money: a JSON number with at most two decimals.".into(),
            ),
            ..Default::default()
        }
    }
}

impl paperclip::actix::OperationModifier for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    #[test]
    fn round_trips_json_exactly() {
        let m: Money = serde_json::from_str("19.99").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "19.99");
        assert_eq!(serde_json::to_string(&money("12.5")).unwrap(), "12.50");
        assert_eq!(serde_json::to_string(&money("1e3")).unwrap(), "1000.00");
    }

    #[test]
    fn rejects_non_numbers_with_a_clear_message() {
        let err = serde_json::from_str::<Money>("\"12\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a number"), "{err}");
        assert!(serde_json::from_str::<Money>("true").is_err());
    }

    #[test]
    fn sums_exactly_where_floats_would_not() {
        let total: Money = (0..10).map(|_| money("0.10")).sum();
        assert_eq!(total, money("1"));
        assert_eq!(money("19.99").times(3), money("59.97"));
    }

    #[test]
    fn price_rules() {
        assert_eq!(money("0").price_problem(), None);
        assert_eq!(money("12.50").price_problem(), None);
        assert_eq!(money("12.500").price_problem(), None);
        assert_eq!(money("-1").price_problem(), Some("must not be negative"));
        assert_eq!(
            money("1.234").price_problem(),
            Some("must have at most two decimals")
        );
        assert_eq!(money("1e9").price_problem(), None);
        assert_eq!(
            money("1000000000.01").price_problem(),
            Some("must be at most 1000000000")
        );
    }
}
