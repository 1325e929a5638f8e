//! What each process knows about its dependencies, for `/readyz` and for
//! logging: a dependency's state change is logged once, not once per retry.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The last known state of one dependency (PostgreSQL, RabbitMQ).
#[derive(Debug)]
pub struct Dependency {
    name: &'static str,
    state: AtomicU8,
}

impl Dependency {
    pub fn new(name: &'static str) -> Self {
        Dependency {
            name,
            state: AtomicU8::new(UNKNOWN),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Records success; logs only on a change of state.
    pub fn set_up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            log::info!("{} is up", self.name);
        }
    }

    /// Records a failure; logs only on a change of state, so a long outage
    /// is one line, not one per retry.
    pub fn set_down(&self, reason: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            log::warn!("{} is down: {reason}", self.name);
        } else {
            log::debug!("{} still down: {reason}", self.name);
        }
    }
}

/// The dependencies of one process: PostgreSQL, and RabbitMQ except for
/// `products`.
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub database: Arc<Dependency>,
    pub broker: Option<Arc<Dependency>>,
    /// Whether the process can do its job without the broker: the orders
    /// API can (its writes wait in the outbox), a worker cannot.
    pub ready_without_broker: bool,
}

impl Dependencies {
    /// `broker`: none, used (ready without it), or required.
    pub fn new(broker: BrokerUse) -> Self {
        Dependencies {
            database: Arc::new(Dependency::new("PostgreSQL")),
            broker: (broker != BrokerUse::None).then(|| Arc::new(Dependency::new("RabbitMQ"))),
            ready_without_broker: broker != BrokerUse::Required,
        }
    }
}

/// How a process depends on RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerUse {
    None,
    /// Used, but the process serves without it.
    Buffered,
    Required,
}
