//! A lean HTTP/1.1 server loop for the common request: a complete head in one read, HTTP/1.1,
//! no body, no upgrade, nothing pipelined behind it. Such a request is parsed with httparse
//! straight into a `Request` whose header values are slices of the read buffer, and its
//! response is written head and first body bytes in one write: about half of what hyper's
//! server dispatcher costs, and 4 KB per connection instead of hyper's 16 KB of buffers.
//!
//! Anything else (a body, `Expect`, `Upgrade`, `TE`, `Connection` other than keep-alive,
//! HTTP/1.0, a partial or malformed head, pipelined bytes, the h2c preface) hands the
//! connection to hyper with every byte read so far, for the rest of its life: hyper keeps the
//! framing rules, the error answers (400, 431) and the slow-header timeout, so this loop
//! never needs a header timer and never answers a hostile request itself.

use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::decode::{Framing, bodyless};
use super::head::{self, parse_request};
use crate::body::ProxyBody;
use crate::handler::{self, ConnInfo, Shared};

/// The read buffer: a head that does not fit goes to hyper.
const READ_BUF: usize = 4096;
/// Body bytes up to this size are copied behind the head and written with it.
const COALESCE: usize = 16 * 1024;

/// How the lean loop ended.
pub(crate) enum Next {
    /// The connection is finished (closed by the peer, an error, or a close we asked for).
    Closed,
    /// hyper takes over; these bytes were read and not answered.
    HandOver(Bytes),
}

/// Serves requests until one is not for the lean path or the connection ends. `idle` is
/// raised between requests (nothing read, nothing owed: a close may end the connection
/// then); `closing` says a close was asked for (the request in flight is answered with
/// `Connection: close`); `pending` is held while a request waits for its response (the idle
/// watchdog skips such connections).
pub(crate) async fn serve<I, G>(
    io: &mut I,
    conn: ConnInfo,
    shared: &Shared,
    max_header_bytes: usize,
    idle: &AtomicBool,
    closing: impl Fn() -> bool,
    pending: impl Fn() -> G,
) -> Next
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        idle.store(true, Ordering::Release);
        if closing() {
            return Next::Closed;
        }
        buf.reserve(READ_BUF);
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Next::Closed,
            Ok(_) => {}
        }
        idle.store(false, Ordering::Release);
        let Some(req) = parse_request(&mut buf, max_header_bytes) else {
            return Next::HandOver(buf.freeze());
        };
        let is_head = req.method() == Method::HEAD;
        let guard = pending();
        let resp = handler::handle(shared, conn, req, None).await;
        drop(guard);
        // After a 400 the client's framing is not to be trusted further (as nginx does).
        let close = closing() || resp.status() == StatusCode::BAD_REQUEST;
        match write_response(io, resp, is_head, close).await {
            Ok(true) if !close => {}
            _ => {
                let _ = io.shutdown().await;
                return Next::Closed;
            }
        }
    }
}

/// Writes the response; `Ok(true)` when the connection may carry another request.
async fn write_response<I>(
    io: &mut I,
    resp: http::Response<ProxyBody>,
    is_head: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, body) = resp.into_parts();
    let mut body = pin!(body);
    let status = parts.status;
    let framing = if bodyless(is_head, status) {
        Framing::Empty
    } else if let Some(len) = head::content_length(&parts.headers) {
        Framing::Length(len)
    } else if let Some(len) = body.size_hint().exact() {
        Framing::Length(len)
    } else {
        Framing::Chunked
    };
    let mut out = Vec::with_capacity(256);
    head::encode_response_head(&mut out, status, &parts.headers, framing, close);
    if framing == Framing::Empty {
        io.write_all(&out).await?;
        io.flush().await?;
        return Ok(true);
    }
    // The first frame is usually ready (a small body read with the upstream head): it goes
    // out with the head in one write. If not, the head goes out alone first.
    let mut ready = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
    {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => {
            io.write_all(&out).await?;
            io.flush().await?;
            out.clear();
            None
        }
    };
    let mut sent: u64 = 0;
    loop {
        let frame = match ready.take() {
            Some(frame) => frame,
            None => std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await,
        };
        let mut data = match frame {
            None => break,
            Some(Err(_)) => return Err(io::Error::other("response body failed")),
            // Trailers: HTTP/1.1 sends them only to clients that ask (TE: trailers), and
            // those go to hyper.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        match framing {
            Framing::Length(len) => {
                let room = len - sent;
                if data.len() as u64 > room {
                    // More than the declared length: send what was promised, then close.
                    data.truncate(room as usize);
                    put(io, &mut out, data).await?;
                    io.flush().await?;
                    return Ok(false);
                }
                sent += data.len() as u64;
                put(io, &mut out, data).await?;
            }
            Framing::Chunked => {
                let _ = write!(out, "{:x}\r\n", data.len());
                put(io, &mut out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
            // Never chosen above (a response gets a length or chunks); the bytes as they are.
            Framing::Empty | Framing::UntilClose => put(io, &mut out, data).await?,
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(&out).await?;
    }
    io.flush().await?;
    Ok(match framing {
        // A body shorter than its declared length: the client must not wait for the rest.
        Framing::Length(len) => sent == len,
        Framing::UntilClose => false,
        Framing::Empty | Framing::Chunked => true,
    })
}

/// Queues `data` behind what is pending in `out`: copied when small, else written with it.
async fn put<I>(io: &mut I, out: &mut Vec<u8>, data: Bytes) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    if data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    let mut chain = Bytes::from(std::mem::take(out)).chain(data);
    io.write_all_buf(&mut chain).await
}

/// A stream with bytes already read from it in front: how hyper receives a connection the
/// lean loop read from.
pub(crate) struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
