//! The operations `ordersys load` sends and their mix: pure, no I/O.

use std::fmt;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    ReadProduct,
    ReadOrder,
    CreateOrder,
    CreateLine,
    ChangeQuantity,
    ChangeProduct,
    DeleteLine,
    CancelOrder,
    /// `POST /commandes/{id}/validation`: the saga; the order is frozen after.
    ValidateOrder,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::ReadProduct,
        Op::ReadOrder,
        Op::CreateOrder,
        Op::CreateLine,
        Op::ChangeQuantity,
        Op::ChangeProduct,
        Op::DeleteLine,
        Op::CancelOrder,
        Op::ValidateOrder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::ReadProduct => "read_product",
            Op::ReadOrder => "read_order",
            Op::CreateOrder => "create_order",
            Op::CreateLine => "create_line",
            Op::ChangeQuantity => "change_quantity",
            Op::ChangeProduct => "change_product",
            Op::DeleteLine => "delete_line",
            Op::CancelOrder => "cancel_order",
            Op::ValidateOrder => "validate_order",
        }
    }

    /// Whether it creates, changes or deletes one line (and no other).
    pub fn targets_one_line(self) -> bool {
        matches!(
            self,
            Op::CreateLine | Op::ChangeQuantity | Op::ChangeProduct | Op::DeleteLine
        )
    }

    pub fn index(self) -> usize {
        Op::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every op is in ALL")
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 9],
    total: u32,
}

/// The default: reads of both APIs and every kind of line change, so the
/// whole pipeline (outbox, broker, worker) is busy (no validation: a
/// validated order takes no more lines).
pub const DEFAULT_MIX: &str = "read_product=25,read_order=15,create_order=5,create_line=25,\
                               change_quantity=12,change_product=8,delete_line=6,cancel_order=4";

impl Mix {
    /// `name=weight,…`; names absent get 0; at least one weight above 0.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut weights = [0u32; 9];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<_> = Op::ALL.iter().map(|o| o.name()).collect();
                    format!("unknown operation {name:?} (one of {})", names.join(", "))
                })?;
            weights[op.index()] = weight
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|w| *w <= 1_000_000)
                .ok_or_else(|| {
                    format!("{part:?}: the weight is a whole number from 0 to 1000000")
                })?;
        }
        let total = weights.iter().sum();
        if total == 0 {
            return Err("the mix has no operation with a weight above 0".into());
        }
        Ok(Mix { weights, total })
    }

    /// The operation a uniform random number picks.
    pub fn pick(&self, random: u64) -> Op {
        let mut at = (random % u64::from(self.total)) as u32;
        for op in Op::ALL {
            let w = self.weights[op.index()];
            if at < w {
                return op;
            }
            at -= w;
        }
        unreachable!("the weights sum to total")
    }

    /// The share (0–1) of an operation.
    pub fn share(&self, op: Op) -> f64 {
        f64::from(self.weights[op.index()]) / f64::from(self.total)
    }
}

/// What to send when the operation drawn needs something that does not
/// exist yet (a line to change needs a line; a line needs an open order).
pub fn fallback(op: Op, open_orders: usize, lines: usize) -> Op {
    match op {
        Op::ChangeQuantity | Op::ChangeProduct | Op::DeleteLine if lines == 0 => {
            fallback(Op::CreateLine, open_orders, lines)
        }
        Op::CreateLine | Op::CancelOrder | Op::ReadOrder | Op::ValidateOrder
            if open_orders == 0 =>
        {
            Op::CreateOrder
        }
        Op::ValidateOrder if lines == 0 => Op::CreateLine,
        op => op,
    }
}

/// A small deterministic generator (xorshift64*), so a run can be replayed
/// with `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_uses_every_operation() {
        let mix = Mix::parse(DEFAULT_MIX).unwrap();
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 9];
        for _ in 0..10_000 {
            seen[mix.pick(rng.next_u64()).index()] += 1;
        }
        for op in Op::ALL {
            let share = f64::from(seen[op.index()]) / 10_000.0;
            assert!((share - mix.share(op)).abs() < 0.02, "{op}: {share}");
        }
    }

    #[test]
    fn a_mix_names_known_operations_with_whole_weights() {
        let only_reads = Mix::parse("read_product=1").unwrap();
        assert!((0..100).all(|r| only_reads.pick(r) == Op::ReadProduct));
        for bad in [
            "",
            "read_product=0",
            "sell=3",
            "read_product",
            "read_product=-1",
            "read_product=x",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_things_are_created_first() {
        assert_eq!(fallback(Op::DeleteLine, 0, 0), Op::CreateOrder);
        assert_eq!(fallback(Op::DeleteLine, 1, 0), Op::CreateLine);
        assert_eq!(fallback(Op::DeleteLine, 1, 1), Op::DeleteLine);
        assert_eq!(fallback(Op::CancelOrder, 0, 3), Op::CreateOrder);
        assert_eq!(fallback(Op::ReadProduct, 0, 0), Op::ReadProduct);
    }
}
