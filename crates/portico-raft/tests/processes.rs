//! Three replicas as real processes (`portico-raft-node`) over mTLS on 127.0.0.1, killed
//! with SIGKILL.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Pki;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const PATIENCE: Duration = Duration::from_secs(60);

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Process {
    async fn command(&mut self, line: &str) -> Value {
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

struct Member {
    data_dir: PathBuf,
    addr: String,
    cert: PathBuf,
    key: PathBuf,
    log: PathBuf,
    process: Option<Process>,
}

struct ProcessCluster {
    _root: TempDir,
    ca: PathBuf,
    members: Vec<Member>,
    extra_args: Vec<String>,
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
    async fn start(size: usize, extra_args: &[&str]) -> Self {
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
            _root: root,
            ca,
            members,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<&str> = self.members.iter().map(|m| m.addr.as_str()).collect();
        let initial = initial.join(",");
        let member = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portico-raft-node"))
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
    async fn kill(&mut self, i: usize) {
        let mut process = self.members[i].process.take().expect("running");
        process.child.start_kill().unwrap();
        process.child.wait().await.unwrap();
    }

    fn process(&mut self, i: usize) -> &mut Process {
        self.members[i].process.as_mut().expect("running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].process.is_some())
            .collect()
    }

    async fn statuses(&mut self) -> Vec<(usize, Value)> {
        let mut out = Vec::new();
        for i in self.running() {
            out.push((i, self.process(i).command("status").await));
        }
        out
    }

    fn logs(&self) -> String {
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
    async fn wait_for_leader(&mut self, voters: usize) -> usize {
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
    async fn wait_converged(&mut self, version: u64) -> Vec<(usize, Value)> {
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

    async fn propose(&mut self, on: usize, epoch: u64, first: u64, count: u64) -> Value {
        self.process(on)
            .command(&format!("propose {epoch} {first} {count} 16"))
            .await
    }

    async fn propose_ok(&mut self, on: usize, epoch: u64, first: u64, count: u64) -> u64 {
        let answer = self.propose(on, epoch, first, count).await;
        assert_eq!(answer["ok"], true, "proposal on {on} failed: {answer}");
        answer["version"].as_u64().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_replicate_fail_over_and_catch_up_by_log() {
    let mut cluster = ProcessCluster::start(3, &[]).await;
    cluster.wait_for_leader(3).await;

    // A change proposed on any replica is applied on all.
    let mut last = 0;
    for on in 0..3 {
        last = last.max(cluster.propose_ok(on, 1, on as u64, 1).await);
    }
    cluster.wait_converged(last).await;

    // A stale epoch is refused, by every replica.
    let stale = cluster.propose(1, 0, 100, 1).await;
    assert_eq!(stale["stale"], true, "{stale}");
    last = cluster.propose_ok(2, 1, 101, 1).await;
    for (i, status) in cluster.wait_converged(last).await {
        assert_eq!(status["refused_stale_entries"], 1, "replica {i}: {status}");
    }

    // Kill the leader: a new one is elected within a few seconds and writes continue.
    let leader = cluster.wait_for_leader(3).await;
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    let new_leader = cluster.wait_for_leader(3).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let survivor = (leader + 1) % 3;
    last = cluster.propose_ok(survivor, 1, 200, 1).await;
    cluster.spawn(leader);
    cluster.wait_converged(last).await;

    // Kill a follower, write 1,000 changes, restart it: it catches up by log.
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 1) % 3;
    cluster.kill(follower).await;
    last = cluster.propose_ok(leader, 1, 1_000, 1_000).await;
    cluster.spawn(follower);
    let statuses = cluster.wait_converged(last).await;
    let restarted = &statuses.iter().find(|(i, _)| *i == follower).unwrap().1;
    assert_eq!(
        restarted["snapshot_installs"], 0,
        "caught up by log: {restarted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_catches_up_by_snapshot_after_compaction() {
    let mut cluster = ProcessCluster::start(
        3,
        &["--snapshot-after", "100", "--keep-after-snapshot", "10"],
    )
    .await;
    let leader = cluster.wait_for_leader(3).await;
    let follower = (leader + 2) % 3;
    cluster.kill(follower).await;
    let last = cluster.propose_ok(leader, 1, 0, 1_000).await;
    cluster.spawn(follower);
    let statuses = cluster.wait_converged(last).await;
    let restarted = &statuses.iter().find(|(i, _)| *i == follower).unwrap().1;
    assert!(
        restarted["snapshot_installs"].as_u64().unwrap() >= 1,
        "the log was compacted, so catch-up needs a snapshot: {restarted}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_replica_rejoins_under_a_new_id() {
    let mut cluster = ProcessCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader(3).await;
    let mut last = cluster.propose_ok(leader, 1, 0, 20).await;
    cluster.wait_converged(last).await;

    // Wipe portico-0, the member that bootstrapped the cluster (and usually its leader):
    // it must join the existing cluster under a new ID, never start a second one.
    let wiped = 0;
    let old_id = cluster.process(wiped).command("status").await["node_id"]
        .as_u64()
        .unwrap();
    cluster.kill(wiped).await;
    std::fs::remove_dir_all(&cluster.members[wiped].data_dir).unwrap();
    let leader = cluster.wait_for_leader(3).await;
    last = cluster.propose_ok(leader, 1, 100, 20).await;
    cluster.spawn(wiped);

    let started = Instant::now();
    let new_id = loop {
        let statuses = cluster.statuses().await;
        let id = statuses.iter().find(|(i, _)| *i == wiped).unwrap().1["node_id"]
            .as_u64()
            .unwrap();
        let replaced = statuses.iter().all(|(_, s)| {
            let voters: Vec<u64> = s["voters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            voters.len() == 3 && voters.contains(&id) && !voters.contains(&old_id)
        });
        if replaced {
            break id;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "wiped replica did not rejoin: {statuses:#?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_id, old_id, "a wiped replica must take a fresh ID");
    last = last.max(cluster.propose_ok(wiped, 1, 200, 5).await);
    cluster.wait_converged(last).await;
}
