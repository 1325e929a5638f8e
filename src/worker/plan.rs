//! The stock rules, as a pure function: a batch of changes and a snapshot
//! of the state they touch go in; the outcome of each message and the
//! writes that realise them come out. No I/O, no broker or HTTP types:
//! [`super::store`] loads the snapshot under locks and writes the plan; the
//! consumer acknowledges and dead-letters by the outcomes.
//!
//! The rules:
//! - **Idempotent.** A message id already processed (before, or earlier in
//!   the batch) is a duplicate and changes nothing.
//! - **Order-independent.** Each order line has one reservation (product,
//!   quantity, version). A tracked message moves it to the state it
//!   describes only if its version is newer; an older one is stale. Stock
//!   changes by the difference, so duplicates and reordering converge.
//! - **Never negative.** A reservation is taken only if the stock allows it;
//!   otherwise the line is `REJETE` and reserves nothing (what it held is
//!   released), and it is tried again when the line is next updated.
//! - **Seed format** (no line id, no version): the delta is applied as such,
//!   without de-duplication ([`plan_seed`]).
//! - **Dead letters.** A change naming a product that does not exist, or a
//!   seed-format reservation the stock cannot cover (there is no line to
//!   mark `REJETE`), is refused with its reason; a refused tracked message
//!   is not recorded as processed.
//! - **Alerts.** A reservation that brings stock to 0 raises `STOCK_EPUISE`;
//!   one that crosses below the low threshold raises `STOCK_BAS`.
//! - **Line events.** A tracked change that is part of an order's
//!   validation reports what became of it (reserved, rejected with the
//!   stock there was, released) as a [`LineEvent`], written with the batch;
//!   a duplicate, stale or refused one reports nothing (its first
//!   application did, or the saga's timeout decides).

use super::change::{LineRef, StockChange};
use crate::domain::status::StockStatus;
use crate::domain::{LineId, OrderId, ProductId, Version};
pub use crate::messages::Refusal;
use crate::messages::{Action, AlertEvent, DeadLetterClass, LineEvent, LineOutcome, StockAlert};
use crate::request_id::RequestId;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// What one order line holds, as the worker last applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reservation {
    /// `None` when the line holds nothing (released, rejected).
    pub produit_id: Option<ProductId>,
    pub quantite: i32,
    /// The newest version of the line applied (0: never seen).
    pub version: Version,
}

/// The state a batch reads, loaded under the locks of [`super::store`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Stock of every product the batch may touch that exists.
    pub stock: HashMap<ProductId, i32>,
    /// Reservations of the batch's lines that exist.
    pub reservations: HashMap<LineId, Reservation>,
    /// Message ids of the batch that were processed before it.
    pub processed: HashSet<Uuid>,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: for a tracked message, the line's new `statut_stock`
    /// (`RESERVE` or `LIBERE`); `None` for the seed format.
    Applied(Option<StockStatus>),
    /// Applied, but the stock could not cover it: the line is `REJETE`.
    Rejected,
    /// This message id was already processed.
    Duplicate,
    /// A newer version of the line was already applied.
    Stale,
    /// Can never succeed: to the dead-letter queue with this reason.
    DeadLetter(Refusal),
}

/// A line history's outcome of a change older than the line's applied version.
pub const STALE: &str = "PERIME";
/// A line history's outcome of a dead-lettered change.
pub const REFUSED: &str = "REFUSE";

impl Outcome {
    /// The outcome in one word, as the line's history and the logs say it:
    /// the line's new status, `PERIME`, `REFUSE`, `DOUBLON`, or `APPLIQUE`
    /// for a seed-format message.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Applied(Some(status)) => status.as_str(),
            Outcome::Applied(None) => "APPLIQUE",
            Outcome::Rejected => StockStatus::Rejete.as_str(),
            Outcome::Duplicate => "DOUBLON",
            Outcome::Stale => STALE,
            Outcome::DeadLetter(_) => REFUSED,
        }
    }
}

/// One stock change applied to a product (a row of `mouvements`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub produit_id: ProductId,
    pub ligne_id: Option<LineId>,
    pub commande_id: OrderId,
    pub message_id: Option<Uuid>,
    pub request_id: Option<RequestId>,
    pub action: Action,
    /// Negative: reserved; positive: released.
    pub delta: i32,
    /// The product's stock right after.
    pub quantite_en_stock: i32,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The writes of a batch, and the outcome of each of its messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// One per change, in order.
    pub outcomes: Vec<Outcome>,
    /// New stock of each product the batch changed.
    pub stock: BTreeMap<ProductId, i32>,
    /// New state of each line's reservation the batch changed; `true` when
    /// the line had none before (an insert).
    pub reservations: BTreeMap<LineId, (Reservation, bool)>,
    pub movements: Vec<Movement>,
    /// Each changed line's new `statut_stock`, for the version it applies to.
    pub line_statuses: BTreeMap<LineId, (Version, StockStatus)>,
    pub alerts: Vec<StockAlert>,
    /// The outcomes of validation changes, for the orders service's saga,
    /// each with the request id of its change.
    pub events: Vec<(LineEvent, Option<RequestId>)>,
    /// Message ids recorded as processed that were refused after all.
    pub unrecorded: Vec<Uuid>,
}

