//! Host names: the hosts Ingress rules name, and the hosts requests carry.

use std::sync::Arc;

/// Where an Ingress rule applies, by its `host`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum HostKey {
    /// `foo.bar.com`, lower case.
    Exact(Arc<str>),
    /// `*.bar.com`, stored as the suffix `bar.com`.
    Wildcard(Arc<str>),
    /// No host: every request whose host no other rule names.
    Any,
}

impl HostKey {
    pub(crate) fn from_rule(host: Option<&str>) -> Self {
        match host.map(normalize_rule_host) {
            None => HostKey::Any,
            Some(h) if h.is_empty() => HostKey::Any,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => HostKey::Wildcard(suffix.into()),
                None => HostKey::Exact(h.into()),
            },
        }
    }

    /// The host as a TLS `hosts` entry would name it.
    pub(crate) fn tls_name(&self) -> Option<String> {
        match self {
            HostKey::Exact(h) => Some(h.to_string()),
            HostKey::Wildcard(s) => Some(format!("*.{s}")),
            HostKey::Any => None,
        }
    }
}

fn normalize_rule_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The longest DNS name is 253 characters; a longer Host header cannot match a rule.
pub(crate) const MAX_HOST_LEN: usize = 253;

/// Reduces a request's `Host` (or `:authority`, or SNI) to the name rules are keyed by: lower
/// case, without port or trailing dot, written into `buf` so the hot path does not allocate.
/// `None` when the host cannot match any named rule (too long, or not text).
pub(crate) fn normalize_request_host<'b>(
    host: &str,
    buf: &'b mut [u8; MAX_HOST_LEN],
) -> Option<&'b str> {
    let name = strip_port(host);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let out = &mut buf[..name.len()];
    out.copy_from_slice(name.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal: `[::1]:443`.
        return rest.split_once(']').map_or(host, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The parent of a name for wildcard lookup: `bar.foo.com` → `foo.com`. A wildcard covers
/// exactly one label, so this is the only suffix that can match.
pub(crate) fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// Whether a certificate SAN (`foo.com` or `*.foo.com`, lower case) covers a host name.
pub(crate) fn san_matches(san: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match san.strip_prefix("*.") {
        Some(suffix) => wildcard_suffix(host).is_some_and(|s| s.eq_ignore_ascii_case(suffix)),
        None => san.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(host: &str) -> Option<String> {
        let mut buf = [0; MAX_HOST_LEN];
        normalize_request_host(host, &mut buf).map(str::to_owned)
    }

    #[test]
    fn request_hosts_are_normalized() {
        assert_eq!(norm("Foo.Bar.com:8080").as_deref(), Some("foo.bar.com"));
        assert_eq!(norm("foo.bar.com.").as_deref(), Some("foo.bar.com"));
        assert_eq!(norm("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(norm("").as_deref(), None);
        assert_eq!(norm(&"a".repeat(300)), None);
    }

    #[test]
    fn wildcard_covers_one_label() {
        assert!(san_matches("*.foo.com", "bar.foo.com"));
        assert!(!san_matches("*.foo.com", "foo.com"));
        assert!(!san_matches("*.foo.com", "a.b.foo.com"));
        assert!(san_matches("foo.com", "FOO.com"));
    }
}
