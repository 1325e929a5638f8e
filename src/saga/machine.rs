//! The validation saga's rules, as a pure function: a saga (its state and
//! the outcome known for each of its lines) and one input go in; the saga
//! is updated and what the input decided comes out. No I/O: [`super::store`]
//! loads sagas under their orders' row locks, feeds them the inputs and
//! writes what came out.
//!
//! The rules:
//! - Line events are wake-ups, not facts: an event names an order whose
//!   saga may have moved, and the saga then reads what the worker wrote to
//!   the database in the transaction that applied the stock — each line's
//!   version and `statut_stock` ([`LineFact`]). A forged, replayed or
//!   stale event changes nothing the database does not already say.
//! - A validation waits for one outcome per line, for the line's version
//!   it started (or, once refused, released): a line at another version,
//!   or not yet applied, tells nothing.
//! - Once every line has its outcome: all `RESERVE` confirms the order;
//!   any `REJETE` refuses it, with a `motif` naming each such line with
//!   what it asked and what is available.
//! - A timeout refuses a validation still running, naming the lines with no
//!   outcome yet (and any rejected ones).
//! - A refused order's lines are all released (the compensation); the
//!   saga then waits for each release and ignores anything else. A
//!   confirmed one ignores everything.

use crate::domain::{LineId, OrderId, ProductId, StockStatus, ValidationStatus, Version};
use std::fmt::Write as _;
use std::time::Duration;

/// One line of a validation and the outcome the database showed for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProgress {
    pub ligne_id: LineId,
    /// The version whose outcome the saga waits for.
    pub version: Version,
    pub produit_id: ProductId,
    pub quantite: i32,
    /// `RESERVE` or `REJETE` while validating, `LIBERE` once released.
    pub resultat: Option<StockStatus>,
    /// The product's stock when the line was seen rejected.
    pub disponible: Option<i32>,
}

/// One order's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub commande_id: OrderId,
    pub state: ValidationStatus,
    /// By line id.
    pub lines: Vec<LineProgress>,
}

/// What the database says of one line now: its version and `statut_stock`
/// (the worker writes the status only for the version it applied, in the
/// transaction that moved the stock), and its product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineFact {
    pub ligne_id: LineId,
    pub version: Version,
    pub statut: StockStatus,
    pub disponible: i32,
}

/// What moves a saga.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// A line event woke the saga: what the database says of its lines.
    Facts(&'a [LineFact]),
    /// The validation's deadline passed (`after` its start).
    Timeout { after: Duration },
}

/// What an input decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing changed, for this reason.
    Ignored(&'static str),
    /// A line's outcome was recorded; the saga waits for more.
    Recorded,
    /// Every line holds its stock.
    Confirmed,
    /// The order is refused for this reason (the saga is `REFUSEE` now):
    /// its lines must be released, then [`Saga::refused`] told at which
    /// versions.
    Refused(String),
    /// The last release of a refused order arrived.
    Compensated,
}

/// What one fact did to a saga's line.
enum Seen {
    Recorded,
    Ignored(&'static str),
}

impl Saga {
    /// Applies one input (see the module's rules).
    pub fn step(&mut self, input: Input<'_>) -> Step {
        match (self.state, input) {
            (ValidationStatus::EnCours, Input::Facts(facts)) => {
                let seen = self.observe(facts, Self::validating);
                self.after_validating(seen)
            }
            (ValidationStatus::EnCours, Input::Timeout { after }) => {
                self.state = ValidationStatus::Refusee;
                Step::Refused(self.timeout_reason(after))
            }
            (ValidationStatus::Refusee, Input::Facts(facts)) => {
                match self.observe(facts, Self::compensating) {
                    Err(why) => Step::Ignored(why),
                    Ok(()) if self.all(StockStatus::Libere) => Step::Compensated,
                    Ok(()) => Step::Recorded,
                }
            }
            (ValidationStatus::Refusee, Input::Timeout { .. }) => Step::Ignored("already refused"),
            (ValidationStatus::Confirmee, _) => Step::Ignored("already confirmed"),
        }
    }

