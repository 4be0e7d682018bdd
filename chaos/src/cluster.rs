//! The replicas and echo backends as real processes of the `portico` binary, each replica in
//! its own namespace at its own address, and what the faults do to them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::net::{BACKEND_ADDRS, backends_netns, replica_addr, replica_netns};
use crate::procs::Proc;

pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 8443;
pub const ADMIN_PORT: u16 = 9090;
pub const RAFT_PORT: u16 = 9444;
pub const ECHO_PORT: u16 = 9001;
/// The address every replica writes into Ingress status (one, so status settles).
pub const STATUS_ADDRESS: &str = "10.251.0.100";

pub fn http_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(replica_addr(i)), HTTP_PORT)
}
pub fn https_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(replica_addr(i)), HTTPS_PORT)
}
pub fn h3_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(replica_addr(i)), HTTPS_PORT)
}
pub fn admin_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(replica_addr(i)), ADMIN_PORT)
}

/// The replica a source address belongs to.
pub fn replica_of(ip: IpAddr) -> Option<usize> {
    (0..8).find(|&i| IpAddr::V4(replica_addr(i)) == ip)
}

/// Which start of a replica's process is running, and whether it began with a wiped disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incarnation {
    pub number: u32,
    pub wiped: bool,
    pub running: bool,
    started: bool,
}

/// Files every replica reads.
#[derive(Debug, Clone)]
pub struct Layout {
    pub portico: PathBuf,
    pub dir: PathBuf,
    /// One kubeconfig per replica (each its own credentials with the real API server).
    pub kubeconfigs: Vec<PathBuf>,
    /// The replicas' namespace: their Lease lives there.
    pub namespace: String,
    pub raft_ca: PathBuf,
    pub raft_ca_key: PathBuf,
    pub replicas: usize,
}

impl Layout {
    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}")).join("data")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }
}

pub struct Cluster {
    layout: Layout,
    replicas: Vec<Option<Proc>>,
    backends: Vec<Proc>,
    /// Shared with the sampler, which tags each sample with it.
    pub incarnations: Arc<Mutex<Vec<Incarnation>>>,
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl Cluster {
    pub fn new(layout: Layout) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(layout.dir.join("logs"))?;
        let n = layout.replicas;
        Ok(Cluster {
            layout,
            replicas: (0..n).map(|_| None).collect(),
            backends: Vec::new(),
            incarnations: Arc::new(Mutex::new(vec![Incarnation::default(); n])),
        })
    }

    pub fn replicas(&self) -> usize {
        self.layout.replicas
    }

    /// Replica `i`'s log file (every incarnation appends to it).
    pub fn replica_log(&self, i: usize) -> PathBuf {
        self.layout.log(&format!("portico-{i}"))
    }

    /// Starts the echo backends (one per backend address, all Service `echo`).
    pub fn start_backends(&mut self) -> anyhow::Result<()> {
        for (k, addr) in BACKEND_ADDRS.iter().enumerate() {
            let pod = format!("echo-{k}");
            self.backends.push(Proc::spawn(
                &pod,
                backends_netns(),
                &self.layout.portico,
                &[
                    "echo".into(),
                    "--listen".into(),
                    format!("{addr}:{ECHO_PORT}"),
                    "--service".into(),
                    "echo".into(),
                    "--pod".into(),
                    pod.clone(),
                ],
                &self.layout.log(&pod),
            )?);
        }
        Ok(())
    }

    /// One more echo backend answering as Service `service`, on the first backend address.
    pub fn start_echo(&mut self, service: &str, port: u16) -> anyhow::Result<()> {
        let pod = format!("{service}-0");
        self.backends.push(Proc::spawn(
            &pod,
            backends_netns(),
            &self.layout.portico,
            &[
                "echo".into(),
                "--listen".into(),
                format!("{}:{port}", BACKEND_ADDRS[0]),
                "--service".into(),
                service.into(),
                "--pod".into(),
                pod.clone(),
            ],
            &self.layout.log(&pod),
        )?);
        Ok(())
    }

