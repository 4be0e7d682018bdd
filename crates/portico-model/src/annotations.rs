//! Per-Ingress behaviour from annotations, read under `nginx.ingress.kubernetes.io/` (so that
//! Ingresses written for ingress-nginx work unchanged) and under `portico.dev/`, which wins
//! when both are set.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::problem::{Problem, ProblemReason};
use crate::route::{BackendProtocol, CookieAffinity, RewriteTarget, RoutePolicy};

pub const NGINX_PREFIX: &str = "nginx.ingress.kubernetes.io/";
pub const PORTICO_PREFIX: &str = "portico.dev/";
/// The legacy way to name an Ingress's class.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// What the annotations of one Ingress say.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct IngressAnnotations {
    pub policy: RoutePolicy,
    /// `use-regex`: every path of this Ingress is a regular expression.
    pub use_regex: bool,
}

/// Reads the annotations; every invalid value is one problem naming its annotation.
pub(crate) fn parse(annotations: &BTreeMap<String, String>) -> (IngressAnnotations, Vec<Problem>) {
    let mut reader = Reader {
        annotations,
        problems: Vec::new(),
    };
    let mut policy = RoutePolicy::default();
    let use_regex = reader.parse("use-regex", parse_bool).unwrap_or(false);
    if let Some(target) = reader.parse("rewrite-target", RewriteTarget::parse) {
        policy.rewrite_target = Some(target);
    }
    policy.ssl_redirect = reader.parse("ssl-redirect", parse_bool);
    policy.force_ssl_redirect = reader
        .parse("force-ssl-redirect", parse_bool)
        .unwrap_or(false);
    if let Some(protocol) = reader.parse("backend-protocol", parse_backend_protocol) {
        policy.backend_protocol = protocol;
    }
    if let Some(size) = reader.parse("proxy-body-size", parse_size) {
        policy.max_body_bytes = (size > 0).then_some(size);
    }
    if let Some(t) = reader.parse("proxy-connect-timeout", parse_timeout) {
        policy.connect_timeout = t;
    }
    if let Some(t) = reader.parse("proxy-read-timeout", parse_timeout) {
        policy.read_timeout = t;
    }
    if let Some(t) = reader.parse("proxy-send-timeout", parse_timeout) {
        policy.send_timeout = t;
    }
    // ingress-nginx renamed whitelist-source-range to allowlist-source-range; take both.
    let allowlist = reader
        .parse("allowlist-source-range", parse_source_ranges)
        .or_else(|| reader.parse("whitelist-source-range", parse_source_ranges));
    policy.allowed_sources = allowlist;
    if let Some(()) = reader.parse("affinity", parse_affinity) {
        let cookie_name = reader
            .parse("session-cookie-name", parse_cookie_name)
            .unwrap_or_else(|| "INGRESSCOOKIE".to_owned());
        policy.affinity = Some(CookieAffinity { cookie_name });
    }
    let problems = reader.problems;
    (IngressAnnotations { policy, use_regex }, problems)
}

struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// The parsed value of `portico.dev/NAME`, else `nginx.ingress.kubernetes.io/NAME`.
    fn parse<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
        let (key, value) = [PORTICO_PREFIX, NGINX_PREFIX].iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            self.annotations.get(&key).map(|v| (key, v))
        })?;
        match parse(value.trim()) {
            Ok(v) => Some(v),
            Err(why) => {
                self.problems.push(Problem::new(
                    format!("metadata.annotations[{key}]"),
                    ProblemReason::InvalidAnnotation,
                    format!("invalid value {value:?} for annotation {key}: {why}"),
                ));
                None
            }
        }
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected \"true\" or \"false\"".into()),
    }
}

fn parse_backend_protocol(v: &str) -> Result<BackendProtocol, String> {
    match v.to_ascii_uppercase().as_str() {
        "HTTP" => Ok(BackendProtocol::Http),
        "HTTPS" => Ok(BackendProtocol::Https),
        "GRPC" | "H2C" => Ok(BackendProtocol::H2c),
        "GRPCS" => Ok(BackendProtocol::Grpcs),
        _ => Err("supported values: HTTP, HTTPS, GRPC, GRPCS, H2C".into()),
    }
}

/// nginx's size syntax: a number of bytes with an optional `k`, `m` or `g` suffix.
pub(crate) fn parse_size(v: &str) -> Result<u64, String> {
    let (digits, unit) = match v.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => v.split_at(i),
        None => (v, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a size such as 8m, 512k or 1g".to_owned())?;
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err("expected a size such as 8m, 512k or 1g".into()),
    };
    n.checked_mul(scale)
        .ok_or_else(|| "size too large".to_owned())
}

