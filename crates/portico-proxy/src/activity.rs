//! What counts as activity on a TCP connection, for its watchdog (`tcp`): the idle timeout
//! and the send timeout.
//!
//! *Idle* means no request activity: no request waiting for its response, no request or
//! response body bytes moving. On HTTP/1.1 every byte read or written is a request's. On
//! HTTP/2 (`frames_only`) socket bytes are not counted at all, since PING, SETTINGS,
//! WINDOW_UPDATE and empty frames cost a client nothing and would keep a connection, and
//! whatever it buffers, open for ever; only requests and their bodies count there.
//!
//! *Stalled* means a response waits for the client: a body handed a frame to the connection
//! and has not been asked for the next one (HTTP/2 flow control withheld, or the connection's
//! buffer full), or a socket write has returned `Pending` without a write succeeding since.
//! A stall longer than the send timeout closes the connection (nginx's `send_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits::ConnPermit;

/// One connection's activity clocks, in milliseconds since it was accepted. Relaxed and racy
/// by design: a few milliseconds of error do not matter to timeouts of seconds.
pub(crate) struct Activity {
    start: Instant,
    /// The last request activity.
    last_ms: AtomicU64,
    /// Requests waiting for their response head.
    pending: AtomicUsize,
    /// HTTP/2: bytes on the socket are not activity, only requests and body frames are.
    frames_only: AtomicBool,
    /// Response bodies that handed a frame over and have not been asked for the next.
    stalled: AtomicUsize,
    /// The last time a response body moved towards the client.
    progress_ms: AtomicU64,
    /// 1 + when a socket write first returned `Pending`; 0 while writes go through.
    write_blocked: AtomicU64,
}

/// Held while a request waits for its response head; the end of the wait is activity.
pub(crate) struct Pending<'a>(&'a Activity);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            frames_only: AtomicBool::new(false),
            stalled: AtomicUsize::new(0),
            progress_ms: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn pending(&self) -> Pending<'_> {
        self.pending.fetch_add(1, Relaxed);
        Pending(self)
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Relaxed) > 0
    }

    /// From now on only requests and their bodies are activity (the connection is HTTP/2).
    pub(crate) fn set_frames_only(&self) {
        if !self.frames_only.load(Relaxed) {
            self.frames_only.store(true, Relaxed);
        }
    }

    pub(crate) fn touch(&self) {
        let ms = self.now_ms();
        if ms > self.last_ms.load(Relaxed) {
            self.last_ms.store(ms, Relaxed);
        }
    }

    /// How long since the last request activity.
    pub(crate) fn quiet_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.last_ms.load(Relaxed)))
    }

    /// How long a response has been waiting for the client (zero when none is).
    pub(crate) fn stalled_for(&self) -> Duration {
        let now = self.now_ms();
        let mut since = now;
        let blocked = self.write_blocked.load(Relaxed);
        if blocked != 0 {
            since = since.min(blocked - 1);
        }
        if self.stalled.load(Relaxed) > 0 {
            since = since.min(self.progress_ms.load(Relaxed));
        }
        Duration::from_millis(now - since)
    }

    /// A body handed a frame over (`waiting`) or was asked for its next one.
    fn response_moved(&self, waiting: bool) {
        if waiting {
            self.stalled.fetch_add(1, Relaxed);
        } else {
            self.stalled.fetch_sub(1, Relaxed);
        }
        let ms = self.now_ms();
        self.progress_ms.store(ms, Relaxed);
        if ms > self.last_ms.load(Relaxed) {
            self.last_ms.store(ms, Relaxed);
        }
    }

    fn wrote(&self) {
        if self.write_blocked.load(Relaxed) != 0 {
            self.write_blocked.store(0, Relaxed);
        }
        if !self.frames_only.load(Relaxed) {
            self.touch();
        }
    }

    fn write_pending(&self) {
        if self.write_blocked.load(Relaxed) == 0 {
            self.write_blocked.store(self.now_ms() + 1, Relaxed);
        }
    }

    fn read(&self) {
        if !self.frames_only.load(Relaxed) {
            self.touch();
        }
    }
}

/// A response body on its way to the client, timed by [`Activity`]: handing a frame over
/// starts a stall, being asked for the next frame ends it.
pub(crate) struct ToClient<B> {
    inner: B,
    activity: Arc<Activity>,
    handed: bool,
}

impl<B> ToClient<B> {
    pub(crate) fn new(inner: B, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            handed: false,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ToClient<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.handed {
            this.handed = false;
            this.activity.response_moved(false);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_some_and(|d| !d.is_empty())
        {
            this.handed = true;
            this.activity.response_moved(true);
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

impl<B> Drop for ToClient<B> {
    fn drop(&mut self) {
        if self.handed {
            self.activity.stalled.fetch_sub(1, Relaxed);
        }
    }
}

/// A request body from the client: each data frame is activity.
pub(crate) struct FromClient<B> {
    inner: B,
    activity: Arc<Activity>,
}

impl<B> FromClient<B> {
    pub(crate) fn new(inner: B, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for FromClient<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.data_ref().is_some_and(|d| !d.is_empty())
        {
            this.activity.touch();
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

/// The client socket, reporting reads, writes and blocked writes to [`Activity`], and
/// holding the connection's place in the limits for as long as the socket lives.
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
    pub(crate) _permit: ConnPermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<S> Tracked<S> {
    fn after_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            Poll::Pending => self.activity.write_pending(),
            _ => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn a_frame_handed_over_stalls_until_the_next_is_asked_for() {
        let activity = Arc::new(Activity::new());
        let mut body = ToClient::new(Full::new(Bytes::from_static(b"abc")), activity.clone());
        assert_eq!(activity.stalled.load(Relaxed), 0);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert_eq!(activity.stalled.load(Relaxed), 1, "waiting for the client");
        std::thread::sleep(Duration::from_millis(30));
        assert!(activity.stalled_for() >= Duration::from_millis(30));
        let asked = Instant::now();
        assert!(body.frame().await.is_none());
        assert_eq!(activity.stalled.load(Relaxed), 0, "asked again: moved on");
        assert!(activity.stalled_for() <= since(asked));
        let mut second = ToClient::new(Full::new(Bytes::from_static(b"x")), activity.clone());
        let _ = second.frame().await;
        drop(second);
        assert_eq!(
            activity.stalled.load(Relaxed),
            0,
            "a dropped body stalls nothing"
        );
    }

    #[test]
    fn http2_socket_bytes_are_not_activity_but_body_frames_are() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        let read = Instant::now();
        activity.read();
        assert!(activity.quiet_for() <= since(read), "HTTP/1.1 read");
        activity.set_frames_only();
        std::thread::sleep(Duration::from_millis(20));
        activity.read();
        activity.wrote();
        assert!(
            activity.quiet_for() >= Duration::from_millis(20),
            "a PING in, a PONG out: still idle"
        );
        let moved = Instant::now();
        activity.response_moved(true);
        assert!(activity.quiet_for() <= since(moved));
    }

    /// Time since `t` as the millisecond clocks can see it: an upper bound for a clock read
    /// after `t`, however long this thread was descheduled in between (a fixed bound would
    /// fail on a loaded machine).
    fn since(t: Instant) -> Duration {
        t.elapsed() + Duration::from_millis(1)
    }
}
