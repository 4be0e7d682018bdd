//! The lean HTTP/1.1 path against hyper on the same bytes (issue 17). The proxy owns two
//! pieces of HTTP/1.1 framing (`h1::head`/`h1::decode`): its claim is "the same answers as
//! hyper", since two parsers that disagree about where a message ends are a smuggling channel.
//! Each input here goes to both, over real sockets, and the framing decisions must agree:
//!
//! - requests: whatever the lean server loop serves itself, hyper's server (configured as
//!   `tcp.rs` configures it) serves too, as the same one request (method, target, version,
//!   header lines) with an empty body and nothing behind it. Everything else the lean loop
//!   hands to hyper with every byte, so there the answer is hyper's by construction;
//! - responses: the lean upstream exchange and hyper's client (configured as `pool.rs`
//!   configures it) both refuse the head, or both give the same status, the same exact length
//!   (or none: chunked, until close), the same body bytes, the same trailers, and both end the
//!   body cleanly or both cut it off.
//!
//! Where the lean path decides otherwise on purpose, the case is listed in `KNOWN` with why,
//! and asserted to differ exactly so (a change on either side shows up here). The limits both
//! sides share (16 KiB of chunk extensions per body, 16 KiB of trailers, 100 header or trailer
//! lines, 64 KiB of response head, the largest Content-Length) are tested at their edges.
//!
//! Inputs: proptest-generated heads and chunked bodies, the mutation corpus of the hostile
//! tests (the same seeds, mutator and xorshift sequence), and the fuzz seeds in
//! `fuzz/corpus/h1_head`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portico_proxy::fuzzing::{LeanResponse, lean_exchange, lean_request};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[allow(dead_code)]
#[path = "proxy/common.rs"]
mod common;

/// Each side gets this long for one input; every input ends with a close, so both finish.
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Requests

/// What one side made of a request's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Served {
    method: String,
    target: String,
    http11: bool,
    /// Lowercase names with their values, sorted (a HeaderMap groups by name).
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// hyper's server on the bytes, then the close: the requests it passed to its service.
async fn hyper_serves(bytes: &[u8]) -> Vec<Served> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_else(|_| b"<body error>".to_vec());
            let mut headers: Vec<(String, Vec<u8>)> = parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            headers.sort();
            record.lock().unwrap().push(Served {
                method: parts.method.as_str().to_owned(),
                target: parts.uri.to_string(),
                http11: parts.version == http::Version::HTTP_11,
                headers,
                body,
            });
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    // As `tcp::http_builder` sets HTTP/1.1 up (the 32 KiB default header limit), but for
    // the half close: the input ends with the client's close, and hyper must still answer
    // what came before it.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(32 * 1024)
        .auto_date_header(false)
        .half_close(true);
    let conn = builder.serve_connection(TokioIo::new(server), service);
    let write = async {
        let _ = client.write_all(bytes).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    };
    let both = async { tokio::join!(conn, write) };
    // The connection's own result does not matter: what it served does.
    let (_served, ()) = tokio::time::timeout(DEADLINE, both)
        .await
        .expect("hyper's server finishes once the client has closed");
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

/// The lean loop's verdict: the request it serves itself, or `None` (hyper's then).
fn lean_serves(bytes: &[u8]) -> Option<Served> {
    let mut buf = BytesMut::from(bytes);
    let req = lean_request(&mut buf, 32 * 1024)?;
    let mut headers = req.headers;
    headers.sort();
    Some(Served {
        method: req.method,
        target: req.target,
        http11: true,
        headers,
        body: Vec::new(),
    })
}

#[derive(Default, Debug)]
struct RequestTally {
    lean: usize,
    handed_over: usize,
}

