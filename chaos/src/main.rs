//! `berth-chaos`: fault injection against a cluster started with deploy/local/cluster.sh.

use std::path::PathBuf;
use std::time::Duration;

use berth_chaos::Fault;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth-chaos", about = "Fault injection against a local Berth cluster")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Push continuously through the load balancer while killing and restarting the leader;
    /// then pull back every acknowledged push. Exits non-zero if any was lost.
    LeaderKill {
        /// The cluster's directory (cluster.sh --dir).
        #[arg(long)]
        dir: PathBuf,
        /// cluster.sh to drive.
        #[arg(long, default_value = "deploy/local/cluster.sh")]
        script: PathBuf,
        /// How many times to kill the leader.
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// Concurrent pushers.
        #[arg(long, default_value_t = 4)]
        pushers: usize,
        /// How long a killed leader stays down, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        down_ms: u64,
    },
    /// Push continuously through the load balancer while freezing the leader (SIGSTOP, a
    /// gray failure) and thawing it (SIGCONT); then pull back every acknowledged push. Exits
    /// non-zero if any was lost.
    LeaderPause {
        /// The cluster's directory (cluster.sh --dir).
        #[arg(long)]
        dir: PathBuf,
        /// cluster.sh to drive.
        #[arg(long, default_value = "deploy/local/cluster.sh")]
        script: PathBuf,
        /// How many times to freeze the leader.
        #[arg(long, default_value_t = 5)]
        pauses: usize,
        /// Concurrent pushers.
        #[arg(long, default_value_t = 4)]
        pushers: usize,
        /// How long the leader stays frozen, in milliseconds.
        #[arg(long, default_value_t = 8000)]
        pause_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (dir, script, fault, times, pushers) = match Cli::parse().command {
        Cmd::LeaderKill { dir, script, kills, pushers, down_ms } => (dir, script, Fault::Kill(Duration::from_millis(down_ms)), kills, pushers),
        Cmd::LeaderPause { dir, script, pauses, pushers, pause_ms } => (dir, script, Fault::Pause(Duration::from_millis(pause_ms)), pauses, pushers),
    };
    let cluster = berth_chaos::LocalCluster::new(&script, &dir, None);
    let report = berth_chaos::leader_faults(cluster, fault, times, pushers).await?;
    for l in &report.lost {
        println!("LOST {l}");
    }
    println!("{}", report.summary());
    println!("failover_ms {:?}", report.failover_ms);
    if !report.lost.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
