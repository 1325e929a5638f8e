//! Concurrent, random order traffic for fault tests: creating, changing,
//! moving and deleting lines, cancelling and deleting orders. It tolerates
//! refusals and outages (that is the point); the stock invariant is checked
//! afterwards from the database, not from the answers.

use super::{Client, TestApp};
use serde_json::json;
use std::collections::HashMap;

/// A tiny deterministic generator (xorshift), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// 2xx answers.
    pub accepted: usize,
    /// 4xx answers (races with cancellations, rejected moves…).
    pub refused: usize,
    /// 5xx answers or transport errors (the faults being injected).
    pub failed: usize,
    /// The first few failures, as answered, to say why.
    pub failures: Vec<String>,
}

impl LoadReport {
    fn add(&mut self, other: LoadReport) {
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.failed += other.failed;
        self.failures.extend(other.failures);
        self.failures.truncate(MAX_FAILURES_KEPT);
    }
}

/// The product ids of `initial` ([`products`]), in order.
pub fn ids(initial: &HashMap<i64, i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = initial.keys().copied().collect();
    ids.sort_unstable();
    ids
}

/// Creates `n` products with `stock` each; returns their initial stock by id.
pub async fn products(app: &TestApp, n: usize, stock: i64) -> HashMap<i64, i64> {
    let mut initial = HashMap::new();
    for i in 0..n {
        let id = app
            .create_product(&format!("load-{i}"), 1.25, stock as i32)
            .await;
        initial.insert(id, stock);
    }
    initial
}

/// Runs `ops` operations spread over `tasks` concurrent clients, each
/// talking to the orders services in `clients` in turn.
pub async fn run(
    clients: &[Client],
    products: &[i64],
    ops: usize,
    tasks: usize,
    seed: u64,
) -> LoadReport {
    let mut handles = Vec::new();
    for task in 0..tasks {
        let clients = clients.to_vec();
        let products = products.to_vec();
        let share = ops / tasks + usize::from(task < ops % tasks);
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(task as u64 + 1)
                | 1);
            one_client(&clients, &products, share, &mut rng).await
        }));
    }
    let mut report = LoadReport::default();
    for handle in handles {
        report.add(handle.await.expect("load task"));
    }
    report
}

async fn one_client(clients: &[Client], products: &[i64], ops: usize, rng: &mut Rng) -> LoadReport {
    let mut report = LoadReport::default();
    let mut order: Option<i64> = None;
    let mut lines: Vec<i64> = Vec::new();
    for op in 0..ops {
        let client = &clients[op % clients.len()];
        let product = products[rng.below(products.len())];
        let quantite = 1 + rng.below(6) as i64;
        let Some(current) = order else {
            let answer = client.try_post("/commandes", json!({})).await;
            if let Some(a) = record(&mut report, answer) {
                order = a["id"].as_i64();
            }
            continue;
        };
        let roll = rng.below(100);
        let answer = if roll < 40 || lines.is_empty() {
            let a = client
                .try_post(
                    "/commandes-produits",
                    json!({"commande_id": current, "produit_id": product, "quantite": quantite}),
                )
                .await;
            let created = record(&mut report, a);
            if let Some(line) = created.and_then(|b| b["id"].as_i64()) {
                lines.push(line);
            }
            continue;
        } else if roll < 65 {
            let line = lines[rng.below(lines.len())];
            client
                .try_put(
                    &format!("/commandes-produits/{line}"),
                    json!({"quantite": quantite}),
                )
                .await
        } else if roll < 75 {
            let line = lines[rng.below(lines.len())];
            client
                .try_put(
                    &format!("/api/v1/commandes_produits/{line}"),
                    json!({"produit_id": product}),
                )
                .await
        } else if roll < 87 {
            let line = lines.swap_remove(rng.below(lines.len()));
            client
                .try_delete(&format!("/commandes-produits/{line}"))
                .await
        } else if roll < 94 {
            order = None;
            lines.clear();
            client
                .try_put(
                    &format!("/commandes/{current}"),
                    json!({"statut": "ANNULEE"}),
                )
                .await
        } else {
            order = None;
            lines.clear();
            client.try_delete(&format!("/commandes/{current}")).await
        };
        record(&mut report, answer);
    }
    report
}

fn record(
    report: &mut LoadReport,
    answer: Option<(u16, serde_json::Value)>,
) -> Option<serde_json::Value> {
    match answer {
        Some((status, body)) if (200..300).contains(&status) => {
            report.accepted += 1;
            Some(body)
        }
        Some((status, _)) if (400..500).contains(&status) => {
            report.refused += 1;
            None
        }
        other => {
            report.failed += 1;
            if report.failures.len() < MAX_FAILURES_KEPT {
                report.failures.push(match other {
                    Some((status, body)) => format!("{status} {body}"),
                    None => "no answer (transport error)".into(),
                });
            }
            None
        }
    }
}

const MAX_FAILURES_KEPT: usize = 5;