    fn args(&self, i: usize) -> Vec<String> {
        let members: Vec<String> = (0..self.layout.replicas)
            .map(|k| format!("{}:{RAFT_PORT}", replica_addr(k)))
            .collect();
        let addr = replica_addr(i);
        vec![
            "run".into(),
            "--pod-name".into(),
            format!("portico-{i}"),
            "--namespace".into(),
            self.layout.namespace.clone(),
            "--kubeconfig".into(),
            path(&self.layout.kubeconfigs[i]),
            "--data-dir".into(),
            path(&self.layout.data_dir(i)),
            "--raft-listen".into(),
            format!("{addr}:{RAFT_PORT}"),
            "--initial-members".into(),
            members.join(","),
            "--raft-ca".into(),
            path(&self.layout.raft_ca),
            "--raft-ca-key".into(),
            path(&self.layout.raft_ca_key),
            "--http".into(),
            format!("{addr}:{HTTP_PORT}"),
            "--https".into(),
            format!("{addr}:{HTTPS_PORT}"),
            "--http3".into(),
            format!("{addr}:{HTTPS_PORT}"),
            "--admin".into(),
            format!("{addr}:{ADMIN_PORT}"),
            // The harness reads /debug/routes from outside the replica's namespace.
            "--admin-debug-routes".into(),
            "any".into(),
            "--publish-status-address".into(),
            STATUS_ADDRESS.into(),
            "--drain-seconds".into(),
            "2".into(),
            // The conformance rows C01-C06 need a defaultBackend-only Ingress to catch every
            // host, which Portico refuses unless asked (issue 14, H3).
            "--allow-catch-all".into(),
            // The harness reads the controller's watch failures and relists from the log.
            "--log-format".into(),
            "json".into(),
        ]
    }

    fn note(&self, i: usize, f: impl FnOnce(&mut Incarnation)) {
        let mut all = self.incarnations.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut all[i]);
    }

    /// Starts replica `i` (a new incarnation).
    pub fn start(&mut self, i: usize, wiped: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.replicas[i].is_none(), "replica {i} is already running");
        let name = format!("portico-{i}");
        let proc = Proc::spawn(
            &name,
            &replica_netns(i),
            &self.layout.portico,
            &self.args(i),
            &self.layout.log(&name),
        )?;
        self.replicas[i] = Some(proc);
        self.note(i, |inc| {
            if inc.started {
                inc.number += 1;
            }
            inc.started = true;
            inc.wiped = wiped;
            inc.running = true;
        });
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.replicas[i].is_some()
    }

    /// SIGKILL.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(p) = self.replicas[i].take() {
            p.kill().await?;
        }
        self.note(i, |inc| inc.running = false);
        Ok(())
    }

    /// SIGTERM with a grace period, as a rolling restart does; then start again.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(p) = self.replicas[i].take() {
            p.terminate(Duration::from_secs(15)).await?;
        }
        self.note(i, |inc| inc.running = false);
        self.start(i, false)
    }

    /// SIGKILL, delete the data directory, start again.
    pub async fn wipe_and_restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i).await?;
        let dir = self.layout.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
        }
        self.start(i, true)
    }

    pub fn freeze(&mut self, i: usize) -> anyhow::Result<()> {
        self.replicas[i].as_mut().context("not running")?.freeze()
    }

    pub fn thaw(&mut self, i: usize) -> anyhow::Result<()> {
        self.replicas[i].as_mut().context("not running")?.thaw()
    }

    /// Replicas whose process exited on its own (a crash), with the exit status.
    pub fn crashed(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, slot) in self.replicas.iter_mut().enumerate() {
            if let Some(p) = slot
                && let Some(status) = p.exited()
            {
                out.push((i, format!("{status} (log: {})", p.log().display())));
            }
        }
        out
    }

    /// Stops everything (SIGKILL): the end of a run.
    pub async fn stop_all(&mut self) {
        for i in 0..self.replicas.len() {
            let _ = self.kill(i).await;
        }
        for b in self.backends.drain(..) {
            let _ = b.kill().await;
        }
    }
}
