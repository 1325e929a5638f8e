//! The validation saga's rules, as a pure function: a saga (its state and
//! the outcome known for each of its lines) and one input go in; the saga
//! is updated and what the input decided comes out. No I/O: [`super::store`]
//! loads sagas under their orders' row locks, feeds them the inputs and
//! writes what came out.
//!
//! The rules:
//! - A validation waits for one outcome per line, for the line's version
//!   it started (or, once refused, released) — an event for another line
//!   or another version is ignored, so duplicates, stale and reordered
//!   events change nothing.
//! - Once every line has its outcome: all `RESERVE` confirms the order;
//!   any `REJETE` refuses it, with a `motif` naming each such line with
//!   what it asked and what was available.
//! - A timeout refuses a validation still running, naming the lines with no
//!   outcome yet (and any rejected ones).
//! - A refused order's lines are all released (the compensation); the
//!   saga then waits for each release and ignores anything else. A
//!   confirmed one ignores everything.

use crate::domain::{StockStatus, ValidationStatus};
use crate::messages::{LineEvent, LineOutcome};
use std::fmt::Write as _;
use std::time::Duration;

/// One line of a validation and what the worker reported for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProgress {
    pub ligne_id: i64,
    /// The version whose outcome the saga waits for.
    pub version: i64,
    pub produit_id: i64,
    pub quantite: i32,
    /// `RESERVE` or `REJETE` while validating, `LIBERE` once released.
    pub resultat: Option<StockStatus>,
    /// The stock when the line was rejected.
    pub disponible: Option<i32>,
}

/// One order's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub commande_id: i64,
    pub state: ValidationStatus,
    /// By line id.
    pub lines: Vec<LineProgress>,
}