/// Plans `changes`, in order, against `snapshot`.
pub fn plan(changes: &[StockChange], snapshot: &Snapshot, low_threshold: i32) -> Plan {
    let mut state = State {
        snapshot,
        low_threshold,
        seen: HashSet::new(),
        stock: HashMap::new(),
        plan: Plan::default(),
    };
    for change in changes {
        let outcome = match change.line {
            Some(line) => state.tracked(change, line),
            None => state.seed(change),
        };
        state.plan.outcomes.push(outcome);
    }
    state.plan
}

/// The batch's working state: the snapshot plus what earlier changes did.
struct State<'a> {
    snapshot: &'a Snapshot,
    low_threshold: i32,
    /// Message ids met earlier in this batch.
    seen: HashSet<Uuid>,
    /// Stock as changed so far (absent: as in the snapshot).
    stock: HashMap<ProductId, i32>,
    plan: Plan,
}

impl State<'_> {
    fn stock_of(&self, product: ProductId) -> Option<i32> {
        self.stock
            .get(&product)
            .or_else(|| self.snapshot.stock.get(&product))
            .copied()
    }

    fn reservation(&self, line: LineId) -> Reservation {
        self.plan
            .reservations
            .get(&line)
            .map(|(r, _)| *r)
            .or_else(|| self.snapshot.reservations.get(&line).copied())
            .unwrap_or_default()
    }

    /// Why `quantite` units cannot be given back to `product`: its stock
    /// would pass what the column holds (only after inventory corrections
    /// far beyond the input bounds).
    fn cannot_release(&self, product: ProductId, quantite: i32) -> Option<Refusal> {
        let stock = self.stock_of(product)?;
        stock.checked_add(quantite).is_none().then(|| {
            Refusal::new(
                DeadLetterClass::Overflow,
                format!(
                    "releasing {quantite} units would take product {product}'s stock {stock} past {}",
                    i32::MAX
                ),
            )
        })
    }

    /// Moves `delta` units on `product` (which exists) and records it.
    fn move_stock(&mut self, change: &StockChange, product: ProductId, delta: i32) -> (i32, i32) {
        let before = self.stock_of(product).expect("the product exists");
        let after = before + delta;
        self.stock.insert(product, after);
        self.plan.stock.insert(product, after);
        self.plan.movements.push(Movement {
            produit_id: product,
            ligne_id: change.line.map(|l| l.ligne_id),
            commande_id: change.commande_id,
            message_id: change.line.map(|l| l.message_id),
            request_id: change.request_id.clone(),
            action: change.action,
            delta,
            quantite_en_stock: after,
            occurred_at: change.occurred_at,
        });
        (before, after)
    }

    fn alert_if_crossed(&mut self, product: ProductId, before: i32, after: i32) {
        if let Some(event) = crossed(before, after, self.low_threshold) {
            self.plan.alerts.push(StockAlert {
                event,
                produit_id: product,
                quantite_en_stock: after,
                seuil: self.low_threshold,
            });
        }
    }

    /// The ordersys format: move the line's reservation to the state the
    /// message describes, if it is newer.
    fn tracked(&mut self, change: &StockChange, line: LineRef) -> Outcome {
        if self.snapshot.processed.contains(&line.message_id) || !self.seen.insert(line.message_id)
        {
            return Outcome::Duplicate;
        }
        let old = self.reservation(line.ligne_id);
        if line.version <= old.version {
            return Outcome::Stale;
        }
        if let Some(reason) = old
            .produit_id
            .and_then(|p| self.cannot_release(p, old.quantite))
        {
            self.plan.unrecorded.push(line.message_id);
            return Outcome::DeadLetter(reason);
        }
        let target = match change.action {
            Action::Deleted => None,
            _ if self.stock_of(change.produit_id).is_none() => {
                self.plan.unrecorded.push(line.message_id);
                return Outcome::DeadLetter(unknown(change.produit_id));
            }
            _ => Some((change.produit_id, change.quantite)),
        };
        let held = self.move_reservation(change, old, target);
        self.plan.reservations.insert(
            line.ligne_id,
            (
                Reservation {
                    produit_id: held.map(|(p, _)| p),
                    quantite: held.map_or(0, |(_, q)| q),
                    version: line.version,
                },
                !self.snapshot.reservations.contains_key(&line.ligne_id),
            ),
        );
        let (outcome, statut, event) = match (change.action, held) {
            (Action::Deleted, _) => (
                Outcome::Applied(Some(StockStatus::Libere)),
                StockStatus::Libere,
                LineOutcome::LigneLiberee,
            ),
            (_, Some(_)) => (
                Outcome::Applied(Some(StockStatus::Reserve)),
                StockStatus::Reserve,
                LineOutcome::LigneReservee,
            ),
            (_, None) => (
                Outcome::Rejected,
                StockStatus::Rejete,
                LineOutcome::LigneRejetee,
            ),
        };
        self.plan
            .line_statuses
            .insert(line.ligne_id, (line.version, statut));
        if change.validation {
            let disponible = (event == LineOutcome::LigneRejetee)
                .then(|| self.stock_of(change.produit_id).unwrap_or(0));
            let event = LineEvent {
                event,
                commande_id: change.commande_id,
                ligne_id: line.ligne_id,
                version: line.version,
                produit_id: change.produit_id,
                quantite: change.quantite,
                disponible,
            };
            self.plan.events.push((event, change.request_id.clone()));
        }
        outcome
    }

    /// Moves a line's reservation from `old` to `target` (product, quantity)
    /// if the stock allows, else releases it; returns what the line holds now.
    fn move_reservation(
        &mut self,
        change: &StockChange,
        old: Reservation,
        target: Option<(ProductId, i32)>,
    ) -> Option<(ProductId, i32)> {
        // Same product: one delta, if the stock covers the difference.
        if let (Some((product, quantite)), Some(old_product)) = (target, old.produit_id) {
            let stock = self.stock_of(product).expect("target product exists");
            let covered = i64::from(stock) + i64::from(old.quantite) >= i64::from(quantite);
            if product == old_product && covered {
                if old.quantite != quantite {
                    let (before, after) = self.move_stock(change, product, old.quantite - quantite);
                    self.alert_if_crossed(product, before, after);
                }
                return Some((product, quantite));
            }
        }
        // Release what the line holds (unless its product is gone)…
        if let Some(old_product) = old.produit_id {
            if old.quantite > 0 && self.stock_of(old_product).is_some() {
                self.move_stock(change, old_product, old.quantite);
            }
        }
        // …then reserve what it asks for, if the stock allows.
        let (product, quantite) = target?;
        if self.stock_of(product)? < quantite {
            return None;
        }
        let (before, after) = self.move_stock(change, product, -quantite);
        self.alert_if_crossed(product, before, after);
        Some((product, quantite))
    }

    /// The seed format: the delta, as such.
    fn seed(&mut self, change: &StockChange) -> Outcome {
        let deltas = plan_seed(change, |p| self.stock_of(p)).and_then(|deltas| {
            match deltas
                .iter()
                .find_map(|&(p, d)| (d > 0).then(|| self.cannot_release(p, d)).flatten())
            {
                Some(reason) => Err(reason),
                None => Ok(deltas),
            }
        });
        match deltas {
            Err(reason) => Outcome::DeadLetter(reason),
            Ok(deltas) => {
                for (product, delta) in deltas {
                    let (before, after) = self.move_stock(change, product, delta);
                    self.alert_if_crossed(product, before, after);
                }
                Outcome::Applied(None)
            }
        }
    }
}

