//! Waiting for an event with a deadline, and failing with what was awaited.
//!
//! A test that sleeps "long enough" is slow when the machine is idle and flaky when it is
//! not. Wait instead for the signal that the thing happened: a `watch` channel's value (the
//! committed table version, a controller's status), a line a child process logs, a backend
//! seeing a request. Polling on a short interval ([`poll_until`]) is for state that offers
//! nothing to subscribe to (a file, an HTTP endpoint, a process table). Every wait has a
//! deadline and its error names what was awaited and for how long, so a failure reads as
//! "timed out after 10s waiting for leader elected", not as a hung test.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How often [`poll_until`] and [`poll_until_blocking`] look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {after:?} waiting for {what}")]
    TimedOut { what: String, after: Duration },
    /// The signal's sender went away before the event: it can no longer happen.
    #[error("the signal closed while waiting for {what}")]
    Closed { what: String },
}

/// Waits for `event` to complete, for at most `deadline`.
pub async fn wait_for<T>(
    what: impl Display,
    deadline: Duration,
    event: impl Future<Output = T>,
) -> Result<T, WaitError> {
    tokio::time::timeout(deadline, event)
        .await
        .map_err(|_| WaitError::TimedOut {
            what: what.to_string(),
            after: deadline,
        })
}

/// Waits until the value in `rx` satisfies `pred` (checking the current value first), for at
/// most `deadline`; returns a clone of the value that did.
pub async fn wait_for_watch<T: Clone>(
    what: impl Display,
    deadline: Duration,
    rx: &mut watch::Receiver<T>,
    mut pred: impl FnMut(&T) -> bool,
) -> Result<T, WaitError> {
    let what = what.to_string();
    match wait_for(&what, deadline, rx.wait_for(|v| pred(v))).await? {
        Ok(value) => Ok(value.clone()),
        Err(_) => Err(WaitError::Closed { what }),
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `Some`, for at most `deadline`.
/// For state with no event to subscribe to; prefer [`wait_for`] or [`wait_for_watch`].
pub async fn poll_until<T, F: Future<Output = Option<T>>>(
    what: impl Display,
    deadline: Duration,
    mut check: impl FnMut() -> F,
) -> Result<T, WaitError> {
    wait_for(what, deadline, async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    })
    .await
}

/// [`poll_until`] for tests without a runtime: blocks the thread between checks.
pub fn poll_until_blocking<T>(
    what: impl Display,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, WaitError> {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if started.elapsed() >= deadline {
            return Err(WaitError::TimedOut {
                what: what.to_string(),
                after: deadline,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watch_wait_returns_the_value_that_satisfied_it() {
        let (tx, mut rx) = watch::channel(0u64);
        let waiter = tokio::spawn(async move {
            wait_for_watch("version 3", Duration::from_secs(5), &mut rx, |v| *v >= 3).await
        });
        for v in 1..=4 {
            tx.send_replace(v);
            tokio::task::yield_now().await;
        }
        assert!(matches!(waiter.await.unwrap(), Ok(3 | 4)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_names_what_was_awaited() {
        let (_tx, mut rx) = watch::channel(0u64);
        let err = wait_for_watch("version 3", Duration::from_secs(5), &mut rx, |v| *v >= 3)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 5s waiting for version 3");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_signal_fails_at_once() {
        let (tx, mut rx) = watch::channel(0u64);
        drop(tx);
        let started = tokio::time::Instant::now();
        let err = wait_for_watch("version 3", Duration::from_secs(5), &mut rx, |v| *v >= 3)
            .await
            .unwrap_err();
        assert!(matches!(err, WaitError::Closed { .. }), "{err}");
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn polling_stops_at_the_first_answer_or_the_deadline() {
        let mut calls = 0;
        let got = poll_until("third call", Duration::from_secs(1), || {
            calls += 1;
            let done = calls == 3;
            async move { done.then_some(calls) }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
        let err = poll_until("never", Duration::from_secs(1), || async { None::<()> })
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 1s waiting for never");
    }

    #[test]
    fn blocking_polls_time_out_naming_what_was_awaited() {
        let err =
            poll_until_blocking("never", Duration::from_millis(50), || None::<()>).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 50ms waiting for never");
    }
}
