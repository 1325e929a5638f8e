//! The bounds of every input, in one place: the models check them (422
//! naming the field), the OpenAPI documents state them (`maxLength`,
//! `minimum`, `maximum`, `pattern`), and they keep every computation on
//! stock and money far from overflowing, in Rust and in SQL.

use super::FieldError;

/// `nom`: 1 to 200 characters.
pub const NOM_MAX_CHARS: usize = 200;
/// `description`: at most 2000 characters.
pub const DESCRIPTION_MAX_CHARS: usize = 2000;
/// Stock, set at creation or by a correction: 0 to 1,000,000,000.
pub const STOCK_MAX: i64 = 1_000_000_000;
/// A line's `quantite`: 1 to 1,000,000.
pub const QUANTITE_MAX: i64 = 1_000_000;
/// A price: 0 to 1,000,000,000, two decimals at most.
pub const PRIX_MAX: i64 = 1_000_000_000;
/// `skip` of list routes: 0 to 100,000 (deeper pages cost a scan of all the
/// rows skipped; filter or page by id instead).
pub const SKIP_MAX: i64 = 100_000;
/// `limit` of list routes: 1 to 1000.
pub const LIMIT_MAX: i64 = 1000;
/// Lines one order may hold, so that reading 1000 orders is bounded work.
pub const LINES_PER_ORDER_MAX: i64 = 100;
/// Ids in bodies: 1 to 2^63 - 1.
pub const ID_MIN: i64 = 1;

/// The JSON-schema pattern of a one-line text: no control character.
pub const ONE_LINE_PATTERN: &str = r"^[^\u0000-\u001F\u007F-\u009F]*$";
/// The JSON-schema pattern of a free text: tabs and line breaks allowed.
pub const FREE_TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";

// The bounds keep stock arithmetic inside i32 (stock plus what one order
// may reserve) and prices inside NUMERIC(12, 2): checked at compile time.
const _: () = assert!(STOCK_MAX + QUANTITE_MAX * LINES_PER_ORDER_MAX < i32::MAX as i64);
const _: () = assert!(PRIX_MAX < 10_000_000_000);

/// Checks a text field: at most `max_chars` characters, and no control
/// character (NUL among them, which PostgreSQL refuses), except tabs and
/// line breaks when `free_text`.
pub fn check_text(
    field: &str,
    value: &str,
    max_chars: usize,
    free_text: bool,
    errors: &mut Vec<FieldError>,
) {
    let chars = value.chars().count();
    if chars > max_chars {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    let allowed = |c: char| free_text && matches!(c, '\t' | '\n' | '\r');
    if let Some(c) = value.chars().find(|&c| c.is_control() && !allowed(c)) {
        errors.push(FieldError::new(
            field,
            format!(
                "must not contain control characters, found U+{:04X}",
                c as u32
            ),
        ));
    }
}

/// Checks that `value` lies in `min..=max`.
pub fn check_range(field: &str, value: i64, min: i64, max: i64, errors: &mut Vec<FieldError>) {
    if !(min..=max).contains(&value) {
        errors.push(FieldError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str, free_text: bool) -> Vec<String> {
        let mut errors = Vec::new();
        check_text("f", value, 5, free_text, &mut errors);
        errors.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn texts_refuse_control_characters_and_excess_length() {
        assert!(text("Stylo", false).is_empty());
        assert_eq!(
            text("a\u{0}b", false),
            ["must not contain control characters, found U+0000"]
        );
        assert_eq!(text("a\nb", false).len(), 1);
        assert!(text("a\nb\tc", true).is_empty());
        assert_eq!(text("a\u{85}", true).len(), 1, "C1 controls too");
        assert_eq!(
            text("éééééé", false),
            ["must be at most 5 characters, got 6"]
        );
    }

    #[test]
    fn ranges_are_inclusive() {
        let mut errors = Vec::new();
        check_range("q", 1, 1, 3, &mut errors);
        check_range("q", 3, 1, 3, &mut errors);
        assert!(errors.is_empty());
        check_range("q", 0, 1, 3, &mut errors);
        check_range("q", 4, 1, 3, &mut errors);
        assert_eq!(errors.len(), 2);
    }
}
