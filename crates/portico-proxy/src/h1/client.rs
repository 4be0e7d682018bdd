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

use bytes::{Bytes, BytesMut};
use http::header;
use http::{Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::decode::{Decoded, Decoder, Framing, bodyless};
use super::head::{ResponseHead, parse_response_head};
use crate::body::BoxError;

/// A response head larger than this is refused (as the hyper client's buffer limit).
const MAX_HEAD_BYTES: usize = 64 * 1024;
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

/// Writes the head; an error here means the peer is gone (a reused connection was stale).
pub(crate) async fn write_head(conn: &mut Conn, head: &[u8]) -> Result<(), ExchangeError> {
    conn.stream
        .write_all(head)
        .await
        .map_err(ExchangeError::Write)
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
        let framing = if bodyless(*method == Method::HEAD, status) {
            // A 101 nobody asked for: answered with 502 by the handler; never reused.
            if status == StatusCode::SWITCHING_PROTOCOLS {
                reusable = false;
            }
            Framing::Empty
        } else if let Some(chunked) = facts.transfer_chunked() {
            // HTTP/1.0 has no transfer codings: such a response's framing cannot be trusted
            // (hyper's client refuses it too).
            if version == Version::HTTP_10 {
                return Err(ExchangeError::Invalid(
                    "Transfer-Encoding in an HTTP/1.0 response",
                ));
            }
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
        } else if facts.has_content_length() {
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
            decoder: Decoder::new(framing),
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

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn poll_head(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, ExchangeError>> {
    loop {
        if !conn.buf.is_empty()
            && let Some(head) =
                parse_response_head(&mut conn.buf).map_err(ExchangeError::Invalid)?
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

/// The response body, read off the connection as the client takes it.
pub(crate) struct RawBody {
    conn: Option<Conn>,
    decoder: Decoder,
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
        if self.decoder.is_end() {
            self.finish();
        }
    }

    /// The body is complete: the connection goes back if nothing about it is doubtful.
    fn finish(&mut self) {
        self.decoder.end();
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
        self.decoder.end();
        Poll::Ready(Some(Err(e.into())))
    }
}

impl http_body::Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Frame(frame)) => {
                    if this.decoder.is_end() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(why) => return this.fail(ExchangeError::Invalid(why)),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    // Only a body that runs to the close ends well here; never reused.
                    this.conn = None;
                    return match this.decoder.eof() {
                        Ok(()) => Poll::Ready(None),
                        Err(why) => this.fail(ExchangeError::Invalid(why)),
                    };
                }
                Ok(_) => {}
                Err(e) => return this.fail(ExchangeError::Read(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}
