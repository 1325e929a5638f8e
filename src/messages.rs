//! The wire contract with RabbitMQ (docs/contract.md §4): names of the topology and the
//! message bodies. The outbox writer, the relay, the worker and the tests
//! all use these types; nothing else defines a message.

use crate::domain::{LineId, OrderId, ProductId, Version};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Direct exchange that receives every order-line change.
pub const PRODUCT_EXCHANGE: &str = "product_exchange";
/// Routing key from [`PRODUCT_EXCHANGE`] to [`PRODUCT_QUEUE`].
pub const PRODUCT_ROUTING_KEY: &str = "product.update";
/// The durable work queue the stock workers consume.
pub const PRODUCT_QUEUE: &str = "product_queue";
/// The partitions of the stock messages, when `amqp.stock_partitions` is
/// N > 0: a product's changes go to partition `produit_id mod N`, routed by
/// [`PRODUCT_EXCHANGE`] with `product.update.{k}` to the durable queue
/// `product_queue.{k}`. [`PRODUCT_QUEUE`] stays, bound to
/// [`PRODUCT_ROUTING_KEY`], for what producers without partitions send.
pub fn stock_partition(produit_id: ProductId, partitions: u16) -> u16 {
    let n = i64::from(partitions.max(1));
    produit_id.get().rem_euclid(n) as u16
}

/// The routing key of partition `k` ([`stock_partition`]).
pub fn stock_routing_key(k: u16) -> String {
    format!("{PRODUCT_ROUTING_KEY}.{k}")
}

/// The queue of partition `k` ([`stock_partition`]).
pub fn stock_queue(k: u16) -> String {
    format!("{PRODUCT_QUEUE}.{k}")
}

/// Dead-letter exchange of [`PRODUCT_QUEUE`] (and of its partitions).
pub const DEAD_LETTER_EXCHANGE: &str = "product_dlx";
/// Where messages that can never succeed end up, with [`ERROR_HEADER`].
pub const DEAD_LETTER_QUEUE: &str = "product_queue.dlq";
/// Fanout exchange of stock alerts, and the durable queue bound to it.
pub const ALERTS_EXCHANGE: &str = "stock_alerts";
pub const ALERTS_QUEUE: &str = "stock_alerts";
/// Direct exchange of the workers' line events (the order-validation
/// saga's), the routing key to its queue, and the durable queue the orders
/// service consumes.
pub const ORDER_EVENTS_EXCHANGE: &str = "order_events";
pub const ORDER_EVENTS_ROUTING_KEY: &str = "line.outcome";
pub const ORDER_EVENTS_QUEUE: &str = "order_events";
/// Dead-letter exchange of [`ORDER_EVENTS_QUEUE`], and where its refused
/// messages end up.
pub const ORDER_EVENTS_DEAD_LETTER_EXCHANGE: &str = "order_events_dlx";
pub const ORDER_EVENTS_DEAD_LETTER_QUEUE: &str = "order_events.dlq";
/// Header naming why a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-ordersys-error";
/// Header with the class of [`ERROR_HEADER`]'s reason ([`DeadLetterClass`]).
pub const ERROR_CLASS_HEADER: &str = "x-ordersys-error-class";

/// Why a message was dead-lettered, as a class (for metrics and routing;
/// [`ERROR_HEADER`] has the detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterClass {
    /// Unreadable: not JSON, wrong or out-of-range fields, too large, or a
    /// format the worker is told not to accept.
    Malformed,
    /// Names a product that does not exist.
    UnknownProduct,
    /// A seed-format reservation the stock cannot cover (no line to mark
    /// `REJETE`).
    Uncoverable,
    /// Releasing it would take a stock past its largest value.
    Overflow,
    /// The database refused it (a constraint).
    Refused,
}

impl DeadLetterClass {
    pub const ALL: [DeadLetterClass; 5] = [
        DeadLetterClass::Malformed,
        DeadLetterClass::UnknownProduct,
        DeadLetterClass::Uncoverable,
        DeadLetterClass::Overflow,
        DeadLetterClass::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterClass::Malformed => "malformed",
            DeadLetterClass::UnknownProduct => "unknown_product",
            DeadLetterClass::Uncoverable => "uncoverable",
            DeadLetterClass::Overflow => "overflow",
            DeadLetterClass::Refused => "refused",
        }
    }

    /// What a line's history (readable through the API) says of a refusal
    /// of this class: the class and a fixed text. The detail (a product
    /// id, the database's own message) stays in the dead letter's
    /// [`ERROR_HEADER`] and the log, for operators.
    pub fn motif(self) -> &'static str {
        match self {
            DeadLetterClass::Malformed => "malformed: the message could not be read",
            DeadLetterClass::UnknownProduct => "unknown_product: the product does not exist",
            DeadLetterClass::Uncoverable => "uncoverable: the stock cannot cover it",
            DeadLetterClass::Overflow => "overflow: the stock would pass its largest value",
            DeadLetterClass::Refused => "refused: the database refused the change",
        }
    }
}

