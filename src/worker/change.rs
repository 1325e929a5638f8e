//! Turning a delivery into a stock change, or into the reason it can never
//! be applied (it then goes to the dead-letter queue with that reason).

use crate::domain::limits::QUANTITE_MAX;
use crate::domain::{LineId, OrderId, ProductId, Version};
use crate::messages::{Action, StockMessage};
use crate::request_id::RequestId;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One order-line change to apply, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StockChange {
    /// The line and version of an ordersys-format message; `None` for the
    /// seed format (applied as a delta, without de-duplication).
    pub line: Option<LineRef>,
    pub action: Action,
    pub produit_id: ProductId,
    pub quantite: i32,
    pub commande_id: OrderId,
    /// The line's product and quantity before an UPDATED.
    pub ancien: Option<(ProductId, i32)>,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The id of the request that made the change (the message's
    /// `correlation_id`), when it has a valid one.
    pub request_id: Option<RequestId>,
    /// Part of an order's validation: its outcome is reported as a line
    /// event (tracked messages only).
    pub validation: bool,
}

/// What makes a message "tracked": its id (the de-duplication key), its
/// order line, and the line's version it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRef {
    pub message_id: Uuid,
    pub ligne_id: LineId,
    pub version: Version,
}

impl StockChange {
    /// Decodes a delivery: a body over `max_bytes` is refused unread, and
    /// a seed-format message (no message id) unless `accept_seed_format`.
    pub fn decode(
        body: &[u8],
        amqp_message_id: Option<&str>,
        max_bytes: usize,
        accept_seed_format: bool,
    ) -> Result<StockChange, String> {
        if body.len() > max_bytes {
            return Err(format!(
                "the body has {} bytes, more than worker.max_message_bytes ({max_bytes})",
                body.len()
            ));
        }
        let change = Self::parse(body, amqp_message_id)?;
        if change.line.is_none() && !accept_seed_format {
            return Err(
                "a seed-format message (no message_id, so no de-duplication) is refused: \
                        worker.accept_seed_format is false"
                    .to_owned(),
            );
        }
        Ok(change)
    }

