//! Request paths made canonical before routing and policy (finding H4), so that a path the
//! backend would read as `/admin` is matched, and allowed or refused, as `/admin`.
//!
//! The rule (RFC 3986 §6.2.2 and §5.2.4, as Envoy's `normalize_path` + `merge_slashes`):
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every
//!   other escape is kept, its hex digits upper-cased; a malformed escape is refused;
//! - `%2F` and `%5C` (an encoded `/` or `\`), a raw `\` and `%00` are refused: backends
//!   disagree on whether they separate segments, so no reading of them is safe;
//! - empty segments are merged (`//` is `/`); `.` and `..` segments are removed, `..` never
//!   climbing above the root; a segment whose name (the part before `;`) is `.` or `..`
//!   counts as one, as Tomcat reads `/..;x/`;
//! - path parameters (`;` to the end of a segment) stay in the forwarded path but are left
//!   out of the path routes match ([`without_params`]), so `/admin;jsessionid=1` matches
//!   `/admin` as a backend that strips them will read it;
//! - case is kept: Ingress paths are case-sensitive (regex paths are case-insensitive).
//!
//! Nothing is allocated for a path that is already canonical (the common case).

use std::borrow::Cow;

/// Why a request path is refused with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("an encoded '/' or '\\' in the path")]
    EncodedSeparator,
    #[error("a '\\' in the path")]
    Backslash,
    #[error("an encoded NUL in the path")]
    Nul,
}

/// The path to route and forward: `path` itself when it is already canonical.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_canonical(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(resolve_segments(&decoded, |segment| segment)))
}

/// The path routes match: a canonical `path` with each segment's parameters left out and
/// the segments they leave empty merged (`/;x/admin` is `/admin`).
pub(crate) fn without_params(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    Cow::Owned(resolve_segments(path, segment_name))
}