async fn compare_request(bytes: &[u8], tally: &mut RequestTally) {
    let Some(lean) = lean_serves(bytes) else {
        tally.handed_over += 1;
        return;
    };
    tally.lean += 1;
    let hyper = hyper_serves(bytes).await;
    assert_eq!(
        hyper,
        [lean],
        "the lean loop served a request hyper reads otherwise: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

// ---------------------------------------------------------------------------------------
// Responses

/// What one side made of a response: refused, or what the client is given.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Refused,
    Response {
        status: u16,
        exact_length: Option<u64>,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
        /// The body ended where its framing says (not cut off by an error).
        clean_end: bool,
    },
}

/// A connection to a backend that reads one request head, answers `bytes`, closes its side
/// and waits for the client's close.
async fn connected(
    listener: &TcpListener,
    bytes: &[u8],
) -> (TcpStream, tokio::task::JoinHandle<()>) {
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (mut upstream, _) = accepted.unwrap();
    let bytes = bytes.to_vec();
    let task = tokio::spawn(async move {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match upstream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = upstream.write_all(&bytes).await;
        let _ = upstream.shutdown().await;
        let _ = upstream.read_to_end(&mut head).await;
    });
    (client.unwrap(), task)
}

async fn lean_answers(listener: &TcpListener, bytes: &[u8], head: bool) -> Answer {
    let (stream, task) = connected(listener, bytes).await;
    let answer = tokio::time::timeout(DEADLINE, lean_exchange(stream, head))
        .await
        .expect("the lean exchange finishes once the backend has closed");
    task.abort();
    match answer {
        Err(_) => Answer::Refused,
        Ok(LeanResponse {
            status,
            exact_length,
            body,
            mut trailers,
            body_error,
        }) => {
            trailers.sort();
            Answer::Response {
                status,
                exact_length,
                body,
                trailers,
                clean_end: body_error.is_none(),
            }
        }
    }
}

async fn hyper_answers(listener: &TcpListener, bytes: &[u8], head: bool) -> Answer {
    let (stream, task) = connected(listener, bytes).await;
    let exchange = async {
        // As `pool::H1Pool` builds its hyper connections.
        let (mut send, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(if head { "HEAD" } else { "GET" })
            .uri("/")
            .header("host", "test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let exact_length = hyper::body::Body::size_hint(&body).exact();
        let mut data = Vec::new();
        let mut trailers = Vec::new();
        let mut clean_end = true;
        while let Some(frame) = body.frame().await {
            match frame {
                Err(_) => {
                    clean_end = false;
                    break;
                }
                Ok(frame) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers.extend(
                                t.iter()
                                    .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())),
                            );
                        }
                    }
                },
            }
        }
        trailers.sort();
        Some(Answer::Response {
            status,
            exact_length,
            body: data,
            trailers,
            clean_end,
        })
    };
    let answer = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("hyper's client finishes once the backend has closed");
    task.abort();
    answer.unwrap_or(Answer::Refused)
}

#[derive(Default, Debug)]
struct ResponseTally {
    same: usize,
    /// Of those, refused at the head (a 502).
    refused: usize,
    /// Of those, cut off in the body.
    cut_off: usize,
}

async fn compare_response(
    listener: &TcpListener,
    bytes: &[u8],
    head: bool,
    tally: &mut ResponseTally,
) {
    let lean = lean_answers(listener, bytes, head).await;
    let hyper = hyper_answers(listener, bytes, head).await;
    if lean == hyper {
        tally.same += 1;
        match lean {
            Answer::Refused => tally.refused += 1,
            Answer::Response {
                clean_end: false, ..
            } => tally.cut_off += 1,
            Answer::Response { .. } => {}
        }
        return;
    }
    panic!(
        "the lean path and hyper frame this response differently ({} request):\n  lean:  {lean:?}\n  hyper: {hyper:?}\n  bytes: {:?}",
        if head { "HEAD" } else { "GET" },
        String::from_utf8_lossy(bytes)
    );
}

/// A case where the lean path decides otherwise than hyper on purpose: an input that shows
/// it, and what each side must answer.
struct Known {
    name: &'static str,
    why: &'static str,
    bytes: fn() -> Vec<u8>,
    lean: fn(&Answer) -> bool,
    hyper: fn(&Answer) -> bool,
}

const KNOWN: [Known; 1] = [Known {
    name: "a chunk-size line padded past 32 KiB",
    why: "hyper reads a chunk-size line byte by byte and bounds only its extension bytes (16 KiB \
          per body, as the lean decoder does), so it takes any number of leading zeros or \
          spaces; the lean decoder parses whole lines out of its read buffer, so it bounds the \
          line (32 KiB, room for every extension byte hyper allows): the response is cut off \
          (the client sees a truncated body, the connection is not reused) instead of read",
    bytes: || {
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
            &[b'0'; 40_000],
            b"5\r\nhello\r\n0\r\n\r\n",
        ]
        .concat()
    },
    lean: |answer| matches!(answer, Answer::Response { status: 200, body, clean_end: false, .. } if body.is_empty()),
    hyper: |answer| matches!(answer, Answer::Response { status: 200, body, clean_end: true, .. } if body == b"hello"),
}];

