//! `portico raft recover`: the way out of a lost quorum (review finding M6).
//!
//! Run against a surviving replica's data directory while that replica is stopped. It makes
//! the replica the only voter of its cluster (as etcd's `--force-new-cluster`); started
//! again, it leads alone, the controller resyncs the table from the API server, and
//! replacements with empty volumes join it. Without `--force` it only says what it would
//! do. See ARCHITECTURE.md, "Operations: losing quorum".

use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(clap::Args, Debug)]
pub struct RaftArgs {
    #[command(subcommand)]
    command: RaftCommand,
}

#[derive(clap::Subcommand, Debug)]
enum RaftCommand {
    /// After losing a majority of the replicas for good: make this (stopped) replica the
    /// only voter. Delete the lost replicas' volumes; they rejoin as new members.
    Recover(RecoverArgs),
}

#[derive(clap::Args, Debug)]
pub struct RecoverArgs {
    /// The stopped replica's data directory (its Raft store).
    #[arg(long, env = "PORTICO_DATA_DIR", default_value = "/var/lib/portico")]
    data_dir: PathBuf,
    /// Do it. Without this flag, only print what would be done.
    #[arg(long)]
    force: bool,
}

pub async fn run(args: RaftArgs) -> anyhow::Result<()> {
    let RaftCommand::Recover(args) = args.command;
    let recovered = portico_raft::force_single_voter(&args.data_dir, !args.force)
        .await
        .with_context(|| format!("recovering {}", args.data_dir.display()))?;
    let dropped: Vec<String> = recovered
        .dropped
        .iter()
        .map(|(id, addr)| format!("{id} ({addr})"))
        .collect();
    let dropped = if dropped.is_empty() {
        "none".to_owned()
    } else {
        dropped.join(", ")
    };
    if !args.force {
        println!(
            "would make node {} ({}) the only voter, dropping: {dropped}\n\
             re-run with --force once the dropped replicas are gone for good",
            recovered.node_id, recovered.addr
        );
        bail!("nothing changed (no --force)");
    }
    println!(
        "node {} ({}) is now the only voter (membership entry at index {}); dropped: {dropped}\n\
         start this replica, then the replacements with empty data directories",
        recovered.node_id, recovered.addr, recovered.index
    );
    Ok(())
}
