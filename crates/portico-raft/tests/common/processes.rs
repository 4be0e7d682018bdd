//! A cluster of `portico-raft-node` processes driven over their stdin/stdout.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::Pki;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Process {
    pub async fn command(&mut self, line: &str) -> Value {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("node stdin");
        let answer = tokio::time::timeout(PATIENCE, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {line:?}"))
            .expect("node stdout")
            .unwrap_or_else(|| panic!("node exited while answering {line:?}"));
        serde_json::from_str(&answer).expect("JSON answer")
    }
}

pub struct Member {
    pub data_dir: PathBuf,
    pub addr: String,
    cert: PathBuf,
    key: PathBuf,
    log: PathBuf,
    process: Option<Process>,
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

/// An unused loopback port. The node binds it again moments later (with SO_REUSEADDR); a
/// restarted node must come back on the same address, which is its identity in the
/// membership.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ProcessCluster {
    /// Starts `size` replicas of `binary` (the `portico-raft-node` executable).
    pub async fn start(binary: &str, size: usize, extra_args: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let pki = Pki::new("portico-test-ca");
        let ca = root.path().join("ca.pem");
        std::fs::write(&ca, pki.ca_pem()).unwrap();
        let mut members = Vec::new();
        for i in 0..size {
            let tls = pki.node(&format!("portico-{i}"));
            let cert = root.path().join(format!("node-{i}.crt"));
            let key = root.path().join(format!("node-{i}.key"));
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            members.push(Member {
                data_dir: root.path().join(format!("data-{i}")),
                addr: format!("127.0.0.1:{}", free_port()),
                cert,
                key,
                log: root.path().join(format!("node-{i}.log")),
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
    pub fn scratch(&self) -> &std::path::Path {
        self._root.path()
    }

    pub fn spawn(&mut self, i: usize) {
        let initial: Vec<&str> = self.members.iter().map(|m| m.addr.as_str()).collect();
        let initial = initial.join(",");
        let member = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap();
        let mut child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen", &member.addr, "--initial-members", &initial])
            .arg("--ca")
            .arg(&self.ca)
            .arg("--cert")
            .arg(&member.cert)
            .arg("--key")
            .arg(&member.key)
            .args(&self.extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn portico-raft-node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        member.process = Some(Process {
            child,
            stdin,
            stdout,
        });
    }

    /// SIGKILL, no goodbye.
    pub async fn kill(&mut self, i: usize) {
        let mut process = self.members[i].process.take().expect("running");
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
    }

    pub fn process(&mut self, i: usize) -> &mut Process {
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

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
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
        let started = Instant::now();
        loop {
            let statuses = self.statuses().await;
            let leader = &statuses[0].1["leader"];
            let agreed = statuses.iter().all(|(_, s)| {
                &s["leader"] == leader && s["voters"].as_array().map(Vec::len) == Some(voters)
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
                "no agreed leader: {statuses:#?}\n{}",
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