// ---------------------------------------------------------------------------------------
// Inputs

/// The request seeds of `hostile::mutated_request_heads_get_an_answer_or_a_close`.
const REQUEST_SEEDS: [&[u8]; 4] = [
    b"GET /a?b=c HTTP/1.1\r\nHost: echo.test\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: echo.test\r\nConnection: keep-alive\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /upload HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
];

/// The response seeds of `upstream_hostile::mutated_responses_never_leak_into_the_next_request`.
const RESPONSE_SEEDS: [&[u8]; 5] = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\ngood\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
];

/// `count` mutations of `seeds`, as the hostile tests make them (1 to 3 edits each).
fn mutated(seeds: &[&[u8]], mut rng: u64, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut bytes = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + common::xorshift(&mut rng) % 3 {
                common::mutate(&mut bytes, &mut rng);
            }
            bytes
        })
        .collect()
}

/// The fuzz seeds for `h1_head`: the first byte picks the parser (0 request, 1 response).
fn fuzz_seeds() -> Vec<(u8, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/h1_head");
    let mut seeds: Vec<(u8, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .filter_map(|bytes| Some((*bytes.first()? % 3, bytes[1..].to_vec())))
        .collect();
    seeds.sort();
    seeds
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_mutation_corpus_and_fuzz_seeds_get_the_same_framing_from_both() {
    runtime().block_on(async {
        let mut requests = RequestTally::default();
        let mut seeds = REQUEST_SEEDS.iter().map(|s| s.to_vec()).collect::<Vec<_>>();
        seeds.extend(mutated(&REQUEST_SEEDS, 0x2545_F491_4F6C_DD1D, 800));
        for (which, bytes) in fuzz_seeds() {
            if which == 0 {
                seeds.push(bytes);
            }
        }
        for bytes in &seeds {
            compare_request(bytes, &mut requests).await;
        }
        assert!(
            requests.lean > 50 && requests.handed_over > 50,
            "the corpus exercises both verdicts: {requests:?}"
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut responses = ResponseTally::default();
        let mut cases = RESPONSE_SEEDS
            .iter()
            .map(|s| s.to_vec())
            .collect::<Vec<_>>();
        cases.extend(mutated(&RESPONSE_SEEDS, 0x9E37_79B9_7F4A_7C15, 250));
        for (which, bytes) in fuzz_seeds() {
            if which == 1 {
                cases.push(bytes);
            }
        }
        for (i, bytes) in cases.iter().enumerate() {
            compare_response(&listener, bytes, i % 7 == 6, &mut responses).await;
        }
        assert!(
            responses.same > 100 && responses.refused > 10,
            "the corpus exercises both accepted and refused responses: {responses:?}"
        );
        eprintln!("requests {requests:?}, responses {responses:?}");
    });
}

// ---------------------------------------------------------------------------------------
// Generated inputs

fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(options).prop_map(str::to_owned)
}

/// A header value: mostly plain, sometimes with the bytes parsers disagree about.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ,;=/._-]{0,12}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(
            proptest::sample::select(&[b'a', b' ', b'\t', b',', 0x7f, 0x80, 0xff, 0, b'\r'][..]),
            0..6
        ),
    ]
}

/// One request header line (without its line end).
fn request_header() -> impl Strategy<Value = Vec<u8>> {
    let framing = prop_oneof![
        pick(&[
            "Content-Length: 0",
            "Content-Length: 3",
            "Content-Length: +3",
            "Content-Length: 3, 3"
        ]),
        pick(&[
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "TE: trailers",
            "Expect: 100-continue"
        ]),
        pick(&[
            "Connection: keep-alive",
            "Connection: close",
            "Connection: Upgrade",
            "connection:  Keep-Alive "
        ]),
        pick(&[
            "Upgrade: websocket",
            "HTTP2-Settings: AAMAAABkAAQAAP__",
            "Keep-Alive: timeout=5"
        ]),
    ]
    .prop_map(String::into_bytes);
    let named = (
        pick(&[
            "Host",
            "host",
            "User-Agent",
            "Accept",
            "X-Forwarded-For",
            "X-A",
            "Cookie",
            "Bad Header",
            "X_y",
            "X-\u{e9}",
        ]),
        value(),
    )
        .prop_map(|(name, value)| [name.as_bytes(), b": ", &value].concat());
    prop_oneof![1 => framing, 3 => named]
}

