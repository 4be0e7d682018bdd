//! The one retry backoff of the control plane: exponential, jittered, bounded.
//!
//! Every control-plane retry loop (peer reconnects, forwarded writes, bootstrap, proposals,
//! epoch claims, API watches) waits with this, so three replicas or five watchers that
//! failed together do not retry in lockstep against a struggling peer or API server.
//! It is `backon`'s exponential backoff (already in the tree through kube-runtime, whose
//! own watcher backoff is built the same way) configured so that a loop's bounds hold
//! with the jitter: backon draws each delay from `[d, 2d)`, so `d` doubles from `initial`
//! to `max / 2` and every delay lies in `[initial, max]`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The builder behind [`Backoff`], for callers that need backon's type itself (kube's
/// `watcher::ExponentialBackoff::from`): delays in `[initial, max]` when `initial <= max / 2`.
pub fn jittered(initial: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(initial)
        .with_max_delay((max / 2).max(initial))
        .with_jitter()
        .without_max_times()
}

/// Jittered exponential delays between `initial` and `max`, never exhausted;
/// [`Backoff::reset`] after a success starts again from `initial`.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let builder = jittered(initial, max);
        Self {
            builder,
            delays: builder.build(),
            max,
        }
    }

    /// The next delay: about twice the previous one, up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        // Clamped for the case `initial > max / 2`, where backon's jitter could pass `max`.
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Back to `initial`, after a success.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_within_the_bounds_and_never_run_out() {
        let mut backoff = Backoff::new(50 * MS, 2000 * MS);
        // Step n's jitterless delay is 50 ms * 2^n, capped at 1 s; the jitter adds up to as much again.
        for n in 0..40u32 {
            let base = (50 * MS * 2u32.pow(n.min(5))).min(1000 * MS);
            let delay = backoff.next_delay();
            assert!(
                delay >= base && delay < base * 2 && delay <= 2000 * MS,
                "step {n}: {delay:?} outside [{base:?}, {:?})",
                base * 2
            );
        }
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut backoff = Backoff::new(100 * MS, 5000 * MS);
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert!(backoff.next_delay() >= 2500 * MS);
        backoff.reset();
        let first = backoff.next_delay();
        assert!(first >= 100 * MS && first < 200 * MS, "{first:?}");
    }

    #[test]
    fn delays_are_jittered() {
        // Replicas that failed together must not retry together: the first delays of 20
        // fresh backoffs are not all the same.
        let firsts: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(100 * MS, 5000 * MS).next_delay())
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn max_holds_when_initial_is_above_half_of_it() {
        let mut backoff = Backoff::new(800 * MS, 1000 * MS);
        for _ in 0..50 {
            let delay = backoff.next_delay();
            assert!(delay >= 800 * MS && delay <= 1000 * MS, "{delay:?}");
        }
    }
}
