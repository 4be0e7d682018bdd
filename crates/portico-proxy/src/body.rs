//! Body adapters. Bodies always stream: nothing here buffers more than one frame.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type that flows through the proxy, in both directions.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The request body grew beyond `proxy-body-size`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the route allows")]
pub(crate) struct BodyTooLarge;

/// What went wrong on the client's side of a request body, so the handler answers 413 or
/// 400, and neither counts an upstream error nor ejects the endpoint: otherwise any client
/// could steer traffic away from healthy endpoints with broken bodies.
#[derive(Default)]
pub(crate) struct ClientBodyFault(AtomicU8);

impl ClientBodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    fn raise(&self, fault: u8) {
        let _ = self
            .0
            .compare_exchange(0, fault, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The answer the client's own body earned, if it failed.
    pub(crate) fn status(&self) -> Option<(StatusCode, &'static str)> {
        match self.0.load(Ordering::Acquire) {
            Self::TOO_LARGE => Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large")),
            Self::BROKEN => Some((
                StatusCode::BAD_REQUEST,
                "request body malformed or cut short",
            )),
            _ => None,
        }
    }
}

/// The client's request body as it enters the proxy: fails the stream once more than
/// `limit` bytes went through (when there is a limit), and records in `fault` whether the
/// stream failed on the client's side (malformed chunking, a short body, a reset stream).
pub(crate) struct LimitedBody {
    inner: ProxyBody,
    remaining: Option<u64>,
    fault: Arc<ClientBodyFault>,
}

impl LimitedBody {
    pub(crate) fn new(inner: ProxyBody, limit: Option<u64>, fault: Arc<ClientBodyFault>) -> Self {
        Self {
            inner,
            remaining: limit,
            fault,
        }
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(remaining), Some(data)) = (&mut this.remaining, frame.data_ref()) {
                    let len = data.len() as u64;
                    if len > *remaining {
                        this.fault.raise(ClientBodyFault::TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    *remaining -= len;
                }
            }
            Some(Err(_)) => this.fault.raise(ClientBodyFault::BROKEN),
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that can be taken back if the upstream client never polled it, so the
/// request can be retried on another endpoint knowing that not one byte of it was sent.
pub(crate) enum Reclaimable {
    /// The body was empty: "taking it back" is making another empty one.
    Empty,
    Slot(Arc<Mutex<Option<ProxyBody>>>),
}

impl Reclaimable {
    /// Splits `body` into the handle kept by the handler and the body given to the client.
    pub(crate) fn new(body: ProxyBody) -> (Self, ProxyBody) {
        if body.is_end_stream() {
            return (Self::Empty, body);
        }
        let hint = body.size_hint();
        let slot = Arc::new(Mutex::new(Some(body)));
        let lazy = LazyBody {
            slot: slot.clone(),
            taken: None,
            end: false,
            hint,
        };
        (Self::Slot(slot), UnsyncBoxBody::new(lazy))
    }

    /// The body, if nothing was read from it.
    pub(crate) fn reclaim(self) -> Option<ProxyBody> {
        match self {
            Self::Empty => Some(empty()),
            Self::Slot(slot) => slot.lock().ok()?.take(),
        }
    }
}

struct LazyBody {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    taken: Option<ProxyBody>,
    end: bool,
    hint: SizeHint,
}

impl Body for LazyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.taken.is_none() {
            let taken = this.slot.lock().ok().and_then(|mut slot| slot.take());
            match taken {
                Some(body) => this.taken = Some(body),
                None => return Poll::Ready(None),
            }
        }
        match this.taken.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(body) => body.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(body) => body.size_hint(),
            None => self.hint,
        }
    }
}

/// The upstream went quiet for longer than `proxy-read-timeout` in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("no data from upstream for {0:?}")]
pub(crate) struct ReadTimeout(Duration);

/// Fails a body when no frame arrives within `timeout` of the previous one. The timer is
/// armed only when the body actually has to wait: a response that is already buffered
/// (the common small one) never touches the timer wheel.
pub(crate) struct TimeoutBody<B = ProxyBody> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was last armed: re-arm before waiting again.
    progressed: bool,
}

impl<B> TimeoutBody<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            progressed: false,
        }
    }
}

// Generic over the inner body so the upstream response needs one box (as a ProxyBody),
// not two.
impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = match &mut this.sleep {
            Some(sleep) => {
                if this.progressed {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => this
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        this.progressed = false;
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(ReadTimeout(this.timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/3 request body: DATA frames, then optional trailers, read straight off the stream.
pub(crate) struct H3RequestBody {
    stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
    done: bool,
}

impl H3RequestBody {
    pub(crate) fn new(stream: h3::server::RequestStream<h3_quinn::RecvStream, Bytes>) -> Self {
        Self {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl Body for H3RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.stream.poll_recv_data(cx)) {
                Ok(Some(mut buf)) => {
                    let bytes = buf.copy_to_bytes(buf.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        let trailers: Result<Option<HeaderMap>, _> = ready!(this.stream.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_body_rejects_overflow_and_records_client_faults() {
        let fault = Arc::new(ClientBodyFault::default());
        let body = LimitedBody::new(full("0123456789"), Some(4), fault.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(
            fault.status().map(|s| s.0),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        let fault = Arc::new(ClientBodyFault::default());
        let ok = LimitedBody::new(full("0123"), Some(4), fault.clone());
        assert_eq!(ok.collect().await.unwrap().to_bytes(), "0123");
        let unlimited = LimitedBody::new(full("0123456789"), None, fault.clone());
        assert_eq!(unlimited.collect().await.unwrap().to_bytes(), "0123456789");
        assert_eq!(fault.status(), None);
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err::<Frame<Bytes>, BoxError>("client reset the stream".into()),
        ]));
        let broken = LimitedBody::new(boxed(failing), None, fault.clone());
        assert!(broken.collect().await.is_err());
        assert_eq!(fault.status().map(|s| s.0), Some(StatusCode::BAD_REQUEST));
    }

    #[tokio::test]
    async fn reclaim_only_before_first_poll() {
        let (handle, body) = Reclaimable::new(full("abc"));
        drop(body);
        assert!(handle.reclaim().is_some());
        let (handle, body) = Reclaimable::new(full("abc"));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abc");
        assert!(handle.reclaim().is_none());
    }

    /// On Tokio's paused clock: the timer is the subject, so it is driven exactly, not raced.
    #[tokio::test(start_paused = true)]
    async fn timeout_body_fires_when_quiet_for_the_timeout_and_not_before() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let quiet = http_body_util::StreamBody::new(ReceiverStream(rx));
        let mut body = TimeoutBody::new(boxed(quiet), Duration::from_secs(60));
        let started = tokio::time::Instant::now();
        // A frame after 59 s restarts the wait: quiet is measured from the last frame.
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(59)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "x");
        assert_eq!(started.elapsed(), Duration::from_secs(59));
        assert!(
            body.frame().await.unwrap().is_err(),
            "quiet for the timeout"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(59 + 60));
        feeder.abort();
    }

    struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>);
    impl futures_util::Stream for ReceiverStream {
        type Item = Result<Frame<Bytes>, BoxError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}