prop_compose! {
    fn request()(
        method in pick(&["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO", "CONNECT", "get"]),
        target in pick(&["/", "/a/b?c=d", "*", "http://example.com/x", "/a#frag", "//x", "/%2e%2e/", "a", "/\u{7f}", "/a b", "example.com:443"]),
        version in pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]),
        headers in proptest::collection::vec(request_header(), 0..6),
        bare_lf in proptest::bool::weighted(0.1),
        body in pick(&["", "", "", "abc", "3\r\nabc\r\n0\r\n\r\n", "GET / HTTP/1.1\r\nHost: b\r\n\r\n"]),
    ) -> Vec<u8> {
        let end: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
        let mut out = format!("{method} {target} {version}").into_bytes();
        out.extend_from_slice(b"\r\n");
        for h in headers {
            out.extend_from_slice(&h);
            out.extend_from_slice(end);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// One response header line (without its line end).
fn response_header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => pick(&[
            "Content-Length: 0", "Content-Length: 4", "Content-Length: 5", "Content-Length: 4, 4",
            "Content-Length: 4, 5", "Content-Length: 4,", "Content-Length: ,4", "Content-Length: +4",
            "Content-Length: 0x4", "Content-Length: 4 4", "Content-Length:", "Content-Length: 4\t",
            "Content-Length: 18446744073709551615", "Content-Length: 99999999999999999999",
        ]),
        3 => pick(&[
            "Transfer-Encoding: chunked", "Transfer-Encoding: Chunked", "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, gzip", "Transfer-Encoding: chunked,", "Transfer-Encoding: gzip",
            "Transfer-Encoding:", "Transfer-Encoding: identity", "Transfer-Encoding:  chunked ",
            "Transfer-Encoding: chunked, ", "Transfer-Encoding: ,chunked",
        ]),
        1 => pick(&["Connection: close", "Connection: keep-alive", "Connection: X-Secret", "Keep-Alive: timeout=5", "Trailer: X-T"]),
        2 => (pick(&["X-A", "Server", "Content-Type", "X-Secret", "Bad Header"]), value())
            .prop_map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(&value))),
    ]
    .prop_map(String::into_bytes)
}

/// A chunk-size line: well formed in the ways hyper accepts, or broken in the ways it does not.
fn chunk_size_line(size: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(format!("{size:x}\r\n")),
        1 => Just(format!("{size:X}\r\n")),
        1 => Just(format!("00{size:x}\r\n")),
        1 => Just(format!("{size:x};name=value\r\n")),
        1 => Just(format!("{size:x} \t;x=\"y\"\r\n")),
        1 => Just(format!("{size:x}  \r\n")),
        1 => pick(&["+", " ", "0x", "-", "\t"]).prop_map(move |p| format!("{p}{size:x}\r\n")),
        1 => pick(&["\n", "\r", ";x\n", " 1\r\n", "\rx\n", ";\r\r\n", "g\r\n"]).prop_map(move |end| format!("{size:x}{end}")),
    ]
    .prop_map(String::into_bytes)
}

/// A chunked body: chunks, the last chunk, trailers or not; sometimes broken between them.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (1usize..20).prop_flat_map(|size| {
        (
            chunk_size_line(size),
            // What follows the data: CRLF mostly, else a framing error.
            pick(&["\r\n", "\r\n", "\r\n", "\n", "", "xy"]),
        )
            .prop_map(move |(line, end)| [line, vec![b'd'; size], end.into_bytes()].concat())
    });
    (
        proptest::collection::vec(chunk, 0..4),
        chunk_size_line(0),
        pick(&[
            "",
            "",
            "X-T: 1\r\n",
            "X-T: 1\r\nX-U: 2\r\n",
            "Bad Trailer\r\n",
            "X-T: 1\n",
            "X-T: \u{7f}\r\n",
        ]),
        pick(&["\r\n", "\r\n", "", "\n", "\r"]),
    )
        .prop_map(|(chunks, last, trailers, end)| {
            [
                chunks.concat(),
                last,
                trailers.into_bytes(),
                end.into_bytes(),
            ]
            .concat()
        })
}

