//! The history against the final state: pure, no I/O ([`super::audit`]
//! reads the state through the APIs).
//!
//! A change request was ok (2xx), failed (4xx) or unknown (no answer, 5xx).
//! The server records each change of a line with the `X-Request-Id` of the
//! request that made it, and when a worker applied it. So:
//! - **lost**: an ok change with no record on the server, or never applied;
//!   a line whose final state is not what its last ok change answered; an
//!   ok order or validation that is not there; stock above what the
//!   reserved lines leave (units the worker never took);
//! - **doubled**: one request recorded twice on a line; stock below what
//!   the reserved lines leave (units taken twice);
//! - **unexpected**: a change recorded for a refused request, or for a
//!   request of the run that was never sent; a change dead-lettered; a
//!   line deleted by an ok request still there;
//! - **undecided**: a validation still running, or one whose lines do not
//!   agree with its decision (`CONFIRMEE`: every line `RESERVE`, unless the
//!   order was cancelled after; `REFUSEE`: the order cancelled and every
//!   line `LIBERE`).

use super::history::{History, Outcome, Record};
use super::mix::Op;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// The final state of what the run created, as the APIs show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Product → stock.
    pub stock: BTreeMap<i64, i64>,
    /// Order → what it holds now.
    pub orders: BTreeMap<i64, OrderSeen>,
    /// Every recorded change of every line the run created or named.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderSeen {
    pub statut: String,
    pub validation: Option<String>,
    pub lines: Vec<LineSeen>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LineSeen {
    pub id: i64,
    pub produit_id: i64,
    pub quantite: i32,
    pub statut_stock: String,
}

/// One entry of a line's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub line: i64,
    pub version: i64,
    pub client_request_id: Option<String>,
    /// `None` until a worker applied it.
    pub resultat: Option<String>,
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    pub operations: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub lost: Vec<String>,
    pub doubled: Vec<String>,
    pub unexpected: Vec<String>,
    pub undecided: Vec<String>,
    /// The longest time no change succeeded while changes were sent.
    pub writes_failed_for: Duration,
}

impl Findings {
    pub fn holds(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.unexpected.is_empty()
            && self.undecided.is_empty()
    }

    /// One line of figures, then one line per problem (at most 20 of each kind).
    pub fn describe(&self) -> String {
        let mut text = format!(
            "history: {} changes: ok {}, failed {}, unknown {}; lost {}, doubled {}, unexpected {}, undecided {}; writes failed for {:.1}s",
            self.operations,
            self.ok,
            self.failed,
            self.unknown,
            self.lost.len(),
            self.doubled.len(),
            self.unexpected.len(),
            self.undecided.len(),
            self.writes_failed_for.as_secs_f64()
        );
        for (kind, problems) in [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("unexpected", &self.unexpected),
            ("undecided", &self.undecided),
        ] {
            for problem in problems.iter().take(20) {
                text.push_str(&format!("\n  {kind}: {problem}"));
            }
            if problems.len() > 20 {
                text.push_str(&format!("\n  {kind}: … and {} more", problems.len() - 20));
            }
        }
        text
    }
}

/// Compares a history with the final state.
pub fn check(history: &History, observed: &Observed) -> Findings {
    let records = &history.records;
    let mut findings = Findings {
        operations: records.len(),
        writes_failed_for: writes_failed_for(records),
        ..Findings::default()
    };
    for record in records {
        match record.outcome {
            Outcome::Ok => findings.ok += 1,
            Outcome::Failed => findings.failed += 1,
            Outcome::Unknown => findings.unknown += 1,
        }
    }
    check_changes(history, observed, &mut findings);
    check_requests(records, observed, &mut findings);
    check_lines(records, observed, &mut findings);
    check_stock(history, observed, &mut findings);
    check_validations(observed, &mut findings);
    findings
}

