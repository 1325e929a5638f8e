//! Reads, through the APIs, the final state a history is checked against:
//! waits until the pipeline has settled on the run's orders (no line
//! `EN_ATTENTE`, no validation `EN_COURS`, every change recorded on their
//! lines applied), then takes their lines, those lines' histories and the
//! products' stock.

use super::check::{Change, LineSeen, Observed, OrderSeen};
use super::history::{History, Outcome};
use super::mix::Op;
use super::Api;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The state once settled, and how long settling took; or why it could
/// not be read (or did not settle) within `timeout`.
pub async fn settle_and_observe(
    api: &Api,
    history: &History,
    timeout: Duration,
) -> (Result<Observed, String>, Duration) {
    let started = Instant::now();
    loop {
        // The last look reads everything, pending or not: what is still
        // pending then is a finding, beside what the histories show.
        let last = started.elapsed() >= timeout;
        let attempt = observe(api, history, last).await;
        let elapsed = started.elapsed();
        match attempt {
            Ok((observed, None)) => return (Ok(observed), elapsed),
            Ok((observed, Some(_))) if last => return (Ok(observed), elapsed),
            Err(reason) if last => return (Err(reason), elapsed),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// One look: the state, and what is not settled yet (if anything).
async fn observe(
    api: &Api,
    history: &History,
    last: bool,
) -> Result<(Observed, Option<String>), String> {
    let mut observed = Observed::default();
    let mut unsettled = None;
    for order in orders_of(history) {
        let body = get(api, api.order(&format!("/commandes/{order}"))).await?;
        let Some(body) = body else { continue };
        let seen = order_seen(&body);
        if seen.validation.as_deref() == Some("EN_COURS") {
            unsettled = Some(format!("order {order}: validation EN_COURS"));
        }
        if let Some(line) = seen.lines.iter().find(|l| l.statut_stock == "EN_ATTENTE") {
            unsettled = Some(format!("line {}: EN_ATTENTE", line.id));
        }
        observed.orders.insert(order, seen);
    }
    // A look that finds lines pending does not read their history (but the last).
    if unsettled.is_none() || last {
        let mut lines: BTreeSet<i64> = lines_of(history);
        lines.extend(
            observed
                .orders
                .values()
                .flat_map(|o| o.lines.iter().map(|l| l.id)),
        );
        for line in lines {
            let url = api.order(&format!("/commandes-produits/{line}/historique?limit=1000"));
            for entry in get(api, url)
                .await?
                .as_ref()
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let change = change(line, entry);
                if change.resultat.is_none() {
                    unsettled = Some(format!(
                        "line {line} version {}: not applied",
                        change.version
                    ));
                }
                observed.changes.push(change);
            }
        }
    }
    for product in history.run.products.keys() {
        let body = get(api, api.product(&format!("/produits/{product}"))).await?;
        match body.as_ref().and_then(|b| b["quantite_en_stock"].as_i64()) {
            Some(stock) => {
                observed.stock.insert(*product, stock);
            }
            None => unsettled = Some(format!("product {product}: not found")),
        }
    }
    Ok((observed, unsettled))
}

/// 200: the body; the API's own 404 (a problem document): `None`;
/// anything else is an error (tried again), a 404 from an edge with no
/// route to the API (every replica unhealthy) included.
async fn get(api: &Api, url: String) -> Result<Option<Value>, String> {
    let (status, body) = api.read(url.clone()).await;
    match status {
        200 => Ok(Some(body)),
        404 if body["status"] == 404 => Ok(None),
        _ => Err(format!("GET {url}: {status} {body}")),
    }
}

/// The orders the run created or acted on.
fn orders_of(history: &History) -> BTreeSet<i64> {
    let mut orders = BTreeSet::new();
    for record in &history.records {
        if record.order != 0 {
            orders.insert(record.order);
        }
        if record.op() == Some(Op::CreateOrder) && record.outcome == Outcome::Ok {
            orders.extend(record.created);
        }
    }
    orders
}

/// The lines the run created or acted on (deleted ones keep their history).
fn lines_of(history: &History) -> BTreeSet<i64> {
    let mut lines = BTreeSet::new();
    for record in &history.records {
        if record.line != 0 {
            lines.insert(record.line);
        }
        if record.op() == Some(Op::CreateLine) {
            lines.extend(record.created);
        }
    }
    lines
}

fn order_seen(body: &Value) -> OrderSeen {
    OrderSeen {
        statut: body["statut"].as_str().unwrap_or_default().to_owned(),
        validation: body["validation"].as_str().map(str::to_owned),
        lines: body["lignes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| LineSeen {
                id: l["id"].as_i64().unwrap_or_default(),
                produit_id: l["produit_id"].as_i64().unwrap_or_default(),
                quantite: l["quantite"].as_i64().unwrap_or_default() as i32,
                statut_stock: l["statut_stock"].as_str().unwrap_or_default().to_owned(),
            })
            .collect(),
    }
}

fn change(line: i64, entry: &Value) -> Change {
    Change {
        line,
        version: entry["version"].as_i64().unwrap_or_default(),
        client_request_id: entry["client_request_id"].as_str().map(str::to_owned),
        resultat: entry["resultat"].as_str().map(str::to_owned),
    }
}
