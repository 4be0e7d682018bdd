//! Connection limits: how many connections the whole proxy, and one client address, may hold
//! at once, over TCP and QUIC together (as nginx's `worker_connections` and `limit_conn`).
//!
//! A permit is taken before anything is spent on a connection (no TLS or QUIC handshake, no
//! task) and released when the connection ends, however it ends. A client is its IPv4
//! address, or its IPv6 /64: one host or one subscriber's network gets a whole /64, so
//! counting single IPv6 addresses would give one client 2^64 allowances.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counts the connections open and refuses those past the limits.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    counters: Arc<ConnCounters>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Held for a connection's life; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limits: Arc<ConnLimits>,
    client: IpAddr,
}

impl ConnLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, counters: Arc<ConnCounters>) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::default(),
            counters,
        }
    }

    /// A slot for one more connection from `peer`, or `None` (counted) past either limit.
    pub(crate) fn try_acquire(self: &Arc<Self>, peer: IpAddr) -> Option<ConnPermit> {
        let client = client_key(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            self.counters.refused_total.fetch_add(1, Relaxed);
            return None;
        }
        let n = open.per_client.entry(client).or_insert(0);
        if *n >= self.max_per_ip {
            self.counters.refused_per_ip.fetch_add(1, Relaxed);
            return None;
        }
        *n += 1;
        open.total += 1;
        self.counters.open.store(open.total as u64, Relaxed);
        Some(ConnPermit {
            limits: self.clone(),
            client,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let limits = &self.limits;
        let mut open = limits.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
        open.total -= 1;
        limits.counters.open.store(open.total as u64, Relaxed);
    }
}

/// The address a client is counted under: IPv4 (IPv4-mapped IPv6 included) as is, IPv6 by /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The connection-level counters, read with the request counters.
#[derive(Debug, Default)]
pub(crate) struct ConnCounters {
    open: AtomicU64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    pub(crate) send_timeouts: AtomicU64,
    pub(crate) idle_closes: AtomicU64,
    pub(crate) quic_retries: AtomicU64,
}

impl ConnCounters {
    pub(crate) fn snapshot(&self) -> ConnectionsSnapshot {
        ConnectionsSnapshot {
            open: self.open.load(Relaxed),
            refused_total_limit: self.refused_total.load(Relaxed),
            refused_per_ip_limit: self.refused_per_ip.load(Relaxed),
            send_timeouts: self.send_timeouts.load(Relaxed),
            idle_closes: self.idle_closes.load(Relaxed),
            quic_retries: self.quic_retries.load(Relaxed),
        }
    }
}

/// Connection counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionsSnapshot {
    /// Client connections open now (TCP and QUIC, handshakes included).
    pub open: u64,
    /// Connections closed (TCP) or refused (QUIC) at once: `Limits::max_connections` reached.
    pub refused_total_limit: u64,
    /// Connections closed or refused at once: `Limits::max_connections_per_ip` reached.
    pub refused_per_ip_limit: u64,
    /// Connections closed because a response made no progress towards the client for
    /// `Limits::send_timeout`.
    pub send_timeouts: u64,
    /// Connections closed for having no request activity for `Limits::idle_timeout`.
    pub idle_closes: u64,
    /// QUIC Retry packets sent (address validation).
    pub quic_retries: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_client: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits::new(total, per_client, Arc::default()))
    }

    #[test]
    fn per_ip_and_total_limits_refuse_and_count_and_permits_give_slots_back() {
        let l = limits(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = l.try_acquire(a).unwrap();
        let _a2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "third from one client");
        let _b1 = l.try_acquire(b).unwrap();
        assert!(l.try_acquire(b).is_none(), "fourth in all");
        let s = l.counters.snapshot();
        assert_eq!(
            (s.open, s.refused_per_ip_limit, s.refused_total_limit),
            (3, 1, 1)
        );
        drop(a1);
        assert!(l.try_acquire(a).is_some(), "a slot given back is usable");
        assert_eq!(
            l.counters.snapshot().open,
            2,
            "the temporary permit dropped"
        );
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_mapped_ipv4_is_ipv4() {
        let l = limits(100, 1);
        let _p = l.try_acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            l.try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(l.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = l.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(l.try_acquire("::ffff:192.0.2.7".parse().unwrap()).is_none());
    }
}
