//! Message framing (RFC 9112 §6): the one `Framing` both sides of the lean path use, the rule
//! that some responses have no body whatever their headers say, and the `Decoder` that reads
//! a body's frames off the front of a read buffer. Pure: no IO here, the caller reads and
//! hands over what it read (as hyper's `proto::h1::decode` does with its `MemRead`).

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Frame, SizeHint};

use super::head::MAX_RESPONSE_HEADERS;

/// Chunk extension bytes (after each `;`) one body may carry in all; the byte that reaches
/// this is refused, as hyper's decoder refuses it.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
/// A trailer section (CRLFs included) this long or longer is refused, as hyper refuses it.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// A chunk-size line longer than this is refused, complete or not: lines are parsed whole
/// from the buffer, so they are bounded. Room for all the extension bytes hyper allows; only
/// padding hyper streams past byte by byte (leading zeros, spaces) gets refused here.
const MAX_CHUNK_LINE: usize = 32 * 1024;

/// How a message body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: HEAD, 1xx, 204, 304 whatever the headers say, or a body already read.
    Empty,
    Length(u64),
    Chunked,
    /// The body runs to the connection's close (a response without length or chunking).
    UntilClose,
}

/// Responses that never have a body, whatever their headers say (RFC 9112 §6.3 rules 1-2):
/// to a HEAD request, 1xx, 204, 304.
pub(crate) fn bodyless(head_request: bool, status: StatusCode) -> bool {
    head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

#[derive(Clone, Copy, Debug)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// What the decoder made of the bytes it was given.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A data or trailers frame; the body may be complete after it (`Decoder::is_end`).
    Frame(Frame<Bytes>),
    /// The body is complete, with no frame left to give.
    End,
    /// Nothing can be decoded until more bytes arrive.
    More,
}

/// Reads a body off the front of a buffer as its framing says, consuming exactly the body's
/// bytes: what is left in the buffer after the end belongs to the next message.
#[derive(Debug)]
pub(crate) struct Decoder {
    framing: Framing,
    chunk: ChunkState,
    /// Chunk extension bytes seen so far in this body.
    extension_bytes: u64,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let framing = match framing {
            Framing::Length(0) => Framing::Empty,
            other => other,
        };
        Self {
            framing,
            chunk: ChunkState::Size,
            extension_bytes: 0,
        }
    }

    /// The body is complete (or was given up on): nothing more will be decoded.
    #[inline]
    pub(crate) fn is_end(&self) -> bool {
        self.framing == Framing::Empty
    }

    /// Stops decoding: the body ends here (after an error, or at the close).
    #[inline]
    pub(crate) fn end(&mut self) {
        self.framing = Framing::Empty;
    }

    #[inline]
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Chunked | Framing::UntilClose => SizeHint::default(),
        }
    }

    /// Decodes the next frame from the front of `buf`, or why the bytes cannot be this body.
    /// (Inlined into the body's `poll_frame`, where it runs once per frame.)
    #[inline]
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        match self.framing {
            Framing::Empty => Ok(Decoded::End),
            _ if buf.is_empty() => Ok(Decoded::More),
            Framing::Length(remaining) => {
                let n = remaining.min(buf.len() as u64) as usize;
                let data = buf.split_to(n).freeze();
                let left = remaining - n as u64;
                self.framing = if left == 0 {
                    Framing::Empty
                } else {
                    Framing::Length(left)
                };
                Ok(Decoded::Frame(Frame::data(data)))
            }
            Framing::UntilClose => Ok(Decoded::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked => self.decode_chunked(buf),
        }
    }

    /// The peer closed the connection: fine only for a body that runs to the close.
    pub(crate) fn eof(&mut self) -> Result<(), &'static str> {
        let framing = self.framing;
        self.end();
        match framing {
            Framing::Empty | Framing::UntilClose => Ok(()),
            Framing::Length(_) => Err("closed before the body's end"),
            Framing::Chunked => Err("closed inside a chunked body"),
        }
    }

    fn decode_chunked(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.chunk {
                ChunkState::Size => match chunk_size_line(buf)? {
                    Some((_, len)) if len > MAX_CHUNK_LINE => {
                        return Err("chunk size line too long");
                    }
                    Some((size, len)) => {
                        self.extension_bytes += extension_bytes(&buf[..len]);
                        if self.extension_bytes >= MAX_EXTENSION_BYTES {
                            return Err("chunk extensions over 16 KiB");
                        }
                        buf.advance(len);
                        self.chunk = if size == 0 {
                            ChunkState::Trailers
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    None if buf.len() > MAX_CHUNK_LINE => return Err("chunk size line too long"),
                    None => return Ok(Decoded::More),
                },
                ChunkState::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = remaining.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    let left = remaining - n as u64;
                    self.chunk = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF");
                    }
                    buf.advance(2);
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailers => return self.decode_trailers(buf),
            }
        }
    }

    fn decode_trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.end();
            return Ok(Decoded::End);
        }
        let Some(end) = find(buf, b"\r\n\r\n") else {
            // The section, still open, is already longer than the buffer.
            if buf.len() >= MAX_TRAILER_BYTES {
                return Err("trailers too large");
            }
            return Ok(Decoded::More);
        };
        if end + 4 >= MAX_TRAILER_BYTES {
            return Err("trailers too large");
        }
        let section = buf.split_to(end + 4);
        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
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
            _ => return Err("malformed trailers"),
        }
        self.end();
        Ok(Decoded::Frame(Frame::trailers(trailers)))
    }
}

