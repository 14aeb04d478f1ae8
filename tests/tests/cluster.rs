//! Three voters over gRPC on loopback: bootstrap, join as learners, promote, replicate,
//! refuse a reused node id, lose the leader and elect a new one with nothing lost, and let
//! the old leader rejoin as a follower.

use std::time::Duration;

use berth_tests::{berth_cluster, init_tracing, random_bytes, Berth, Registry};

/// `leader N` from `berth cluster status`, or None while there is none.
fn leader(grpc: &str) -> Option<u64> {
    let out = std::process::Command::new(berth_tests::berth_bin()).args(["cluster", "status", "--node", grpc]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("leader ")).and_then(|n| n.trim().parse().ok()).filter(|n| *n != 0)
}

async fn wait_for_leader(grpc: &str, not: Option<u64>) -> u64 {
    for _ in 0..100 {
        if let Some(l) = leader(grpc) {
            if Some(l) != not {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no new leader seen by {grpc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_replicate_and_survive_the_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // One site: every node shares the blob store.
    let shared = dir.path().join("blobs");
    let shared_env = shared.to_str().unwrap().to_string();
    let start = |id: &str, bootstrap: &str| {
        Berth::start(
            &dir.path().join(format!("node{id}")),
            None,
            &[
                ("REGISTRY_BERTH_NODEID", id),
                ("REGISTRY_BERTH_BOOTSTRAP", bootstrap),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", &shared_env),
            ],
        )
    };
    tracing::info!("bootstrap node 1, start nodes 2 and 3 empty");
    let mut nodes = vec![start("1", "true"), start("2", "false"), start("3", "false")];
    let first = nodes[0].grpc_addr.clone();
    for (i, n) in nodes.iter().enumerate().skip(1) {
        berth_cluster(&["add-learner", "--node", &first, "--id", &(i + 1).to_string(), "--addr", &n.grpc_addr]);
    }
    berth_cluster(&["change-membership", "--node", &first, "--voters", "1,2,3"]);
    let status = berth_cluster(&["status", "--node", &nodes[2].grpc_addr]);
    assert!(status.contains("leader 1"), "{status}");
    assert_eq!(status.matches(" voter ").count(), 3, "{status}");

    tracing::info!("a reused node id is refused");
    let out = std::process::Command::new(berth_tests::berth_bin())
        .args(["cluster", "add-learner", "--node", &first, "--id", "2", "--addr", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never reused"));

    tracing::info!("a push through a follower is forwarded, and visible at once on another follower");
    let via_follower = random_bytes(500, 3000);
    let d = Registry::new(&nodes[1].url).push_blob("cluster/app", &via_follower).await.unwrap();
    assert_eq!(Registry::new(&nodes[2].url).get_blob("cluster/app", &d).await.unwrap(), via_follower);

    tracing::info!("one upload: POST on node 1, PATCH on node 2, PUT on node 3");
    let data = random_bytes(501, 200_000);
    let (r1, r2, r3) = (Registry::new(&nodes[0].url), Registry::new(&nodes[1].url), Registry::new(&nodes[2].url));
    let r = r1.http.post(r1.abs("/v2/cluster/spread/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = r2.http.patch(r2.abs(&loc)).body(data[..120_000].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let digest = berth_proto::Digest::sha256_of(&data);
    let r = r3.http.put(r3.abs(&format!("{loc}&digest={digest}"))).body(data[120_000..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(r1.get_blob("cluster/spread", &digest).await.unwrap(), data);

    tracing::info!("pushes on the leader replicate");
    let reg = Registry::new(&nodes[0].url);
    let mut pushed = Vec::new();
    for i in 0..20u64 {
        let data = random_bytes(i, 1000);
        pushed.push((reg.push_blob("cluster/app", &data).await.unwrap(), data));
    }

    tracing::info!("kill the leader; a new one is elected among 2 and 3");
    nodes[0].kill9();
    let new_leader = wait_for_leader(&nodes[1].grpc_addr, Some(1)).await;
    assert!(new_leader == 2 || new_leader == 3);
    let reg = Registry::new(&nodes[new_leader as usize - 1].url);
    for (d, data) in &pushed {
        assert_eq!(&reg.get_blob("cluster/app", d).await.unwrap(), data, "acknowledged push lost");
    }
    let after = random_bytes(100, 1000);
    let d = reg.push_blob("cluster/app", &after).await.unwrap();

    tracing::info!("the old leader rejoins as a follower and catches up");
    nodes[0].restart();
    // Right after restart it may still report its own stale term; it must converge.
    let mut seen = None;
    for _ in 0..100 {
        seen = leader(&nodes[0].grpc_addr);
        if seen == Some(new_leader) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, Some(new_leader), "the old leader did not follow the new one");
    let reg = Registry::new(&nodes[new_leader as usize - 1].url);
    assert_eq!(reg.get_blob("cluster/app", &d).await.unwrap(), after);
    let status = berth_cluster(&["status", "--node", &nodes[0].grpc_addr]);
    println!("{status}");
    assert!(!status.contains("unreachable"), "{status}");
}
