//! Building blocks of request types: fields that may be absent or null,
//! field errors, and pagination.
//!
//! Request structs keep every field optional at the serde level so that a
//! missing field is a rule broken (422, listed with every other problem)
//! rather than a parse failure (400) that hides the rest; their `TryFrom`
//! into domain types collects all problems at once.

use super::limits::{check_range, LIMIT_MAX, SKIP_MAX};
use paperclip::actix::Apiv2Schema;
use paperclip::v2::models::DefaultSchemaRaw;
use serde::{Deserialize, Deserializer, Serialize};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Apiv2Schema)]
pub struct FieldError {
    /// The field, as named in the request (`prix`, `lignes[0].quantite`, `id`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A field as sent: absent, explicitly null, or a value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Input<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Input<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer)? {
            Some(value) => Input::Value(value),
            None => Input::Null,
        })
    }
}

impl<T> Input<T> {
    /// The value of a field that must be present and not null.
    pub fn require(self, field: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        match self {
            Input::Value(v) => Some(v),
            Input::Absent => {
                errors.push(FieldError::new(field, "is required"));
                None
            }
            Input::Null => {
                errors.push(FieldError::new(field, "must not be null"));
                None
            }
        }
    }

    /// The value of a field of a partial update: absent means "keep", null
    /// is refused (the field cannot be emptied).
    pub fn change(self, field: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        match self {
            Input::Value(v) => Some(v),
            Input::Absent => None,
            Input::Null => {
                errors.push(FieldError::new(field, "must not be null"));
                None
            }
        }
    }

    /// The value of a nullable field of a partial update: `None` keeps it,
    /// `Some(None)` sets it to null.
    pub fn nullable_change(self) -> Option<Option<T>> {
        match self {
            Input::Value(v) => Some(Some(v)),
            Input::Null => Some(None),
            Input::Absent => None,
        }
    }

    /// The value of an optional field at creation (absent and null alike).
    pub fn optional(self) -> Option<T> {
        match self {
            Input::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: paperclip::v2::schema::Apiv2Schema> paperclip::v2::schema::Apiv2Schema for Input<T> {
    fn required() -> bool {
        false
    }

    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

/// Like [`Input`], but documented as required in the OpenAPI schema; a
/// missing value is still reported with the other field errors (422).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Required<T>(pub Input<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Required<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Input::deserialize(deserializer).map(Required)
    }
}

impl<T> Required<T> {
    pub fn require(self, field: &str, errors: &mut Vec<FieldError>) -> Option<T> {
        self.0.require(field, errors)
    }
}

impl<T: paperclip::v2::schema::Apiv2Schema> paperclip::v2::schema::Apiv2Schema for Required<T> {
    fn raw_schema() -> DefaultSchemaRaw {
        T::raw_schema()
    }
}

pub const DEFAULT_LIMIT: i64 = 100;

/// `?skip=0&limit=100` on every list route.
#[derive(Debug, Clone, Default, Deserialize, Apiv2Schema)]
pub struct Pagination {
    /// How many items to skip: 0 to 100000 (default 0).
    pub skip: Option<i64>,
    /// How many items to return: 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub skip: i64,
    pub limit: i64,
}

impl TryFrom<Pagination> for Page {
    type Error = Vec<FieldError>;

    fn try_from(p: Pagination) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let skip = p.skip.unwrap_or(0);
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
        check_range("skip", skip, 0, SKIP_MAX, &mut errors);
        check_range("limit", limit, 1, LIMIT_MAX, &mut errors);
        if errors.is_empty() {
            Ok(Page { skip, limit })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        description: Input<String>,
    }

    #[test]
    fn absent_null_and_value_are_told_apart() {
        let absent: Body = serde_json::from_str("{}").unwrap();
        let null: Body = serde_json::from_str(r#"{"description": null}"#).unwrap();
        let value: Body = serde_json::from_str(r#"{"description": "x"}"#).unwrap();
        assert_eq!(absent.description.nullable_change(), None);
        assert_eq!(null.description.nullable_change(), Some(None));
        assert_eq!(value.description.nullable_change(), Some(Some("x".into())));
    }

    #[test]
    fn pages_are_bounded() {
        let page = |skip, limit| Page::try_from(Pagination { skip, limit });
        assert_eq!(
            page(None, None).unwrap(),
            Page {
                skip: 0,
                limit: 100
            }
        );
        assert_eq!(
            page(Some(5), Some(1000)).unwrap(),
            Page {
                skip: 5,
                limit: 1000
            }
        );
        assert_eq!(page(Some(-1), Some(1001)).unwrap_err().len(), 2);
        assert_eq!(page(None, Some(0)).unwrap_err()[0].field, "limit");
    }
}
