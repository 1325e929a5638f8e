//! The open-loop schedule every load of the project runs on (`ordersys
//! load` and the benchmark): request n is due at `start + n / rate`,
//! whether or not earlier ones have answered. The caller measures each
//! request's latency from its due time (no coordinated omission). At most
//! `concurrency` requests are in flight: a request due beyond that is not
//! sent, and counted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What the schedule did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ran {
    /// Requests due and sent.
    pub sent: u64,
    /// Requests due while `concurrency` were in flight: not sent.
    pub over_cap: u64,
    /// From the first due time to the last answer.
    pub elapsed: Duration,
    /// From the first due time to the last (the schedule's span).
    pub span: Duration,
}

/// Runs the schedule: `fire(n, due)` gives request n's future (sent on a
/// task of its own); `tick(elapsed, so_far)` is called at every due time,
/// for a live view. Returns once every request sent has finished.
pub async fn open_loop<F, Fut>(
    rate: f64,
    duration: Duration,
    concurrency: usize,
    mut fire: F,
    mut tick: impl FnMut(Duration, &Ran),
) -> Ran
where
    F: FnMut(u64, Instant) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut ran = Ran {
        sent: 0,
        over_cap: 0,
        elapsed: Duration::ZERO,
        span: Duration::ZERO,
    };
    for n in 0..total {
        let due = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        ran.span = due - start;
        tick(start.elapsed(), &ran);
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            ran.over_cap += 1;
            continue;
        };
        ran.sent += 1;
        let request = fire(n, due);
        tokio::spawn(async move {
            request.await;
            drop(permit);
        });
    }
    let _all = gate
        .acquire_many(concurrency as u32)
        .await
        .expect("the gate is never closed");
    ran.elapsed = start.elapsed();
    ran
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test(start_paused = true)]
    async fn requests_go_out_on_schedule_and_beyond_the_cap_are_counted() {
        let answered = Arc::new(AtomicU64::new(0));
        let late = Arc::new(AtomicU64::new(0));
        // 100/s for 1 s; each request takes 50 ms; 3 in flight at most:
        // 5 would be needed, so about half are not sent.
        let ran = open_loop(
            100.0,
            Duration::from_secs(1),
            3,
            |_, due| {
                let (answered, late) = (answered.clone(), late.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if due.elapsed() > Duration::from_millis(51) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(ran.sent + ran.over_cap, 100);
        assert_eq!(answered.load(Ordering::Relaxed), ran.sent);
        assert!((45..=65).contains(&ran.sent), "{ran:?}");
        assert_eq!(late.load(Ordering::Relaxed), 0, "sent at their due time");
        assert!(ran.elapsed >= Duration::from_millis(1000), "{ran:?}");
    }
}