/// The rules of a seed-format message (no line, no version, no
/// de-duplication): the stock deltas it applies, in order, or why it must
/// be dead-lettered. `stock` gives a product's current stock, `None` when
/// it does not exist.
pub fn plan_seed(
    change: &StockChange,
    stock: impl Fn(ProductId) -> Option<i32>,
) -> Result<Vec<(ProductId, i32)>, Refusal> {
    let available = stock(change.produit_id).ok_or_else(|| unknown(change.produit_id))?;
    if change.action == Action::Deleted {
        return Ok(if change.quantite > 0 {
            vec![(change.produit_id, change.quantite)]
        } else {
            Vec::new()
        });
    }
    let mut deltas = Vec::with_capacity(2);
    let mut can_give = i64::from(available);
    if let Some((old_product, old_quantite)) = change.ancien {
        stock(old_product).ok_or_else(|| unknown(old_product))?;
        if old_product == change.produit_id {
            can_give += i64::from(old_quantite);
        }
        if old_quantite > 0 {
            deltas.push((old_product, old_quantite));
        }
    }
    if can_give < i64::from(change.quantite) {
        return Err(Refusal::new(
            DeadLetterClass::Uncoverable,
            format!(
                "not enough stock on product {} for {} (seed-format message: no order line to mark REJETE)",
                change.produit_id, change.quantite
            ),
        ));
    }
    deltas.push((change.produit_id, -change.quantite));
    Ok(deltas)
}

fn unknown(product: ProductId) -> Refusal {
    Refusal::new(
        DeadLetterClass::UnknownProduct,
        format!("unknown product {product}"),
    )
}

/// The alert a reservation from `before` to `after` units raises, if any.
pub fn crossed(before: i32, after: i32, low_threshold: i32) -> Option<AlertEvent> {
    if after >= before {
        None
    } else if after == 0 {
        Some(AlertEvent::StockEpuise)
    } else if after < low_threshold && before >= low_threshold {
        Some(AlertEvent::StockBas)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
