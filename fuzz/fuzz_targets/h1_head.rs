//! The HTTP/1.1 head path (`h1::head`, `h1::decode`): the lean loop's request verdict, the
//! upstream response head parser with its framing facts, and the chunk-size line. None may
//! panic; each is held to what must be true of its answer, and requests to httparse's own
//! verdict. The first byte picks the parser, the rest is the input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico_proxy::fuzzing::{chunk_size_line, lean_request, response_head};

/// Request headers that take a request off the lean path (it has a body, an upgrade, or
/// asks for something hop-by-hop); `connection` is allowed only as keep-alive.
const HANDED_OVER: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
    "http2-settings",
];

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
];

fn request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Some(req) = lean_request(&mut buf, 64 * 1024) else {
        assert_eq!(&buf[..], data, "a hand-over to hyper keeps every byte read");
        return;
    };
    assert!(
        buf.is_empty(),
        "a lean request is the whole read, nothing behind it"
    );
    assert_ne!(req.method, "CONNECT");
    for (name, value) in &req.headers {
        assert!(
            !HANDED_OVER.contains(&name.as_str()),
            "{name} on the lean path"
        );
        if name == "connection" {
            assert!(value.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
        }
    }
    // httparse's own verdict on the same bytes: one complete HTTP/1.1 head, the same method,
    // target and header lines (as a multiset: a HeaderMap groups values by name).
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let status = parsed
        .parse(data)
        .expect("lean requests are valid for httparse");
    assert_eq!(status, httparse::Status::Complete(data.len()));
    assert_eq!(parsed.version, Some(1));
    assert_eq!(parsed.method, Some(req.method.as_str()));
    let path = parsed.path.expect("a complete head has a target");
    if path.starts_with('/') {
        // http::Uri leaves out a fragment (`/a#x` is `/a`), as hyper's server does too, so
        // routing, policy and the upstream all see the same path.
        let without_fragment = path.split_once('#').map_or(path, |(p, _)| p);
        assert_eq!(without_fragment, req.target);
    }
    let mut theirs: Vec<(String, Vec<u8>)> = parsed
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let mut ours = req.headers;
    theirs.sort();
    ours.sort();
    assert_eq!(ours, theirs);
}

fn response(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let head = match response_head(&mut buf) {
        Err(_) => return,
        Ok(None) => {
            assert_eq!(&buf[..], data, "an incomplete head consumes nothing");
            return;
        }
        Ok(Some(head)) => head,
    };
    let consumed = data.len() - buf.len();
    assert!(consumed > 0 && data[..consumed].ends_with(b"\n"));
    assert_eq!(&buf[..], &data[consumed..]);
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut slots);
    assert_eq!(parsed.parse(data), Ok(httparse::Status::Complete(consumed)));
    assert_eq!(parsed.code, Some(head.status));
    // The framing read off the raw lines agrees with the header map the client gets.
    assert_eq!(head.content_length, head.map_content_length, "{head:?}");
    let names = || head.headers.iter().map(|(n, _)| n.as_str());
    if head.status != 101 {
        assert!(
            !names().any(|n| n == "transfer-encoding"),
            "Transfer-Encoding is the connection's own framing: {head:?}"
        );
    }
    if head.stripped {
        assert!(
            !names().any(|n| HOP_BY_HOP.contains(&n)),
            "stripped, yet a hop-by-hop header is left: {head:?}"
        );
    }
}

fn chunk_line(data: &[u8]) {
    let result = chunk_size_line(data);
    match result {
        Err(_) => {}
        Ok(None) => {
            // Every LF ends the line (well or badly), so an incomplete line has none, and
            // only a hex digit can start one.
            assert!(!data.contains(&b'\n'), "{data:?}");
            if let Some(first) = data.first() {
                assert!(first.is_ascii_hexdigit(), "{data:?}");
            }
        }
        Ok(Some((size, len))) => {
            let line = &data[..len];
            assert!(line.ends_with(b"\r\n"), "{line:?}");
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{line:?}");
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            assert!(digits > 0, "{line:?}");
            let text = std::str::from_utf8(&line[..digits]).unwrap();
            assert_eq!(u64::from_str_radix(text, 16), Ok(size), "{line:?}");
            // What follows the line does not change it, and a shorter prefix is incomplete.
            assert_eq!(chunk_size_line(line), result);
            assert_eq!(chunk_size_line(&line[..len - 1]), Ok(None));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => request(rest),
        1 => response(rest),
        _ => chunk_line(rest),
    }
});
