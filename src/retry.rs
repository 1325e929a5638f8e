//! Capped exponential backoff for reconnect loops (PostgreSQL, RabbitMQ).

use crate::settings::RetrySettings;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(settings: &RetrySettings) -> Self {
        let initial = Duration::from_millis(settings.initial_backoff_ms);
        Backoff {
            initial,
            max: Duration::from_millis(settings.max_backoff_ms),
            next: initial,
        }
    }

    /// The delay to wait now; the following one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Called after a success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(&RetrySettings {
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
        });
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }
}