prop_compose! {
    fn response()(
        version in pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        status in pick(&["200 OK", "200 OK", "404 Not Found", "204 No Content", "304 Not Modified", "101 Switching Protocols", "100 Continue", "199 X", "99 X", "1000 X"]),
        headers in proptest::collection::vec(response_header(), 0..5),
        body in prop_oneof![
            2 => chunked_body(),
            1 => pick(&["", "good", "goodmore", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"]).prop_map(String::into_bytes),
        ],
        bare_lf in proptest::bool::weighted(0.05),
    ) -> Vec<u8> {
        let end: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
        let mut out = format!("{version} {status}\r\n").into_bytes();
        for h in headers {
            out.extend_from_slice(&h);
            out.extend_from_slice(end);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn generated_requests_the_lean_loop_serves_are_the_ones_hyper_serves(bytes in request()) {
        runtime().block_on(compare_request(&bytes, &mut RequestTally::default()));
    }

    #[test]
    fn generated_responses_get_the_same_framing_from_both(bytes in response(), head in proptest::bool::weighted(0.15)) {
        runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            compare_response(&listener, &bytes, head, &mut ResponseTally::default()).await;
        });
    }
}

#[test]
fn where_the_lean_path_differs_on_purpose_it_differs_exactly_so() {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for known in &KNOWN {
            let bytes = (known.bytes)();
            let lean = lean_answers(&listener, &bytes, false).await;
            let hyper = hyper_answers(&listener, &bytes, false).await;
            assert!(
                (known.lean)(&lean) && (known.hyper)(&hyper),
                "{}: {}\n  lean:  {lean:?}\n  hyper: {hyper:?}",
                known.name,
                known.why
            );
        }
    });
}

/// A chunked response whose chunks carry `extensions` extension bytes each, then `trailers`
/// bytes of trailer section.
fn chunked_with(extensions: &[usize], trailers: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for &n in extensions {
        out.extend_from_slice(b"1;");
        out.extend(std::iter::repeat_n(b'x', n));
        out.extend_from_slice(b"\r\nd\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    if trailers > 0 {
        // "X-T: " + value + CRLF CRLF is the whole section.
        out.extend_from_slice(b"X-T: ");
        out.extend(std::iter::repeat_n(b'v', trailers - 9));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A response with `lines` header lines in all, and a body.
fn with_header_lines(lines: usize, line_len: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n".to_vec();
    for i in 1..lines {
        let name = format!("X-{i}: ");
        out.extend_from_slice(name.as_bytes());
        out.extend(std::iter::repeat_n(
            b'v',
            line_len.saturating_sub(name.len() + 2),
        ));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\ngood");
    out
}

#[test]
fn the_limits_both_sides_share_agree_at_their_edges() {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut tally = ResponseTally::default();
        let half = 8 * 1024;
        let mut trailer_lines =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for i in 0..101 {
            trailer_lines.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
            if i == 99 {
                // 100 lines: taken by both.
                let mut taken = trailer_lines.clone();
                taken.extend_from_slice(b"\r\n");
                compare_response(&listener, &taken, false, &mut tally).await;
            }
        }
        trailer_lines.extend_from_slice(b"\r\n");
        let cases = [
            // Chunk extensions: 16 KiB less one byte over the body, then one more.
            chunked_with(&[half, half - 1], 0),
            chunked_with(&[half, half], 0),
            chunked_with(&[3 * half], 0),
            // Trailer sections: 16 KiB less one byte, then exactly 16 KiB.
            chunked_with(&[], 16 * 1024 - 1),
            chunked_with(&[], 16 * 1024),
            trailer_lines,
            // Header lines: 100, then 101.
            with_header_lines(100, 10),
            with_header_lines(101, 10),
            // Response heads: 60 KiB, then 100 KiB.
            with_header_lines(60, 1024),
            with_header_lines(99, 1024),
            // Content-Length: hyper's largest, then one more.
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551613\r\n\r\ngood".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551614\r\n\r\ngood".to_vec(),
        ];
        for bytes in &cases {
            compare_response(&listener, bytes, false, &mut tally).await;
        }
        assert_eq!(tally.same, cases.len() + 1, "{tally:?}");
        assert_eq!(
            tally.refused + tally.cut_off,
            7,
            "each limit refuses past its edge: {tally:?}"
        );
    });
}
