//! Who may move an order where: the one table of order transitions, as a
//! pure function. The orders queries ask it under the order's row lock,
//! with the facts read there; the validation saga's own moves (confirm,
//! refuse) are listed in [`SAGA_MOVES`] and made only by the saga, from
//! what the worker wrote to the database.
//!
//! | A client asks | Allowed when | Effect |
//! |---|---|---|
//! | create with `EN_ATTENTE`, `EN_COURS` or `ANNULEE` | always | a new order without lines |
//! | create with `EXPEDIEE` | never (409: a new order has no line to ship) | |
//! | `PUT` its current `statut` | always | nothing changes |
//! | `PUT` anything else on an `EXPEDIEE` or `ANNULEE` order | never (409: final) | |
//! | `PUT` anything else while its validation runs | never (409) | |
//! | `PUT EN_ATTENTE` | never validated | |
//! | `PUT EN_COURS` | from `EN_ATTENTE`, validation not refused | the order stays unvalidated (`validation: null`) |
//! | `PUT EXPEDIEE` | it has lines, every one is `RESERVE`, validation not refused | shipped, final |
//! | `PUT ANNULEE` | open | every line's stock released, final |
//! | `DELETE` | not `EXPEDIEE`, no validation running | every line's stock released (unless already cancelled) |
//! | add, change, move or delete a line | open, never validated | the worker re-applies the line |
//! | `POST …/validation` | `EN_ATTENTE`, never validated, with lines | `validation: EN_COURS`, lines frozen |

use super::{OrderStatus, StockStatus, ValidationStatus};

/// What an order is, as far as its transitions go: read under its row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub id: i64,
    pub statut: OrderStatus,
    pub validation: Option<ValidationStatus>,
    /// Its lines' `statut_stock`, when the move depends on them (shipping,
    /// validating); [`LineStates::default`] otherwise.
    pub lines: LineStates,
}

/// How many of an order's lines stand where with the stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStates {
    pub reserved: usize,
    pub pending: usize,
    pub rejected: usize,
    pub released: usize,
}

impl LineStates {
    /// Counts `statuses`.
    pub fn of(statuses: impl IntoIterator<Item = StockStatus>) -> LineStates {
        let mut states = LineStates::default();
        for status in statuses {
            *match status {
                StockStatus::Reserve => &mut states.reserved,
                StockStatus::EnAttente => &mut states.pending,
                StockStatus::Rejete => &mut states.rejected,
                StockStatus::Libere => &mut states.released,
            } += 1;
        }
        states
    }

    pub fn total(&self) -> usize {
        self.reserved + self.pending + self.rejected + self.released
    }

