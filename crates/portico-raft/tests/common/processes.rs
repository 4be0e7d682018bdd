//! A cluster of `portico-raft-node` processes driven over their stdin/stdout, started by
//! portico-test-support's process starter: the test binds every member's Raft socket and
//! hands it over (socket activation), so the members know each other's addresses before any
//! starts and a restarted member is back on its own address with no port ever released.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Pki;
use portico_test_support::process::{self, Process, Program};
use serde_json::Value;
use tempfile::TempDir;

pub const PATIENCE: Duration = Duration::from_secs(60);

/// One node's command channel: a command line in, one JSON answer out.
pub struct Node(Process);

impl Node {
    pub async fn command(&mut self, line: &str) -> Value {
        let answer = self
            .0
            .command(line, PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.0.output_text()));
        serde_json::from_str(&answer).expect("JSON answer")
    }

    /// Its log (stderr) since it started.
    pub fn log(&self) -> String {
        self.0.output_text()
    }
}

pub struct Member {
    pub data_dir: PathBuf,
    pub addr: String,
    /// Its Raft listener, held here for the cluster's life.
    pub socket: Arc<TcpListener>,
    cert: PathBuf,
    key: PathBuf,
    process: Option<Node>,
}

pub struct ProcessCluster {
    /// The cluster CA, to make certificates for attackers as well.
    pub pki: Pki,
    _root: TempDir,
    ca: PathBuf,
    pub members: Vec<Member>,
    extra_args: Vec<String>,
    binary: PathBuf,
}

impl ProcessCluster {
    /// Starts `size` replicas of `binary` (the `portico-raft-node` executable).
    pub async fn start(binary: &str, size: usize, extra_args: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::new("portico-test-ca");
        let ca = root.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let mut members = Vec::new();
        for (i, socket) in process::raft_listeners(size).into_iter().enumerate() {
            let tls = pki.node(&format!("portico-{i}"));
            let cert = root.path().join(format!("node-{i}.crt"));
            let key = root.path().join(format!("node-{i}.key"));
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            members.push(Member {
                data_dir: root.path().join(format!("data-{i}")),
                addr: socket.local_addr().unwrap().to_string(),
                socket,
                cert,
                key,
                process: None,
            });
        }
        let mut cluster = Self {
            pki,
            _root: root,
            ca,
            members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            binary: binary.into(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// A scratch directory that lives as long as the cluster.
    pub fn scratch(&self) -> &Path {
        self._root.path()
    }

    /// A node with member `of`'s certificate, on `data_dir`, serving Raft on `socket`, told
    /// the cluster's initial members: member `of` itself, or an impostor of it.
    pub fn node(&self, of: usize, data_dir: &Path, socket: &Arc<TcpListener>) -> Node {
        let initial: Vec<&str> = self.members.iter().map(|m| m.addr.as_str()).collect();
        let member = &self.members[of];
        let program = Program::new(&self.binary)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &socket.local_addr().unwrap().to_string()])
            .args(["--initial-members", &initial.join(",")])
            .arg("--ca")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&member.cert)
            .arg("--key")
            .arg(&member.key)
            .args(&self.extra_args)
            .socket("raft", socket)
            .command_channel();
        Node(program.spawn(format!("node {of} ({})", data_dir.display())))
    }

    pub fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let node = self.node(i, &member.data_dir, &member.socket);
        self.members[i].process = Some(node);
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self, i: usize) {
        let mut node = self.members[i].process.take().expect("running");
        node.0.kill().await;
    }

    pub fn process(&mut self, i: usize) -> &mut Node {
        self.members[i].process.as_mut().expect("running")
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].process.is_some())
            .collect()
    }

    pub async fn statuses(&mut self) -> Vec<(usize, Value)> {
        let mut out = Vec::new();
        for i in self.running() {
            out.push((i, self.process(i).command("status").await));
        }
        out
    }

    /// The running members' panics and last log lines.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| Some((m, m.process.as_ref()?.log())))
            .map(|(m, text)| {
                let panics: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("panicked at") || l.contains("assertion"))
                    .take(5)
                    .collect();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {}\npanics: {}\n{}",
                    m.addr,
                    panics.join("\n"),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until every running member sees `voters` voters and the same running leader.
    pub async fn wait_for_leader(&mut self, voters: usize) -> usize {
        let running = self.running();
        self.wait_leader_among(&running, Some(voters)).await
    }

    /// Waits until the members `among` agree on a leader among them (and, if given, on
    /// `voters` voters); its index.
    pub async fn wait_leader_among(&mut self, among: &[usize], voters: Option<usize>) -> usize {
        let started = Instant::now();
        loop {
            let mut statuses = Vec::new();
            for &i in among {
                statuses.push((i, self.process(i).command("status").await));
            }
            let leader = &statuses[0].1["leader"];
            let agreed = !leader.is_null()
                && statuses.iter().all(|(_, s)| {
                    &s["leader"] == leader
                        && voters.is_none_or(|n| s["voters"].as_array().map(Vec::len) == Some(n))
                });
            if agreed
                && let Some((i, _)) = statuses
                    .iter()
                    .find(|(_, s)| s["is_leader"] == true && &s["node_id"] == leader)
            {
                return *i;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "no agreed leader among {among:?}: {statuses:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running member applied `version` and has identical table bytes.
    pub async fn wait_converged(&mut self, version: u64) -> Vec<(usize, Value)> {
        let started = Instant::now();
        loop {
            let statuses = self.statuses().await;
            for (i, s) in &statuses {
                assert!(
                    s["fatal"].is_null(),
                    "replica {i} stopped: {s}\n{}",
                    self.logs()
                );
            }
            let hash = &statuses[0].1["table_sha256"];
            if statuses
                .iter()
                .all(|(_, s)| s["version"].as_u64() == Some(version) && &s["table_sha256"] == hash)
            {
                return statuses;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "not converged on {version}: {statuses:#?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn propose(&mut self, on: usize, epoch: u64, first: u64, count: u64) -> Value {
        self.process(on)
            .command(&format!("propose {epoch} {first} {count} 16"))
            .await
    }

    pub async fn propose_ok(&mut self, on: usize, epoch: u64, first: u64, count: u64) -> u64 {
        let answer = self.propose(on, epoch, first, count).await;
        assert_eq!(answer["ok"], true, "proposal on {on} failed: {answer}");
        answer["version"].as_u64().unwrap()
    }
}
