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
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::client;
use crate::body::{self, ProxyBody};
use crate::handler::{self, ConnInfo, Shared};

/// The read buffer: a head that does not fit goes to hyper.
const READ_BUF: usize = 4096;
/// More header lines than this go to hyper (which answers 431 beyond its own limit).
const MAX_HEADERS: usize = 64;
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

/// Parses the one complete request in `buf`, or `None` (leaving `buf` untouched) when it is
/// not for the lean path. The target and header values are slices of the head, not copies.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    max_header_bytes: usize,
) -> Option<Request<ProxyBody>> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        // Partial, malformed, too many headers: hyper waits, or answers.
        _ => return None,
    };
    if len != buf.len() || len > max_header_bytes || parsed.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    for h in parsed.headers.iter() {
        if !lean_header(h.name.as_bytes(), h.value) {
            return None;
        }
    }
    let base = buf.as_ptr() as usize;
    let path_span = span(base, parsed.path?.as_bytes());
    let mut names = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        names.push((name, span(base, h.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = match Uri::from_maybe_shared(head.slice(path_span.0..path_span.1)) {
        Ok(uri) => uri,
        Err(_) => {
            // Put the bytes back for hyper (which answers 400): nothing was consumed.
            restore(buf, &head);
            return None;
        }
    };
    let mut headers = HeaderMap::with_capacity(names.len());
    for (name, (start, end)) in names {
        match HeaderValue::from_maybe_shared(head.slice(start..end)) {
            Ok(value) => headers.append(name, value),
            Err(_) => {
                restore(buf, &head);
                return None;
            }
        };
    }
    let mut req = Request::new(body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(req)
}

fn span(base: usize, part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base;
    (start, start + part.len())
}

/// `buf` was emptied by `split_to`; a hand-over needs the bytes back in order.
fn restore(buf: &mut BytesMut, head: &Bytes) {
    let rest = buf.split();
    buf.extend_from_slice(head);
    buf.extend_from_slice(&rest);
}

/// Whether a request header keeps the request on the lean path: it must have no body, ask
/// for nothing hop-by-hop beyond keep-alive, and not expect trailers or an upgrade.
fn lean_header(name: &[u8], value: &[u8]) -> bool {
    // By length first: most headers are none of these, and that costs one comparison.
    let handed_over: &[u8] = match name.len() {
        2 => b"te",
        6 => b"expect",
        7 => b"upgrade",
        10 => {
            if name.eq_ignore_ascii_case(b"connection") {
                return value.trim_ascii().eq_ignore_ascii_case(b"keep-alive");
            }
            return true;
        }
        14 => {
            return !(name.eq_ignore_ascii_case(b"content-length")
                || name.eq_ignore_ascii_case(b"http2-settings"));
        }
        17 => b"transfer-encoding",
        _ => return true,
    };
    !name.eq_ignore_ascii_case(handed_over)
}

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// HEAD, 1xx, 204, 304: no body whatever the headers say.
    None,
    Length(u64),
    Chunked,
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
    let framing = if is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(len) = client::content_length(&parts.headers) {
        Framing::Length(len)
    } else if let Some(len) = body.size_hint().exact() {
        Framing::Length(len)
    } else {
        Framing::Chunked
    };
    let mut out = Vec::with_capacity(256);
    encode_head(&mut out, status, &parts.headers, framing, close);
    if framing == Framing::None {
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
        if let Framing::Length(len) = framing {
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
        } else {
            let _ = write!(out, "{:x}\r\n", data.len());
            put(io, &mut out, data).await?;
            out.extend_from_slice(b"\r\n");
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(&out).await?;
    }
    io.flush().await?;
    // A body shorter than its declared length: the client must not wait for the rest.
    Ok(!matches!(framing, Framing::Length(len) if sent != len))
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

/// The status line and headers, with the framing header this connection uses in place of
/// whatever framing headers the response carried.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        let framing_header = name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && framing != Framing::None);
        if framing_header {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Option<Request<ProxyBody>> {
        let mut buf = BytesMut::from(raw);
        let parsed = parse_request(&mut buf, 64 * 1024);
        if parsed.is_none() {
            assert_eq!(&buf[..], raw, "a hand-over keeps every byte");
        }
        parsed
    }

    #[test]
    fn lean_requests_parse_into_the_same_request_hyper_would_build() {
        let req = parse(b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: x\r\nConnection: keep-alive\r\n\r\n")
            .expect("lean");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a/b");
        assert_eq!(req.uri().query(), Some("c=d"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.headers()["user-agent"], "x");
        let abs =
            parse(b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n").expect("lean");
        assert_eq!(abs.uri().host(), Some("example.com"));
        assert_eq!(abs.uri().path(), "/x");
    }

    #[test]
    fn every_host_line_reaches_the_handler_which_refuses_two() {
        // The lean loop keeps both lines (as hyper does), so the handler's 400 for a second
        // `Host` (finding M1) holds here too; it is not the first line silently winning.
        let req = parse(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n").expect("lean");
        let hosts: Vec<_> = req.headers().get_all(header::HOST).iter().collect();
        assert_eq!(hosts, ["a.test", "b.test"]);
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        let handed_over: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
            b"GET  HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in handed_over {
            assert!(parse(raw).is_none(), "{:?}", String::from_utf8_lossy(raw));
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(parse(&many).is_none());
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        assert!(
            parse_request(&mut buf, 16).is_none(),
            "a head over the limit is hyper's 431"
        );
    }

    #[test]
    fn response_heads_carry_the_connections_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::SERVER, HeaderValue::from_static("portico"));
        let mut out = Vec::new();
        encode_head(
            &mut out,
            StatusCode::OK,
            &headers,
            Framing::Length(5),
            false,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nserver: portico\r\ncontent-length: 5\r\n\r\n"
        );
        out.clear();
        encode_head(
            &mut out,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Framing::Chunked,
            true,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        out.clear();
        encode_head(&mut out, StatusCode::OK, &headers, Framing::None, false);
        assert_eq!(
            out, b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\nserver: portico\r\n\r\n",
            "HEAD keeps the length the GET would have"
        );
    }
}
