//! The chaos smoke test CI runs: a local cluster (3 voters, 2 frontends, nginx), pushes through
//! the load balancer while the leader is killed and restarted, then every acknowledged push is
//! pulled back. Prints the count of lost pushes, which must be 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_chaos::{leader_kills, LocalCluster};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `berth` binary of the current build (never a stale one).
fn berth_bin() -> PathBuf {
    berth_chaos::binary::current_berth(&repo_root())
}

fn nginx_present() -> bool {
    let ok = std::process::Command::new("sh").args(["-c", "command -v nginx"]).output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("nginx is required in CI but is not installed");
    }
    ok
}

/// A local cluster of 3 voters and 2 frontends behind nginx, from the current build; None
/// (the test skips) where nginx is missing outside CI.
fn cluster_up() -> Option<(tempfile::TempDir, LocalCluster)> {
    if !nginx_present() {
        eprintln!("SKIP: nginx is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = handle(&dir);
    cluster.up(3, 2).unwrap();
    Some((dir, cluster))
}

/// A second handle on the same cluster, for the chaos run to own.
fn handle(dir: &tempfile::TempDir) -> LocalCluster {
    LocalCluster::new(&repo_root().join("deploy/local/cluster.sh"), dir.path(), Some(&berth_bin()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_lose_no_acknowledged_push() {
    let Some((dir, cluster)) = cluster_up() else { return };
    let _down = cluster.down_on_drop();
    let report = leader_kills(handle(&dir), 4, 4, Duration::from_millis(1500)).await.unwrap();
    println!("chaos: {}", report.summary());
    for l in &report.lost {
        println!("LOST {l}");
    }
    assert!(report.acknowledged > 20, "too few pushes acknowledged to mean anything: {}", report.summary());
    assert!(report.lost.is_empty(), "acknowledged pushes lost: {}", report.summary());
}

/// A gray failure: the leader freezes (SIGSTOP) with its sockets open. Writes through the
/// load balancer go on under a new leader (forwarded calls give up on the frozen one), the
/// old leader steps down when it thaws, and no acknowledged push is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_routed_around_and_steps_down_when_it_thaws() {
    let Some((dir, cluster)) = cluster_up() else { return };
    let _down = cluster.down_on_drop();
    let frozen = cluster.leader().expect("a leader");
    let fault = berth_chaos::Fault::Pause(Duration::from_secs(4));
    let report = berth_chaos::leader_faults(handle(&dir), fault, 2, 4).await.unwrap();
    println!("chaos (pause): {}", report.summary());
    assert!(report.lost.is_empty(), "acknowledged pushes lost: {}", report.summary());
    assert!(report.acknowledged > 20, "too few pushes acknowledged to mean anything: {}", report.summary());
    // One leader afterwards, and the first frozen one follows it.
    let status = cluster.run(&["status"]).unwrap();
    let leaders = status.lines().filter(|l| l.contains("state=Leader")).count();
    assert_eq!(leaders, 1, "{status}");
    println!("first frozen leader: node {frozen}\n{status}");
}