/// One scan: no escape, no backslash, no empty segment and no dot segment (also `.;x`).
fn is_canonical(path: &[u8]) -> bool {
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            // Only an escape decoding would leave as it is: upper-case hex, not unreserved.
            b'%' => match (path.get(i + 1), path.get(i + 2)) {
                (Some(&hi), Some(&lo)) if is_upper_hex(hi) && is_upper_hex(lo) => {
                    let byte = hex(hi).unwrap_or(0) << 4 | hex(lo).unwrap_or(0);
                    if is_unreserved(byte) || matches!(byte, b'/' | b'\\' | 0) {
                        return false;
                    }
                    i += 2;
                }
                _ => return false,
            },
            b'\\' => return false,
            b'/' => {
                let next = path.get(i + 1).copied();
                if next == Some(b'/') {
                    return false;
                }
                if next == Some(b'.') {
                    let rest = &path[i + 2..];
                    let rest = rest.strip_prefix(b".").unwrap_or(rest);
                    if matches!(rest.first(), None | Some(b'/' | b';')) {
                        return false;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    true
}

/// Unreserved escapes decoded, the rest upper-cased; separators and NUL refused. Not the
/// `percent-encoding` crate's decoder (in the lock file): it decodes every escape, `%2F`
/// into a separator, and passes a malformed one through, where this rule keeps most escapes
/// as sent and refuses the malformed.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                out.push_str(&path[copied..i]);
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    b if is_unreserved(b) => {
                        out.push(char::from(b));
                    }
                    b => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(char::from(HEX[usize::from(b >> 4)]));
                        out.push(char::from(HEX[usize::from(b & 0xf)]));
                    }
                }
                i += 3;
                copied = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&path[copied..]);
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// A segment without its parameters.
fn segment_name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// `path` (starting with `/`) rebuilt from its segments as `keep` presents them: empty ones
/// merged, `.` and `..` (by name) resolved; a trailing `/` (or a final dot segment) kept as
/// a trailing `/`.
fn resolve_segments<'a>(path: &'a str, keep: impl Fn(&'a str) -> &'a str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let segments = path[1..].split('/');
    for segment in segments {
        let name = segment_name(segment);
        let shown = keep(segment);
        trailing_slash = false;
        if name == ".." {
            kept.pop();
            trailing_slash = true;
        } else if name == "." || shown.is_empty() {
            trailing_slash = true;
        } else {
            kept.push(shown);
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    fn matched(p: &str) -> String {
        without_params(&normalize(p).unwrap()).into_owned()
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/.well-known/acme",
            "/a.b/..c/c..",
            "/a;b=c",
            "/~x",
            "/caf%C3%A9",
            "/a%20b",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn the_review_bypasses_all_become_admin_or_are_refused() {
        assert_eq!(matched("/x/../admin"), "/admin");
        assert_eq!(matched("/%2e%2e/admin"), "/admin");
        assert_eq!(matched("/%2E%2E/admin"), "/admin");
        assert_eq!(matched("//admin"), "/admin");
        assert_eq!(matched("/%61dmin"), "/admin");
        assert_eq!(matched("/admin;jsessionid=1"), "/admin");
        assert_eq!(matched("/public/..;/admin"), "/admin");
        assert_eq!(matched("/;x/admin"), "/admin");
        assert_eq!(matched("/./admin/./"), "/admin/");
        assert_eq!(norm("/admin%2Fx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/admin%2fx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/admin%5cx"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/admin\\x"), Err(PathError::Backslash));
        assert_eq!(norm("/a%00"), Err(PathError::Nul));
        // Case is kept: Ingress paths are case-sensitive.
        assert_eq!(norm("/ADMIN").unwrap(), "/ADMIN");
    }

    #[test]
    fn rfc3986_dot_segment_examples() {
        // RFC 3986 §5.2.4 and §5.4.2, with the root never climbed above.
        assert_eq!(norm("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(norm("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(norm("/../../g").unwrap(), "/g");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/a//b///").unwrap(), "/a/b/");
    }

    #[test]
    fn escapes_are_decoded_only_when_unreserved() {
        assert_eq!(norm("/%7euser/%41%2d").unwrap(), "/~user/A-");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(
            norm("/a%3bb").unwrap(),
            "/a%3Bb",
            "an encoded ';' is not a parameter"
        );
        assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn parameters_are_kept_for_the_backend_and_ignored_for_matching() {
        assert_eq!(norm("/a;v=1/b").unwrap(), "/a;v=1/b");
        assert_eq!(without_params("/a;v=1/b;x"), "/a/b");
        assert_eq!(without_params("/a/;x"), "/a/");
        assert_eq!(without_params("/;x"), "/");
        assert!(matches!(without_params("/a/b"), Cow::Borrowed(_)));
    }

    /// Paths built from the pieces that matter: separators, dots, escapes, parameters.
    fn path_strategy() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/"),
            Just("."),
            Just(".."),
            Just(";"),
            Just("a"),
            Just("B"),
            Just("%2e"),
            Just("%2E"),
            Just("%41"),
            Just("%c3"),
            Just("%3B"),
            Just("%7e"),
            Just("="),
            Just("%"),
            Just("%2f"),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent_and_canonical(path in path_strategy()) {
            if let Ok(once) = normalize(&path) {
                let twice = normalize(&once).expect("a normal path stays valid");
                prop_assert_eq!(&*twice, &*once);
                prop_assert!(matches!(twice, Cow::Borrowed(_)), "canonical is borrowed: {}", once);
                for out in [&*once, &*without_params(&once)] {
                    prop_assert!(out.starts_with('/'), "{}", out);
                    prop_assert!(!out.contains("//"), "{}", out);
                    prop_assert!(!out.contains("/./") && !out.contains("/../"), "{}", out);
                    prop_assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{}", out);
                }
                let matched = without_params(&once);
                prop_assert_eq!(&*without_params(&matched), &*matched);
                prop_assert!(!matched.contains(';'));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(path in "/[ -~]{0,40}") {
            if let Ok(once) = normalize(&path) {
                prop_assert_eq!(&*normalize(&once).unwrap(), &*once);
            }
        }
    }
}
