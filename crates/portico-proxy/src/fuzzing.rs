//! Entry points for the fuzz targets in `fuzz/` (issue 14) and the differential test against
//! hyper (`tests/h1_differential.rs`, issue 17): thin wrappers over the request head path's
//! private functions, so they run the code the proxy runs. Not an API: hidden from the docs,
//! and free to change with their users.

use std::borrow::Cow;

use bytes::BytesMut;
use http::Method;
use http_body_util::BodyExt as _;
use tokio::net::TcpStream;

use crate::h1::{client, decode, head};
use crate::request_path;

/// The canonical path routing and policy see, or why it is refused (400).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, String> {
    request_path::normalize(path).map_err(|e| e.to_string())
}

/// The path routes match: a canonical path without its segments' parameters.
pub fn path_for_matching(path: &str) -> Cow<'_, str> {
    request_path::without_params(path)
}

/// A request the lean HTTP/1.1 loop serves itself.
#[derive(Debug)]
pub struct LeanRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The lean loop's verdict on what one read put in `buf`: the request it serves itself, or
/// `None` when it hands the connection to hyper. `buf` is left with what was not consumed.
pub fn lean_request(buf: &mut BytesMut, max_header_bytes: usize) -> Option<LeanRequest> {
    let req = head::parse_request(buf, max_header_bytes)?;
    Some(LeanRequest {
        method: req.method().as_str().to_owned(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    })
}

/// An upstream response head as the lean upstream path reads it, with its framing facts.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub http11: bool,
    /// The header lines kept for the client (hop-by-hop ones left out).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The Content-Length the raw lines agree on (`None`: absent or invalid).
    pub content_length: Option<u64>,
    /// The same read off the kept header map.
    pub map_content_length: Option<u64>,
    /// `None` without Transfer-Encoding, else whether chunked is the final coding.
    pub transfer_chunked: Option<bool>,
    pub close: bool,
    pub stripped: bool,
}

/// Parses a response head off the front of `buf` (`Ok(None)`: more bytes needed).
pub fn response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let Some((status, version, headers, facts)) =
        head::parse_response_head(buf).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    Ok(Some(ResponseHead {
        status: status.as_u16(),
        http11: version == http::Version::HTTP_11,
        map_content_length: head::content_length(&headers),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
        content_length: facts.content_length(),
        transfer_chunked: facts.transfer_chunked(),
        close: facts.close,
        stripped: facts.stripped,
    }))
}

/// A chunk-size line at the front of `buf`: its size and length, `None` while incomplete.
pub fn chunk_size_line(buf: &[u8]) -> Result<Option<(u64, usize)>, &'static str> {
    decode::chunk_size_line(buf)
}

/// What the lean upstream exchange made of a response, read to the body's end.
#[derive(Debug)]
pub struct LeanResponse {
    pub status: u16,
    /// The body's length when the framing says it (Content-Length, or none at all).
    pub exact_length: Option<u64>,
    /// Every body byte delivered, up to the end or the error.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Why the body was cut off (the client sees a truncated response), if it was.
    pub body_error: Option<String>,
}

/// Sends a bodiless request (HEAD when `head`, else GET) on `stream` and reads the response
/// as the lean upstream path does: `Err` when it refuses the head (a 502 for the client).
pub async fn lean_exchange(stream: TcpStream, head: bool) -> Result<LeanResponse, String> {
    let (method, request): (Method, &[u8]) = if head {
        (Method::HEAD, b"HEAD / HTTP/1.1\r\nhost: test\r\n\r\n")
    } else {
        (Method::GET, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
    };
    let mut conn = client::Conn::new(stream);
    client::write_head(&mut conn, request)
        .await
        .map_err(|e| e.to_string())?;
    let resp = client::read_response(conn, &method, Box::new(drop))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut out = LeanResponse {
        status,
        exact_length: http_body::Body::size_hint(&body).exact(),
        body: Vec::new(),
        trailers: Vec::new(),
        body_error: None,
    };
    while let Some(frame) = body.frame().await {
        match frame {
            Err(e) => {
                out.body_error = Some(e.to_string());
                break;
            }
            Ok(frame) => match frame.into_data() {
                Ok(data) => out.body.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        out.trailers.extend(
                            trailers
                                .iter()
                                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec())),
                        );
                    }
                }
            },
        }
    }
    Ok(out)
}
