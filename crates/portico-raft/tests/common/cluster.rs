//! Replicas in one process over the real mTLS transport. Node `i` listens on its own
//! loopback address, 127.0.0.`i+1`, and its certificate names only that address, so every
//! replica has its own identity as in a StatefulSet (where each Pod has its DNS name).
#![allow(dead_code)]

use std::time::Duration;

use portico_raft::{RaftSettings, Replica, ReplicaConfig, TlsMaterial, TransportSettings};
use portico_test_support::poll_until;
use tempfile::TempDir;
use tokio::net::TcpListener;

use super::Pki;

/// The loopback address of node `i`.
pub fn node_host(i: usize) -> String {
    format!("127.0.0.{}", i + 1)
}

/// Hosts that may join beyond the initial members (scale-up in the tests).
fn peer_hosts() -> Vec<String> {
    (0..8).map(node_host).collect()
}

pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn test_settings() -> RaftSettings {
    RaftSettings {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1200),
        ..RaftSettings::default()
    }
}

pub struct Node {
    pub dir: TempDir,
    pub addr: String,
    pub tls: TlsMaterial,
    pub replica: Option<Replica>,
}

pub struct Cluster {
    pub pki: Pki,
    pub nodes: Vec<Node>,
    pub addrs: Vec<String>,
    pub raft: RaftSettings,
    pub transport: TransportSettings,
}

impl Cluster {
    pub async fn start(size: usize, raft: RaftSettings) -> Self {
        Self::start_with(size, raft, TransportSettings::default()).await
    }

    pub async fn start_with(size: usize, raft: RaftSettings, transport: TransportSettings) -> Self {
        let pki = Pki::new("portico-test-ca");
        let mut listeners = Vec::new();
        for i in 0..size {
            let addr = format!("{}:0", node_host(i));
            listeners.push(TcpListener::bind(addr).await.unwrap());
        }
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            addrs: addrs.clone(),
            raft,
            transport,
            pki,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let node = Node {
                dir: tempfile::tempdir().unwrap(),
                addr: addrs[i].clone(),
                tls: cluster
                    .pki
                    .node_for(&format!("portico-{i}"), &[node_host(i)]),
                replica: None,
            };
            cluster.nodes.push(node);
            cluster.launch(i, listener).await;
        }
        cluster
    }

    pub async fn launch(&mut self, i: usize, listener: TcpListener) {
        let node = &mut self.nodes[i];
        let config = ReplicaConfig {
            data_dir: node.dir.path().to_owned(),
            advertise: node.addr.clone(),
            initial_members: self.addrs.clone(),
            peer_hosts: peer_hosts(),
            tls: node.tls.clone(),
            raft: self.raft.clone(),
            transport: self.transport.clone(),
        };
        node.replica = Some(Replica::start(config, listener).await.unwrap());
    }

    /// Starts one more replica that is not an initial member (scale-up); it uses the
    /// initial members as contacts to join.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let listener = TcpListener::bind(format!("{}:0", node_host(i)))
            .await
            .unwrap();
        self.nodes.push(Node {
            dir: tempfile::tempdir().unwrap(),
            addr: listener.local_addr().unwrap().to_string(),
            tls: self.pki.node_for(&format!("portico-{i}"), &[node_host(i)]),
            replica: None,
        });
        self.launch(i, listener).await;
        i
    }

    pub async fn stop(&mut self, i: usize) {
        let replica = self.nodes[i].replica.take().expect("running");
        replica.shutdown().await;
        drop(replica);
        // The store's last blocking tasks may still hold its file: wait until redb opens
        // it here (it refuses a file open elsewhere), so a restart finds it free.
        let file = self.nodes[i].dir.path().join(portico_raft::STORE_FILE);
        poll_until(format!("{} released", file.display()), PATIENCE, || {
            let free = redb::Database::open(&file).is_ok();
            std::future::ready(free.then_some(()))
        })
        .await
        .unwrap();
    }

    pub async fn restart(&mut self, i: usize) {
        let listener = TcpListener::bind(&self.nodes[i].addr).await.unwrap();
        self.launch(i, listener).await;
    }

    pub fn replica(&self, i: usize) -> &Replica {
        self.nodes[i].replica.as_ref().expect("running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Replica)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.replica.as_ref().map(|r| (i, r)))
    }

    /// Waits until every running replica sees `voters` voters and the same leader, which is
    /// running; returns the leader's index. Replica metrics are a snapshot with nothing to
    /// subscribe to, so this polls.
    pub async fn wait_for_leader(&self, voters: usize) -> usize {
        let views = || -> Vec<_> { self.running().map(|(i, r)| (i, r.metrics())).collect() };
        let agreed = || {
            let views = views();
            let leader = views[0].1.leader;
            let agreed = views
                .iter()
                .all(|(_, m)| m.leader == leader && m.voters.len() == voters);
            let leader = leader.filter(|_| agreed)?;
            let (i, _) = views
                .iter()
                .find(|(_, m)| m.node_id == leader && m.is_leader)?;
            Some(*i)
        };
        let what = format!("an agreed leader with {voters} voters");
        poll_until(what, PATIENCE, || std::future::ready(agreed()))
            .await
            .unwrap_or_else(|e| panic!("{e}: {:#?}", views()))
    }

    /// Waits until every running replica applied `version` and holds identical table bytes.
    pub async fn wait_converged(&self, version: u64) -> Vec<u8> {
        let mut bytes = None;
        for (i, replica) in self.running() {
            let reached = replica.wait_for_version(version, PATIENCE).await;
            assert!(
                reached.is_ok(),
                "replica {i} stuck at {reached:?}, wanted {version}"
            );
            let table = replica.table().borrow().to_bytes();
            match &bytes {
                None => bytes = Some(table),
                Some(expected) => assert_eq!(&table, expected, "replica {i} diverged"),
            }
        }
        bytes.unwrap()
    }
}
