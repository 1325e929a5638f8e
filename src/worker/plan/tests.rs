//! The stock rules, tested without a database or a broker: plain cases
//! first, then properties over random histories delivered with duplicates,
//! reordering and seed-format messages mixed in.

use super::*;
use crate::worker::change::{LineRef, StockChange};

const LOW: i32 = 5;

// The cases below write ids as bare numbers, by position (line, version,
// product, quantity); these name them where a typed key is looked up.
fn pid(id: i64) -> ProductId {
    ProductId(id)
}

fn lid(id: i64) -> LineId {
    LineId(id)
}

fn ver(n: i64) -> Version {
    Version(n)
}

fn line(ligne_id: i64, version: i64) -> LineRef {
    LineRef {
        message_id: Uuid::new_v4(),
        ligne_id: lid(ligne_id),
        version: ver(version),
    }
}

fn change(action: Action, line: Option<LineRef>, produit_id: i64, quantite: i32) -> StockChange {
    StockChange {
        line,
        action,
        produit_id: pid(produit_id),
        quantite,
        commande_id: OrderId(1),
        ancien: None,
        occurred_at: None,
        request_id: None,
        validation: false,
    }
}

fn created(ligne: i64, version: i64, product: i64, quantite: i32) -> StockChange {
    change(
        Action::Created,
        Some(line(ligne, version)),
        product,
        quantite,
    )
}

fn updated(ligne: i64, version: i64, product: i64, quantite: i32) -> StockChange {
    change(
        Action::Updated,
        Some(line(ligne, version)),
        product,
        quantite,
    )
}

fn deleted(ligne: i64, version: i64) -> StockChange {
    change(Action::Deleted, Some(line(ligne, version)), 0, 0)
}

fn seed(action: Action, product: i64, quantite: i32) -> StockChange {
    change(action, None, product, quantite)
}

fn snapshot(stock: &[(i64, i32)], reservations: &[(i64, i64, i32, i64)]) -> Snapshot {
    Snapshot {
        stock: stock.iter().map(|&(p, s)| (pid(p), s)).collect(),
        reservations: reservations
            .iter()
            .map(|&(ligne, produit, quantite, version)| {
                let r = Reservation {
                    produit_id: Some(pid(produit)),
                    quantite,
                    version: ver(version),
                };
                (lid(ligne), r)
            })
            .collect(),
        processed: HashSet::new(),
    }
}

fn deltas(plan: &Plan) -> Vec<(i64, i32)> {
    plan.movements
        .iter()
        .map(|m| (m.produit_id.get(), m.delta))
        .collect()
}

#[test]
fn a_new_line_reserves_when_the_stock_allows() {
    let plan = plan(&[created(10, 1, 1, 3)], &snapshot(&[(1, 20)], &[]), LOW);
    assert_eq!(
        plan.outcomes,
        [Outcome::Applied(Some(StockStatus::Reserve))]
    );
    assert_eq!(plan.stock[&pid(1)], 17);
    assert_eq!(deltas(&plan), [(1, -3)]);
    let (reservation, is_new) = plan.reservations[&lid(10)];
    assert!(is_new);
    assert_eq!(
        (reservation.produit_id, reservation.quantite),
        (Some(pid(1)), 3)
    );
    assert_eq!(plan.line_statuses[&lid(10)], (ver(1), StockStatus::Reserve));
}

#[test]
fn a_line_the_stock_cannot_cover_is_rejected_and_reserves_nothing() {
    let plan = plan(&[created(10, 1, 1, 5)], &snapshot(&[(1, 4)], &[]), LOW);
    assert_eq!(plan.outcomes, [Outcome::Rejected]);
    assert!(plan.stock.is_empty() && plan.movements.is_empty());
    assert_eq!(plan.reservations[&lid(10)].0.produit_id, None);
    assert_eq!(plan.line_statuses[&lid(10)], (ver(1), StockStatus::Rejete));
}

fn validating(mut c: StockChange) -> StockChange {
    c.validation = true;
    c
}

