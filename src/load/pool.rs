//! What the run has created and may act on: its products, its open orders
//! and their lines. Choosing a request's targets and recording what an
//! answer created are plain functions of this state.

use super::mix::{fallback, Op, Rng};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// The load stops adding lines to an order at half what one may hold.
const LINES_PER_ORDER: usize = crate::domain::limits::LINES_PER_ORDER_MAX as usize / 2;

/// One request, with its targets chosen.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub op: Op,
    pub product: i64,
    pub order: i64,
    pub line: i64,
    pub quantite: i32,
}

#[derive(Debug)]
pub struct Pool {
    products: Vec<i64>,
    /// Open orders and how many lines each holds.
    open: Vec<(i64, usize)>,
    /// Lines that exist: (line, order).
    lines: Vec<(i64, i64)>,
    /// Requests in flight on each order (adding a line, changing or
    /// deleting one of its lines): it is not cancelled meanwhile.
    busy_orders: HashMap<i64, usize>,
    /// Lines with a request in flight: no second one targets them (the
    /// answers would race: a change after a delete is a 404).
    busy_lines: HashSet<i64>,
    /// Every order created (cancelled ones too), for `--verify`.
    pub orders_created: Vec<i64>,
    pub lines_created: usize,
}

impl Pool {
    pub fn new(products: Vec<i64>) -> Pool {
        Pool {
            products,
            open: Vec::new(),
            lines: Vec::new(),
            busy_orders: HashMap::new(),
            busy_lines: HashSet::new(),
            orders_created: Vec::new(),
            lines_created: 0,
        }
    }

    /// Chooses what `op` acts on, among what no request in flight touches;
    /// an operation that has nothing to act on becomes the one that
    /// creates it. A line deleted or an order cancelled leaves the pool
    /// now, so no later request targets it.
    pub fn prepare(&mut self, op: Op, rng: &mut Rng) -> Prepared {
        let roomy: Vec<usize> = (0..self.open.len())
            .filter(|&i| self.open[i].1 < LINES_PER_ORDER)
            .collect();
        let idle_lines: Vec<usize> = (0..self.lines.len())
            .filter(|&i| !self.busy_lines.contains(&self.lines[i].0))
            .collect();
        let idle_orders: Vec<usize> = (0..self.open.len())
            .filter(|&i| !self.busy_orders.contains_key(&self.open[i].0))
            .collect();
        // Orders a validation may take: idle, with a line that exists.
        let validatable: Vec<usize> = idle_orders
            .iter()
            .copied()
            .filter(|&i| self.lines.iter().any(|(_, o)| *o == self.open[i].0))
            .collect();
        let mut op = fallback(op, self.open.len(), idle_lines.len());
        if op == Op::CancelOrder && idle_orders.is_empty()
            || op == Op::ValidateOrder && validatable.is_empty()
        {
            op = fallback(Op::CreateLine, self.open.len(), 0);
        }
        if op == Op::CreateLine && roomy.is_empty() {
            op = Op::CreateOrder;
        }
        let mut prepared = Prepared {
            op,
            product: self.products[rng.below(self.products.len())],
            order: 0,
            line: 0,
            quantite: 1 + rng.below(5) as i32,
        };
        match op {
            Op::ReadOrder => prepared.order = self.open[rng.below(self.open.len())].0,
            Op::CreateLine => {
                let i = roomy[rng.below(roomy.len())];
                self.open[i].1 += 1;
                prepared.order = self.open[i].0;
            }
            Op::ChangeQuantity | Op::ChangeProduct => {
                let (line, order) = self.lines[idle_lines[rng.below(idle_lines.len())]];
                prepared.line = line;
                prepared.order = order;
            }
            Op::DeleteLine => {
                let i = idle_lines[rng.below(idle_lines.len())];
                let (line, order) = self.lines.swap_remove(i);
                prepared.line = line;
                prepared.order = order;
            }
            Op::CancelOrder | Op::ValidateOrder => {
                let candidates = match op {
                    Op::CancelOrder => &idle_orders,
                    _ => &validatable,
                };
                let i = candidates[rng.below(candidates.len())];
                let (order, _) = self.open.swap_remove(i);
                self.lines.retain(|(_, o)| *o != order);
                prepared.order = order;
            }
            Op::ReadProduct | Op::CreateOrder => {}
        }
        if holds_its_order(op) {
            *self.busy_orders.entry(prepared.order).or_default() += 1;
        }
        if prepared.line != 0 {
            self.busy_lines.insert(prepared.line);
        }
        prepared
    }

