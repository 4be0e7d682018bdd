//! A lean HTTP/1.1 exchange for the most common proxied request: no request body, no
//! upgrade, plain TCP to an endpoint. The request head is written straight from the
//! `HeaderMap`, the response head parsed with httparse, and the response body read by the
//! body itself: no connection task, no channel to it and back, and an idle connection holds
//! no buffer. Everything else (request bodies, WebSocket upgrades) keeps hyper's client.
//!
//! Response framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when
//! it is the final transfer coding; else `Content-Length`; else the body runs to the close.
//! A connection is reused only after a complete, unambiguous response on HTTP/1.1 without
//! `Connection: close`, with not one byte left over.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{BoxError, ProxyBody};
use crate::headers::ForwardedValues;

/// A response head larger than this is refused (as the hyper client's buffer limit).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line (with extensions) or the trailer section larger than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_HEADERS: usize = 128;
const READ_CHUNK: usize = 4096;
const MAX_READ_CHUNK: usize = 64 * 1024;

/// What went wrong talking to the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    #[error("writing the request: {0}")]
    Write(#[source] io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] io::Error),
    #[error("upstream closed the connection before a complete response head")]
    ClosedBeforeHead,
    /// Closed or reset without one byte of response: on a reused connection, the backend
    /// most likely closed it as idle while our request was on its way.
    #[error("upstream closed the connection without answering")]
    Unanswered,
    #[error("invalid response from upstream: {0}")]
    Invalid(&'static str),
}

/// One upstream TCP connection and the bytes read from it but not yet consumed.
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    buf: BytesMut,
    /// How much to reserve for the next read.
    chunk: usize,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            chunk: READ_CHUNK,
        }
    }

    /// Whether an idle connection still looks usable: nothing arrived on it since its last
    /// response (a close or stray bytes make the socket readable). No syscall unless the
    /// socket was flagged readable.
    pub(crate) fn idle_and_open(&mut self, cx: &mut Context<'_>) -> bool {
        match self.stream.poll_read_ready(cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into the buffer; `Ok(0)` is the peer's close. Reads start at 4 KB and
    /// grow to 64 KB while each one fills what it was given (a large body streaming).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(self.chunk);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.buf
        ));
        if let Ok(n) = read {
            self.chunk = if n >= room {
                (self.chunk * 2).min(MAX_READ_CHUNK)
            } else {
                READ_CHUNK
            };
        }
        Poll::Ready(read)
    }
}

/// The request head in HTTP/1.1 wire form (origin-form target, as the handler builds it),
/// with the forwarded values in place of what the client sent under those names.
pub(crate) fn encode_head(req: &Request<ProxyBody>, forwarded: &ForwardedValues) -> Vec<u8> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut size = req.method().as_str().len() + target.len() + 16;
    for (name, value) in req.headers().iter().chain(forwarded.iter()) {
        size += name.as_str().len() + value.len() + 4;
    }
    let mut out = Vec::with_capacity(size + 24);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let sent = req
        .headers()
        .iter()
        .filter(|(name, _)| !forwarded.replaces(name));
    for (name, value) in sent.chain(forwarded.iter()) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Methods that usually carry a body say it is empty, as hyper's client does.
    let bodyless_by_default = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    );
    if !bodyless_by_default && !req.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes the head; an error here means the peer is gone (a reused connection was stale).