    /// Shows each fact to its line with `see`: `Ok` if one was recorded,
    /// else why none was (the first fact's reason).
    fn observe(
        &mut self,
        facts: &[LineFact],
        see: fn(&mut LineProgress, &LineFact) -> Seen,
    ) -> Result<(), &'static str> {
        let mut recorded = false;
        let mut why = "no line of this validation in the database";
        for (i, fact) in facts.iter().enumerate() {
            let seen = match self.lines.iter_mut().find(|l| l.ligne_id == fact.ligne_id) {
                None => Seen::Ignored("not a line of this validation"),
                Some(line) if line.version != fact.version => {
                    Seen::Ignored("another version of the line")
                }
                Some(line) => see(line, fact),
            };
            match seen {
                Seen::Recorded => recorded = true,
                Seen::Ignored(reason) if i == 0 => why = reason,
                Seen::Ignored(_) => {}
            }
        }
        if recorded {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn validating(line: &mut LineProgress, fact: &LineFact) -> Seen {
        let resultat = match fact.statut {
            StockStatus::Reserve | StockStatus::Rejete => fact.statut,
            StockStatus::EnAttente => return Seen::Ignored("the line is not applied yet"),
            StockStatus::Libere => return Seen::Ignored("no release is expected yet"),
        };
        if line.resultat.is_some() {
            return Seen::Ignored("the line's outcome is already known");
        }
        line.resultat = Some(resultat);
        line.disponible = (resultat == StockStatus::Rejete).then_some(fact.disponible);
        Seen::Recorded
    }

    fn after_validating(&mut self, seen: Result<(), &'static str>) -> Step {
        if let Err(why) = seen {
            return Step::Ignored(why);
        }
        if self.lines.iter().any(|l| l.resultat.is_none()) {
            Step::Recorded
        } else if self.all(StockStatus::Reserve) {
            self.state = ValidationStatus::Confirmee;
            Step::Confirmed
        } else {
            self.state = ValidationStatus::Refusee;
            Step::Refused(self.rejections())
        }
    }

    fn compensating(line: &mut LineProgress, fact: &LineFact) -> Seen {
        match fact.statut {
            StockStatus::Libere if line.resultat == Some(StockStatus::Libere) => {
                Seen::Ignored("the line is already released")
            }
            StockStatus::Libere => {
                line.resultat = Some(StockStatus::Libere);
                Seen::Recorded
            }
            StockStatus::EnAttente => Seen::Ignored("the release is not applied yet"),
            _ => Seen::Ignored("the validation was refused"),
        }
    }

    fn all(&self, status: StockStatus) -> bool {
        self.lines.iter().all(|l| l.resultat == Some(status))
    }

    /// Records that the refused order's lines are released at `versions`
    /// (by line id): the saga now waits for those releases.
    pub fn refused(&mut self, versions: impl IntoIterator<Item = (LineId, Version)>) {
        for (ligne_id, version) in versions {
            if let Some(line) = self.lines.iter_mut().find(|l| l.ligne_id == ligne_id) {
                line.version = version;
                line.resultat = None;
            }
        }
    }

    /// Each rejected line, with what it asked and what was available.
    fn rejections(&self) -> String {
        let mut motif = String::new();
        for line in &self.lines {
            if line.resultat == Some(StockStatus::Rejete) {
                if !motif.is_empty() {
                    motif.push_str("; ");
                }
                let _ = write!(
                    motif,
                    "line {}: asked {} of product {}, {} available",
                    line.ligne_id,
                    line.quantite,
                    line.produit_id,
                    line.disponible.unwrap_or(0)
                );
            }
        }
        motif
    }

    fn timeout_reason(&self, after: Duration) -> String {
        let waiting: Vec<String> = self
            .lines
            .iter()
            .filter(|l| l.resultat.is_none())
            .map(|l| l.ligne_id.to_string())
            .collect();
        let mut motif = format!(
            "timeout: no outcome within {:.1} s for line(s) {}",
            after.as_secs_f64(),
            waiting.join(", ")
        );
        let rejected = self.rejections();
        if !rejected.is_empty() {
            motif.push_str("; ");
            motif.push_str(&rejected);
        }
        motif
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saga of `lines`, each a (line id, version) pair.
    fn saga(lines: &[(i64, i64)]) -> Saga {
        Saga {
            commande_id: OrderId(1),
            state: ValidationStatus::EnCours,
            lines: lines
                .iter()
                .map(|&(ligne_id, version)| LineProgress {
                    ligne_id: LineId(ligne_id),
                    version: Version(version),
                    produit_id: ProductId(7),
                    quantite: 3,
                    resultat: None,
                    disponible: None,
                })
                .collect(),
        }
    }

    fn fact(statut: StockStatus, ligne_id: i64, version: i64) -> LineFact {
        LineFact {
            ligne_id: LineId(ligne_id),
            version: Version(version),
            statut,
            disponible: 2,
        }
    }

    fn reserved(ligne: i64, version: i64) -> LineFact {
        fact(StockStatus::Reserve, ligne, version)
    }

    fn rejected(ligne: i64, version: i64) -> LineFact {
        fact(StockStatus::Rejete, ligne, version)
    }

    fn released(ligne: i64, version: i64) -> LineFact {
        fact(StockStatus::Libere, ligne, version)
    }

    fn pending(ligne: i64, version: i64) -> LineFact {
        fact(StockStatus::EnAttente, ligne, version)
    }

    #[test]
    fn a_wake_up_reads_every_line_and_one_with_nothing_applied_moves_nothing() {
        let mut s = saga(&[(10, 2), (11, 5)]);
        // A forged event: the database shows neither line applied.
        assert_eq!(
            s.step(Input::Facts(&[pending(10, 2), pending(11, 5)])),
            Step::Ignored("the line is not applied yet")
        );
        assert_eq!(s, saga(&[(10, 2), (11, 5)]));
        // One wake-up sees both outcomes at once.
        assert_eq!(
            s.step(Input::Facts(&[reserved(10, 2), reserved(11, 5)])),
            Step::Confirmed
        );
    }

    #[test]
    fn every_line_reserved_confirms() {
        let mut s = saga(&[(10, 2), (11, 5)]);
        assert_eq!(s.step(Input::Facts(&[reserved(11, 5)])), Step::Recorded);
        assert_eq!(s.step(Input::Facts(&[reserved(10, 2)])), Step::Confirmed);
        assert_eq!(s.state, ValidationStatus::Confirmee);
        assert_eq!(
            s.step(Input::Facts(&[rejected(10, 2)])),
            Step::Ignored("already confirmed")
        );
    }

    #[test]
    fn a_rejected_line_refuses_once_every_outcome_is_known_naming_each() {
        let mut s = saga(&[(10, 2), (11, 5), (12, 1)]);
        assert_eq!(s.step(Input::Facts(&[rejected(10, 2)])), Step::Recorded);
        assert_eq!(s.step(Input::Facts(&[reserved(11, 5)])), Step::Recorded);
        assert_eq!(
            s.step(Input::Facts(&[rejected(12, 1)])),
            Step::Refused(
                "line 10: asked 3 of product 7, 2 available; \
                 line 12: asked 3 of product 7, 2 available"
                    .into()
            )
        );
    }

    #[test]
    fn duplicates_other_versions_and_strangers_change_nothing() {
        let mut s = saga(&[(10, 2), (11, 5)]);
        assert_eq!(s.step(Input::Facts(&[reserved(10, 2)])), Step::Recorded);
        let before = s.clone();
        for (e, why) in [
            (reserved(10, 2), "the line's outcome is already known"),
            (rejected(10, 2), "the line's outcome is already known"),
            (reserved(11, 4), "another version of the line"),
            (reserved(11, 6), "another version of the line"),
            (reserved(99, 1), "not a line of this validation"),
            (released(11, 5), "no release is expected yet"),
            (pending(11, 5), "the line is not applied yet"),
        ] {
            assert_eq!(s.step(Input::Facts(&[e])), Step::Ignored(why), "{e:?}");
        }
        assert_eq!(s, before);
    }

    #[test]
    fn the_outcome_does_not_depend_on_the_order_of_events() {
        let events = [reserved(10, 1), rejected(11, 1), reserved(12, 1)];
        let orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]];
        for order in orders {
            let mut s = saga(&[(10, 1), (11, 1), (12, 1)]);
            let last = order
                .iter()
                .map(|&i| s.step(Input::Facts(&[events[i]])))
                .last();
            assert!(matches!(last, Some(Step::Refused(m)) if m.starts_with("line 11:")));
        }
    }