    /// Records what an answer created, and frees what its request held.
    pub fn settle(&mut self, prepared: &Prepared, status: u16, body: &Value) {
        self.busy_lines.remove(&prepared.line);
        if holds_its_order(prepared.op) {
            if let Some(n) = self.busy_orders.get_mut(&prepared.order) {
                *n -= 1;
                if *n == 0 {
                    self.busy_orders.remove(&prepared.order);
                }
            }
        }
        let created = status == 201;
        match prepared.op {
            Op::CreateOrder if created => {
                if let Some(id) = body["id"].as_i64() {
                    self.open.push((id, 0));
                    self.orders_created.push(id);
                }
            }
            Op::CreateLine if created => {
                if let Some(id) = body["id"].as_i64() {
                    self.lines_created += 1;
                    self.lines.push((id, prepared.order));
                }
            }
            _ => {}
        }
    }
}

/// Whether a request keeps its order from being cancelled while in flight.
fn holds_its_order(op: Op) -> bool {
    matches!(
        op,
        Op::CreateLine | Op::ChangeQuantity | Op::ChangeProduct | Op::DeleteLine
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_target_only_what_the_run_created() {
        let mut pool = Pool::new(vec![7, 8]);
        let mut rng = Rng::new(1);
        let first = pool.prepare(Op::DeleteLine, &mut rng);
        assert_eq!(first.op, Op::CreateOrder);
        pool.settle(&first, 201, &json!({"id": 40}));
        let line = pool.prepare(Op::ChangeQuantity, &mut rng);
        assert_eq!((line.op, line.order), (Op::CreateLine, 40));
        assert!([7, 8].contains(&line.product));
        pool.settle(&line, 201, &json!({"id": 90}));
        let change = pool.prepare(Op::ChangeProduct, &mut rng);
        assert_eq!((change.op, change.line), (Op::ChangeProduct, 90));
        // The line is busy until its answer: nothing else targets it, and
        // its order is not cancelled under it.
        let instead = pool.prepare(Op::DeleteLine, &mut rng);
        assert_eq!(instead.op, Op::CreateLine);
        pool.settle(&instead, 409, &json!({}));
        pool.settle(&change, 200, &json!({}));
        let adding = pool.prepare(Op::CreateLine, &mut rng);
        let extra = pool.prepare(Op::CancelOrder, &mut rng);
        assert_eq!(extra.op, Op::CreateLine, "the order has a line being added");
        pool.settle(&extra, 409, &json!({}));
        pool.settle(&adding, 409, &json!({}));
        let cancel = pool.prepare(Op::CancelOrder, &mut rng);
        assert_eq!((cancel.op, cancel.order), (Op::CancelOrder, 40));
        // The cancelled order's line is out of reach now.
        assert_eq!(pool.prepare(Op::DeleteLine, &mut rng).op, Op::CreateOrder);
        assert_eq!(
            (pool.orders_created.clone(), pool.lines_created),
            (vec![40], 1)
        );
    }

    #[test]
    fn a_read_does_not_free_an_order_a_change_holds() {
        let mut pool = Pool::new(vec![1]);
        let mut rng = Rng::new(3);
        let order = pool.prepare(Op::CreateOrder, &mut rng);
        pool.settle(&order, 201, &json!({"id": 5}));
        let adding = pool.prepare(Op::CreateLine, &mut rng);
        let read = pool.prepare(Op::ReadOrder, &mut rng);
        assert_eq!((read.op, read.order), (Op::ReadOrder, 5));
        pool.settle(&read, 200, &json!({}));
        assert_ne!(pool.prepare(Op::CancelOrder, &mut rng).op, Op::CancelOrder);
        pool.settle(&adding, 201, &json!({"id": 9}));
    }

    #[test]
    fn a_refused_creation_creates_nothing() {
        let mut pool = Pool::new(vec![1]);
        let mut rng = Rng::new(2);
        let order = pool.prepare(Op::CreateOrder, &mut rng);
        pool.settle(&order, 503, &json!({}));
        assert!(pool.orders_created.is_empty());
    }
}
