//! Header rules of a reverse proxy: hop-by-hop stripping, the `X-Forwarded-*` family,
//! request IDs, and the `Server`/`Date` headers added to responses that lack them.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop (RFC 9110 §7.6.1).
pub(crate) static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
];

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the names listed
/// in `Connection`. `keep_te_trailers` keeps `TE: trailers`, which gRPC over HTTP/2 needs.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // One pass over the few headers a message has finds which hop-by-hop names are there;
    // only those are removed (most messages carry none, or only `Connection: keep-alive`).
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // Names listed in `Connection` that this message carries (compared without parsing
        // or hashing: header names are few and stored lowercase).
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .filter_map(|token| {
                headers
                    .keys()
                    .find(|name| name.as_str().eq_ignore_ascii_case(token))
                    .cloned()
            })
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    let te_trailers = keep_te_trailers
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a client's header claims something only a proxy in front of us may say: where
/// the request came from, its scheme, host or original URL (`Forwarded`, `X-Forwarded-*`,
/// `X-Real-IP`, `True-Client-IP`, `X-Client-IP`, `X-Scheme`, `X-Original-URL`/`-URI`,
/// `X-Rewrite-URL`). Names are lowercase in a `HeaderMap`.
fn client_cannot_claim(name: &str) -> bool {
    // By length first: most headers are none of these.
    match name.len() {
        8 => name == "x-scheme",
        9 => name == "forwarded" || name == "x-real-ip",
        12.. if name.starts_with("x-forwarded-") => true,
        11 => name == "x-client-ip",
        13 => name == "x-rewrite-url",
        14 => name == "x-original-url" || name == "x-original-uri" || name == "true-client-ip",
        _ => false,
    }
}

/// Drops every header [`client_cannot_claim`]: the peer is not a trusted proxy, so what it
/// says about an earlier hop is not believed (finding L1). One pass over the names; nothing
/// is removed or allocated when there is none (most requests). The lean upstream path
/// leaves them out while writing the head instead ([`ForwardedValues::replaces`]).
fn strip_client_forwarding(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|name| client_cannot_claim(name.as_str()))
    {
        return;
    }
    let claimed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| client_cannot_claim(name.as_str()))
        .cloned()
        .collect();
    for name in claimed {
        headers.remove(name);
    }
}

/// What the backend is told about the client's connection.
pub(crate) struct Forwarded<'a> {
    /// The peer is a trusted proxy: its forwarding headers are believed and appended to.
    pub trusted: bool,
    pub client: IpAddr,
    pub proto: &'static str,
    pub host: &'a str,
    pub port: u16,
}

/// The value made for `key` last time on this thread, or a new one. Successive requests
/// mostly repeat the client, host and port (keep-alive, one listener), so this saves
/// formatting and an allocation per header; a miss costs one comparison more.
fn one_entry_cached<K, Q>(
    cell: &'static std::thread::LocalKey<RefCell<Option<(K, HeaderValue)>>>,
    key: &Q,
    make: impl FnOnce(&Q) -> Option<HeaderValue>,
) -> Option<HeaderValue>
where
    K: std::borrow::Borrow<Q> + 'static,
    Q: ?Sized + PartialEq + ToOwned<Owned = K>,
{
    cell.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some((k, v)) = slot.as_ref()
            && k.borrow() == key
        {
            return Some(v.clone());
        }
        let value = make(key)?;
        *slot = Some((key.to_owned(), value.clone()));
        Some(value)
    })
}

type OneEntry<K> = RefCell<Option<(K, HeaderValue)>>;

/// The `X-Forwarded-*` family, `X-Scheme` and `X-Real-IP` for one request, plus
/// `X-Request-ID` when it has none: inserted into the header map, or written straight into
/// the upstream request head by the lean HTTP/1.1 path (eight hashed insertions saved).
pub(crate) struct ForwardedValues {
    values: [Option<HeaderValue>; 8],
    /// The client's forwarding claims are believed (else they are left out).
    trusted: bool,
    /// Our `Via` entry ([`HopMarker`]), sent after any the request already has.
    via: Option<HeaderValue>,
}

/// In the order of [`ForwardedValues::values`]. `X-Scheme` and `X-Forwarded-Scheme` as
/// ingress-nginx sets them, for applications that read those.
static FORWARDED_NAMES: [&HeaderName; 8] = [
    &X_FORWARDED_FOR,
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &X_SCHEME,
    &X_FORWARDED_SCHEME,
    &X_REQUEST_ID,
];