    /// The lines that are not reserved, by stock status, for a refusal.
    fn unreserved(&self) -> String {
        [
            (self.pending, "EN_ATTENTE"),
            (self.rejected, "REJETE"),
            (self.released, "LIBERE"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, word)| format!("{n} {word}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// What a client asks of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `PUT /commandes/{id}` with a `statut`.
    SetStatus(OrderStatus),
    /// `DELETE /commandes/{id}`.
    Delete,
    /// Adding, changing, moving or deleting one of its lines.
    ChangeLines,
    /// `POST /commandes/{id}/validation`.
    Validate,
}

/// What an allowed request does beyond its own write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing changes (the status asked is the current one).
    Nothing,
    /// The change is made; no line's stock moves because of it.
    Proceed,
    /// The change is made and every line's stock is released.
    ReleaseLines,
}

/// Why a request was refused: a 409 with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The statuses a client may create an order with.
pub fn may_create(statut: OrderStatus) -> Result<(), Refusal> {
    match statut {
        OrderStatus::Expediee => Err(Refusal(
            "a new order has no line to ship: create it, add its lines, and ship it once \
             every line is RESERVE"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Whether a client may make `request` of the order `facts` describe, and
/// what it entails (see the module's table).
pub fn decide(facts: &OrderFacts, request: Request) -> Result<Effect, Refusal> {
    let id = facts.id;
    if request == Request::SetStatus(facts.statut) {
        return Ok(Effect::Nothing);
    }
    let running = facts.validation == Some(ValidationStatus::EnCours);
    match request {
        Request::Delete if facts.statut == OrderStatus::Expediee => Err(Refusal(format!(
            "order {id} has shipped; shipped orders are kept"
        ))),
        Request::Delete if running => Err(validating(id)),
        Request::Delete if facts.statut == OrderStatus::Annulee => Ok(Effect::Proceed),
        Request::Delete => Ok(Effect::ReleaseLines),
        Request::Validate => match facts.validation {
            Some(validation) => Err(Refusal(format!(
                "order {id} was already validated: its validation is {}",
                validation.as_str()
            ))),
            None if facts.statut != OrderStatus::EnAttente => Err(Refusal(format!(
                "only an EN_ATTENTE order can be validated; order {id} is {}",
                facts.statut.as_str()
            ))),
            None if facts.lines.total() == 0 => {
                Err(Refusal(format!("order {id} has no lines to validate")))
            }
            None => Ok(Effect::Proceed),
        },
        _ if facts.statut.is_closed() => Err(Refusal(format!(
            "order {id} is {} and can no longer change",
            facts.statut.as_str()
        ))),
        _ if running => Err(validating(id)),
        Request::ChangeLines => match facts.validation {
            None => Ok(Effect::Proceed),
            Some(validation) => Err(Refusal(format!(
                "order {id}'s validation is {}; its lines can no longer change",
                validation.as_str()
            ))),
        },
        Request::SetStatus(OrderStatus::EnAttente) => match facts.validation {
            None => Ok(Effect::Proceed),
            Some(_) => Err(Refusal(format!(
                "order {id} was validated; it cannot go back to EN_ATTENTE"
            ))),
        },
        Request::SetStatus(OrderStatus::EnCours | OrderStatus::Expediee)
            if facts.validation == Some(ValidationStatus::Refusee) =>
        {
            Err(Refusal(format!(
                "order {id}'s validation was refused; it can only be cancelled or deleted"
            )))
        }
        Request::SetStatus(OrderStatus::EnCours) => Ok(Effect::Proceed),
        Request::SetStatus(OrderStatus::Expediee) => {
            let lines = facts.lines;
            if lines.total() == 0 {
                Err(Refusal(format!(
                    "order {id} has no lines: an order ships once it has lines and every one \
                     is RESERVE"
                )))
            } else if lines.reserved < lines.total() {
                Err(Refusal(format!(
                    "order {id} ships only once every line is RESERVE: {} of its {} lines are \
                     not ({})",
                    lines.total() - lines.reserved,
                    lines.total(),
                    lines.unreserved()
                )))
            } else {
                Ok(Effect::Proceed)
            }
        }
        Request::SetStatus(OrderStatus::Annulee) => Ok(Effect::ReleaseLines),
    }
}

fn validating(id: i64) -> Refusal {
    Refusal(format!(
        "order {id} is being validated; it cannot change until its validation ends"
    ))
}

/// The moves only the validation saga makes, decided from what the worker
/// wrote to the database (never from a message's body): `(validation
/// from, validation to, statut to, why)`.
pub const SAGA_MOVES: &[(ValidationStatus, ValidationStatus, OrderStatus, &str)] = &[
    (
        ValidationStatus::EnCours,
        ValidationStatus::Confirmee,
        OrderStatus::EnCours,
        "every line is RESERVE at the version the validation sent",
    ),
    (
        ValidationStatus::EnCours,
        ValidationStatus::Refusee,
        OrderStatus::Annulee,
        "a line is REJETE at that version, or the deadline passed: every line released",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    const VALIDATIONS: [Option<ValidationStatus>; 4] = [
        None,
        Some(ValidationStatus::EnCours),
        Some(ValidationStatus::Confirmee),
        Some(ValidationStatus::Refusee),
    ];

    /// Line states worth telling apart: none, all reserved, and one line
    /// in each other state beside reserved ones.
    fn line_cases() -> Vec<LineStates> {
        let mut cases = vec![
            LineStates::default(),
            LineStates {
                reserved: 3,
                ..LineStates::default()
            },
        ];
        for other in [
            StockStatus::EnAttente,
            StockStatus::Rejete,
            StockStatus::Libere,
        ] {
            cases.push(LineStates::of([StockStatus::Reserve, other]));
            cases.push(LineStates::of([other]));
        }
        cases
    }

    fn requests() -> Vec<Request> {
        let mut all: Vec<Request> = OrderStatus::ALL
            .iter()
            .map(|s| Request::SetStatus(*s))
            .collect();
        all.extend([Request::Delete, Request::ChangeLines, Request::Validate]);
        all
    }

    /// Every order state the facts can describe, with every request.
    fn every_case() -> Vec<(OrderFacts, Request, Result<Effect, Refusal>)> {
        let mut cases = Vec::new();
        for statut in OrderStatus::ALL {
            for validation in VALIDATIONS {
                for lines in line_cases() {
                    for request in requests() {
                        let facts = OrderFacts {
                            id: 7,
                            statut: *statut,
                            validation,
                            lines,
                        };
                        let decision = decide(&facts, request);
                        cases.push((facts, request, decision));
                    }
                }
            }
        }
        cases
    }

    #[test]
    fn an_order_ships_only_with_lines_all_reserved_and_no_validation_pending_or_refused() {
        for (facts, request, decision) in every_case() {
            if request != Request::SetStatus(OrderStatus::Expediee)
                || facts.statut == OrderStatus::Expediee
            {
                continue;
            }
            let allowed = decision.is_ok();
            let expected = !facts.statut.is_closed()
                && facts.lines.total() > 0
                && facts.lines.reserved == facts.lines.total()
                && matches!(facts.validation, None | Some(ValidationStatus::Confirmee));
            assert_eq!(allowed, expected, "{facts:?}: {decision:?}");
        }
    }

    #[test]
    fn a_client_never_changes_a_running_validation_nor_undoes_its_outcome() {
        for (facts, request, decision) in every_case() {
            let Ok(effect) = decision else { continue };
            if effect == Effect::Nothing {
                continue;
            }
            match facts.validation {
                Some(ValidationStatus::EnCours) => {
                    panic!("{request:?} allowed during a validation: {facts:?}")
                }
                // Validated: its lines are frozen, it never goes back to
                // waiting, and it is never validated again. Cancelling
                // (releasing its stock) or shipping it stays the client's.
                Some(_) => assert!(
                    matches!(
                        request,
                        Request::SetStatus(OrderStatus::Annulee | OrderStatus::Expediee)
                            | Request::SetStatus(OrderStatus::EnCours)
                            | Request::Delete
                    ),
                    "{request:?} allowed on a validated order: {facts:?}"
                ),
                None => {}
            }
        }
    }

    #[test]
    fn final_statuses_stay_final_and_every_refusal_names_the_order() {
        for (facts, request, decision) in every_case() {
            match &decision {
                Err(Refusal(text)) => assert!(
                    text.contains("order 7") || text.contains("new order"),
                    "{text}"
                ),
                Ok(Effect::Nothing) => assert_eq!(request, Request::SetStatus(facts.statut)),
                Ok(_) if facts.statut.is_closed() => assert!(
                    request == Request::Delete && facts.statut == OrderStatus::Annulee,
                    "{request:?} allowed on a {facts:?}"
                ),
                Ok(_) => {}
            }
        }
    }

    #[test]
    fn stock_is_released_exactly_when_an_open_order_is_cancelled_or_deleted() {
        for (facts, request, decision) in every_case() {
            let releases = decision == Ok(Effect::ReleaseLines);
            let expected = decision.is_ok()
                && facts.statut != OrderStatus::Annulee
                && matches!(
                    request,
                    Request::SetStatus(OrderStatus::Annulee) | Request::Delete
                );
            assert_eq!(releases, expected, "{facts:?} {request:?} {decision:?}");
        }
    }

    #[test]
    fn the_seed_clients_moves_stay_allowed() {
        // Create EN_COURS (the seed's client does), add lines, cancel.
        assert_eq!(may_create(OrderStatus::EnCours), Ok(()));
        assert_eq!(may_create(OrderStatus::EnAttente), Ok(()));
        assert!(may_create(OrderStatus::Expediee).is_err());
        let open = OrderFacts {
            id: 7,
            statut: OrderStatus::EnCours,
            validation: None,
            lines: LineStates::default(),
        };
        assert_eq!(decide(&open, Request::ChangeLines), Ok(Effect::Proceed));
        assert_eq!(
            decide(&open, Request::SetStatus(OrderStatus::Annulee)),
            Ok(Effect::ReleaseLines)
        );
        assert_eq!(decide(&open, Request::Delete), Ok(Effect::ReleaseLines));
    }

    #[test]
    fn a_refused_shipment_says_which_lines_are_not_reserved() {
        let facts = OrderFacts {
            id: 7,
            statut: OrderStatus::EnAttente,
            validation: None,
            lines: LineStates::of([
                StockStatus::Reserve,
                StockStatus::Rejete,
                StockStatus::EnAttente,
            ]),
        };
        let Err(Refusal(text)) = decide(&facts, Request::SetStatus(OrderStatus::Expediee)) else {
            panic!("shipped with a rejected line");
        };
        assert_eq!(
            text,
            "order 7 ships only once every line is RESERVE: 2 of its 3 lines are not \
             (1 EN_ATTENTE, 1 REJETE)"
        );
    }

    #[test]
    fn only_an_unvalidated_waiting_order_with_lines_starts_a_validation() {
        for (facts, request, decision) in every_case() {
            if request != Request::Validate {
                continue;
            }
            let expected = facts.statut == OrderStatus::EnAttente
                && facts.validation.is_none()
                && facts.lines.total() > 0;
            assert_eq!(decision.is_ok(), expected, "{facts:?}");
        }
    }

    #[test]
    fn the_saga_confirms_or_refuses_only_a_running_validation() {
        for (from, to, statut, _) in SAGA_MOVES {
            assert_eq!(*from, ValidationStatus::EnCours);
            assert_ne!(to, from);
            assert!(!statut.is_closed() || *to == ValidationStatus::Refusee);
        }
    }
}