#[test]
fn validation_changes_report_their_outcome_as_line_events() {
    // Line 10 holds 4 of product 1 (stock 2); line 11 asks 3 of product 2
    // (stock 1); line 12 is released.
    let changes = [
        validating(updated(10, 2, 1, 4)),
        validating(created(11, 1, 2, 3)),
        validating(change(Action::Deleted, Some(line(12, 3)), 1, 5)),
        created(13, 1, 1, 1),
    ];
    let plan = plan(
        &changes,
        &snapshot(&[(1, 2), (2, 1)], &[(10, 1, 4, 1), (12, 1, 5, 2)]),
        LOW,
    );
    let events: Vec<_> = plan
        .events
        .iter()
        .map(|(e, _)| {
            (
                e.event,
                e.ligne_id.get(),
                e.version.get(),
                e.quantite,
                e.disponible,
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            (LineOutcome::LigneReservee, 10, 2, 4, None),
            (LineOutcome::LigneRejetee, 11, 1, 3, Some(1)),
            (LineOutcome::LigneLiberee, 12, 3, 5, None),
        ],
        "line 13 is not part of a validation"
    );
}

#[test]
fn duplicate_stale_and_refused_validation_changes_report_nothing() {
    let first = validating(created(10, 2, 1, 1));
    let stale = validating(created(11, 1, 1, 1));
    let unknown = validating(created(12, 1, 99, 1));
    let mut snap = snapshot(&[(1, 5)], &[(11, 1, 1, 4)]);
    snap.processed.insert(first.line.unwrap().message_id);
    let plan = plan(&[first, stale, unknown], &snap, LOW);
    assert!(matches!(
        plan.outcomes[..],
        [Outcome::Duplicate, Outcome::Stale, Outcome::DeadLetter(_)]
    ));
    assert!(plan.events.is_empty(), "{:?}", plan.events);
}

#[test]
fn growing_past_the_stock_releases_what_the_line_held() {
    // The line holds 4, stock is 0: 0 + 4 < 6.
    let plan = plan(
        &[updated(10, 2, 1, 6)],
        &snapshot(&[(1, 0)], &[(10, 1, 4, 1)]),
        LOW,
    );
    assert_eq!(plan.outcomes, [Outcome::Rejected]);
    assert_eq!(plan.stock[&pid(1)], 4);
    assert_eq!(deltas(&plan), [(1, 4)]);
}

#[test]
fn a_quantity_change_on_the_same_product_is_one_delta() {
    let plan = plan(
        &[updated(10, 2, 1, 8)],
        &snapshot(&[(1, 15)], &[(10, 1, 5, 1)]),
        LOW,
    );
    assert_eq!(plan.stock[&pid(1)], 12);
    assert_eq!(deltas(&plan), [(1, -3)]);
    assert!(!plan.reservations[&lid(10)].1, "an update, not an insert");
}

#[test]
fn moving_a_line_to_another_product_releases_the_old_one() {
    let plan = plan(
        &[updated(10, 2, 2, 8)],
        &snapshot(&[(1, 12), (2, 20)], &[(10, 1, 8, 1)]),
        LOW,
    );
    assert_eq!((plan.stock[&pid(1)], plan.stock[&pid(2)]), (20, 12));
    assert_eq!(deltas(&plan), [(1, 8), (2, -8)]);
}

#[test]
fn deleting_releases_and_marks_the_line_libere() {
    let plan = plan(
        &[deleted(10, 3)],
        &snapshot(&[(1, 12)], &[(10, 1, 8, 2)]),
        LOW,
    );
    assert_eq!(plan.outcomes, [Outcome::Applied(Some(StockStatus::Libere))]);
    assert_eq!(plan.stock[&pid(1)], 20);
    assert_eq!(plan.reservations[&lid(10)].0.produit_id, None);
}

#[test]
fn duplicates_and_stale_versions_change_nothing() {
    let first = created(10, 1, 1, 3);
    let mut done = snapshot(&[(1, 20)], &[(10, 1, 3, 2)]);
    done.processed.insert(first.line.unwrap().message_id);
    let again = first.clone();
    let older = updated(10, 2, 1, 9);
    let plan = plan(&[first, older], &done, LOW);
    assert_eq!(plan.outcomes, [Outcome::Duplicate, Outcome::Stale]);
    assert!(plan.stock.is_empty() && plan.movements.is_empty());
    let twice = super::plan(&[again.clone(), again], &snapshot(&[(1, 20)], &[]), LOW);
    assert_eq!(twice.outcomes[1], Outcome::Duplicate);
    assert_eq!(twice.stock[&pid(1)], 17);
}

#[test]
fn an_unknown_product_is_dead_lettered_and_not_recorded() {
    let message = created(10, 1, 99, 1);
    let id = message.line.unwrap().message_id;
    let plan = plan(&[message], &snapshot(&[(1, 20)], &[]), LOW);
    assert_eq!(
        plan.outcomes,
        [Outcome::DeadLetter(Refusal {
            class: DeadLetterClass::UnknownProduct,
            reason: "unknown product 99".into()
        })]
    );
    assert_eq!(plan.unrecorded, [id]);
    assert!(plan.reservations.is_empty());
}

#[test]
fn releasing_to_a_deleted_product_moves_nothing() {
    let plan = plan(
        &[updated(10, 2, 1, 2)],
        &snapshot(&[(1, 10)], &[(10, 7, 3, 1)]),
        LOW,
    );
    assert_eq!(deltas(&plan), [(1, -2)]);
}

#[test]
fn a_release_that_would_overflow_the_stock_is_dead_lettered() {
    let plan = plan(
        &[deleted(10, 2), seed(Action::Deleted, 2, 5)],
        &snapshot(&[(1, i32::MAX - 3), (2, i32::MAX)], &[(10, 1, 4, 1)]),
        LOW,
    );
    assert!(
        matches!(&plan.outcomes[0], Outcome::DeadLetter(r) if r.reason.contains("past 2147483647") && r.class == DeadLetterClass::Overflow)
    );
    assert!(matches!(&plan.outcomes[1], Outcome::DeadLetter(_)));
    assert!(plan.stock.is_empty());
}

#[test]
fn crossing_thresholds_raises_alerts() {
    let plan = plan(
        &[
            created(10, 1, 1, 3),
            created(11, 1, 1, 3),
            created(12, 1, 2, 4),
        ],
        &snapshot(&[(1, 7), (2, 4)], &[]),
        LOW,
    );
    let alerts: Vec<_> = plan
        .alerts
        .iter()
        .map(|a| (a.event, a.produit_id.get(), a.quantite_en_stock))
        .collect();
    assert_eq!(
        alerts,
        [
            (AlertEvent::StockBas, 1, 4),
            (AlertEvent::StockEpuise, 2, 0)
        ]
    );
    assert_eq!(
        crossed(4, 3, LOW),
        None,
        "already below: no second STOCK_BAS"
    );
    assert_eq!(crossed(3, 5, LOW), None, "a release raises nothing");
}

#[test]
fn seed_format_messages_apply_their_delta_without_deduplication() {
    let reserve = seed(Action::Created, 1, 3);
    let plan = plan(
        &[reserve.clone(), reserve, seed(Action::Deleted, 1, 2)],
        &snapshot(&[(1, 10)], &[]),
        LOW,
    );
    assert_eq!(plan.outcomes, vec![Outcome::Applied(None); 3]);
    assert_eq!(plan.stock[&pid(1)], 6);
    assert!(plan.line_statuses.is_empty() && plan.reservations.is_empty());
}

#[test]
fn seed_format_rules_refuse_what_cannot_be_applied() {
    let stock = |p: ProductId| (p == pid(1)).then_some(2);
    let short = plan_seed(&seed(Action::Created, 1, 3), stock).unwrap_err();
    assert!(short.reason.contains("not enough stock"), "{short:?}");
    assert_eq!(short.class, DeadLetterClass::Uncoverable);
    let unknown = plan_seed(&seed(Action::Deleted, 7, 1), stock).unwrap_err();
    assert_eq!(
        unknown,
        Refusal::new(DeadLetterClass::UnknownProduct, "unknown product 7")
    );
    let mut moved = seed(Action::Updated, 1, 4);
    moved.ancien = Some((pid(1), 3));
    assert_eq!(
        plan_seed(&moved, stock).unwrap(),
        [(pid(1), 3), (pid(1), -4)]
    );
}

mod properties {
    //! A simple model against the planner: whatever the order, the
    //! duplicates and the batch boundaries, each line ends holding the
    //! state of its newest version (when the stock allows), and stock is
    //! conserved and never negative.

    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const PRODUCTS: [i64; 3] = [1, 2, 3];

    /// One line's history: its product and quantity per version, and
    /// whether it ends deleted.
    #[derive(Debug, Clone)]
    struct History {
        versions: Vec<(i64, i32)>,
        deleted: bool,
    }

    fn history() -> impl Strategy<Value = History> {
        (
            prop::collection::vec((prop::sample::select(&PRODUCTS[..]), 1..6i32), 1..5),
            any::<bool>(),
        )
            .prop_map(|(versions, deleted)| History { versions, deleted })
    }

    fn messages(histories: &[History]) -> Vec<StockChange> {
        let mut out = Vec::new();
        for (i, h) in histories.iter().enumerate() {
            let ligne = 100 + i as i64;
            for (v, &(product, quantite)) in h.versions.iter().enumerate() {
                let version = v as i64 + 1;
                out.push(if v == 0 {
                    created(ligne, version, product, quantite)
                } else {
                    updated(ligne, version, product, quantite)
                });
            }
            if h.deleted {
                out.push(deleted(ligne, h.versions.len() as i64 + 1));
            }
        }
        out
    }

    /// The database, as the store would leave it after each batch.
    struct Db {
        snapshot: Snapshot,
    }

    impl Db {
        fn apply(&mut self, batch: &[StockChange]) -> Plan {
            let ids: HashSet<Uuid> = batch
                .iter()
                .filter_map(|c| c.line)
                .map(|l| l.message_id)
                .collect();
            let mut view = self.snapshot.clone();
            view.processed.retain(|id| ids.contains(id));
            let plan = plan(batch, &view, LOW);
            for (product, stock) in &plan.stock {
                assert!(*stock >= 0, "negative stock on {product}");
                self.snapshot.stock.insert(*product, *stock);
            }
            for (ligne, (reservation, _)) in &plan.reservations {
                self.snapshot.reservations.insert(*ligne, *reservation);
            }
            self.snapshot.processed.extend(ids);
            for id in &plan.unrecorded {
                self.snapshot.processed.remove(id);
            }
            plan
        }
    }

    /// Delivers `messages` in the order given by `order` (indexes, which
    /// may repeat: duplicates), in batches of the given sizes.
    fn deliver(db: &mut Db, messages: &[StockChange], order: &[usize], sizes: &[usize]) {
        let delivered: Vec<StockChange> = order
            .iter()
            .map(|&i| messages[i % messages.len()].clone())
            .collect();
        let mut rest = &delivered[..];
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).clamp(1, rest.len());
            let plan = db.apply(&rest[..n]);
            assert!(plan
                .outcomes
                .iter()
                .all(|o| !matches!(o, Outcome::DeadLetter(_))));
            rest = &rest[n..];
        }
    }

    /// Every message at least once, in a shuffled order, some twice.
    fn order(n: usize) -> impl Strategy<Value = Vec<usize>> {
        (
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            prop::collection::vec(0..n, 0..n),
        )
            .prop_map(|(mut all, extra)| {
                all.extend(extra);
                all
            })
            .prop_shuffle()
    }

    fn case() -> impl Strategy<Value = (Vec<History>, Vec<usize>, Vec<usize>)> {
        prop::collection::vec(history(), 1..6).prop_flat_map(|histories| {
            let n = messages(&histories).len();
            (
                Just(histories),
                order(n),
                prop::collection::vec(1..8usize, 1..5),
            )
        })
    }

    fn reserved_on(db: &Db, product: i64) -> i32 {
        db.snapshot
            .reservations
            .values()
            .filter(|r| r.produit_id == Some(pid(product)))
            .map(|r| r.quantite)
            .sum()
    }

    proptest! {
        #[test]
        fn with_enough_stock_every_line_ends_as_its_newest_version((histories, order, sizes) in case()) {
            let messages = messages(&histories);
            let mut db = Db { snapshot: snapshot(&[(1, 1000), (2, 1000), (3, 1000)], &[]) };
            deliver(&mut db, &messages, &order, &sizes);
            for (i, h) in histories.iter().enumerate() {
                let r = db.snapshot.reservations[&lid(100 + i as i64)];
                let (product, quantite) = *h.versions.last().unwrap();
                let expected = if h.deleted { (None, 0) } else { (Some(pid(product)), quantite) };
                prop_assert_eq!((r.produit_id, r.quantite), expected);
                prop_assert_eq!(r.version, ver(h.versions.len() as i64 + i64::from(h.deleted)));
            }
            for product in PRODUCTS {
                prop_assert_eq!(db.snapshot.stock[&pid(product)], 1000 - reserved_on(&db, product));
            }
        }

        #[test]
        fn with_scarce_stock_stock_is_conserved_and_never_negative(
            (histories, order, sizes) in case(),
            initial in prop::collection::vec(0..8i32, 3),
        ) {
            let messages = messages(&histories);
            let stock: Vec<(i64, i32)> = PRODUCTS.iter().copied().zip(initial.iter().copied()).collect();
            let mut db = Db { snapshot: snapshot(&stock, &[]) };
            deliver(&mut db, &messages, &order, &sizes);
            for (product, start) in &stock {
                prop_assert!(db.snapshot.stock[&pid(*product)] >= 0);
                prop_assert_eq!(db.snapshot.stock[&pid(*product)] + reserved_on(&db, *product), *start);
            }
            for (i, h) in histories.iter().enumerate() {
                let r = db.snapshot.reservations[&lid(100 + i as i64)];
                let (product, quantite) = *h.versions.last().unwrap();
                prop_assert_eq!(r.version, ver(h.versions.len() as i64 + i64::from(h.deleted)));
                let held = (r.produit_id, r.quantite);
                prop_assert!(held == (None, 0) || (!h.deleted && held == (Some(pid(product)), quantite)));
            }
        }

        #[test]
        fn seed_format_messages_mixed_in_add_their_deltas(
            (histories, order, sizes) in case(),
            seeds in prop::collection::vec((prop::sample::select(&PRODUCTS[..]), 1..4i32, any::<bool>()), 0..10),
        ) {
            let mut messages = messages(&histories);
            let tracked = messages.len();
            let mut net: HashMap<i64, i32> = HashMap::new();
            for &(product, quantite, release) in &seeds {
                let action = if release { Action::Deleted } else { Action::Created };
                messages.push(seed(action, product, quantite));
                *net.entry(product).or_default() += if release { quantite } else { -quantite };
            }
            // Every tracked message in the given order, each seed message
            // once, spread among them.
            let mut order = order;
            for (k, index) in (tracked..messages.len()).enumerate() {
                order.insert((k * 7919) % (order.len() + 1), index);
            }
            let mut db = Db { snapshot: snapshot(&[(1, 1000), (2, 1000), (3, 1000)], &[]) };
            deliver(&mut db, &messages, &order, &sizes);
            for product in PRODUCTS {
                let seeded = net.get(&product).copied().unwrap_or(0);
                prop_assert_eq!(db.snapshot.stock[&pid(product)], 1000 - reserved_on(&db, product) + seeded);
            }
        }
    }
}