/// Seconds as ingress-nginx writes them (`60`), or with a unit: `500ms`, `30s`, `2m`.
pub(crate) fn parse_timeout(v: &str) -> Result<Duration, String> {
    const MAX: Duration = Duration::from_secs(24 * 60 * 60);
    let bad = || "expected seconds (60) or a duration with a unit (500ms, 30s, 2m)".to_owned();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err("a timeout must be greater than zero".into());
    }
    if d > MAX {
        return Err("a timeout may be at most 24h".into());
    }
    Ok(d)
}

/// A comma-separated list of CIDRs or single addresses.
fn parse_source_ranges(v: &str) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net.trunc(),
            Err(_) => match item.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => return Err(format!("{item:?} is not a CIDR or an IP address")),
            },
        };
        nets.push(net);
    }
    if nets.is_empty() {
        return Err("expected at least one CIDR".into());
    }
    Ok(nets)
}

fn parse_affinity(v: &str) -> Result<(), String> {
    match v {
        "cookie" => Ok(()),
        _ => Err("the only supported affinity is \"cookie\"".into()),
    }
}

fn parse_cookie_name(v: &str) -> Result<String, String> {
    // RFC 6265 cookie-name is an RFC 7230 token.
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !v.is_empty() && v.chars().all(is_tchar) {
        Ok(v.to_owned())
    } else {
        Err("a cookie name must be a non-empty HTTP token".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{NGINX_PREFIX}{k}"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_follow_ingress_nginx() {
        let (a, problems) = parse(&BTreeMap::new());
        assert!(problems.is_empty());
        assert_eq!(a.policy, RoutePolicy::default());
        assert_eq!(a.policy.max_body_bytes, Some(1 << 20));
    }

    #[test]
    fn every_annotation_is_read() {
        let (a, problems) = parse(&annotations(&[
            ("use-regex", "true"),
            ("rewrite-target", "/$1"),
            ("ssl-redirect", "false"),
            ("force-ssl-redirect", "true"),
            ("backend-protocol", "GRPC"),
            ("proxy-body-size", "8m"),
            ("proxy-connect-timeout", "3"),
            ("proxy-read-timeout", "120s"),
            ("proxy-send-timeout", "500ms"),
            ("whitelist-source-range", "10.0.0.0/8, 192.168.1.1,::1"),
            ("affinity", "cookie"),
            ("session-cookie-name", "route"),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        let p = &a.policy;
        assert!(a.use_regex);
        assert_eq!(p.rewrite_target.as_ref().unwrap().as_written(), "/$1");
        assert_eq!(p.ssl_redirect, Some(false));
        assert!(p.force_ssl_redirect);
        assert_eq!(p.backend_protocol, BackendProtocol::H2c);
        assert_eq!(p.max_body_bytes, Some(8 << 20));
        assert_eq!(p.connect_timeout, Duration::from_secs(3));
        assert_eq!(p.read_timeout, Duration::from_secs(120));
        assert_eq!(p.send_timeout, Duration::from_millis(500));
        assert_eq!(p.allowed_sources.as_ref().unwrap().len(), 3);
        assert!(p.allows_source("10.1.2.3".parse().unwrap()));
        assert!(!p.allows_source("11.1.2.3".parse().unwrap()));
        assert!(p.allows_source("::ffff:192.168.1.1".parse().unwrap()));
        assert_eq!(p.affinity.as_ref().unwrap().cookie_name, "route");
    }

    #[test]
    fn portico_prefix_wins() {
        let mut a = annotations(&[("proxy-body-size", "1m")]);
        a.insert("portico.dev/proxy-body-size".into(), "2m".into());
        assert_eq!(parse(&a).0.policy.max_body_bytes, Some(2 << 20));
    }

    #[test]
    fn zero_body_size_is_unlimited() {
        let (a, _) = parse(&annotations(&[("proxy-body-size", "0")]));
        assert_eq!(a.policy.max_body_bytes, None);
    }

    #[test]
    fn invalid_values_name_their_annotation() {
        for (name, value) in [
            ("proxy-body-size", "lots"),
            ("proxy-body-size", "8x"),
            ("proxy-read-timeout", "0"),
            ("proxy-read-timeout", "soon"),
            ("whitelist-source-range", "10.0.0.0/33"),
            ("whitelist-source-range", "not-an-ip"),
            ("backend-protocol", "FCGI"),
            ("ssl-redirect", "yes"),
            ("use-regex", "1"),
            ("affinity", "ip"),
            ("rewrite-target", ""),
        ] {
            let (_, problems) = parse(&annotations(&[(name, value)]));
            assert_eq!(problems.len(), 1, "{name}={value}");
            let p = &problems[0];
            assert_eq!(p.reason, ProblemReason::InvalidAnnotation);
            assert_eq!(
                p.field,
                format!("metadata.annotations[{NGINX_PREFIX}{name}]")
            );
            assert!(p.message.contains(name), "{}", p.message);
        }
    }
}