impl ForwardedValues {
    /// Nothing to add (tests of the transport alone).
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self {
            values: Default::default(),
            trusted: true,
            via: None,
        }
    }

    /// With our `Via` entry, appended to the request's own (never replacing them).
    pub(crate) fn with_via(mut self, via: HeaderValue) -> Self {
        self.via = Some(via);
        self
    }

    /// Sets them in `headers`, replacing what the client sent (and, from a peer that is not
    /// trusted, dropping every forwarding claim it made).
    pub(crate) fn insert_into(self, headers: &mut HeaderMap) {
        if !self.trusted {
            strip_client_forwarding(headers);
        }
        headers.reserve(self.values.len());
        for (name, value) in FORWARDED_NAMES.iter().zip(self.values) {
            if let Some(value) = value {
                headers.insert((*name).clone(), value);
            }
        }
        if let Some(via) = self.via {
            headers.append(header::VIA, via);
        }
    }

    /// The values to send, by name (`Via` last, after the request's own entries).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        FORWARDED_NAMES
            .iter()
            .zip(&self.values)
            .filter_map(|(name, value)| Some((&**name, value.as_ref()?)))
            .chain(self.via.as_ref().map(|via| (&header::VIA, via)))
    }

    /// Whether the client's header `name` is left out: superseded by these values (the
    /// request ID only when the client sent none, and then there is nothing to supersede),
    /// or a forwarding claim from a peer that is not trusted (which covers every name here
    /// but the request ID, so one cheap test suffices).
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        if !self.trusted {
            return client_cannot_claim(name.as_str());
        }
        FORWARDED_NAMES
            .iter()
            .zip(&self.values)
            .any(|(n, v)| v.is_some() && *n == name)
    }
}

/// Appends the client to a trusted proxy's `X-Forwarded-For` (anyone else's is dropped) and
/// sets the rest of the family.
#[cfg(test)]
pub(crate) fn add_forwarded(headers: &mut HeaderMap, fwd: &Forwarded<'_>) {
    forwarded_values(headers, fwd).insert_into(headers);
}

/// The values [`ForwardedValues`] sets for a request with `headers` from `fwd`.
pub(crate) fn forwarded_values(headers: &HeaderMap, fwd: &Forwarded<'_>) -> ForwardedValues {
    thread_local! {
        static CLIENT: OneEntry<IpAddr> = const { RefCell::new(None) };
        static HOST: OneEntry<String> = const { RefCell::new(None) };
        static PORT: OneEntry<u16> = const { RefCell::new(None) };
    }
    // Every value here is an IP, a scheme, a validated host or a number: always valid.
    let client = one_entry_cached(&CLIENT, &canonical_ip(fwd.client), |ip| {
        HeaderValue::from_str(&ip.to_string()).ok()
    });
    // A trusted proxy's list, every line of it (several lines are one comma-joined list,
    // RFC 9110 §5.3), with the peer appended; anyone else's is not believed.
    let xff = client.as_ref().and_then(|client| {
        let mut joined = String::new();
        if fwd.trusted {
            for prior in headers.get_all(&X_FORWARDED_FOR) {
                // A line that is not text names no address: left out.
                let prior = prior.to_str().unwrap_or_default().trim();
                if !prior.is_empty() {
                    joined.push_str(prior);
                    joined.push_str(", ");
                }
            }
        }
        if joined.is_empty() {
            return Some(client.clone());
        }
        joined.push_str(client.to_str().unwrap_or_default());
        HeaderValue::from_str(&joined).ok()
    });
    let proto = HeaderValue::from_static(fwd.proto);
    ForwardedValues {
        values: [
            xff,
            client,
            Some(proto.clone()),
            one_entry_cached(&HOST, fwd.host, |h| HeaderValue::from_str(h).ok()),
            one_entry_cached(&PORT, &fwd.port, |p| Some(HeaderValue::from(*p))),
            Some(proto.clone()),
            Some(proto),
            (!headers.contains_key(&X_REQUEST_ID)).then(request_id),
        ],
        trusted: fwd.trusted,
        via: None,
    }
}