pub(crate) async fn write_head(conn: &mut Conn, head: &[u8]) -> Result<(), ExchangeError> {
    conn.stream
        .write_all(head)
        .await
        .map_err(ExchangeError::Write)
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Reads the response head (skipping interim 1xx responses) and returns the response with
/// a body that owns the connection; `done` gets the connection back when it can be reused.
pub(crate) async fn read_response(
    mut conn: Conn,
    method: &Method,
    done: Box<dyn FnOnce(Conn) + Send>,
) -> Result<Response<RawBody>, ExchangeError> {
    let mut interim = false;
    loop {
        let parsed = match std::future::poll_fn(|cx| poll_head(&mut conn, cx)).await {
            // An interim response was an answer: the request was processed.
            Err(ExchangeError::Unanswered) if interim => Err(ExchangeError::ClosedBeforeHead),
            parsed => parsed,
        }?;
        let (status, version, headers, facts) = parsed;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            interim = true;
            continue;
        }
        let mut headers = headers;
        let mut reusable = version == Version::HTTP_11 && !facts.close;
        let framing = if *method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            // A 101 nobody asked for: answered with 502 by the handler; never reused.
            if status == StatusCode::SWITCHING_PROTOCOLS {
                reusable = false;
            }
            Framing::Empty
        } else if let Some(chunked) = facts.transfer_chunked() {
            // Both framings: Transfer-Encoding wins and the connection is not trusted again.
            if headers.remove(header::CONTENT_LENGTH).is_some() {
                reusable = false;
            }
            if chunked {
                Framing::Chunked
            } else {
                reusable = false;
                Framing::UntilClose
            }
        } else if facts.length.present {
            Framing::Length(
                facts
                    .content_length()
                    .ok_or(ExchangeError::Invalid("bad Content-Length"))?,
            )
        } else {
            reusable = false;
            Framing::UntilClose
        };
        let mut resp = Response::new(RawBody {
            conn: Some(conn),
            framing,
            chunk: ChunkState::Size,
            reusable,
            stripped: facts.stripped,
            done: Some(done),
        });
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        // A body that is empty from the start hands the connection back at once.
        resp.body_mut().finish_if_empty();
        return Ok(resp);
    }
}

type Head = (StatusCode, Version, HeaderMap, HeadFacts);

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn poll_head(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<Head, ExchangeError>> {
    loop {
        if !conn.buf.is_empty()
            && let Some(head) = parse_head(&mut conn.buf)?
        {
            return Poll::Ready(Ok(head));
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Poll::Ready(Err(ExchangeError::Invalid("response head too large")));
        }
        let nothing_yet = conn.buf.is_empty();
        match ready!(conn.poll_fill(cx)) {
            Ok(0) if nothing_yet => return Poll::Ready(Err(ExchangeError::Unanswered)),
            Ok(0) => return Poll::Ready(Err(ExchangeError::ClosedBeforeHead)),
            Ok(_) => {}
            Err(e) if nothing_yet && is_reset(&e) => {
                return Poll::Ready(Err(ExchangeError::Unanswered));
            }
            Err(e) => return Poll::Ready(Err(ExchangeError::Read(e))),
        }
    }
}

/// Parses a complete head off the front of `buf`; `None` when more bytes are needed.
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ExchangeError> {
    // Uninitialized slots: zeroing 128 of them cost more than parsing a typical head.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ExchangeError::Invalid("malformed response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ExchangeError::Invalid("bad status code"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Offsets first: the header values then become slices of the frozen head, not copies.
    // The framing facts are read off the raw lines on the way, and hop-by-hop headers are
    // left out of the map (all of them kept for a 101, whose upgrade needs them; kept too
    // when `Connection` names other headers, for `strip_hop_by_hop` to find).
    let base = buf.as_ptr() as usize;
    let keep_all = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut facts = HeadFacts::default();
    let mut spans: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let kept = facts.note(h.name, h.value) || keep_all;
        if kept {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| ExchangeError::Invalid("bad header name"))?;
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
    }
    facts.stripped = !keep_all && !facts.names_listed;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| ExchangeError::Invalid("bad header value"))?;
        headers.append(name, value);
    }
    Ok(Some((status, version, headers, facts)))
}

/// What framing and reuse depend on, read from a response head's raw lines.
#[derive(Default, Debug)]
pub(crate) struct HeadFacts {
    /// `Connection: close`.
    pub(crate) close: bool,
    /// `Connection` lists header names to drop (not just close or keep-alive).
    names_listed: bool,
    /// A Transfer-Encoding header was present.
    transfer_encoding: bool,
    /// The last transfer coding named is chunked.
    chunked_last: bool,
    /// The Content-Length values.
    length: Length,
    /// No hop-by-hop header is left in the map.
    pub(crate) stripped: bool,
}