/// What moves a saga.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// A worker's outcome for one line.
    Line(&'a LineEvent),
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

impl Saga {
    /// Applies one input (see the module's rules).
    pub fn step(&mut self, input: Input<'_>) -> Step {
        match (self.state, input) {
            (ValidationStatus::EnCours, Input::Line(event)) => self.validating(event),
            (ValidationStatus::EnCours, Input::Timeout { after }) => {
                self.state = ValidationStatus::Refusee;
                Step::Refused(self.timeout_reason(after))
            }
            (ValidationStatus::Refusee, Input::Line(event)) => self.compensating(event),
            (ValidationStatus::Refusee, Input::Timeout { .. }) => Step::Ignored("already refused"),
            (ValidationStatus::Confirmee, _) => Step::Ignored("already confirmed"),
        }
    }

    /// The line the event is about, at the version the saga waits for.
    fn line_of(&mut self, event: &LineEvent) -> Result<&mut LineProgress, Step> {
        let line = self
            .lines
            .iter_mut()
            .find(|l| l.ligne_id == event.ligne_id)
            .ok_or(Step::Ignored("not a line of this validation"))?;
        if line.version != event.version {
            return Err(Step::Ignored("another version of the line"));
        }
        Ok(line)
    }

    fn validating(&mut self, event: &LineEvent) -> Step {
        let resultat = match event.event {
            LineOutcome::LigneReservee => StockStatus::Reserve,
            LineOutcome::LigneRejetee => StockStatus::Rejete,
            LineOutcome::LigneLiberee => return Step::Ignored("no release is expected yet"),
        };
        let line = match self.line_of(event) {
            Ok(line) => line,
            Err(step) => return step,
        };
        if line.resultat.is_some() {
            return Step::Ignored("the line's outcome is already known");
        }
        line.resultat = Some(resultat);
        line.disponible = event.disponible;
        if self.lines.iter().any(|l| l.resultat.is_none()) {
            Step::Recorded
        } else if self
            .lines
            .iter()
            .all(|l| l.resultat == Some(StockStatus::Reserve))
        {
            self.state = ValidationStatus::Confirmee;
            Step::Confirmed
        } else {
            self.state = ValidationStatus::Refusee;
            Step::Refused(self.rejections())
        }
    }

    fn compensating(&mut self, event: &LineEvent) -> Step {
        if event.event != LineOutcome::LigneLiberee {
            return Step::Ignored("the validation was refused");
        }
        let line = match self.line_of(event) {
            Ok(line) => line,
            Err(step) => return step,
        };
        if line.resultat == Some(StockStatus::Libere) {
            return Step::Ignored("the line is already released");
        }
        line.resultat = Some(StockStatus::Libere);
        if self
            .lines
            .iter()
            .all(|l| l.resultat == Some(StockStatus::Libere))
        {
            Step::Compensated
        } else {
            Step::Recorded
        }
    }

    /// Records that the refused order's lines are released at `versions`
    /// (by line id): the saga now waits for those releases.
    pub fn refused(&mut self, versions: impl IntoIterator<Item = (i64, i64)>) {
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

    fn saga(lines: &[(i64, i64)]) -> Saga {
        Saga {
            commande_id: 1,
            state: ValidationStatus::EnCours,
            lines: lines
                .iter()
                .map(|&(ligne_id, version)| LineProgress {
                    ligne_id,
                    version,
                    produit_id: 7,
                    quantite: 3,
                    resultat: None,
                    disponible: None,
                })
                .collect(),
        }
    }

    fn event(event: LineOutcome, ligne_id: i64, version: i64) -> LineEvent {
        LineEvent {
            event,
            commande_id: 1,
            ligne_id,
            version,
            produit_id: 7,
            quantite: 3,
            disponible: (event == LineOutcome::LigneRejetee).then_some(2),
        }
    }

    fn reserved(ligne: i64, version: i64) -> LineEvent {
        event(LineOutcome::LigneReservee, ligne, version)
    }

    fn rejected(ligne: i64, version: i64) -> LineEvent {
        event(LineOutcome::LigneRejetee, ligne, version)
    }

    fn released(ligne: i64, version: i64) -> LineEvent {
        event(LineOutcome::LigneLiberee, ligne, version)
    }

    #[test]
    fn every_line_reserved_confirms() {
        let mut s = saga(&[(10, 2), (11, 5)]);
        assert_eq!(s.step(Input::Line(&reserved(11, 5))), Step::Recorded);
        assert_eq!(s.step(Input::Line(&reserved(10, 2))), Step::Confirmed);
        assert_eq!(s.state, ValidationStatus::Confirmee);
        assert_eq!(
            s.step(Input::Line(&rejected(10, 2))),
            Step::Ignored("already confirmed")
        );
    }

    #[test]
    fn a_rejected_line_refuses_once_every_outcome_is_known_naming_each() {
        let mut s = saga(&[(10, 2), (11, 5), (12, 1)]);
        assert_eq!(s.step(Input::Line(&rejected(10, 2))), Step::Recorded);
        assert_eq!(s.step(Input::Line(&reserved(11, 5))), Step::Recorded);
        assert_eq!(
            s.step(Input::Line(&rejected(12, 1))),
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
        assert_eq!(s.step(Input::Line(&reserved(10, 2))), Step::Recorded);
        let before = s.clone();
        for (e, why) in [
            (reserved(10, 2), "the line's outcome is already known"),
            (rejected(10, 2), "the line's outcome is already known"),
            (reserved(11, 4), "another version of the line"),
            (reserved(11, 6), "another version of the line"),
            (reserved(99, 1), "not a line of this validation"),
            (released(11, 5), "no release is expected yet"),
        ] {
            assert_eq!(s.step(Input::Line(&e)), Step::Ignored(why), "{e:?}");
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
                .map(|&i| s.step(Input::Line(&events[i])))
                .last();
            assert!(matches!(last, Some(Step::Refused(m)) if m.starts_with("line 11:")));
        }
    }

    #[test]
    fn a_timeout_refuses_naming_the_lines_without_an_outcome() {
        let mut s = saga(&[(10, 1), (11, 1), (12, 1)]);
        s.step(Input::Line(&reserved(10, 1)));
        s.step(Input::Line(&rejected(12, 1)));
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
        s.step(Input::Line(&reserved(10, 1)));
        assert!(matches!(
            s.step(Input::Line(&rejected(11, 1))),
            Step::Refused(_)
        ));
        s.refused([(10, 2), (11, 2)]);
        assert_eq!(s.state, ValidationStatus::Refusee);
        // Late outcomes of the validation, old releases: nothing.
        assert_eq!(
            s.step(Input::Line(&reserved(10, 2))),
            Step::Ignored("the validation was refused")
        );
        assert_eq!(
            s.step(Input::Line(&released(10, 1))),
            Step::Ignored("another version of the line")
        );
        assert_eq!(
            s.step(Input::Timeout {
                after: Duration::ZERO
            }),
            Step::Ignored("already refused")
        );
        assert_eq!(s.step(Input::Line(&released(11, 2))), Step::Recorded);
        assert_eq!(
            s.step(Input::Line(&released(11, 2))),
            Step::Ignored("the line is already released")
        );
        assert_eq!(s.step(Input::Line(&released(10, 2))), Step::Compensated);
    }
}