    #[test]
    fn a_timeout_refuses_naming_the_lines_without_an_outcome() {
        let mut s = saga(&[(10, 1), (11, 1), (12, 1)]);
        s.step(Input::Facts(&[reserved(10, 1)]));
        s.step(Input::Facts(&[rejected(12, 1)]));
        let step = s.step(Input::Timeout {
            after: Duration::from_millis(1500),
        });
        assert_eq!(
            step,
            Step::Refused(
                "timeout: no outcome within 1.5 s for line(s) 11; \
                 line 12: asked 3 of product 7, 2 available"
                    .into()
            )
        );
    }

    #[test]
    fn a_refused_saga_waits_for_each_release_at_its_new_version() {
        let mut s = saga(&[(10, 1), (11, 1)]);
        s.step(Input::Facts(&[reserved(10, 1)]));
        assert!(matches!(
            s.step(Input::Facts(&[rejected(11, 1)])),
            Step::Refused(_)
        ));
        s.refused([(LineId(10), Version(2)), (LineId(11), Version(2))]);
        assert_eq!(s.state, ValidationStatus::Refusee);
        // Late outcomes of the validation, old releases: nothing.
        assert_eq!(
            s.step(Input::Facts(&[reserved(10, 2)])),
            Step::Ignored("the validation was refused")
        );
        assert_eq!(
            s.step(Input::Facts(&[released(10, 1)])),
            Step::Ignored("another version of the line")
        );
        assert_eq!(
            s.step(Input::Timeout {
                after: Duration::ZERO
            }),
            Step::Ignored("already refused")
        );
        assert_eq!(s.step(Input::Facts(&[released(11, 2)])), Step::Recorded);
        assert_eq!(
            s.step(Input::Facts(&[released(11, 2)])),
            Step::Ignored("the line is already released")
        );
        assert_eq!(s.step(Input::Facts(&[released(10, 2)])), Step::Compensated);
    }
}
