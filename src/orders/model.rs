//! Orders and order lines as stored, as sent, and as validated.

use crate::db::schema::{commandes_produits, historique_lignes};
use crate::domain::limits::{check_range, QUANTITE_MAX};
use crate::domain::{
    FieldError, Input, LineId, Money, OrderId, OrderStatus, ProductId, Required, StockStatus,
    ValidationStatus, Version,
};
use crate::messages::{Action, StockMessage};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use paperclip::actix::Apiv2Schema;
use paperclip::v2::models::DefaultSchemaRaw;
use serde::{Deserialize, Serialize};

/// An order with its lines.
#[derive(Debug, Clone, Serialize, Deserialize, Apiv2Schema)]
pub struct Order {
    pub id: i64,
    pub statut: OrderStatus,
    /// Σ quantite × prix_unitaire over its lines, exactly.
    pub total: Money,
    /// When the order was created.
    pub timestamp: DateTime<Utc>,
    /// Its validation (`POST /commandes/{id}/validation`): `null` before
    /// any, then `EN_COURS`, `CONFIRMEE` or `REFUSEE`.
    pub validation: Option<ValidationStatus>,
    /// Why the validation was refused: each line that could not be
    /// reserved, with what it asked and what was available, or the timeout.
    pub motif: Option<String>,
    pub lignes: Vec<OrderLine>,
}

/// An order row, without its lines.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = crate::db::schema::commandes, check_for_backend(diesel::pg::Pg))]
pub struct OrderRow {
    pub id: i64,
    pub statut: OrderStatus,
    pub timestamp: DateTime<Utc>,
    pub validation: Option<ValidationStatus>,
    pub motif: Option<String>,
}

impl OrderRow {
    pub fn with_lines(self, lignes: Vec<OrderLine>) -> Order {
        Order {
            id: self.id,
            statut: self.statut,
            total: lignes
                .iter()
                .map(|l| l.prix_unitaire.times(l.quantite))
                .sum(),
            timestamp: self.timestamp,
            validation: self.validation,
            motif: self.motif,
            lignes,
        }
    }
}

/// An order line.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize, Deserialize, Apiv2Schema)]
#[diesel(table_name = commandes_produits, check_for_backend(diesel::pg::Pg))]
pub struct OrderLine {
    pub id: i64,
    pub commande_id: i64,
    pub produit_id: i64,
    /// At least 1.
    pub quantite: i32,
    /// The product's price when the line was created (or moved to this product).
    pub prix_unitaire: Money,
    pub statut_stock: StockStatus,
}

/// One change of an order line, as it went through the pipeline: accepted
/// (committed with its outbox message), published (taken by the relay,
/// recorded once the broker confirmed it), applied by a worker (with its
/// outcome).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize, Deserialize, Apiv2Schema)]
#[diesel(table_name = historique_lignes, check_for_backend(diesel::pg::Pg))]
pub struct LineChange {
    pub ligne_id: i64,
    pub commande_id: i64,
    /// The line's version this change produced (1 at creation).
    pub version: i64,
    /// `CREATED`, `UPDATED` or `DELETED`.
    pub action: String,
    /// The line's product and quantity after the change (for `DELETED`:
    /// what it held).
    pub produit_id: i64,
    pub quantite: i32,
    /// The id of the stock message (AMQP `message_id`).
    pub message_id: uuid::Uuid,
    /// The id the server gave the HTTP request that made the change (its
    /// response's `X-Request-Id`; the message's `correlation_id`).
    pub request_id: Option<String>,
    /// The id the client sent with that request (its `X-Request-Id`, else
    /// the trace id of its `traceparent`), as the client said it: never
    /// the server's id; `null` when it sent none (or an invalid one).
    pub client_request_id: Option<String>,
    pub accepte_le: DateTime<Utc>,
    /// When the relay took the message to publish it; `null` until the
    /// broker confirmed it.
    pub publie_le: Option<DateTime<Utc>>,
    /// `null` until a worker applied it.
    pub applique_le: Option<DateTime<Utc>>,
    /// `RESERVE`, `LIBERE`, `REJETE` (not enough stock), `PERIME` (a newer
    /// version was applied first) or `REFUSE` (dead-lettered); `null` until
    /// applied.
    pub resultat: Option<String>,
    /// Why it was refused: the refusal's class and a fixed text
    /// (`unknown_product: …`, `refused: …`), never a database message.
    pub motif: Option<String>,
}

/// An order line with its version, for changes.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = commandes_produits, check_for_backend(diesel::pg::Pg))]
pub struct LineRow {
    pub id: LineId,
    pub commande_id: OrderId,
    pub produit_id: ProductId,
    pub quantite: i32,
    pub prix_unitaire: Money,
    pub statut_stock: StockStatus,
    pub version: Version,
}

impl LineRow {
    /// The message describing the line's state after a change (`previous`:
    /// its state before an UPDATED), with a new message id.
    pub fn message(&self, action: Action, previous: Option<&LineRow>) -> StockMessage {
        StockMessage {
            action,
            produit_id: self.produit_id,
            quantite: self.quantite,
            commande_id: self.commande_id,
            message_id: Some(uuid::Uuid::new_v4()),
            ligne_id: Some(self.id),
            version: Some(self.version),
            ancien_produit_id: previous.map(|p| p.produit_id),
            ancienne_quantite: previous.map(|p| p.quantite),
            occurred_at: Some(Utc::now()),
            validation: false,
        }
    }
}

