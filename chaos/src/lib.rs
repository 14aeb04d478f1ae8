//! Fault injection against a Berth cluster: a workload of pushes, faults (leader kills; network
//! partitions on a `net::TestNet`), and a checker that every acknowledged push survived.
//! `berth-chaos` runs it from the command line against a `deploy/local/cluster.sh` cluster;
//! `tests/smoke.rs` runs it in CI.

pub mod binary;
pub mod cluster;
pub mod net;
pub mod workload;

use std::time::{Duration, Instant};

use anyhow::bail;

pub use cluster::LocalCluster;
pub use net::TestNet;
pub use workload::{check, Acked, Workload};


/// What a chaos run saw.
#[derive(Debug)]
pub struct Report {
    /// Pushes the registry acknowledged.
    pub acknowledged: usize,
    /// Acknowledged pushes that were missing or different afterwards (must be empty).
    pub lost: Vec<String>,
    /// Pushes that failed (refused or cut off); the client would retry these.
    pub failed: u64,
    /// For each fault: milliseconds from it to the first acknowledged write after it.
    pub failover_ms: Vec<u64>,
}

impl Report {
    /// One line for logs and CI output.
    pub fn summary(&self) -> String {
        let mut f = self.failover_ms.clone();
        f.sort_unstable();
        let p50 = f.get(f.len() / 2).copied().unwrap_or(0);
        let max = f.last().copied().unwrap_or(0);
        format!(
            "acknowledged={} lost={} failed_requests={} kills={} failover_ms_p50={p50} failover_ms_max={max}",
            self.acknowledged,
            self.lost.len(),
            self.failed,
            f.len()
        )
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// How long a probe write may take before it is tried again.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What is done to the leader.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// SIGKILL, then a restart on its data after the given time.
    Kill(Duration),
    /// SIGSTOP for the given time, then SIGCONT: a gray failure (the process and its sockets
    /// stay, it answers nothing), after which the old leader must step down.
    Pause(Duration),
}

/// Pushes continuously through the load balancer with `pushers` clients while the leader is
/// killed `kills` times (each time restarted after `down`), then checks every acknowledged
/// push through the load balancer.
pub async fn leader_kills(cluster: LocalCluster, kills: usize, pushers: usize, down: Duration) -> anyhow::Result<Report> {
    leader_faults(cluster, Fault::Kill(down), kills, pushers).await
}

/// Pushes continuously through the load balancer with `pushers` clients while `fault` is
/// done to the leader `times` times, measuring each time how long from the fault to the first
/// acknowledged write; then checks every acknowledged push through the load balancer.
pub async fn leader_faults(cluster: LocalCluster, fault: Fault, times: usize, pushers: usize) -> anyhow::Result<Report> {
    let cluster = std::sync::Arc::new(cluster);
    let url = cluster.lb()?;
    let workload = Workload::start(&url, pushers, rand::random::<u32>() as u64 * 1_000_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe_http = reqwest::Client::builder().timeout(PROBE_TIMEOUT).build()?;
    let mut failover_ms = Vec::new();
    for k in 0..times {
        let mut leader = None;
        for _ in 0..100 {
            let c = cluster.clone();
            leader = blocking(move || c.leader()).await;
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(leader) = leader else { bail!("fault {k}: no leader") };
        let c = cluster.clone();
        let struck = Instant::now();
        let (hold, signal) = match fault {
            Fault::Kill(down) => (down, "KILL"),
            Fault::Pause(pause) => (pause, "STOP"),
        };
        match fault {
            Fault::Kill(_) => blocking(move || c.kill(leader)).await?,
            Fault::Pause(_) => blocking(move || c.signal(leader, "STOP")).await?,
        }
        // The node recovers on schedule, whatever the probes below are waiting for.
        let recovery = {
            let c = cluster.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold.saturating_sub(struck.elapsed())).await;
                match fault {
                    Fault::Kill(_) => blocking(move || c.start(leader)).await,
                    Fault::Pause(_) => blocking(move || c.signal(leader, "CONT")).await,
                }
            })
        };
        // The first write acknowledged after the fault: a new leader has committed it. Like
        // a retrying client, a probe that hangs (the balancer sent it to the frozen node) is
        // given up after `PROBE_TIMEOUT` and sent again.
        let mut probe = 0u64;
        loop {
            probe += 1;
            let data = workload::bytes(rand::random(), 64);
            if workload::push_blob(&probe_http, &url, "chaos/probe", &data).await.is_ok() {
                break;
            }
            if struck.elapsed() > Duration::from_secs(60) {
                let _ = recovery.await;
                bail!("fault {k}: no write succeeded within 60 s of SIG{signal} to node {leader} ({probe} tries)");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failover_ms.push(struck.elapsed().as_millis() as u64);
        recovery.await??;
        // Let it rejoin (or step down) before the next fault, so a majority stays possible.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, failed) = workload.stop().await;
    let lost = check(&url, &acked).await;
    Ok(Report { acknowledged: acked.len(), lost, failed, failover_ms })
}
