//! Products as stored, as sent, and as validated.

use crate::db::schema::{mouvements, produits};
use crate::domain::limits::{
    check_range, check_text, DESCRIPTION_MAX_CHARS, NOM_MAX_CHARS, STOCK_MAX,
};
use crate::domain::{FieldError, Input, Money, Required};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use paperclip::actix::Apiv2Schema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A product of the catalog.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize, Deserialize, Apiv2Schema)]
#[diesel(table_name = produits, check_for_backend(diesel::pg::Pg))]
pub struct Product {
    pub id: i64,
    /// 1 to 200 characters.
    pub nom: String,
    pub description: Option<String>,
    /// Unit price, at most two decimals.
    pub prix: Money,
    /// Units available; reserved units are already subtracted.
    pub quantite_en_stock: i32,
}

/// A new product, as sent.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
pub struct ProductCreate {
    /// 1 to 200 characters.
    #[serde(default)]
    pub nom: Required<String>,
    #[serde(default)]
    pub description: Input<String>,
    /// At least 0, at most two decimals.
    #[serde(default)]
    pub prix: Required<Money>,
    /// Initial stock, at least 0 (default 0).
    #[serde(default)]
    pub quantite_en_stock: Input<i32>,
}

/// A partial update: absent fields keep their value; `description` may be
/// set to null.
#[derive(Debug, Default, Deserialize, Apiv2Schema)]
pub struct ProductUpdate {
    #[serde(default)]
    pub nom: Input<String>,
    #[serde(default)]
    pub description: Input<String>,
    #[serde(default)]
    pub prix: Input<Money>,
    /// Sets the stock (an inventory correction, not a reservation).
    #[serde(default)]
    pub quantite_en_stock: Input<i32>,
}

/// A valid new product.
#[derive(Debug, Insertable)]
#[diesel(table_name = produits)]
pub struct NewProduct {
    pub nom: String,
    pub description: Option<String>,
    pub prix: Money,
    pub quantite_en_stock: i32,
}

/// A valid set of changes.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = produits)]
pub struct ProductChanges {
    pub nom: Option<String>,
    pub description: Option<Option<String>>,
    pub prix: Option<Money>,
    pub quantite_en_stock: Option<i32>,
}

impl ProductChanges {
    /// A direct correction of the stock (not a reservation by the worker).
    pub fn sets_stock(&self) -> bool {
        self.quantite_en_stock.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.nom.is_none()
            && self.description.is_none()
            && self.prix.is_none()
            && self.quantite_en_stock.is_none()
    }
}

fn check_nom(nom: &str, errors: &mut Vec<FieldError>) {
    if nom.trim().is_empty() {
        errors.push(FieldError::new("nom", "must not be empty"));
    }
    check_text("nom", nom, NOM_MAX_CHARS, false, errors);
}

fn check_description(description: &str, errors: &mut Vec<FieldError>) {
    check_text(
        "description",
        description,
        DESCRIPTION_MAX_CHARS,
        true,
        errors,
    );
}

fn check_prix(prix: &Money, errors: &mut Vec<FieldError>) {
    if let Some(problem) = prix.price_problem() {
        errors.push(FieldError::new("prix", problem));
    }
}

fn check_stock(stock: i32, errors: &mut Vec<FieldError>) {
    check_range("quantite_en_stock", stock.into(), 0, STOCK_MAX, errors);
}

impl TryFrom<ProductCreate> for NewProduct {
    type Error = Vec<FieldError>;

    fn try_from(input: ProductCreate) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let nom = input.nom.require("nom", &mut errors);
        let prix = input.prix.require("prix", &mut errors);
        let quantite_en_stock = input.quantite_en_stock.optional().unwrap_or(0);
        let description = input.description.optional();
        if let Some(nom) = &nom {
            check_nom(nom, &mut errors);
        }
        if let Some(description) = &description {
            check_description(description, &mut errors);
        }
        if let Some(prix) = &prix {
            check_prix(prix, &mut errors);
        }
        check_stock(quantite_en_stock, &mut errors);
        match (nom, prix) {
            (Some(nom), Some(prix)) if errors.is_empty() => Ok(NewProduct {
                nom,
                description,
                prix,
                quantite_en_stock,
            }),
            _ => Err(errors),
        }
    }
}

