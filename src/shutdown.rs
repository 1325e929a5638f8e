//! Graceful shutdown: one trigger, observed alike by async tasks (the HTTP
//! servers) and by the blocking threads that own broker connections.
//!
//! SIGTERM/SIGINT (or a test) calls [`Trigger::trigger`]; async code awaits
//! [`Trigger::wait`]; a blocking loop selects on [`Trigger::channel`],
//! which disconnects at the trigger, or sleeps with [`Trigger::sleep`],
//! which wakes early. Each loop then finishes the work in hand and returns.
//! The same one-way latch also tells background threads that the database
//! is migrated and ready.

use crossbeam_channel::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A one-way latch: once triggered, it stays triggered.
#[derive(Clone)]
pub struct Trigger {
    inner: Arc<Inner>,
}

struct Inner {
    watch: watch::Sender<bool>,
    // Dropped at the trigger: every clone of `channel` then reports "disconnected".
    sender: Mutex<Option<Sender<()>>>,
    channel: Receiver<()>,
}

/// The process is stopping.
pub type Shutdown = Trigger;

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger {
    pub fn new() -> Self {
        let (sender, channel) = crossbeam_channel::bounded(0);
        Trigger {
            inner: Arc::new(Inner {
                watch: watch::Sender::new(false),
                sender: Mutex::new(Some(sender)),
                channel,
            }),
        }
    }

    /// Opens the latch; calling it again does nothing.
    pub fn trigger(&self) {
        self.inner.watch.send_replace(true);
        if let Ok(mut sender) = self.inner.sender.lock() {
            sender.take();
        }
    }

    pub fn is_triggered(&self) -> bool {
        *self.inner.watch.borrow()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.inner.watch.subscribe();
        // An error means the sender is gone, which only happens with `self`.
        let _ = rx.wait_for(|triggered| *triggered).await;
    }

    /// A channel that never yields a value and disconnects at the trigger,
    /// for `crossbeam_channel::select!` in blocking loops.
    pub fn channel(&self) -> &Receiver<()> {
        &self.inner.channel
    }

    /// Sleeps for `duration` unless the trigger comes first; returns true
    /// when triggered.
    pub fn sleep(&self, duration: Duration) -> bool {
        if self.is_triggered() {
            return true;
        }
        let _ = self.inner.channel.recv_timeout(duration);
        self.is_triggered()
    }

    /// Blocks until `self` is triggered (true) or `stop` is (false).
    pub fn wait_unless(&self, stop: &Trigger) -> bool {
        if self.is_triggered() {
            return true;
        }
        crossbeam_channel::select! {
            recv(self.channel()) -> _ => true,
            recv(stop.channel()) -> _ => self.is_triggered(),
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => log::info!("SIGINT received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        log::info!("interrupt received, shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn sleep_wakes_at_the_trigger() {
        let shutdown = Trigger::new();
        let other = shutdown.clone();
        let started = Instant::now();
        let t = std::thread::spawn(move || other.sleep(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        shutdown.trigger();
        assert!(t.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(shutdown.channel().recv().is_err(), "channel disconnects");
    }

    #[tokio::test]
    async fn wait_resolves_after_trigger() {
        let shutdown = Trigger::new();
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        shutdown.trigger();
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }
}