impl HeadFacts {
    /// Records what one header line says; whether it belongs in the forwarded header map.
    fn note(&mut self, name: &str, value: &[u8]) -> bool {
        let name = name.as_bytes();
        // By length first: most names are none of these.
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in ascii_tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        self.names_listed = true;
                    }
                }
                self.names_listed
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                self.length.add(value);
                true
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                if let Some(last) = ascii_tokens(value).last() {
                    self.chunked_last = last.eq_ignore_ascii_case(b"chunked");
                }
                false
            }
            2 | 7 | 10 | 16 | 18 => !HOP_BY_HOP_REST.iter().any(|h| name.eq_ignore_ascii_case(h)),
            _ => true,
        }
    }

    /// `None` without Transfer-Encoding; otherwise whether chunked is the final coding.
    pub(crate) fn transfer_chunked(&self) -> Option<bool> {
        self.transfer_encoding.then_some(self.chunked_last)
    }

    /// One length, or a list of identical ones (RFC 9110 §8.6); `None` when invalid.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.length.value()
    }
}

/// The hop-by-hop names besides Connection, Transfer-Encoding (RFC 9110 §7.6.1).
const HOP_BY_HOP_REST: [&[u8]; 6] = [
    b"te",
    b"trailer",
    b"upgrade",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
];

fn is_visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// Comma-separated tokens of a value, trimmed, empty ones skipped; a value with bytes
/// outside visible ASCII says nothing (as `HeaderValue::to_str` would refuse it).
fn ascii_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let value = if is_visible_ascii(value) {
        value
    } else {
        &[][..]
    };
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// One length, or a list of identical ones (RFC 9110 §8.6); anything else is invalid.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut length = Length::default();
    for value in headers.get_all(header::CONTENT_LENGTH) {
        length.add(value.as_bytes());
    }
    length.value()
}

/// Content-Length values folded together: the one length they agree on, or invalid.
#[derive(Default, Debug)]
struct Length {
    present: bool,
    found: Option<u64>,
    bad: bool,
}

impl Length {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // Non-ASCII bytes make the value say nothing, hence an invalid length.
        if !is_visible_ascii(value) {
            self.bad = true;
        }
        for token in ascii_tokens(value) {
            let n = std::str::from_utf8(token)
                .ok()
                .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok());
            match (n, self.found) {
                (Some(n), None) => self.found = Some(n),
                (Some(n), Some(prev)) if prev == n => {}
                _ => self.bad = true,
            }
        }
    }

    fn value(&self) -> Option<u64> {
        if self.bad { None } else { self.found }
    }
}

#[derive(Clone, Copy, Debug)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// The response body, read off the connection as the client takes it.
pub(crate) struct RawBody {
    conn: Option<Conn>,
    framing: Framing,
    chunk: ChunkState,
    reusable: bool,
    /// The head's hop-by-hop headers were left out of the response already.
    stripped: bool,
    done: Option<Box<dyn FnOnce(Conn) + Send>>,
}

impl RawBody {
    pub(crate) fn hop_by_hop_stripped(&self) -> bool {
        self.stripped
    }

    /// The connection will not serve another request: never hand it back.
    pub(crate) fn forget_connection(&mut self) {
        self.reusable = false;
    }

    fn finish_if_empty(&mut self) {
        if matches!(self.framing, Framing::Empty | Framing::Length(0)) {
            self.finish();
        }
    }