/// This cluster's `Via` entries (RFC 9110 §7.6.3), `<protocol> portico-<token>`, and the loop
/// rule they carry: a request that arrives with one has already been forwarded by a replica
/// of this cluster, so a backend leads back to us (an `ExternalName` or endpoint pointing at
/// our own listeners or Service). It is refused before routing, so a loop costs one hop, not
/// one per header byte until the request head outgrows its limit. Our entry is added after
/// hop-by-hop stripping, so nothing the client sends (`Connection: via`) keeps it off.
pub(crate) struct HopMarker {
    /// `portico-<token>`: the received-by of our entries.
    received_by: String,
    /// Our entry for a request received over HTTP/1.0, 1.1, 2 and 3.
    values: [HeaderValue; 4],
}

impl HopMarker {
    pub(crate) fn new(token: &crate::config::LoopToken) -> Self {
        let received_by = format!("portico-{token}");
        // A LoopToken is only letters, digits, '-', '.' and '_': always a valid value.
        let values = ["1.0", "1.1", "2", "3"].map(|protocol| {
            HeaderValue::from_str(&format!("{protocol} {received_by}"))
                .expect("a loop token is a valid header value")
        });
        Self {
            received_by,
            values,
        }
    }

    /// Our entry for a request received as `version`.
    pub(crate) fn value(&self, version: http::Version) -> &HeaderValue {
        let i = match version {
            http::Version::HTTP_09 | http::Version::HTTP_10 => 0,
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_3 => 3,
            _ => 1,
        };
        &self.values[i]
    }

    /// Whether one of the request's `Via` entries is ours. Any word of any `Via` line counts
    /// (comments included): a request wrongly taken for a loop is only ever the sender's own.
    pub(crate) fn seen_in(&self, headers: &HeaderMap) -> bool {
        let ours = self.received_by.as_bytes();
        headers.get_all(header::VIA).iter().any(|line| {
            line.as_bytes()
                .split(|b| matches!(b, b',' | b' ' | b'\t' | b'(' | b')'))
                .any(|word| word.eq_ignore_ascii_case(ours))
        })
    }
}

/// IPv4 clients on a dual-stack socket appear as `::ffff:a.b.c.d`; report them as IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// 32 hex digits, unique per process and not guessable across processes: a counter mixed
/// (SplitMix64) with two per-process random keys from the standard library's hasher seed.
pub(crate) fn request_id() -> HeaderValue {
    static KEYS: LazyLock<(u64, u64)> = LazyLock::new(|| {
        let state = RandomState::new();
        let mut a = state.build_hasher();
        a.write_u8(1);
        let mut b = state.build_hasher();
        b.write_u8(2);
        (a.finish(), b.finish())
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (ka, kb) = *KEYS;
    let mut out = [0u8; 32];
    for (chunk, word) in out
        .chunks_mut(16)
        .zip([splitmix64(n ^ ka), splitmix64(n.wrapping_add(kb))])
    {
        for (i, byte) in chunk.iter_mut().enumerate() {
            let nibble = (word >> (60 - 4 * i)) & 0xf;
            *byte = b"0123456789abcdef"[nibble as usize];
        }
    }
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The current `Date` value, formatted once per second per thread.
pub(crate) fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        match &cache.1 {
            Some(v) if cache.0 == secs => v.clone(),
            _ => {
                let v = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                    .expect("an HTTP date is a valid header value");
                *cache = (secs, Some(v.clone()));
                v
            }
        }
    })
}

/// `Server` and `Date` when the backend (or our own error page) set none.
pub(crate) fn add_response_defaults(headers: &mut HeaderMap, server: &HeaderValue) {
    if !headers.contains_key(header::SERVER) {
        headers.insert(header::SERVER, server.clone());
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, http_date());
    }
}

/// The host a request names: `:authority` (HTTP/2, HTTP/3, absolute-form) or `Host`, held
/// without copying it (a cheap clone of the URI authority or of the `Host` header value),
/// so it outlives the request it came from.
pub(crate) enum RequestHost {
    Authority(http::uri::Authority),
    Header(HeaderValue),
    Missing,
}

impl RequestHost {
    pub(crate) fn of(uri: &http::Uri, headers: &HeaderMap) -> Self {
        if let Some(authority) = uri.authority() {
            return RequestHost::Authority(authority.clone());
        }
        match headers.get(header::HOST) {
            Some(v) if v.to_str().is_ok() => RequestHost::Header(v.clone()),
            _ => RequestHost::Missing,
        }
    }

    /// The host with any port, as received; `None` when there is none or it is not text.
    pub(crate) fn get(&self) -> Option<&str> {
        match self {
            RequestHost::Authority(a) => Some(a.as_str()),
            RequestHost::Header(v) => v.to_str().ok(),
            RequestHost::Missing => None,
        }
    }