    /// Parses a message body; `amqp_message_id` is the AMQP property, used
    /// when the body has no `message_id`.
    pub fn parse(body: &[u8], amqp_message_id: Option<&str>) -> Result<StockChange, String> {
        let m: StockMessage =
            serde_json::from_slice(body).map_err(|e| format!("malformed message: {e}"))?;
        if m.quantite < 0 {
            return Err(format!("quantite must not be negative, got {}", m.quantite));
        }
        if i64::from(m.quantite) > QUANTITE_MAX {
            return Err(format!(
                "quantite must be at most {QUANTITE_MAX}, got {}",
                m.quantite
            ));
        }
        if m.action != Action::Deleted && m.quantite < 1 {
            return Err(format!(
                "{} needs a quantite of at least 1, got {}",
                m.action.as_str(),
                m.quantite
            ));
        }
        let ancien = match (m.action, m.ancien_produit_id, m.ancienne_quantite) {
            (Action::Updated, Some(_), Some(q)) if i64::from(q) > QUANTITE_MAX => {
                return Err(format!(
                    "ancienne_quantite must be at most {QUANTITE_MAX}, got {q}"
                ))
            }
            (Action::Updated, Some(p), Some(q)) if q >= 0 => Some((p, q)),
            (Action::Updated, Some(_), Some(q)) => {
                return Err(format!("ancienne_quantite must not be negative, got {q}"))
            }
            (Action::Updated, _, _) => {
                return Err(
                    "UPDATED without its old values (ancien_produit_id and ancienne_quantite)"
                        .into(),
                )
            }
            _ => None,
        };
        let line = match (m.ligne_id, m.version) {
            (Some(_), Some(v)) if v < Version::FIRST => {
                return Err(format!("version must be at least 1, got {v}"))
            }
            (Some(ligne_id), Some(version)) => {
                let message_id = match (m.message_id, amqp_message_id) {
                    (Some(id), _) => id,
                    (None, Some(text)) => Uuid::parse_str(text)
                        .map_err(|_| format!("message_id property {text:?} is not a UUID"))?,
                    (None, None) => {
                        return Err("a message with ligne_id and version needs a message_id".into())
                    }
                };
                Some(LineRef {
                    message_id,
                    ligne_id,
                    version,
                })
            }
            // Seed format: applied as such, without de-duplication.
            (None, None) if m.validation => {
                return Err("a validation message needs ligne_id and version".into())
            }
            (None, None) => None,
            _ => return Err("ligne_id and version must be given together".into()),
        };
        Ok(StockChange {
            line,
            action: m.action,
            produit_id: m.produit_id,
            quantite: m.quantite,
            commande_id: m.commande_id,
            ancien,
            occurred_at: m.occurred_at,
            request_id: None,
            validation: m.validation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<StockChange, String> {
        StockChange::parse(body.as_bytes(), None)
    }

    #[test]
    fn ordersys_messages_are_tracked() {
        let c = parse(
            r#"{"action":"UPDATED","produit_id":5,"quantite":12,"commande_id":3,
                "message_id":"9b0c5a2e-0000-4000-8000-000000000000","ligne_id":17,"version":4,
                "ancien_produit_id":5,"ancienne_quantite":10,"occurred_at":"2026-11-24T10:00:00Z"}"#,
        )
        .unwrap();
        let line = c.line.unwrap();
        assert_eq!(
            (line.ligne_id, line.version, c.ancien),
            (LineId(17), Version(4), Some((ProductId(5), 10)))
        );
    }

    #[test]
    fn seed_messages_are_accepted_without_deduplication() {
        let c = StockChange::parse(
            br#"{"action":"CREATED","produit_id":1,"quantite":2,"commande_id":3}"#,
            Some("9b0c5a2e-0000-4000-8000-000000000000"),
        )
        .unwrap();
        assert_eq!(c.line, None);
    }

    #[test]
    fn the_amqp_message_id_stands_in_for_a_missing_body_id() {
        let body = br#"{"action":"CREATED","produit_id":1,"quantite":2,"commande_id":3,"ligne_id":1,"version":1}"#;
        let c = StockChange::parse(body, Some("9b0c5a2e-0000-4000-8000-000000000000")).unwrap();
        assert!(c.line.is_some());
        assert!(StockChange::parse(body, None)
            .unwrap_err()
            .contains("message_id"));
        assert!(StockChange::parse(body, Some("not-a-uuid"))
            .unwrap_err()
            .contains("UUID"));
    }

    #[test]
    fn oversized_bodies_are_refused_unread() {
        let body = br#"{"action":"CREATED","produit_id":1,"quantite":2,"commande_id":3}"#;
        assert!(StockChange::decode(body, None, body.len(), true).is_ok());
        let reason = StockChange::decode(body, None, 10, true).unwrap_err();
        assert!(reason.contains("max_message_bytes"), "{reason}");
    }

    #[test]
    fn seed_format_messages_are_refused_where_switched_off() {
        let seed = br#"{"action":"CREATED","produit_id":1,"quantite":2,"commande_id":3}"#;
        let reason = StockChange::decode(seed, None, 1000, false).unwrap_err();
        assert!(reason.contains("accept_seed_format"), "{reason}");
        let tracked = br#"{"action":"CREATED","produit_id":1,"quantite":2,"commande_id":3,
            "message_id":"6f1c3c1e-9f7a-4d0e-8a53-3b1f5c2d9e10","ligne_id":4,"version":1}"#;
        assert!(StockChange::decode(tracked, None, 1000, false).is_ok());
    }

    #[test]
    fn poison_messages_say_why() {
        let cases = [
            ("not json", "malformed"),
            (
                r#"{"action":"SHIPPED","produit_id":1,"quantite":1,"commande_id":1}"#,
                "unknown variant",
            ),
            (
                r#"{"action":"CREATED","produit_id":1,"commande_id":1}"#,
                "quantite",
            ),
            (
                r#"{"action":"UPDATED","produit_id":1,"quantite":1,"commande_id":1}"#,
                "old values",
            ),
            (
                r#"{"action":"CREATED","produit_id":1,"quantite":0,"commande_id":1}"#,
                "at least 1",
            ),
            (
                r#"{"action":"DELETED","produit_id":1,"quantite":-1,"commande_id":1}"#,
                "negative",
            ),
            (
                r#"{"action":"CREATED","produit_id":1,"quantite":1,"commande_id":1,"ligne_id":4}"#,
                "together",
            ),
            (
                r#"{"action":"DELETED","produit_id":1,"quantite":2000000,"commande_id":1}"#,
                "at most 1000000",
            ),
        ];
        for (body, why) in cases {
            let reason = parse(body).unwrap_err();
            assert!(reason.contains(why), "{body}: {reason}");
        }
    }
}
