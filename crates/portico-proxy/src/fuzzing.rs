//! Entry points for the fuzz targets in `fuzz/` (issue 14): thin wrappers over the request
//! head path's private functions, so the targets run the code the proxy runs. Not an API:
//! hidden from the docs, and free to change with the targets.

use std::borrow::Cow;

use bytes::BytesMut;

use crate::h1::{decode, head};
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