impl From<LineRow> for OrderLine {
    fn from(l: LineRow) -> Self {
        OrderLine {
            id: l.id.get(),
            commande_id: l.commande_id.get(),
            produit_id: l.produit_id.get(),
            quantite: l.quantite,
            prix_unitaire: l.prix_unitaire,
            statut_stock: l.statut_stock,
        }
    }
}

/// An order status as sent: text, so that an unknown value is a 422 that
/// lists the valid ones; documented as the enum.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct StatusText(pub String);

impl paperclip::v2::schema::Apiv2Schema for StatusText {
    fn raw_schema() -> DefaultSchemaRaw {
        let mut schema = <OrderStatus as paperclip::v2::schema::Apiv2Schema>::raw_schema();
        schema.name = None;
        schema
    }
}

/// A new order, or changes to one. `status` is accepted for `statut`.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
pub struct OrderInput {
    /// Default `EN_ATTENTE` at creation; absent in an update keeps it.
    #[serde(default, alias = "status")]
    pub statut: Input<StatusText>,
}

impl OrderInput {
    /// The status asked for, if any.
    pub fn status(self) -> Result<Option<OrderStatus>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let status = self.statut.change("statut", &mut errors).and_then(|text| {
            match OrderStatus::parse(&text.0) {
                Ok(status) => Some(status),
                Err(message) => {
                    errors.push(FieldError::new("statut", message));
                    None
                }
            }
        });
        if errors.is_empty() {
            Ok(status)
        } else {
            Err(errors)
        }
    }
}

/// A new line, as sent.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
pub struct LineCreate {
    #[serde(default)]
    pub commande_id: Required<i64>,
    #[serde(default)]
    pub produit_id: Required<i64>,
    /// At least 1.
    #[serde(default)]
    pub quantite: Required<i32>,
}

/// A partial update of a line: absent fields keep their value.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
pub struct LineUpdate {
    /// Moves the line to another (open) order.
    #[serde(default)]
    pub commande_id: Input<i64>,
    /// Changes the product; the price is then taken from the new product.
    #[serde(default)]
    pub produit_id: Input<i64>,
    #[serde(default)]
    pub quantite: Input<i32>,
}

/// A valid new line.
#[derive(Debug, Clone, Copy)]
pub struct NewLine {
    pub commande_id: OrderId,
    pub produit_id: ProductId,
    pub quantite: i32,
}

/// Valid changes to a line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineChanges {
    pub commande_id: Option<OrderId>,
    pub produit_id: Option<ProductId>,
    pub quantite: Option<i32>,
}

fn check_quantite(quantite: i32, errors: &mut Vec<FieldError>) {
    check_range("quantite", quantite.into(), 1, QUANTITE_MAX, errors);
}

impl TryFrom<LineCreate> for NewLine {
    type Error = Vec<FieldError>;

    fn try_from(input: LineCreate) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let commande_id = input.commande_id.require("commande_id", &mut errors);
        let produit_id = input.produit_id.require("produit_id", &mut errors);
        let quantite = input.quantite.require("quantite", &mut errors);
        if let Some(q) = quantite {
            check_quantite(q, &mut errors);
        }
        match (commande_id, produit_id, quantite) {
            (Some(commande_id), Some(produit_id), Some(quantite)) if errors.is_empty() => {
                Ok(NewLine {
                    commande_id: OrderId(commande_id),
                    produit_id: ProductId(produit_id),
                    quantite,
                })
            }
            _ => Err(errors),
        }
    }
}

impl TryFrom<LineUpdate> for LineChanges {
    type Error = Vec<FieldError>;

    fn try_from(input: LineUpdate) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let changes = LineChanges {
            commande_id: input
                .commande_id
                .change("commande_id", &mut errors)
                .map(OrderId),
            produit_id: input
                .produit_id
                .change("produit_id", &mut errors)
                .map(ProductId),
            quantite: input.quantite.change("quantite", &mut errors),
        };
        if let Some(q) = changes.quantite {
            check_quantite(q, &mut errors);
        }
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(errors)
        }
    }
}

/// Why an order or line operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("{0} {1} does not exist")]
    NotFound(&'static str, i64),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_input_accepts_the_status_alias_and_reports_unknown_values() {
        let input: OrderInput = serde_json::from_str(r#"{"status": "EN_COURS"}"#).unwrap();
        assert_eq!(input.status().unwrap(), Some(OrderStatus::EnCours));
        let input: OrderInput = serde_json::from_str("{}").unwrap();
        assert_eq!(input.status().unwrap(), None);
        let input: OrderInput = serde_json::from_str(r#"{"statut": "PERDUE"}"#).unwrap();
        assert_eq!(input.status().unwrap_err()[0].field, "statut");
    }

    #[test]
    fn totals_are_exact_money() {
        let line = |q, p: &str| OrderLine {
            id: 1,
            commande_id: 1,
            produit_id: 1,
            quantite: q,
            prix_unitaire: p.parse().unwrap(),
            statut_stock: StockStatus::EnAttente,
        };
        let order = OrderRow {
            id: 1,
            statut: OrderStatus::EnAttente,
            timestamp: Utc::now(),
            validation: None,
            motif: None,
        }
        .with_lines(vec![line(3, "0.10"), line(2, "19.99")]);
        assert_eq!(order.total.to_string(), "40.28");
    }

    #[test]
    fn lines_validate_all_fields_at_once() {
        let errors =
            NewLine::try_from(serde_json::from_str::<LineCreate>(r#"{"quantite": 0}"#).unwrap())
                .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["commande_id", "produit_id", "quantite"]);
    }
}
