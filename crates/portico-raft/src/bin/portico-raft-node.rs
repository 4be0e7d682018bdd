//! A standalone replica for multi-process tests and benchmarks.
//!
//! Serves Raft on `--listen` and takes commands on stdin, one per line, answering each with
//! one JSON line on stdout:
//! * `propose <epoch> <first> <count> [<concurrency>]`: proposes `count` Service upserts
//!   (`svc-<first>`…) and answers with the last version, or the first error;
//! * `status`: node ID, leadership, versions, membership, counters and a digest of the
//!   table's bytes;
//! * `propose-file <epoch> <path>`: proposes the `Change` encoded (`Change::to_bytes`) in
//!   the file, for example a whole-cluster `Resync`;
//! * `remove <node-id>`: removes a member;
//! * `quit`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use portico_model::Change;
use portico_raft::{
    ProposeError, RaftSettings, Replica, ReplicaConfig, TlsMaterial, TransportSettings,
    service_change,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long)]
    listen: SocketAddr,
    /// `host:port` other replicas use; defaults to `--listen`.
    #[arg(long)]
    advertise: Option<String>,
    /// Comma-separated advertised addresses of the initial members, in ordinal order.
    #[arg(long, value_delimiter = ',')]
    initial_members: Vec<String>,
    /// Hosts of replicas, besides the initial members', that may join (`name-*.rest`
    /// for any ordinal); comma-separated.
    #[arg(long, value_delimiter = ',')]
    peer_hosts: Vec<String>,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, default_value_t = 5_000)]
    snapshot_after: u64,
    #[arg(long, default_value_t = 1_000)]
    keep_after_snapshot: u64,
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 600)]
    election_min_ms: u64,
    #[arg(long, default_value_t = 1200)]
    election_max_ms: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Raft listener: the socket handed over by socket activation (`LISTEN_FDS`, named `raft`
/// in `LISTEN_FDNAMES`; the multi-process tests hold each node's socket, so a restarted node
/// is back on its address with no window for another process), else `--listen`.
async fn listener(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return tokio::net::TcpListener::bind(addr)
            .await
            .context("binding the Raft listener");
    }
    anyhow::ensure!(
        fds.len() == 1 && names == "raft",
        "expected one socket named raft, got {} named {names:?}",
        fds.len()
    );
    let listener = fds
        .take_tcp_listener(0)?
        .context("fd 3 is not a TCP listener")?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

async fn propose(
    replica: &Replica,
    epoch: u64,
    first: u64,
    count: u64,
    concurrency: u64,
) -> serde_json::Value {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count as usize);
    let mut last = 0;
    let mut next = first;
    let end = first + count;
    while next < end {
        let batch_end = (next + concurrency.max(1)).min(end);
        let mut set = tokio::task::JoinSet::new();
        for i in next..batch_end {
            let replica = replica.clone();
            set.spawn(async move {
                let t = Instant::now();
                let result = replica.propose(epoch, service_change(i)).await;
                (result, t.elapsed())
            });
        }
        while let Some(joined) = set.join_next().await {
            let (result, latency) = joined.expect("proposal task");
            match result {
                Ok(committed) => {
                    last = last.max(committed.version);
                    latencies.push(latency.as_micros() as u64);
                }
                Err(e) => {
                    let stale = matches!(e, ProposeError::StaleEpoch { .. });
                    return json!({"ok": false, "stale": stale, "error": e.to_string()});
                }
            }
        }
        next = batch_end;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    json!({
        "ok": true,
        "version": last,
        "elapsed_us": started.elapsed().as_micros() as u64,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
    })
}

async fn propose_file(replica: &Replica, epoch: u64, path: Option<&str>) -> serde_json::Value {
    let change = path
        .ok_or_else(|| "a path is required".to_owned())
        .and_then(|p| std::fs::read(p).map_err(|e| format!("reading {p}: {e}")))
        .and_then(|bytes| Change::from_bytes(&bytes).map_err(|e| format!("decoding: {e}")));
    let change = match change {
        Ok(change) => change,
        Err(e) => return json!({"ok": false, "error": e}),
    };
    let started = Instant::now();
    match replica.propose(epoch, change).await {
        Ok(committed) => json!({
            "ok": true,
            "version": committed.version,
            "elapsed_us": started.elapsed().as_micros() as u64,
        }),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn status(replica: &Replica) -> serde_json::Value {
    let m = replica.metrics();
    let leadership = replica.leadership();
    let table = replica.table().borrow().clone();
    let bytes = table.to_bytes();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    json!({
        "node_id": m.node_id,
        "fatal": m.fatal,
        "term": m.term,
        "leader": m.leader,
        "is_leader": m.is_leader,
        "leader_for_ms": leadership.since.map(|s| s.elapsed().as_millis() as u64),
        "quorum_ack_ms_ago": leadership.last_quorum_ack.map(|s| s.elapsed().as_millis() as u64),
        "committed_index": m.committed_index,
        "applied_index": m.applied_index,
        "version": table.version(),
        "table_sha256": hex(digest.as_ref()),
        "table_bytes": bytes.len(),
        "voters": m.voters.keys().collect::<Vec<_>>(),
        "learners": m.learners.keys().collect::<Vec<_>>(),
        "replication_lag": m.replication_lag,
        "snapshot_installs": m.snapshot_installs,
        "snapshots_built": m.snapshots_built,
        "refused_stale_entries": m.refused_stale_entries,
        "highest_epoch": m.highest_epoch,
        "incarnation": m.incarnation,
        "stale_volume": m.stale_volume,
        "refused_incarnations": m.refused_incarnations,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = TlsMaterial {
        ca_pem: read(&args.ca)?,
        cert_pem: read(&args.cert)?,
        key_pem: read(&args.key)?,
    };
    let listener = listener(args.listen).await?;
    let advertise = args.advertise.unwrap_or_else(|| args.listen.to_string());
    let config = ReplicaConfig {
        data_dir: args.data_dir,
        advertise,
        initial_members: args.initial_members,
        peer_hosts: args.peer_hosts,
        tls,
        raft: RaftSettings {
            heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
            election_timeout_min: Duration::from_millis(args.election_min_ms),
            election_timeout_max: Duration::from_millis(args.election_max_ms),
            snapshot_after_entries: args.snapshot_after,
            entries_kept_after_snapshot: args.keep_after_snapshot,
            ..RaftSettings::default()
        },
        transport: TransportSettings::default(),
    };
    let replica = Replica::start(config, listener).await?;

    let mut stdout = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number =
            |i: usize, default: u64| words.get(i).and_then(|w| w.parse().ok()).unwrap_or(default);
        let answer = match words.first().copied() {
            Some("propose") => {
                propose(
                    &replica,
                    number(1, 1),
                    number(2, 0),
                    number(3, 1),
                    number(4, 1),
                )
                .await
            }
            Some("status") => status(&replica),
            Some("propose-file") => {
                propose_file(&replica, number(1, 1), words.get(2).copied()).await
            }
            Some("remove") => match replica.remove_member(number(1, 0)).await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Some("quit") => break,
            _ => json!({"ok": false, "error": format!("unknown command {line:?}")}),
        };
        stdout.write_all(format!("{answer}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    replica.shutdown().await;
    Ok(())
}
