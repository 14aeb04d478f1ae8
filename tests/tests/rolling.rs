//! A rolling restart, as a StatefulSet's rolling update or an operator's upgrade does it:
//! every voter in turn is stopped with SIGTERM and started again on its data, while a client
//! pushes images through a frontend without pause, retrying what fails. No push is lost, each
//! acknowledged image reads back from every node, and the leader, when stopped, hands its
//! leadership over instead of leaving the others to time out. The write gap of each restart
//! is printed (BENCHMARKS.md records it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_tests::{cluster_leader, frontend, image_manifest, init_tracing, random_bytes, voter_cluster, Berth, Registry};

const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes one small image (config, layer, manifest under `tag`); the manifest on success.
async fn push(reg: &Registry, tag: &str, seed: u64) -> anyhow::Result<Vec<u8>> {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = random_bytes(seed, 2048);
    let c = reg.push_blob("rolling/app", &config).await?;
    let l = reg.push_blob("rolling/app", &layer).await?;
    let manifest = image_manifest((&c, config.len()), &[(&l, layer.len())]);
    reg.push_manifest("rolling/app", tag, &manifest, MEDIA).await?;
    Ok(manifest)
}

#[derive(Default)]
struct Log {
    /// (tag, manifest, when acknowledged)
    acked: Vec<(String, Vec<u8>, Instant)>,
    /// Failed tries, each retried.
    retries: u64,
}

/// The longest time between two acknowledgements inside [from, to].
fn gap(log: &Log, from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = log.acked.iter().map(|a| a.2).filter(|t| *t >= from && *t <= to).collect();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(to - from)
}

async fn wait_serving(node: &Berth) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        let ready = http.get(format!("{}/v2/", node.url)).send().await.is_ok_and(|r| r.status() == 200);
        if ready && cluster_leader(&node.grpc_addr).is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "node at {} did not come back", node.url);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_voter_loses_no_push() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut voters = voter_cluster(dir.path(), 3, &[]);
    let fe = frontend(dir.path(), "fe", &voters, &[]);
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));

    let pusher = {
        let (reg, log, stop) = (Registry::new(&fe.url), log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let tag = format!("t{i}");
                loop {
                    match push(&reg, &tag, i).await {
                        Ok(m) => {
                            log.lock().unwrap().acked.push((tag.clone(), m, Instant::now()));
                            break;
                        }
                        Err(e) => {
                            tracing::info!("push {tag} failed, retrying: {e:#}");
                            log.lock().unwrap().retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A StatefulSet updates from the highest ordinal down; node 1 (the founder) leads, so the
    // leader goes last, and then the new leader is restarted once more.
    let mut order: Vec<usize> = vec![2, 1, 0];
    let mut report = Vec::new();
    for round in 0..4 {
        let idx = if round < 3 { order.remove(0) } else {
            let leader = cluster_leader(&voters[0].grpc_addr).expect("a leader");
            (leader - 1) as usize
        };
        let id = idx + 1;
        let was_leader = cluster_leader(&voters[(idx + 1) % 3].grpc_addr) == Some(id as u64);
        tracing::info!(id, was_leader, "rolling: stopping node with SIGTERM");
        let from = Instant::now();
        let took = voters[idx].terminate();
        tokio::time::sleep(Duration::from_millis(500)).await;
        voters[idx].restart();
        wait_serving(&voters[idx]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let to = Instant::now();
        let g = gap(&log.lock().unwrap(), from, to);
        if was_leader {
            let text = std::fs::read_to_string(&voters[idx].log).unwrap();
            assert!(text.contains("handed the leadership over"), "node {id} stopped as leader without handing over:\n{text}");
        }
        report.push(format!("node {id} ({}): exit {} ms, longest write gap {} ms", if was_leader { "leader" } else { "follower" }, took.as_millis(), g.as_millis()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    pusher.await.unwrap();

    let log = log.lock().unwrap();
    println!("rolling restart: {} images pushed, {} tries retried", log.acked.len(), log.retries);
    for line in &report {
        println!("rolling restart: {line}");
    }
    assert!(log.acked.len() > 20, "too few pushes to mean anything: {}", log.acked.len());
    assert!(report.iter().filter(|l| l.contains("(leader)")).count() >= 1, "no leader was restarted: {report:?}");

    // Every acknowledged image, from every node.
    for node in voters.iter().chain(std::iter::once(&fe)) {
        let reg = Registry::new(&node.url);
        for (tag, manifest, _) in log.acked.iter() {
            let (status, body) = reg.get_manifest("rolling/app", tag).await.unwrap();
            assert_eq!(status, 200, "{tag} at {}", node.url);
            assert_eq!(&body, manifest, "{tag} at {}", node.url);
        }
    }
}