/// Each recorded change against the request that made it.
fn check_changes(history: &History, observed: &Observed, findings: &mut Findings) {
    let by_id: HashMap<&str, &Record> =
        history.records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut per_request_line: HashMap<(&str, i64), usize> = HashMap::new();
    for change in &observed.changes {
        let Some(id) = change.client_request_id.as_deref() else {
            continue;
        };
        let what = format!(
            "line {} version {} by request {id}",
            change.line, change.version
        );
        match by_id.get(id) {
            None if id.starts_with(&history.run.prefix) => {
                findings
                    .unexpected
                    .push(format!("{what}: a request the run never sent"));
                continue;
            }
            None => continue,
            Some(record) if record.outcome == Outcome::Failed => {
                findings.unexpected.push(format!(
                    "{what}: the request was refused ({})",
                    record.status
                ));
            }
            Some(_) => {}
        }
        *per_request_line.entry((id, change.line)).or_default() += 1;
        match change.resultat.as_deref() {
            None => findings
                .lost
                .push(format!("{what}: committed, never applied")),
            Some("REFUSE") => findings.unexpected.push(format!("{what}: dead-lettered")),
            Some(_) => {}
        }
    }
    let mut doubled: Vec<_> = per_request_line
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    doubled.sort();
    for ((id, line), n) in doubled {
        findings
            .doubled
            .push(format!("request {id} recorded {n} times on line {line}"));
    }
    // A request on one line that changed several (a POST sent twice, say
    // by a proxy retrying it) made a second line.
    let mut lines_of: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for change in &observed.changes {
        let Some(id) = change.client_request_id.as_deref() else {
            continue;
        };
        if by_id
            .get(id)
            .is_some_and(|r| r.op().is_some_and(Op::targets_one_line))
        {
            lines_of.entry(id).or_default().insert(change.line);
        }
    }
    for (id, lines) in lines_of.into_iter().filter(|(_, l)| l.len() > 1) {
        findings.doubled.push(format!(
            "request {id} changed {} lines {lines:?}; it targets one",
            lines.len()
        ));
    }
}

