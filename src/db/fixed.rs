//! Fixed SQL, prepared once per connection.
//!
//! diesel caches a prepared statement per connection only for a query it
//! can tell apart from the others: one whose type has a static query id
//! (keyed on the type), or whose SQL is safe to key on its text. An ad hoc
//! `diesel::sql_query` is neither: it is parsed and planned on every call,
//! which for a short statement costs as much as running it. `fixed_sql!`
//! declares a statement as a type: its SQL text (a `&'static str`, long
//! ones in a `.sql` file beside the code with `include_str!`), and one
//! struct of its binds. The type has a static query id, so the statement
//! is prepared the first time a connection runs it and reused after.
//!
//! The binds are the struct's fields, in declared order: the text's
//! placeholders must be `$1`, `$2`, … `$N`, in that order of appearance,
//! each once, N the number of fields — checked when the crate is compiled,
//! so the numbering cannot drift from the fields. (Then the text diesel
//! sends, which numbers binds as it meets them, is the file's, byte for
//! byte.) A value needed twice is bound twice, or named once in a CTE.
//! Nothing else in the text may look like a placeholder: no `$` followed
//! by a digit in a comment or a string literal.

use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{QueryFragment, QueryId};
use diesel::RunQueryDsl;

/// A statement declared with `fixed_sql!`.
pub trait Fixed: QueryFragment<Pg> + QueryId + RunQueryDsl<PgConnection> {
    /// Its SQL, as written.
    const SQL: &'static str;
    /// How many binds it takes (its fields).
    const BINDS: usize;
}

