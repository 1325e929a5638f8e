use super::*;
use crate::load::history::Run;

fn run() -> Run {
    Run {
        kind: "run".into(),
        prefix: "h1-".into(),
        products: BTreeMap::from([(1, 100), (2, 50)]),
    }
}

fn record(n: u64, op: Op, outcome: Outcome) -> Record {
    Record {
        kind: "op".into(),
        id: format!("h1-{n}"),
        op: op.name().into(),
        order: 10,
        line: 0,
        product: 1,
        quantite: 3,
        start_ms: n * 100,
        end_ms: n * 100 + 20,
        status: match outcome {
            Outcome::Ok => 201,
            Outcome::Failed => 409,
            Outcome::Unknown => 0,
        },
        outcome,
        created: None,
        answer: None,
    }
}

fn line(id: i64, produit_id: i64, quantite: i32, statut_stock: &str) -> LineSeen {
    LineSeen {
        id,
        produit_id,
        quantite,
        statut_stock: statut_stock.into(),
    }
}

fn change(line: i64, version: i64, request: &str) -> Change {
    Change {
        line,
        version,
        client_request_id: Some(request.into()),
        resultat: Some("RESERVE".into()),
    }
}

/// Order 10 created, line 20 (product 1 × 3) created then changed to × 5;
/// stock 100 − 5.
fn clean() -> (History, Observed) {
    let mut create_order = record(1, Op::CreateOrder, Outcome::Ok);
    create_order.created = Some(10);
    let mut create_line = record(2, Op::CreateLine, Outcome::Ok);
    create_line.created = Some(20);
    create_line.answer = Some((1, 3));
    let mut change_quantity = record(3, Op::ChangeQuantity, Outcome::Ok);
    change_quantity.line = 20;
    change_quantity.answer = Some((1, 5));
    let history = History {
        run: run(),
        records: vec![create_order, create_line, change_quantity],
    };
    let observed = Observed {
        stock: BTreeMap::from([(1, 95), (2, 50)]),
        orders: BTreeMap::from([(
            10,
            OrderSeen {
                statut: "EN_ATTENTE".into(),
                validation: None,
                lines: vec![line(20, 1, 5, "RESERVE")],
            },
        )]),
        changes: vec![change(20, 1, "h1-2"), change(20, 2, "h1-3")],
    };
    (history, observed)
}

#[test]
fn a_history_the_state_agrees_with_holds() {
    let (history, observed) = clean();
    let findings = check(&history, &observed);
    assert!(findings.holds(), "{}", findings.describe());
    assert_eq!(
        (
            findings.operations,
            findings.ok,
            findings.failed,
            findings.unknown
        ),
        (3, 3, 0, 0)
    );
    assert!(findings.describe().starts_with(
        "history: 3 changes: ok 3, failed 0, unknown 0; lost 0, doubled 0, unexpected 0, undecided 0"
    ));
}

#[test]
fn an_acknowledged_change_missing_or_never_applied_is_lost() {
    let (history, mut observed) = clean();
    observed.changes.retain(|c| c.version != 1);
    let findings = check(&history, &observed);
    assert_eq!(
        findings.lost,
        ["create_line h1-2 (201): line 20 has no such change"]
    );

    let (history, mut observed) = clean();
    observed.changes[1].resultat = None;
    let findings = check(&history, &observed);
    assert_eq!(
        findings.lost,
        ["line 20 version 2 by request h1-3: committed, never applied"]
    );
}

#[test]
fn a_line_that_is_not_what_its_last_acknowledged_change_said_is_lost() {
    let (history, mut observed) = clean();
    observed.orders.get_mut(&10).unwrap().lines[0].quantite = 3;
    observed.stock.insert(1, 97);
    let findings = check(&history, &observed);
    assert_eq!(
        findings.lost,
        ["change_quantity h1-3 on line 20: answered product 1 × 5, holds product 1 × 3"]
    );
}

#[test]
fn a_refused_change_found_on_the_server_is_unexpected() {
    let (mut history, mut observed) = clean();
    let mut refused = record(4, Op::DeleteLine, Outcome::Failed);
    refused.line = 20;
    history.records.push(refused);
    observed.changes.push(change(20, 3, "h1-4"));
    let findings = check(&history, &observed);
    assert_eq!(
        findings.unexpected,
        ["line 20 version 3 by request h1-4: the request was refused (409)"]
    );
    // A change by a request of the run that was never recorded.
    let (history, mut observed) = clean();
    observed.changes.push(change(20, 3, "h1-99"));
    let findings = check(&history, &observed);
    assert_eq!(
        findings.unexpected,
        ["line 20 version 3 by request h1-99: a request the run never sent"]
    );
}

#[test]
fn a_request_recorded_twice_or_stock_taken_twice_is_doubled() {
    let (mut history, mut observed) = clean();
    let mut unknown = record(4, Op::CreateLine, Outcome::Unknown);
    unknown.product = 2;
    history.records.push(unknown);
    // The unknown request created line 21 twice (say, a proxy retried it).
    observed.changes.push(change(21, 1, "h1-4"));
    observed.changes.push(change(22, 1, "h1-4"));
    observed.changes.push(change(21, 1, "h1-4"));
    let order = observed.orders.get_mut(&10).unwrap();
    order.lines.push(line(21, 2, 3, "RESERVE"));
    order.lines.push(line(22, 2, 3, "RESERVE"));
    observed.stock.insert(2, 41);
    let findings = check(&history, &observed);
    assert_eq!(
        findings.doubled,
        [
            "request h1-4 recorded 2 times on line 21",
            "request h1-4 changed 2 lines {21, 22}; it targets one",
            "product 2: stock 41, expected 44 (3 units taken twice)"
        ]
    );
    assert!(findings.lost.is_empty() && findings.unexpected.is_empty());
}