/// What each ok request must have left.
fn check_requests(records: &[Record], observed: &Observed, findings: &mut Findings) {
    let recorded = |id: &str, line: i64| {
        observed
            .changes
            .iter()
            .any(|c| c.line == line && c.client_request_id.as_deref() == Some(id))
    };
    for record in records.iter().filter(|r| r.outcome == Outcome::Ok) {
        let what = format!("{} {} ({})", record.op, record.id, record.status);
        match record.op() {
            Some(Op::CreateLine) => match record.created {
                Some(line) if recorded(&record.id, line) => {}
                Some(line) => findings
                    .lost
                    .push(format!("{what}: line {line} has no such change")),
                None => findings
                    .lost
                    .push(format!("{what}: the answer named no line")),
            },
            Some(Op::DeleteLine) if !recorded(&record.id, record.line) => findings
                .lost
                .push(format!("{what}: line {} has no such change", record.line)),
            Some(Op::CreateOrder)
                if !record
                    .created
                    .is_some_and(|o| observed.orders.contains_key(&o)) =>
            {
                findings
                    .lost
                    .push(format!("{what}: order {:?} not found", record.created));
            }
            Some(Op::CancelOrder) => match observed.orders.get(&record.order) {
                Some(order)
                    if order.statut == "ANNULEE"
                        && order.lines.iter().all(|l| l.statut_stock == "LIBERE") => {}
                Some(order) => findings.lost.push(format!(
                    "{what}: order {} is {} with lines {:?}",
                    record.order,
                    order.statut,
                    order
                        .lines
                        .iter()
                        .map(|l| &l.statut_stock)
                        .collect::<Vec<_>>()
                )),
                None => findings
                    .lost
                    .push(format!("{what}: order {} not found", record.order)),
            },
            Some(Op::ValidateOrder) => {
                let validation = observed
                    .orders
                    .get(&record.order)
                    .and_then(|o| o.validation.clone());
                if validation.is_none() {
                    findings.lost.push(format!(
                        "{what}: order {} was never validated",
                        record.order
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Each line's final state against its last change that was not refused:
/// when that one was ok, the line is what its answer said (or gone, after
/// a delete).
fn check_lines(records: &[Record], observed: &Observed, findings: &mut Findings) {
    let seen: HashMap<i64, &LineSeen> = observed
        .orders
        .values()
        .flat_map(|o| o.lines.iter().map(|l| (l.id, l)))
        .collect();
    let mut last: BTreeMap<i64, &Record> = BTreeMap::new();
    for record in records.iter().filter(|r| r.outcome != Outcome::Failed) {
        let line = match record.op() {
            Some(Op::CreateLine) => record.created.unwrap_or(0),
            Some(Op::ChangeQuantity | Op::ChangeProduct | Op::DeleteLine) => record.line,
            _ => 0,
        };
        if line != 0
            && last
                .get(&line)
                .is_none_or(|r| r.start_ms <= record.start_ms)
        {
            last.insert(line, record);
        }
    }
    // The server's order, where the client's cannot tell: a request left
    // unanswered may still have run after a later one was answered.
    let outcome_of: HashMap<&str, Outcome> =
        records.iter().map(|r| (r.id.as_str(), r.outcome)).collect();
    let mut latest: HashMap<i64, (i64, Outcome)> = HashMap::new();
    for change in &observed.changes {
        let Some(&outcome) = change
            .client_request_id
            .as_deref()
            .and_then(|id| outcome_of.get(id))
        else {
            continue;
        };
        if latest
            .get(&change.line)
            .is_none_or(|(version, _)| *version < change.version)
        {
            latest.insert(change.line, (change.version, outcome));
        }
    }
    for (line, record) in last {
        let decided_by_unknown = latest
            .get(&line)
            .is_some_and(|(_, outcome)| *outcome == Outcome::Unknown);
        if record.outcome != Outcome::Ok || decided_by_unknown {
            continue;
        }
        let what = format!("{} {} on line {line}", record.op, record.id);
        match (record.op(), seen.get(&line), record.answer) {
            (Some(Op::DeleteLine), Some(_), _) => {
                findings
                    .unexpected
                    .push(format!("{what}: the line is still there"));
            }
            (Some(Op::DeleteLine), None, _) => {}
            (_, None, _) => findings.lost.push(format!("{what}: the line is gone")),
            (_, Some(seen), Some((product, quantite)))
                if (seen.produit_id, seen.quantite) != (product, quantite) =>
            {
                findings.lost.push(format!(
                    "{what}: answered product {product} × {quantite}, holds product {} × {}",
                    seen.produit_id, seen.quantite
                ));
            }
            _ => {}
        }
    }
}

/// Stock = stock at start − Σ quantite of the `RESERVE` lines, per product.
fn check_stock(history: &History, observed: &Observed, findings: &mut Findings) {
    let mut reserved: BTreeMap<i64, i64> = BTreeMap::new();
    for line in observed.orders.values().flat_map(|o| &o.lines) {
        match line.statut_stock.as_str() {
            "RESERVE" => *reserved.entry(line.produit_id).or_default() += i64::from(line.quantite),
            "EN_ATTENTE" => findings
                .lost
                .push(format!("line {}: still EN_ATTENTE", line.id)),
            _ => {}
        }
    }
    for (product, initial) in &history.run.products {
        let expected = initial - reserved.get(product).copied().unwrap_or_default();
        match observed.stock.get(product) {
            Some(&stock) if stock > expected => findings.lost.push(format!(
                "product {product}: stock {stock}, expected {expected} ({} units never taken, or given back twice)",
                stock - expected
            )),
            Some(&stock) if stock < expected => findings.doubled.push(format!(
                "product {product}: stock {stock}, expected {expected} ({} units taken twice)",
                expected - stock
            )),
            Some(_) => {}
            None => findings.lost.push(format!("product {product}: not found")),
        }
    }
}

/// Every validation decided, and its lines agreeing with the decision.
fn check_validations(observed: &Observed, findings: &mut Findings) {
    for (id, order) in &observed.orders {
        let all = |status: &str| order.lines.iter().all(|l| l.statut_stock == status);
        let agrees = match order.validation.as_deref() {
            None => true,
            Some("CONFIRMEE") => all("RESERVE") || (order.statut == "ANNULEE" && all("LIBERE")),
            Some("REFUSEE") => order.statut == "ANNULEE" && all("LIBERE"),
            Some(_) => false,
        };
        if !agrees {
            findings.undecided.push(format!(
                "order {id}: {} validation {:?}, lines {:?}",
                order.statut,
                order.validation,
                order
                    .lines
                    .iter()
                    .map(|l| &l.statut_stock)
                    .collect::<Vec<_>>()
            ));
        }
    }
}

/// The longest stretch, among changes sent, from the first one that was not
/// ok to the next one that was (or the last answer).
fn writes_failed_for(records: &[Record]) -> Duration {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.start_ms);
    let mut longest = 0;
    let mut failing_since: Option<u64> = None;
    for record in &sorted {
        match (record.outcome, failing_since) {
            (Outcome::Ok, Some(since)) => {
                longest = longest.max(record.start_ms.saturating_sub(since));
                failing_since = None;
            }
            (Outcome::Ok, None) => {}
            (_, None) => failing_since = Some(record.start_ms),
            (_, Some(_)) => {}
        }
    }
    if let (Some(since), Some(end)) = (failing_since, sorted.iter().map(|r| r.end_ms).max()) {
        longest = longest.max(end.saturating_sub(since));
    }
    Duration::from_millis(longest)
}

#[cfg(test)]
mod tests;