impl TryFrom<ProductUpdate> for ProductChanges {
    type Error = Vec<FieldError>;

    fn try_from(input: ProductUpdate) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let changes = ProductChanges {
            nom: input.nom.change("nom", &mut errors),
            description: input.description.nullable_change(),
            prix: input.prix.change("prix", &mut errors),
            quantite_en_stock: input
                .quantite_en_stock
                .change("quantite_en_stock", &mut errors),
        };
        if let Some(nom) = &changes.nom {
            check_nom(nom, &mut errors);
        }
        if let Some(Some(description)) = &changes.description {
            check_description(description, &mut errors);
        }
        if let Some(prix) = &changes.prix {
            check_prix(prix, &mut errors);
        }
        if let Some(stock) = changes.quantite_en_stock {
            check_stock(stock, &mut errors);
        }
        if errors.is_empty() {
            Ok(changes)
        } else {
            Err(errors)
        }
    }
}

/// A stock change the worker applied to a product.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, Deserialize, Apiv2Schema)]
#[diesel(table_name = mouvements, check_for_backend(diesel::pg::Pg))]
pub struct Movement {
    pub id: i64,
    pub produit_id: i64,
    /// The order line that caused it (absent for seed-format messages).
    pub ligne_id: Option<i64>,
    pub commande_id: Option<i64>,
    /// The message that caused it.
    pub message_id: Option<Uuid>,
    /// CREATED, UPDATED or DELETED.
    pub action: String,
    /// Negative: units reserved; positive: units released.
    pub delta: i32,
    /// The product's stock right after this movement.
    pub quantite_en_stock: i32,
    /// When the order change was accepted by the orders API.
    pub occurred_at: Option<DateTime<Utc>>,
    /// When the worker applied it.
    pub applique_le: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: &str) -> Result<NewProduct, Vec<FieldError>> {
        NewProduct::try_from(serde_json::from_str::<ProductCreate>(json).unwrap())
    }

    fn fields(errors: Vec<FieldError>) -> Vec<String> {
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_product_parses_with_defaults() {
        let p = create(r#"{"nom": "Stylo", "prix": 1.5}"#).unwrap();
        assert_eq!(p.quantite_en_stock, 0);
        assert_eq!(p.description, None);
        assert_eq!(p.prix.to_string(), "1.50");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors =
            create(r#"{"nom": "  ", "prix": 1.234, "quantite_en_stock": -1}"#).unwrap_err();
        assert_eq!(fields(errors), ["nom", "prix", "quantite_en_stock"]);
        let errors = create(r#"{"description": "x"}"#).unwrap_err();
        assert_eq!(fields(errors), ["nom", "prix"]);
        let long = "é".repeat(201);
        let errors = create(&format!(r#"{{"nom": "{long}", "prix": 1}}"#)).unwrap_err();
        assert_eq!(fields(errors), ["nom"]);
        assert!(create(&format!(r#"{{"nom": "{}", "prix": 1}}"#, "é".repeat(200))).is_ok());
    }

    #[test]
    fn updates_keep_absent_fields_and_refuse_nulls() {
        let update = |json: &str| {
            ProductChanges::try_from(serde_json::from_str::<ProductUpdate>(json).unwrap())
        };
        assert!(update("{}").unwrap().is_empty());
        let changes = update(r#"{"description": null}"#).unwrap();
        assert_eq!(changes.description, Some(None));
        assert_eq!(
            fields(update(r#"{"nom": null, "prix": -1}"#).unwrap_err()),
            ["nom", "prix"]
        );
    }
}
