//! Message heads: the request head the lean server loop serves itself (or hands to hyper),
//! the response head the lean client reads from an upstream with the facts its framing and
//! reuse depend on, and the wire form of the heads each side writes.

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::decode::Framing;
use crate::body::{self, ProxyBody};
use crate::headers::{ForwardedValues, HOP_BY_HOP};

/// More request header lines than this go to hyper (which answers 431 beyond its own limit).
const MAX_REQUEST_HEADERS: usize = 64;
/// More response header (or trailer) lines than this are refused, as hyper's client does.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 100;
/// The largest Content-Length hyper's client takes (the two values above are its markers).
const MAX_LENGTH: u64 = u64::MAX - 2;

/// A parsed response head: status, version, the headers kept for the client, the facts.
pub(crate) type ResponseHead = (StatusCode, Version, HeaderMap, HeadFacts);

/// Parses the one complete request in `buf`, or `None` (leaving `buf` untouched) when it is
/// not for the lean path. The target and header values are slices of the head, not copies.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    max_header_bytes: usize,
) -> Option<Request<ProxyBody>> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_REQUEST_HEADERS];
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

/// The status line and headers, with the framing header this connection uses in place of
/// whatever framing headers the response carried.
pub(crate) fn encode_response_head(
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
            || (name == header::CONTENT_LENGTH && framing != Framing::Empty);
        if framing_header {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // The close is the body's end.
        Framing::UntilClose => {}
    }
    if close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request head in HTTP/1.1 wire form, to the origin-form `target` (the handler's
/// upstream path), with the forwarded values in place of what the client sent under those
/// names.
pub(crate) fn encode_request_head(
    req: &Request<ProxyBody>,
    target: &str,
    forwarded: &ForwardedValues,
) -> Vec<u8> {
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

/// Parses a complete response head off the front of `buf`; `None` when more bytes are
/// needed, or why it cannot be one.
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
) -> Result<Option<ResponseHead>, &'static str> {
    // Uninitialized slots: zeroing 100 of them cost more than parsing a typical head.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let parser = httparse::ParserConfig::default();
    let len = match parser.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("bad status code")?;
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
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "bad header name")?;
            let start = h.value.as_ptr() as usize - base;
            spans.push((name, start, start + h.value.len()));
        }
    }
    facts.stripped = !keep_all && !facts.names_listed;
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| "bad header value")?;
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
    /// The final transfer coding (the last element of the last line) is chunked.
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
                // The final coding is the last element of the last line, an empty one
                // included: hyper reads `chunked,` as not chunked, and so must we.
                self.chunked_last = is_visible_ascii(value)
                    && value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                false
            }
            n if hop_by_hop_length(n) => !HOP_BY_HOP
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes())),
            _ => true,
        }
    }

    /// A Content-Length header was present (valid or not).
    pub(crate) fn has_content_length(&self) -> bool {
        self.length.present
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

/// The lengths of the names in `HOP_BY_HOP`: most header names have none of them, and are
/// passed over with one comparison.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16 | 17 | 18)
}

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
            return;
        }
        // Every element of the list must be a length, an empty one too (`4,` is invalid), as
        // hyper reads them.
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            match (digits(token), self.found) {
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

/// `1*DIGIT` up to `MAX_LENGTH`: no sign, no space, no hex.
fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token
        .iter()
        .try_fold(0u64, |n, &b| {
            b.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
                .flatten()
        })
        .filter(|&n| n <= MAX_LENGTH)
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
        for i in 0..MAX_REQUEST_HEADERS + 1 {
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
        encode_response_head(
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
        encode_response_head(
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
        encode_response_head(&mut out, StatusCode::OK, &headers, Framing::Empty, false);
        assert_eq!(
            out, b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\nserver: portico\r\n\r\n",
            "HEAD keeps the length the GET would have"
        );
    }

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
        let head = String::from_utf8(encode_request_head(
            &req,
            "/a?b=1",
            &ForwardedValues::none(),
        ))
        .unwrap();
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
        let head = String::from_utf8(encode_request_head(&req, "/a?b=1", &values)).unwrap();
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
        let (_, _, headers, facts) = parse_response_head(&mut buf).unwrap().unwrap();
        (headers, facts)
    }

    #[test]
    fn the_length_filter_lets_every_hop_by_hop_name_through() {
        for name in HOP_BY_HOP {
            assert!(hop_by_hop_length(name.as_str().len()), "{name}");
            let mut facts = HeadFacts::default();
            // (`Connection: close` names no other header to keep it for.)
            assert!(!facts.note(name.as_str(), b"close"), "{name} kept");
        }
    }

    #[test]
    fn head_parsing_and_framing_rules() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: keep-alive\r\n\r\nabc"[..],
        );
        let (status, version, headers, facts) = parse_response_head(&mut buf).unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(facts.content_length(), Some(3));
        assert_eq!(content_length(&headers), Some(3));
        assert!(!facts.close);
        assert!(facts.stripped && !headers.contains_key(header::CONNECTION));
        assert_eq!(&buf[..], b"abc");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_response_head(&mut partial).unwrap().is_none());

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
        // Every element is a length: an empty one is not (as hyper reads the list).
        for invalid in [&b"4,"[..], b",4", b"4,,4", b"18446744073709551614"] {
            let head = [
                &b"HTTP/1.1 200 OK\r\nContent-Length: "[..],
                invalid,
                b"\r\n\r\n",
            ]
            .concat();
            assert_eq!(lengths(&head), None, "{invalid:?}");
        }
        assert_eq!(
            lengths(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551613\r\n\r\n"),
            Some(u64::MAX - 2)
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
        // The last element of the last line decides, an empty one too (as hyper reads it).
        for not_chunked in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xff\r\n\r\n",
        ] {
            assert_eq!(chunked(not_chunked), Some(false), "{not_chunked:?}");
        }

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
}
