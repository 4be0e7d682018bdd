//! Reads each replica's own accounting from its admin listener: `/metrics` (leadership,
//! epoch, applied version) and `/debug/routes` (the served table).

use std::net::SocketAddr;
use std::time::Duration;

use crate::load::get_h1;

/// The metric names `portico run` exports (crates/portico/src/metrics.rs and
/// portico-controller's metrics).
pub const IS_LEADER: &str = "portico_controller_is_leader";
pub const EPOCH: &str = "portico_controller_epoch";
pub const TABLE_VERSION: &str = "portico_table_version";
pub const HIGHEST_EPOCH: &str = "portico_raft_highest_epoch";

/// The value of the first sample of `name` (any labels) in a Prometheus/OpenMetrics text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = match rest.chars().next()? {
                '{' => &rest[rest.find('}')? + 1..],
                ' ' => rest,
                _ => return None,
            };
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// One scrape of a replica's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scrape {
    pub is_leader: bool,
    pub epoch: u64,
    pub version: u64,
    pub highest_epoch: u64,
}

impl Scrape {
    pub fn parse(text: &str) -> Option<Scrape> {
        Some(Scrape {
            is_leader: metric(text, IS_LEADER).unwrap_or(0.0) >= 1.0,
            epoch: metric(text, EPOCH).unwrap_or(0.0) as u64,
            version: metric(text, TABLE_VERSION)? as u64,
            highest_epoch: metric(text, HIGHEST_EPOCH).unwrap_or(0.0) as u64,
        })
    }
}

/// Scrapes `admin`'s `/metrics`; `None` when it does not answer in time.
pub async fn scrape(admin: SocketAddr, timeout: Duration) -> Option<Scrape> {
    let (status, body) = get_h1(admin, &admin.to_string(), "/metrics", timeout)
        .await
        .ok()?;
    if !status.is_success() {
        return None;
    }
    Scrape::parse(std::str::from_utf8(&body).ok()?)
}

/// `/debug/routes` as JSON.
pub async fn routes(admin: SocketAddr, timeout: Duration) -> Option<serde_json::Value> {
    let (status, body) = get_h1(admin, &admin.to_string(), "/debug/routes", timeout)
        .await
        .ok()?;
    if !status.is_success() {
        return None;
    }
    serde_json::from_slice(&body).ok()
}

/// Whether `/readyz` answers 200.
pub async fn ready(admin: SocketAddr, timeout: Duration) -> bool {
    matches!(get_h1(admin, &admin.to_string(), "/readyz", timeout).await, Ok((s, _)) if s.is_success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let text = "# HELP portico_table_version Version\n# TYPE portico_table_version gauge\n\
                    portico_table_version 42\n\
                    portico_controller_is_leader 1\n\
                    portico_controller_epoch{replica=\"a\"} 7\n\
                    portico_controller_epoch_total 99\n\
                    portico_raft_highest_epoch 7\n# EOF\n";
        assert_eq!(metric(text, TABLE_VERSION), Some(42.0));
        assert_eq!(metric(text, EPOCH), Some(7.0));
        assert_eq!(metric(text, "missing"), None);
        let s = Scrape::parse(text).unwrap();
        assert_eq!(
            s,
            Scrape {
                is_leader: true,
                epoch: 7,
                version: 42,
                highest_epoch: 7
            }
        );
        assert_eq!(
            Scrape::parse("portico_controller_is_leader 1\n"),
            None,
            "no version, no sample"
        );
    }
}
