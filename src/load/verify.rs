//! `--verify`: wait for the pipeline to settle on the run's lines, then
//! check the stock invariant of its products, through the APIs only.

use super::Api;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// How long after the load everything had settled (or the timeout).
    pub settled_in: Duration,
    /// Products checked, and those whose stock is not what their lines say:
    /// (product, stock, expected).
    pub products: usize,
    pub mismatches: Vec<(i64, i64, i64)>,
    /// Lines still `EN_ATTENTE` when `settle_timeout` ran out.
    pub pending: usize,
    /// Why the APIs could not be read, when they still could not at the end.
    pub unreadable: Option<String>,
}

impl Verified {
    pub fn holds(&self) -> bool {
        self.pending == 0 && self.mismatches.is_empty() && self.unreadable.is_none()
    }

    /// One line: `verify: settled in 1.2s; the stock invariant holds for 20
    /// products` (or what failed).
    pub fn describe(&self) -> String {
        if let Some(reason) = &self.unreadable {
            return format!(
                "verify: FAILED: the APIs could not be read for {:.1}s: {reason}",
                self.settled_in.as_secs_f64()
            );
        }
        if self.pending > 0 {
            return format!(
                "verify: FAILED: {} line(s) still EN_ATTENTE after {:.1}s",
                self.pending,
                self.settled_in.as_secs_f64()
            );
        }
        if !self.mismatches.is_empty() {
            let what: Vec<String> = self
                .mismatches
                .iter()
                .map(|(p, s, e)| format!("product {p}: stock {s}, expected {e}"))
                .collect();
            return format!("verify: FAILED: {}", what.join("; "));
        }
        format!(
            "verify: settled in {:.1}s; the stock invariant holds for {} products",
            self.settled_in.as_secs_f64(),
            self.products
        )
    }
}

/// Polls until the run's lines have settled and its products' stock adds
/// up, or `timeout` runs out. A deleted line leaves its order at once,
/// before the worker releases its stock, so a stock that does not add up
/// yet is waited for too; so are answers that are not 200 (a service
/// restarting). Only at the timeout does it report what failed.
pub async fn settle_and_check(
    api: &Api,
    products: &BTreeMap<i64, i64>,
    orders: &[i64],
    timeout: Duration,
) -> Verified {
    let started = Instant::now();
    loop {
        let attempt = check_once(api, products, orders).await;
        let settled_in = started.elapsed();
        let done = settled_in >= timeout;
        match attempt {
            Ok((pending, mismatches)) if done || (pending == 0 && mismatches.is_empty()) => {
                return Verified {
                    settled_in,
                    products: products.len(),
                    mismatches,
                    pending,
                    unreadable: None,
                }
            }
            Err(reason) if done => {
                return Verified {
                    settled_in,
                    products: products.len(),
                    mismatches: Vec::new(),
                    pending: 0,
                    unreadable: Some(reason),
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One look: lines still `EN_ATTENTE`, and products whose stock is not
/// initial − Σ quantite of their `RESERVE` lines.
async fn check_once(
    api: &Api,
    products: &BTreeMap<i64, i64>,
    orders: &[i64],
) -> Result<(usize, Vec<(i64, i64, i64)>), String> {
    let mut reserved: BTreeMap<i64, i64> = BTreeMap::new();
    let mut pending = 0;
    for order in orders {
        let (status, body) = api.read(api.order(&format!("/commandes/{order}"))).await;
        if status != 200 {
            return Err(format!("GET /commandes/{order}: {status} {body}"));
        }
        for line in body["lignes"].as_array().into_iter().flatten() {
            match line["statut_stock"].as_str() {
                Some("EN_ATTENTE") => pending += 1,
                Some("RESERVE") => {
                    let product = line["produit_id"].as_i64().unwrap_or_default();
                    *reserved.entry(product).or_default() +=
                        line["quantite"].as_i64().unwrap_or_default();
                }
                _ => {}
            }
        }
    }
    let mut mismatches = Vec::new();
    for (product, initial) in products {
        let (status, body) = api.read(api.product(&format!("/produits/{product}"))).await;
        if status != 200 {
            return Err(format!("GET /produits/{product}: {status} {body}"));
        }
        let stock = body["quantite_en_stock"].as_i64().unwrap_or(-1);
        let expected = initial - reserved.get(product).copied().unwrap_or_default();
        if stock != expected {
            mismatches.push((*product, stock, expected));
        }
    }
    Ok((pending, mismatches))
}