    /// As [`RequestHost::get`], with `""` when there is none.
    pub(crate) fn as_str(&self) -> &str {
        self.get().unwrap_or("")
    }
}

/// Whether `host` parses as a URI authority without userinfo (`user@` names no host, RFC 9110
/// §4.2.4). The last valid value is remembered per thread: keep-alive clients repeat their
/// `Host`, and parsing copies it into a new allocation.
pub(crate) fn valid_authority(host: &str) -> bool {
    thread_local! {
        static LAST_VALID: RefCell<String> = const { RefCell::new(String::new()) };
    }
    LAST_VALID.with(|last| {
        let mut last = last.borrow_mut();
        if !last.is_empty() && *last == host {
            return true;
        }
        let valid = !host.contains('@') && host.parse::<http::uri::Authority>().is_ok();
        if valid {
            last.clear();
            last.push_str(host);
        }
        valid
    })
}

/// The host without its port (IPv6 literals keep their brackets).
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A `Cookie` header's value for `name`, if the request carries one.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut grpc = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // Nothing hop-by-hop: left as it is.
        let mut plain = HeaderMap::new();
        plain.insert("x-kept", HeaderValue::from_static("1"));
        plain.insert(header::HOST, HeaderValue::from_static("a.test"));
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 2);
        strip_hop_by_hop(&mut grpc, true);
        assert_eq!(grpc.get(header::TE).unwrap(), "trailers");
        // A name listed in `Connection`, in any case, goes too; `TE` listed there is not kept.
        let mut listed = HeaderMap::new();
        listed.insert(header::CONNECTION, HeaderValue::from_static("X-Hop, te"));
        listed.insert("x-hop", HeaderValue::from_static("1"));
        listed.insert(header::TE, HeaderValue::from_static("trailers"));
        listed.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut listed, true);
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(listed.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_appends_and_sets() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.7"));
        let fwd = Forwarded {
            trusted: true,
            client: "::ffff:192.0.2.1".parse().unwrap(),
            proto: "https",
            host: "example.com",
            port: 443,
        };
        add_forwarded(&mut h, &fwd);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 192.0.2.1");
        // Values cached from the previous request are not reused for another client or host.
        let mut other = HeaderMap::new();
        add_forwarded(
            &mut other,
            &Forwarded {
                trusted: true,
                client: "198.51.100.9".parse().unwrap(),
                proto: "http",
                host: "other.example",
                port: 80,
            },
        );
        assert_eq!(other[&X_FORWARDED_FOR], "198.51.100.9");
        assert_eq!(other[&X_REAL_IP], "198.51.100.9");
        assert_eq!(other[&X_FORWARDED_HOST], "other.example");
        assert_eq!(other[&X_FORWARDED_PORT], "80");
        add_forwarded(&mut h, &fwd);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.7, 192.0.2.1, 192.0.2.1");
        assert_eq!(h[&X_REAL_IP], "192.0.2.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
        assert_eq!(h[&X_FORWARDED_PORT], "443");
        assert_eq!(h[&X_REQUEST_ID].len(), 32);
    }

    #[test]
    fn forwarded_values_replace_the_clients_but_keep_its_request_id() {
        let mut h = HeaderMap::new();
        h.insert(&X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        let fwd = Forwarded {
            trusted: true,
            client: "192.0.2.1".parse().unwrap(),
            proto: "http",
            host: "a.test",
            port: 80,
        };
        let values = forwarded_values(&h, &fwd);
        assert!(values.replaces(&X_REAL_IP));
        assert!(values.replaces(&X_FORWARDED_FOR));
        assert!(!values.replaces(&X_REQUEST_ID), "the client's ID is kept");
        assert!(!values.replaces(&header::HOST));
        let sent: Vec<_> = values
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        assert_eq!(sent.len(), 7, "no Via unless given one");
        assert!(sent.contains(&("x-real-ip", HeaderValue::from_static("192.0.2.1"))));
        let fresh = forwarded_values(&HeaderMap::new(), &fwd);
        assert!(fresh.replaces(&X_REQUEST_ID));
        assert_eq!(fresh.iter().count(), 8);
    }

    #[test]
    fn claims_only_a_proxy_may_make_are_stripped() {
        let mut h = HeaderMap::new();
        for name in [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-scheme",
            "x-forwarded-prefix",
            "x-scheme",
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
            "x-original-url",
            "x-original-uri",
            "x-rewrite-url",
        ] {
            h.append(name, HeaderValue::from_static("spoofed"));
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("a.test"));
        let fwd = Forwarded {
            trusted: false,
            client: "192.0.2.1".parse().unwrap(),
            proto: "https",
            host: "a.test",
            port: 443,
        };
        // The lean path leaves them out while writing the head...
        let values = forwarded_values(&h, &fwd);
        for name in h.keys() {
            let kept = ["host", "x-kept"].contains(&name.as_str());
            assert_eq!(values.replaces(name), !kept, "{name}");
        }
        // ...the others drop them from the map before ours go in.
        let mut inserted = h.clone();
        values.insert_into(&mut inserted);
        let mut mine: Vec<_> = inserted.keys().map(HeaderName::as_str).collect();
        mine.sort_unstable();
        assert_eq!(
            mine,
            [
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-proto",
                "x-forwarded-scheme",
                "x-kept",
                "x-real-ip",
                "x-request-id",
                "x-scheme"
            ]
        );
        assert_eq!(inserted[&X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(inserted["x-scheme"], "https");
        assert_eq!(inserted["x-forwarded-scheme"], "https");
        assert!(inserted.get_all("x-forwarded-for").iter().count() == 1);
        // A trusted proxy's claims pass, and its X-Forwarded-For is appended to.
        let trusted = Forwarded {
            trusted: true,
            ..fwd
        };
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        add_forwarded(&mut h, &trusted);
        assert_eq!(h[&X_FORWARDED_FOR], "spoofed, 198.51.100.1, 192.0.2.1");
        assert_eq!(h["forwarded"], "spoofed");
    }

    #[test]
    fn our_via_entry_marks_a_loop_and_nobody_elses_does() {
        let ours = HopMarker::new(&crate::config::LoopToken::new("c1").unwrap());
        assert_eq!(ours.value(http::Version::HTTP_11), "1.1 portico-c1");
        assert_eq!(ours.value(http::Version::HTTP_2), "2 portico-c1");
        assert_eq!(ours.value(http::Version::HTTP_3), "3 portico-c1");
        let seen = |lines: &[&'static str]| {
            let mut h = HeaderMap::new();
            for line in lines {
                h.append(header::VIA, HeaderValue::from_static(line));
            }
            ours.seen_in(&h)
        };
        assert!(!seen(&[]));
        assert!(seen(&["1.1 portico-c1"]));
        assert!(seen(&["1.1 corp-proxy (Squid), 2 PORTICO-C1"]));
        assert!(seen(&["1.0 fred", "1.1 portico-c1 (looped)"]));
        // Another Portico cluster, or a name that merely starts like ours, is not a loop.
        assert!(!seen(&["1.1 portico-c2", "1.1 portico-c10", "1.1 c1"]));
    }

    #[test]
    fn via_is_appended_after_the_requests_own() {
        let ours = HopMarker::new(&crate::config::LoopToken::new("c1").unwrap());
        let mut h = HeaderMap::new();
        h.insert(header::VIA, HeaderValue::from_static("1.1 corp-proxy"));
        let fwd = Forwarded {
            trusted: false,
            client: "192.0.2.1".parse().unwrap(),
            proto: "http",
            host: "a.test",
            port: 80,
        };
        let values =
            forwarded_values(&h, &fwd).with_via(ours.value(http::Version::HTTP_11).clone());
        // The lean path keeps the client's line and writes ours after it...
        assert!(!values.replaces(&header::VIA));
        assert_eq!(
            values.iter().last(),
            Some((&header::VIA, &HeaderValue::from_static("1.1 portico-c1")))
        );
        // ...the others append ours to the map.
        values.insert_into(&mut h);
        let via: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.1 corp-proxy", "1.1 portico-c1"]);
        assert!(ours.seen_in(&h));
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn authority_validation_is_not_fooled_by_its_cache() {
        assert!(valid_authority("example.com:8080"));
        assert!(valid_authority("example.com:8080"));
        assert!(!valid_authority("exa mple.com"));
        assert!(!valid_authority("example.com:8080/"));
        assert!(valid_authority("[::1]:443"));
        assert!(!valid_authority(""));
        assert!(!valid_authority("user@example.com"));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[::1]:443"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
    }

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; route=abc"));
        assert_eq!(cookie(&h, "route"), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