#[test]
fn stock_above_what_the_reserved_lines_leave_is_lost() {
    let (history, mut observed) = clean();
    observed.stock.insert(1, 100);
    let findings = check(&history, &observed);
    assert_eq!(
        findings.lost,
        ["product 1: stock 100, expected 95 (5 units never taken, or given back twice)"]
    );
}

#[test]
fn an_unknown_change_may_or_may_not_have_happened() {
    for applied in [false, true] {
        let (mut history, mut observed) = clean();
        let mut delete = record(4, Op::DeleteLine, Outcome::Unknown);
        delete.line = 20;
        history.records.push(delete);
        if applied {
            observed.orders.get_mut(&10).unwrap().lines.clear();
            observed.stock.insert(1, 100);
            observed.changes.push(change(20, 3, "h1-4"));
        }
        let findings = check(&history, &observed);
        assert!(
            findings.holds(),
            "applied {applied}: {}",
            findings.describe()
        );
    }
}

#[test]
fn a_deleted_line_still_there_is_unexpected() {
    let (mut history, mut observed) = clean();
    let mut delete = record(4, Op::DeleteLine, Outcome::Ok);
    delete.line = 20;
    history.records.push(delete);
    observed.changes.push(change(20, 3, "h1-4"));
    let findings = check(&history, &observed);
    assert_eq!(
        findings.unexpected,
        ["delete_line h1-4 on line 20: the line is still there"]
    );
}

#[test]
fn every_validation_ends_decided_and_its_lines_agree() {
    let (mut history, mut observed) = clean();
    let mut validate = record(4, Op::ValidateOrder, Outcome::Ok);
    validate.status = 202;
    history.records.push(validate);
    for (statut, validation, stock, holds) in [
        ("EN_COURS", "CONFIRMEE", "RESERVE", true),
        ("ANNULEE", "REFUSEE", "LIBERE", true),
        ("EN_ATTENTE", "EN_COURS", "RESERVE", false),
        ("ANNULEE", "REFUSEE", "RESERVE", false),
        ("EN_COURS", "CONFIRMEE", "REJETE", false),
    ] {
        let order = observed.orders.get_mut(&10).unwrap();
        order.statut = statut.into();
        order.validation = Some(validation.into());
        order.lines[0].statut_stock = stock.into();
        observed
            .stock
            .insert(1, if stock == "RESERVE" { 95 } else { 100 });
        let findings = check(&history, &observed);
        assert_eq!(
            findings.undecided.is_empty(),
            holds,
            "{validation} {stock}: {findings:?}"
        );
        assert!(findings.lost.is_empty(), "{findings:?}");
    }
    observed.orders.get_mut(&10).unwrap().validation = None;
    let findings = check(&history, &observed);
    assert_eq!(
        findings.lost,
        ["validate_order h1-4 (202): order 10 was never validated"]
    );
}

#[test]
fn writes_fail_from_the_first_failure_to_the_next_success() {
    let mut records: Vec<Record> = (1..=10)
        .map(|n| record(n, Op::CreateOrder, Outcome::Ok))
        .collect();
    // Requests 4 to 7 (starting at 400 to 700 ms) get no answer.
    for r in &mut records[3..7] {
        r.outcome = Outcome::Unknown;
    }
    assert_eq!(writes_failed_for(&records), Duration::from_millis(400));
    // Failing to the end: until the last answer (1020 ms).
    for r in &mut records[7..] {
        r.outcome = Outcome::Failed;
    }
    assert_eq!(writes_failed_for(&records), Duration::from_millis(620));
    assert_eq!(writes_failed_for(&[]), Duration::ZERO);
}

#[test]
fn an_unanswered_change_the_server_ran_last_decides_the_line() {
    let (mut history, mut observed) = clean();
    // Sent before the last ok change, unanswered, applied after it.
    let mut late = record(2, Op::ChangeQuantity, Outcome::Unknown);
    late.id = "h1-late".into();
    late.line = 20;
    late.start_ms = 250;
    history.records.push(late);
    observed.changes.push(change(20, 3, "h1-late"));
    observed.orders.get_mut(&10).unwrap().lines[0].quantite = 4;
    observed.stock.insert(1, 96);
    let findings = check(&history, &observed);
    assert!(findings.holds(), "{}", findings.describe());
    // Applied before it instead: the ok change decides, and 4 ≠ 5 is lost.
    observed.changes.retain(|c| c.version != 3);
    observed.changes.insert(1, change(20, 2, "h1-late"));
    observed.changes[2].version = 3;
    let findings = check(&history, &observed);
    assert_eq!(findings.lost.len(), 1, "{}", findings.describe());
    assert!(
        findings.lost[0].contains("holds product 1 × 4"),
        "{}",
        findings.describe()
    );
}
