//! Ingress annotation parsing (portico-model's annotations): arbitrary key/value maps, with
//! keys mostly drawn from the annotations Portico reads so values reach every parser. Never
//! panics, and what it returns is in range: every problem names an annotation that is in
//! the map, timeouts are within (0, 24h], a body limit is never 0, a source list is never
//! empty, and keys outside Portico's prefixes change nothing.
#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portico_model::fuzzing::parse_annotations;
use portico_model::{NGINX_PREFIX, PORTICO_PREFIX, RoutePolicy};

const NAMES: [&str; 14] = [
    "use-regex",
    "rewrite-target",
    "ssl-redirect",
    "force-ssl-redirect",
    "backend-protocol",
    "proxy-body-size",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "allowlist-source-range",
    "whitelist-source-range",
    "affinity",
    "session-cookie-name",
    "unknown",
];

#[derive(Arbitrary, Debug)]
enum Key {
    Nginx(u8),
    Portico(u8),
    Other(String),
}

impl Key {
    fn text(&self) -> String {
        let name = |i: &u8| NAMES[usize::from(*i) % NAMES.len()];
        match self {
            Key::Nginx(i) => format!("{NGINX_PREFIX}{}", name(i)),
            Key::Portico(i) => format!("{PORTICO_PREFIX}{}", name(i)),
            Key::Other(s) => s.clone(),
        }
    }
}

fn check_in_range(policy: &RoutePolicy) {
    let day = Duration::from_secs(24 * 60 * 60);
    for t in [
        policy.connect_timeout,
        policy.read_timeout,
        policy.send_timeout,
    ] {
        assert!(!t.is_zero() && t <= day, "{policy:?}");
    }
    assert_ne!(policy.max_body_bytes, Some(0));
    if let Some(nets) = &policy.allowed_sources {
        assert!(!nets.is_empty());
    }
    if let Some(affinity) = &policy.affinity {
        assert!(!affinity.cookie_name.is_empty());
    }
    if let Some(target) = &policy.rewrite_target {
        assert!(!target.as_written().is_empty());
    }
}

fuzz_target!(|pairs: Vec<(Key, String)>| {
    let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.text(), v.clone())).collect();
    let (policy, _use_regex, problems) = parse_annotations(&map);
    check_in_range(&policy);
    for problem in &problems {
        let key = problem
            .field
            .strip_prefix("metadata.annotations[")
            .and_then(|f| f.strip_suffix(']'))
            .unwrap_or_else(|| panic!("a problem names its annotation: {problem:?}"));
        assert!(map.contains_key(key), "{problem:?}");
    }
    // Only Portico's own prefixes are read.
    let ours: BTreeMap<String, String> = map
        .iter()
        .filter(|(k, _)| k.starts_with(NGINX_PREFIX) || k.starts_with(PORTICO_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (again, again_regex, again_problems) = parse_annotations(&ours);
    assert_eq!(again, policy);
    assert_eq!(again_regex, _use_regex);
    assert_eq!(again_problems.len(), problems.len());
});
