//! Network partitions: three voters, each in its own network namespace on a private bridge
//! (`berth_chaos::TestNet`), and a frontend in the test's own namespace. Links between voters
//! are cut with blackhole routes while every node keeps running and keeps answering clients,
//! so the minority really is alive and reachable, just cut off from its peers.

use std::time::{Duration, Instant};

use berth_chaos::{check, TestNet, Workload};
use berth_tests::{cluster_leader, frontend, init_tracing, push_image, voter_cluster_on, wait_for_leader, Registry, OCI_MANIFEST};

/// Nodes leave loopback here, so their gRPC must be allowed in the clear (the mutual-TLS test
/// covers the secure setup).
const PLAIN: (&str, &str) = ("REGISTRY_BERTH_INSECUREPLAINTEXT", "true");

/// A test network, or None (skip) where the machine cannot make one; in CI that fails instead.
fn test_net(hosts: usize) -> Option<TestNet> {
    if let Some(why) = TestNet::unavailable() {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{why}");
        eprintln!("SKIP: {why}");
        return None;
    }
    Some(TestNet::new(hosts).expect("test network"))
}

/// PUTs `manifest` as `repo:tag` on `reg` and returns the status and how long it took.
async fn try_put_manifest(reg: &Registry, repo: &str, tag: &str, manifest: &[u8]) -> (u16, Duration, bool) {
    let t = Instant::now();
    let r = reg
        .http
        .put(reg.abs(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.to_vec())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("the node must answer, not drop the request");
    let retry_after = r.headers().contains_key("retry-after");
    (r.status().as_u16(), t.elapsed(), retry_after)
}

/// Waits until the nodes at `grpc` all name the same leader, and returns it.
async fn wait_for_agreement(grpc: &[&str]) -> u64 {
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = grpc.iter().map(|g| cluster_leader(g)).collect::<Vec<_>>();
        if seen[0].is_some() && seen.iter().all(|l| *l == seen[0]) {
            return seen[0].unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{grpc:?} do not agree on a leader: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_refuses_writes_and_steps_down_after_healing() {
    init_tracing();
    let Some(net) = test_net(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let voters = voter_cluster_on(Some(&net), dir.path(), 3, &[PLAIN]);
    let fe = frontend(dir.path(), "fe", &voters, &[PLAIN]);
    let reg = |i: usize| Registry::new(&voters[i - 1].url);
    assert_eq!(cluster_leader(&voters[1].grpc_addr), Some(1));

    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..3 {
        let tag = format!("before-{i}");
        acked.push((tag.clone(), push_image(&reg(1), "part/app", &tag, 100 + i).await));
    }

    tracing::info!("cut the leader (node 1) off from nodes 2 and 3");
    net.isolate(1).unwrap();

    // The old leader is alive and answers, but cannot commit: a write is refused with 503,
    // within a bound, and never reported as done. Its blobs are already stored, so only the
    // manifest's metadata write is at stake.
    let refused = acked[0].1.clone();
    let (status, took, retry_after) = try_put_manifest(&reg(1), "part/app", "refused-by-minority", &refused).await;
    assert_eq!(status, 503, "a write on the cut-off leader must be refused");
    assert!(retry_after, "503 without Retry-After");
    assert!(took < Duration::from_secs(12), "the refusal took {took:?}");
    // Reads are linearizable, so the minority cannot serve them either.
    let r = reg(1).http.get(reg(1).abs("/v2/part/app/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), 503, "a read on the cut-off leader must be refused");

    let new = wait_for_leader(&voters[1].grpc_addr, Some(1)).await;
    tracing::info!(new, "the majority elected a new leader");
    for (i, via) in [reg(new as usize), reg(if new == 2 { 3 } else { 2 }), Registry::new(&fe.url)].iter().enumerate() {
        let tag = format!("during-{i}");
        // Just after the election the other voter (and so the frontend) may not know the new
        // leader yet, or a second election may follow a split vote: a push may be refused
        // (503, nothing acknowledged) for a moment, as a client would see and retry.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let manifest = loop {
            match berth_tests::try_push_image(via, "part/app", &tag, 200 + 10 * i as u64).await {
                Ok(m) => break m,
                Err(e) if format!("{e:#}").contains("503") && std::time::Instant::now() < deadline => {
                    tracing::info!("refused for now, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("push {tag} through the majority: {e:#}"),
            }
        };
        acked.push((tag, manifest));
    }
    // The cut-off node still refuses, now at once: it knows it has lost its majority.
    let (status, took, _) = try_put_manifest(&reg(1), "part/app", "refused-again", &refused).await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(3), "a leader known to have lost its quorum took {took:?} to refuse");

    tracing::info!("heal: node 1 steps down and catches up");
    net.heal().unwrap();
    let leader_now = wait_for_agreement(&[&voters[0].grpc_addr, &voters[1].grpc_addr, &voters[2].grpc_addr]).await;
    assert_ne!(leader_now, 1, "the cut-off leader must not come back as leader with a stale log");
    for node in 1..=3 {
        for (tag, manifest) in &acked {
            let (status, body) = reg(node).get_manifest("part/app", tag).await.unwrap();
            assert_eq!(status, 200, "node {node}: acknowledged {tag} lost");
            assert_eq!(&body, manifest, "node {node}: {tag} differs");
        }
        for tag in ["refused-by-minority", "refused-again"] {
            let (status, _) = reg(node).get_manifest("part/app", tag).await.unwrap();
            assert_eq!(status, 404, "node {node}: {tag} was refused with 503 but appeared later");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_follower_refuses_writes_and_catches_up_after_healing() {
    init_tracing();
    let Some(net) = test_net(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let voters = voter_cluster_on(Some(&net), dir.path(), 3, &[PLAIN]);
    let reg = |i: usize| Registry::new(&voters[i - 1].url);
    let before = push_image(&reg(3), "part/f", "before", 300).await;

    tracing::info!("cut follower 3 off");
    net.isolate(3).unwrap();
    let t = Instant::now();
    let (status, took, retry_after) = try_put_manifest(&reg(3), "part/f", "refused", &before).await;
    assert_eq!((status, retry_after), (503, true), "a write on the cut-off follower must be refused with Retry-After");
    assert!(took < Duration::from_secs(15), "the refusal took {took:?}");
    let r = reg(3).http.get(reg(3).abs("/v2/part/f/manifests/before")).send().await.unwrap();
    assert_eq!(r.status(), 503, "a read on the cut-off follower must be refused, not answered from stale state");
    tracing::info!(?took, since_cut = ?t.elapsed(), "the follower refused");

    // The majority carries on.
    let during = push_image(&reg(1), "part/f", "during", 310).await;
    assert_eq!(reg(2).get_manifest("part/f", "during").await.unwrap(), (reqwest::StatusCode::OK, during.clone()));

    tracing::info!("heal: the follower rejoins (its elections may unseat the leader once) and catches up");
    net.heal().unwrap();
    let mut seen = None;
    for _ in 0..200 {
        seen = reg(3).get_manifest("part/f", "during").await.ok().filter(|(s, _)| *s == 200);
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.map(|(_, b)| b), Some(during), "the healed follower does not serve the majority's write");
    let leader = wait_for_leader(&voters[2].grpc_addr, None).await;
    // The refused write's bytes sat in node 3's socket and reach the leader once the link
    // heals (TCP retransmits them); the leader must see that the sender gave up and drop it.
    for node in 1..=3 {
        assert_eq!(reg(node).get_manifest("part/f", "before").await.unwrap().1, before, "node {node} (leader {leader})");
        assert_eq!(reg(node).get_manifest("part/f", "refused").await.unwrap().0, 404, "node {node}: a refused write appeared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_through_repeated_leader_partitions_lose_nothing() {
    init_tracing();
    let Some(net) = test_net(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let voters = voter_cluster_on(Some(&net), dir.path(), 3, &[PLAIN]);
    let fe = frontend(dir.path(), "fe", &voters, &[PLAIN]);
    // Pushers on the frontend and on every voter: those on a cut-off node see refusals, the
    // others carry on.
    let seed = rand::random::<u32>() as u64 * 1_000_000;
    let mut workloads = vec![Workload::start(&fe.url, 2, seed)];
    for (i, v) in voters.iter().enumerate() {
        workloads.push(Workload::start(&v.url, 1, seed + (i as u64 + 1) * 100_000));
    }
    for round in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = wait_for_leader(&voters[0].grpc_addr, None).await;
        tracing::info!(round, leader, "cut the leader off for at least 4 s");
        let cut = Instant::now();
        net.isolate(leader as usize).unwrap();
        let other = &voters[leader as usize % 3];
        // This test is about losing nothing; election time is measured by the failover
        // benchmark. One CI run saw no election within 10 s here (openraft 0.9's known
        // election stalls, ARCHITECTURE.md), so the two voters left get 20 s.
        let deadline = Instant::now() + Duration::from_secs(20);
        let new = loop {
            match cluster_leader(&other.grpc_addr) {
                Some(l) if l != leader => break l,
                _ if Instant::now() > deadline => panic!("no new leader within 20 s of cutting off {leader}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        tokio::time::sleep(Duration::from_secs(4).saturating_sub(cut.elapsed())).await;
        net.heal().unwrap();
        tracing::info!(round, new, "healed");
        let all: Vec<&str> = voters.iter().map(|v| v.grpc_addr.as_str()).collect();
        wait_for_agreement(&all).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut acked, mut failed) = (Vec::new(), 0);
    for w in workloads {
        let (a, f) = w.stop().await;
        acked.extend(a);
        failed += f;
    }
    let lost = check(&fe.url, &acked).await;
    println!("partitions: acknowledged={} lost={} failed_requests={failed} rounds=3", acked.len(), lost.len());
    assert!(acked.len() >= 30, "too few pushes were acknowledged to mean anything: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged pushes lost: {lost:?}");
}