    /// The body is complete: the connection goes back if nothing about it is doubtful.
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.reusable
            && conn.buf.is_empty()
            && let Some(done) = self.done.take()
        {
            // An idle connection keeps no buffer.
            conn.buf = BytesMut::new();
            conn.chunk = READ_CHUNK;
            done(conn);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(e.into())))
    }

    fn poll_chunked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.chunk {
                ChunkState::Size => match chunk_size_line(&conn.buf) {
                    Ok(Some((size, len))) => {
                        conn.buf.advance(len);
                        self.chunk = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                        continue;
                    }
                    Ok(None) if conn.buf.len() > MAX_CHUNK_LINE => {
                        return self.fail(ExchangeError::Invalid("chunk size line too long"));
                    }
                    Ok(None) => {}
                    Err(why) => return self.fail(ExchangeError::Invalid(why)),
                },
                ChunkState::Data(remaining) => {
                    if !conn.buf.is_empty() {
                        let n = remaining.min(conn.buf.len() as u64) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        let left = remaining - n as u64;
                        self.chunk = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                ChunkState::DataEnd => {
                    if conn.buf.len() >= 2 {
                        if &conn.buf[..2] != b"\r\n" {
                            return self.fail(ExchangeError::Invalid("chunk not followed by CRLF"));
                        }
                        conn.buf.advance(2);
                        self.chunk = ChunkState::Size;
                        continue;
                    }
                }
                ChunkState::Trailers => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    if let Some(end) = find(&conn.buf, b"\r\n\r\n") {
                        let section = conn.buf.split_to(end + 4);
                        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let mut trailers = HeaderMap::new();
                        match httparse::parse_headers(&section, &mut slots) {
                            Ok(httparse::Status::Complete((_, parsed))) => {
                                for h in parsed {
                                    if let (Ok(name), Ok(value)) = (
                                        HeaderName::from_bytes(h.name.as_bytes()),
                                        HeaderValue::from_bytes(h.value),
                                    ) {
                                        trailers.append(name, value);
                                    }
                                }
                            }
                            _ => return self.fail(ExchangeError::Invalid("malformed trailers")),
                        }
                        self.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return self.fail(ExchangeError::Invalid("trailers too large"));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => return self.fail(ExchangeError::Invalid("closed inside a chunked body")),
                Ok(_) => {}
                Err(e) => return self.fail(ExchangeError::Read(e)),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A chunk-size line at the start of `buf`, exactly as strictly as hyper reads one:
/// `1*HEXDIG *(SP / HTAB) [";" extension] CRLF`, where the extension holds no CR or LF. Its
/// size and length (CRLF included), `None` while incomplete, or an error at the first byte
/// that cannot belong to one (no sign, no leading space, no bare LF, no overflow).
pub(crate) fn chunk_size_line(buf: &[u8]) -> Result<Option<(u64, usize)>, &'static str> {
    enum At {
        Size,
        Space,
        Extension,
        Lf,
    }
    let mut size: u64 = 0;
    let mut at = At::Size;
    for (i, &b) in buf.iter().enumerate() {
        at = match (at, b) {
            (At::Size, _) if b.is_ascii_hexdigit() => {
                let digit = char::from(b).to_digit(16).unwrap_or(0);
                size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(digit)))
                    .ok_or("chunk size overflows")?;
                At::Size
            }
            (At::Size, _) if i == 0 => return Err("chunk size line without a size digit"),
            (At::Size | At::Space, b' ' | b'\t') => At::Space,
            (At::Size | At::Space, b';') => At::Extension,
            (At::Size | At::Space | At::Extension, b'\r') => At::Lf,
            (At::Extension, b'\n') => return Err("chunk extension with a bare LF"),
            (At::Extension, _) => At::Extension,
            (At::Lf, b'\n') => return Ok(Some((size, i + 1))),
            (At::Lf, _) => return Err("chunk size line with CR not followed by LF"),
            (At::Size | At::Space, _) => return Err("bad chunk size"),
        };
    }
    Ok(None)
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match this.framing {
            Framing::Empty => Poll::Ready(None),
            Framing::Chunked => this.poll_chunked(cx),
            Framing::Length(remaining) => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            return this
                                .fail(ExchangeError::Invalid("closed before the body's end"));
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(ExchangeError::Read(e)),
                    }
                }
                let n = remaining.min(conn.buf.len() as u64) as usize;
                let data = conn.buf.split_to(n).freeze();
                let left = remaining - n as u64;
                this.framing = Framing::Length(left);
                if left == 0 {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Framing::UntilClose => {
                let Some(conn) = this.conn.as_mut() else {
                    return Poll::Ready(None);
                };
                if conn.buf.is_empty() {
                    match ready!(conn.poll_fill(cx)) {
                        Ok(0) => {
                            this.conn = None;
                            this.framing = Framing::Empty;
                            return Poll::Ready(None);
                        }
                        Ok(_) => {}
                        Err(e) => return this.fail(ExchangeError::Read(e)),
                    }
                }
                let data = conn.buf.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked | Framing::UntilClose => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_encoding() {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/a?b=1")
            .header("host", "x.test")
            .header("x-two", "1")
            .header("x-two", "2")
            .header("x-real-ip", "6.6.6.6")
            .header("x-request-id", "from-client")
            .body(crate::body::empty())
            .unwrap();
        let head = String::from_utf8(encode_head(&req, &ForwardedValues::none())).unwrap();
        assert_eq!(
            head,
            "POST /a?b=1 HTTP/1.1\r\nhost: x.test\r\nx-two: 1\r\nx-two: 2\r\nx-real-ip: 6.6.6.6\r\nx-request-id: from-client\r\ncontent-length: 0\r\n\r\n"
        );
        // The forwarded values replace the client's, except a request ID it chose.
        let fwd = crate::headers::Forwarded {
            trusted: false,
            client: "192.0.2.1".parse().unwrap(),
            proto: "https",
            host: "x.test",
            port: 443,
        };
        let values = crate::headers::forwarded_values(req.headers(), &fwd);
        let head = String::from_utf8(encode_head(&req, &values)).unwrap();
        assert!(!head.contains("6.6.6.6"), "{head}");
        assert!(head.contains("\r\nx-real-ip: 192.0.2.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nx-forwarded-for: 192.0.2.1\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nx-forwarded-proto: https\r\n"), "{head}");
        assert!(head.contains("\r\nx-forwarded-port: 443\r\n"), "{head}");
        assert_eq!(
            head.matches("x-request-id: from-client").count(),
            1,
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"));
    }

    fn parsed(head: &[u8]) -> (HeaderMap, HeadFacts) {
        let mut buf = BytesMut::from(head);
        let (_, _, headers, facts) = parse_head(&mut buf).unwrap().unwrap();
        (headers, facts)
    }

    #[test]
    fn head_parsing_and_framing_rules() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: keep-alive\r\n\r\nabc"[..],
        );
        let (status, version, headers, facts) = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(facts.content_length(), Some(3));
        assert_eq!(content_length(&headers), Some(3));
        assert!(!facts.close);
        assert!(facts.stripped && !headers.contains_key(header::CONNECTION));
        assert_eq!(&buf[..], b"abc");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial).unwrap().is_none());

        let lengths = |h: &[u8]| parsed(h).1.content_length();
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            None
        );
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            Some(3)
        );
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n"),
            None
        );
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: ,\r\n\r\n"),
            None
        );
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: 3\xff\r\n\r\n"),
            None
        );
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            None
        );

        let chunked = |h: &[u8]| parsed(h).1.transfer_chunked();
        assert_eq!(
            chunked(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            chunked(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Some(false)
        );
        assert_eq!(
            chunked(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Some(true)
        );
        // A value with non-ASCII bytes names no coding: not chunked, framed by the close.
        assert_eq!(
            chunked(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \xff, chunked\r\n\r\n"),
            Some(false)
        );
        assert_eq!(chunked(b"HTTP/1.1 200 OK\r\n\r\n"), None);

        // Hop-by-hop headers stay out of the map; Connection naming others keeps them for
        // strip_hop_by_hop; a 101 keeps everything for the upgrade.
        let (headers, f) = parsed(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: x\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nProxy-Authenticate: x\r\nConnection: Close\r\nX-Kept: 1\r\n\r\n",
        );
        assert!(f.close && f.stripped);
        assert_eq!(headers.len(), 1, "{headers:?}");
        let (headers, f) =
            parsed(b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s\r\n\r\n");
        assert!(!f.stripped && headers.contains_key(header::CONNECTION));
        let (headers, f) = parsed(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert!(!f.stripped && headers.contains_key(header::UPGRADE));
    }

    #[test]
    fn chunk_size_lines_are_read_as_strictly_as_hyper_does() {
        let ok: &[(&[u8], u64, usize)] = &[
            (b"5\r\nhello", 5, 3),
            (b"00aF\r\n", 0xaf, 6),
            (b"5 \t ;name=value\r\n", 5, 17),
            (b"5;a=\"b\"\r\n", 5, 9),
            (b"0\r\n\r\n", 0, 3),
        ];
        for (line, size, len) in ok {
            assert_eq!(chunk_size_line(line), Ok(Some((*size, *len))), "{line:?}");
        }
        for partial in [&b""[..], b"5", b"5 ", b"5;x", b"5\r"] {
            assert_eq!(chunk_size_line(partial), Ok(None), "{partial:?}");
        }
        // Refused at the offending byte, without waiting for a line end.
        for bad in [
            &b"+5"[..],
            b" 5",
            b"\t5",
            b"-5",
            b"0x5",
            b"5\n",
            b"5;x\n",
            b"5\rx",
            b"5 6",
            b"\r\n",
            b"5\x00",
            b"1ffffffffffffffff\r\n",
        ] {
            assert!(chunk_size_line(bad).is_err(), "{bad:?}");
        }
    }
}
