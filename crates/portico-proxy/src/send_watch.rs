//! `proxy-send-timeout`: an upstream that stops taking the request body.
//!
//! The client hop writes a body chunk and polls the body again only once it can write more;
//! so a chunk handed over and not followed by another poll for the whole send timeout means
//! the upstream stopped reading (its socket, or its HTTP/2 window, stayed full). A client
//! that uploads slowly is not blamed: then the body is polled and answers `Pending`, which
//! is not a stall of the upstream (the client's own timeouts apply to that).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
// Tokio's clock, the one its timers run on (std's outside tests with paused time).
use tokio::time::Instant;

use crate::body::{BoxError, ProxyBody};

/// Nothing handed over and waiting (the upstream is keeping up, or the body ended).
const IDLE: u64 = u64::MAX;

/// When the last chunk was handed to the upstream hop without it asking for more since.
pub(crate) struct SendWatch {
    origin: Instant,
    /// Milliseconds since `origin`, or [`IDLE`].
    handed_over_at: AtomicU64,
}

impl SendWatch {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            handed_over_at: AtomicU64::new(IDLE),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(IDLE - 1)
    }

    /// Resolves once one chunk has waited longer than `timeout` for the upstream to take it.
    pub(crate) async fn stalled(&self, timeout: Duration) {
        let limit = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let tick = (timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let at = self.handed_over_at.load(Ordering::Acquire);
            if at != IDLE && self.now().saturating_sub(at) >= limit {
                return;
            }
        }
    }
}

/// The request body on its way upstream, reporting each hand-over to a [`SendWatch`].
/// Generic over the inner body so the client body's layers take one box, not one each.
pub(crate) struct WatchedBody<B = ProxyBody> {
    inner: B,
    watch: Arc<SendWatch>,
}

impl<B> WatchedBody<B> {
    pub(crate) fn new(inner: B, watch: Arc<SendWatch>) -> Self {
        Self { inner, watch }
    }
}

impl<B> Body for WatchedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Asked for more: whatever was handed over before has been taken.
        self.watch.handed_over_at.store(IDLE, Ordering::Release);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
            && !self.inner.is_end_stream()
        {
            let now = self.watch.now();
            self.watch.handed_over_at.store(now, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(n: usize) -> ProxyBody {
        let frames = (0..n).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))));
        crate::body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    // On Tokio's paused clock: the timers are the subject, so they are driven exactly.

    #[tokio::test(start_paused = true)]
    async fn a_chunk_not_followed_by_another_poll_stalls_after_the_timeout_and_not_before() {
        let watch = SendWatch::new();
        let mut body = WatchedBody::new(chunks(3), watch.clone());
        body.frame().await.unwrap().unwrap();
        // The hop takes no more: stalled once the timeout has passed (checked every quarter
        // of it, so within 1.25 timeouts), never before.
        let started = Instant::now();
        watch.stalled(Duration::from_secs(60)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(60), "{took:?}");
        assert!(took <= Duration::from_secs(75), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_taken_to_its_end_never_stalls() {
        let watch = SendWatch::new();
        let mut body = WatchedBody::new(chunks(3), watch.clone());
        while body.frame().await.is_some() {}
        let stalled = watch.stalled(Duration::from_secs(60));
        let waited = tokio::time::timeout(Duration::from_secs(3600), stalled).await;
        assert!(waited.is_err(), "an ended body is not a stall");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_polled_again_is_not_stalled() {
        let watch = SendWatch::new();
        let mut body = WatchedBody::new(chunks(3), watch.clone());
        body.frame().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(50)).await;
        // The hop asked for more before the timeout: the wait starts again from here.
        body.frame().await.unwrap().unwrap();
        let started = Instant::now();
        watch.stalled(Duration::from_secs(60)).await;
        assert!(started.elapsed() >= Duration::from_secs(60));
    }
}
