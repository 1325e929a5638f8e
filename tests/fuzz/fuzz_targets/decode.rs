//! Whatever bytes a producer puts on product_queue (and whatever message id
//! property), decoding either gives a change or the reason to dead-letter
//! it, and planning a decoded change against any stock gives an outcome
//! and never a negative stock: nothing panics, nothing overflows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ordersys::worker::change::StockChange;
use ordersys::worker::plan::{plan, Reservation, Snapshot};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the AMQP message id property and the stock.
    let (selector, body) = data.split_first().unwrap_or((&0, data));
    let id = match selector % 3 {
        0 => None,
        1 => Some("9b0c5a2e-0000-4000-8000-000000000000"),
        _ => Some("not a uuid"),
    };
    let Ok(change) = StockChange::decode(body, id, 65_536, true) else {
        return;
    };
    let stock = [0, 1, 5, 1_000_000_000, i32::MAX][usize::from(*selector) % 5];
    let mut snapshot = Snapshot::default();
    snapshot.stock.insert(change.produit_id, stock);
    if let Some((old, _)) = change.ancien {
        snapshot.stock.insert(old, stock);
    }
    if let Some(line) = change.line {
        let held = Reservation {
            produit_id: Some(change.produit_id),
            quantite: 3,
            version: ordersys::domain::Version(1),
        };
        snapshot.reservations.insert(line.ligne_id, held);
    }
    let planned = plan(std::slice::from_ref(&change), &snapshot, 5);
    assert_eq!(planned.outcomes.len(), 1);
    assert!(planned.stock.values().all(|s| *s >= 0));
});