/// Declares a fixed SQL statement: a struct of its binds, in the order the
/// text numbers them, each field written `name: RustType as SqlType`.
///
/// ```ignore
/// fixed_sql!(include_str!("stamp.sql"),
///     /// Why it exists.
///     struct Stamp<'a> {
///         message_id: Uuid as diesel::sql_types::Uuid,
///         result: &'a str as diesel::sql_types::Text,
///     }
/// );
/// ```
///
/// Run it like any diesel query (`execute`, `load`, `get_result`; rows are
/// read by name, with `QueryableByName`). At most one lifetime parameter.
macro_rules! fixed_sql {
    ($sql:expr,
     $(#[$attr:meta])*
     $vis:vis struct $name:ident $(<$lt:lifetime>)? {
         $( $(#[$field_attr:meta])* $field:ident : $ty:ty as $st:ty ),* $(,)?
     }
    ) => {
        $(#[$attr])*
        $vis struct $name $(<$lt>)? {
            $( $(#[$field_attr])* pub $field: $ty, )*
        }

        const _: () = assert!(
            $crate::db::fixed::numbered_in_order($sql, [$(stringify!($field)),*].len()),
            concat!(
                "the placeholders of ", stringify!($name),
                "'s SQL are not $1 to $N in order, once each, N its number of fields"
            ),
        );

        impl $(<$lt>)? $crate::db::fixed::Fixed for $name $(<$lt>)? {
            const SQL: &'static str = $sql;
            const BINDS: usize = [$(stringify!($field)),*].len();
        }

        impl $(<$lt>)? ::diesel::query_builder::QueryFragment<::diesel::pg::Pg>
            for $name $(<$lt>)?
        {
            fn walk_ast<'b>(
                &'b self,
                mut out: ::diesel::query_builder::AstPass<'_, 'b, ::diesel::pg::Pg>,
            ) -> ::diesel::QueryResult<()> {
                let mut rest = <Self as $crate::db::fixed::Fixed>::SQL;
                $(
                    let (before, after) = $crate::db::fixed::split_at_placeholder(rest);
                    out.push_sql(before);
                    out.push_bind_param::<$st, $ty>(&self.$field)?;
                    rest = after;
                )*
                out.push_sql(rest);
                Ok(())
            }
        }

        impl $(<$lt>)? ::diesel::query_builder::QueryId for $name $(<$lt>)? {
            type QueryId = $crate::db::fixed::fixed_sql!(@static $name $(<$lt>)?);
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl $(<$lt>)? ::diesel::query_builder::Query for $name $(<$lt>)? {
            type SqlType = ::diesel::sql_types::Untyped;
        }

        impl $(<$lt>)? ::diesel::RunQueryDsl<::diesel::pg::PgConnection> for $name $(<$lt>)? {}
    };
    (@static $name:ident <$lt:lifetime>) => { $name<'static> };
    (@static $name:ident) => { $name };
}

pub(crate) use fixed_sql;

/// The next placeholder (`$` and digits) of `sql` from byte `from`: where
/// it starts, where it ends, and its number.
const fn next_placeholder(sql: &[u8], from: usize) -> Option<(usize, usize, usize)> {
    let mut i = from;
    while i + 1 < sql.len() {
        if sql[i] == b'$' && sql[i + 1].is_ascii_digit() {
            let mut end = i + 1;
            let mut n: usize = 0;
            while end < sql.len() && sql[end].is_ascii_digit() {
                n = n
                    .saturating_mul(10)
                    .saturating_add((sql[end] - b'0') as usize);
                end += 1;
            }
            return Some((i, end, n));
        }
        i += 1;
    }
    None
}

/// Whether the placeholders of `sql` are `$1` to `$binds`, in that order,
/// each once.
pub const fn numbered_in_order(sql: &str, binds: usize) -> bool {
    let bytes = sql.as_bytes();
    let mut expected = 1;
    let mut from = 0;
    while let Some((_, end, n)) = next_placeholder(bytes, from) {
        if n != expected {
            return false;
        }
        expected += 1;
        from = end;
    }
    expected == binds + 1
}

/// The text before the first placeholder of `sql`, and the text after it
/// (all of it and nothing when there is none: the check at compile time
/// makes that unreachable).
pub fn split_at_placeholder(sql: &str) -> (&str, &str) {
    match next_placeholder(sql.as_bytes(), 0) {
        // A placeholder is ASCII: both ends are character boundaries.
        Some((start, end, _)) => (&sql[..start], &sql[end..]),
        None => (sql, ""),
    }
}

/// Every placeholder number of `sql`, in order of appearance (for tests).
#[cfg(test)]
pub fn placeholders(sql: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some((_, end, n)) = next_placeholder(sql.as_bytes(), from) {
        found.push(n);
        from = end;
    }
    found
}

/// Checks a fixed statement as its unit test does: its placeholders are
/// `$1` to `$N` in order, N its binds, and the SQL diesel renders is the
/// text as written.
#[cfg(test)]
pub fn check<S: Fixed>(statement: &S) {
    let expected: Vec<usize> = (1..=S::BINDS).collect();
    assert_eq!(placeholders(S::SQL), expected, "{}", S::SQL);
    let rendered = diesel::debug_query::<Pg, _>(statement).to_string();
    let sql = rendered
        .rsplit_once(" -- binds: ")
        .map_or(rendered.as_str(), |(sql, _)| sql);
    assert_eq!(sql, S::SQL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{Array, BigInt, Text};

    fixed_sql!(
        "SELECT $1 WHERE x = ANY($2) -- not a placeholder: $ 3, $x\n",
        /// A statement of the tests.
        struct Sample<'a> {
            first: i64 as BigInt,
            second: Vec<&'a str> as Array<Text>,
        }
    );

    #[test]
    fn placeholders_are_checked_in_order_once_each() {
        assert!(numbered_in_order("SELECT 1", 0));
        assert!(numbered_in_order("SELECT $1, $2", 2));
        assert!(!numbered_in_order("SELECT $1, $2, $10", 2));
        assert!(!numbered_in_order("SELECT $2, $1", 2));
        assert!(!numbered_in_order("SELECT $1, $1", 1));
        assert!(!numbered_in_order("SELECT $1", 2));
        assert!(!numbered_in_order("SELECT $1, $2", 1));
        assert!(numbered_in_order("SELECT '$', $1$", 1));
        assert_eq!(placeholders("$1 $12 $3"), [1, 12, 3]);
    }

    #[test]
    fn a_statement_renders_as_written_with_its_binds_in_order() {
        let sample = Sample {
            first: 7,
            second: vec!["a"],
        };
        check(&sample);
        let rendered = diesel::debug_query::<Pg, _>(&sample).to_string();
        assert!(rendered.ends_with("-- binds: [7, [\"a\"]]"), "{rendered}");
    }

    #[test]
    fn a_statement_has_a_static_query_id_of_its_own() {
        const { assert!(<Sample<'static> as QueryId>::HAS_STATIC_QUERY_ID) };
        assert_eq!(
            <Sample<'_> as QueryId>::query_id(),
            Some(std::any::TypeId::of::<Sample<'static>>())
        );
    }
}