/// Why a message can never succeed: what its dead letter carries in
/// [`ERROR_CLASS_HEADER`] and [`ERROR_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub class: DeadLetterClass,
    pub reason: String,
}

impl Refusal {
    pub fn new(class: DeadLetterClass, reason: impl Into<String>) -> Refusal {
        Refusal {
            class,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    pub const ALL: &'static [Action] = &[Action::Created, Action::Updated, Action::Deleted];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "CREATED",
            Action::Updated => "UPDATED",
            Action::Deleted => "DELETED",
        }
    }
}

/// One order-line change. The first four fields are the seed system's
/// format; the rest are ordersys's and are absent from seed-format messages.
///
/// `produit_id`/`quantite` are the line's state after the change (for
/// DELETED: what the line held, to release); `version` orders the changes of
/// one line, so the worker can apply the newest and ignore older ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockMessage {
    pub action: Action,
    pub produit_id: ProductId,
    pub quantite: i32,
    pub commande_id: OrderId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ligne_id: Option<LineId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ancien_produit_id: Option<ProductId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ancienne_quantite: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// Part of an order's validation: the worker reports the outcome as a
    /// [`LineEvent`]. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub validation: bool,
}

/// What the worker did with a line change that is part of an order's
/// validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LineOutcome {
    /// The line holds its quantity.
    LigneReservee,
    /// The stock could not cover it: the line holds nothing.
    LigneRejetee,
    /// What it held was given back (the compensation of a refused order).
    LigneLiberee,
}

impl LineOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LineOutcome::LigneReservee => "LIGNE_RESERVEE",
            LineOutcome::LigneRejetee => "LIGNE_REJETEE",
            LineOutcome::LigneLiberee => "LIGNE_LIBEREE",
        }
    }
}

/// Published by a worker to [`ORDER_EVENTS_EXCHANGE`], through its outbox,
/// in the transaction that applied the line change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineEvent {
    pub event: LineOutcome,
    pub commande_id: OrderId,
    pub ligne_id: LineId,
    /// The line's version the outcome is for.
    pub version: Version,
    pub produit_id: ProductId,
    /// What the line asked for.
    pub quantite: i32,
    /// For [`LineOutcome::LigneRejetee`]: the product's stock when it was
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disponible: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertEvent {
    /// Stock reached 0.
    StockEpuise,
    /// Stock fell below `stock.low_threshold`.
    StockBas,
}

impl AlertEvent {
    pub const ALL: [AlertEvent; 2] = [AlertEvent::StockEpuise, AlertEvent::StockBas];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::StockEpuise => "STOCK_EPUISE",
            AlertEvent::StockBas => "STOCK_BAS",
        }
    }
}

/// Published to [`ALERTS_EXCHANGE`] when a product's stock crosses a threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StockAlert {
    pub event: AlertEvent,
    pub produit_id: ProductId,
    pub quantite_en_stock: i32,
    pub seuil: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_fields_come_first_and_absent_ones_are_omitted() {
        let m = StockMessage {
            action: Action::Created,
            produit_id: ProductId(5),
            quantite: 12,
            commande_id: OrderId(3),
            message_id: None,
            ligne_id: Some(LineId(17)),
            version: Some(Version(1)),
            ancien_produit_id: None,
            ancienne_quantite: None,
            occurred_at: None,
            validation: false,
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"action":"CREATED","produit_id":5,"quantite":12,"commande_id":3,"ligne_id":17,"version":1}"#
        );
    }

    #[test]
    fn history_motifs_are_a_fixed_text_naming_their_class() {
        for class in DeadLetterClass::ALL {
            let motif = class.motif();
            assert!(
                motif.starts_with(&format!("{}: ", class.as_str())),
                "{motif}"
            );
            assert!(motif.len() < 80, "{motif}");
        }
    }

    #[test]
    fn seed_format_messages_parse() {
        let m: StockMessage = serde_json::from_str(
            r#"{"action": "DELETED", "produit_id": 1, "quantite": 2, "commande_id": 3}"#,
        )
        .unwrap();
        assert_eq!(m.action, Action::Deleted);
        assert_eq!(m.version, None);
    }

    #[test]
    fn alerts_serialize_as_specified() {
        let a = StockAlert {
            event: AlertEvent::StockBas,
            produit_id: ProductId(1),
            quantite_en_stock: 3,
            seuil: 5,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"event":"STOCK_BAS","produit_id":1,"quantite_en_stock":3,"seuil":5}"#
        );
    }
}