/// The extension bytes of a complete chunk-size line: those after its first `;`, before CR.
fn extension_bytes(line: &[u8]) -> u64 {
    let content = &line[..line.len() - 2];
    content
        .iter()
        .position(|&b| b == b';')
        .map_or(0, |at| (content.len() - at - 1) as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Every frame of `wire` decoded in one go, then whether the close ends it well.
    fn decode_all(framing: Framing, wire: &[u8]) -> (Vec<u8>, bool, Result<(), &'static str>) {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::from(wire);
        let mut body = Vec::new();
        let mut trailers = false;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Frame(frame)) => match frame.into_data() {
                    Ok(data) => body.extend_from_slice(&data),
                    Err(_) => trailers = true,
                },
                Ok(Decoded::End) => return (body, trailers, Ok(())),
                Ok(Decoded::More) => return (body, trailers, decoder.eof()),
                Err(why) => return (body, trailers, Err(why)),
            }
        }
    }

    #[test]
    fn bodies_end_where_their_framing_says_and_not_a_byte_later() {
        let mut buf = BytesMut::from(&b"abcdeNEXT"[..]);
        let mut decoder = Decoder::new(Framing::Length(5));
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Frame(_))));
        assert!(decoder.is_end());
        assert_eq!(&buf[..], b"NEXT", "the next message's bytes stay");

        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT"[..]);
        let mut decoder = Decoder::new(Framing::Chunked);
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Frame(f)) if f.is_data()));
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Frame(f)) if f.is_trailers()));
        assert!(decoder.is_end());
        assert_eq!(&buf[..], b"NEXT");

        assert_eq!(
            decode_all(Framing::Chunked, b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            (b"abc".to_vec(), false, Ok(()))
        );
        assert_eq!(
            decode_all(Framing::UntilClose, b"all of it"),
            (b"all of it".to_vec(), false, Ok(()))
        );
        assert!(Decoder::new(Framing::Length(0)).is_end());
        // Cut short: the close is an error for every framing but the close's own.
        assert_eq!(
            decode_all(Framing::Length(5), b"abc").2,
            Err("closed before the body's end")
        );
        assert_eq!(
            decode_all(Framing::Chunked, b"3\r\nabc\r\n").2,
            Err("closed inside a chunked body")
        );
        assert_eq!(
            decode_all(Framing::Chunked, b"3\r\nabcX\r\n").2,
            Err("chunk not followed by CRLF")
        );
        assert_eq!(
            decode_all(Framing::Chunked, b"0\r\nBad Trailer\r\n\r\n").2,
            Err("malformed trailers")
        );
        // A line longer than the limit is refused, still open or complete.
        let zeros = [&[b'0'; MAX_CHUNK_LINE][..], b"5"].concat();
        assert_eq!(
            decode_all(Framing::Chunked, &zeros).2,
            Err("chunk size line too long")
        );
        let line = [&zeros[..], b"\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(
            decode_all(Framing::Chunked, &line).2,
            Err("chunk size line too long")
        );
        // Extension bytes count over the whole body, up to hyper's limit exactly.
        let chunk = |ext: usize| [b"1;".as_slice(), &vec![b'x'; ext], b"\r\nd\r\n"].concat();
        let body = |exts: &[usize]| {
            let chunks: Vec<u8> = exts.iter().flat_map(|&e| chunk(e)).collect();
            [&chunks[..], b"0\r\n\r\n"].concat()
        };
        let limit = MAX_EXTENSION_BYTES as usize;
        assert_eq!(
            decode_all(Framing::Chunked, &body(&[limit / 2, limit / 2 - 1])).2,
            Ok(())
        );
        assert_eq!(
            decode_all(Framing::Chunked, &body(&[limit / 2, limit / 2])),
            (b"d".to_vec(), false, Err("chunk extensions over 16 KiB"))
        );
        // Trailers: a section of 16 KiB less one byte is taken, not one byte more.
        let trailers = |len: usize| {
            let line = [b"X-T: ".as_slice(), &vec![b'v'; len - 9], b"\r\n\r\n"].concat();
            [b"0\r\n".as_slice(), &line].concat()
        };
        assert_eq!(
            decode_all(Framing::Chunked, &trailers(MAX_TRAILER_BYTES - 1)),
            (Vec::new(), true, Ok(()))
        );
        assert_eq!(
            decode_all(Framing::Chunked, &trailers(MAX_TRAILER_BYTES)).2,
            Err("trailers too large")
        );
    }

    #[test]
    fn some_responses_have_no_body_whatever_their_headers_say() {
        for (head_request, status) in [
            (true, StatusCode::OK),
            (false, StatusCode::CONTINUE),
            (false, StatusCode::SWITCHING_PROTOCOLS),
            (false, StatusCode::NO_CONTENT),
            (false, StatusCode::NOT_MODIFIED),
        ] {
            assert!(bodyless(head_request, status), "{head_request} {status}");
        }
        assert!(!bodyless(false, StatusCode::OK));
        assert!(!bodyless(false, StatusCode::NOT_FOUND));
    }
}
