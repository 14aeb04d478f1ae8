//! Manifest PUT latency: pushes one small image's blobs, then COUNT manifest PUTs (each to
//! its own tag) from CONCURRENCY clients, and prints the p50, p99 and max latency and the
//! rate. Used for the cluster figures in BENCHMARKS.md (`tests/bench/cluster.sh`).
//!
//! Usage: berth-put-latency URL CONCURRENCY COUNT

use std::time::{Duration, Instant};

use berth_tests::{image_manifest, random_bytes, Registry, OCI_MANIFEST};
use futures::StreamExt;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: berth-put-latency URL CONCURRENCY COUNT";
    let reg = Registry::new(args.get(1).expect(usage));
    let concurrency: usize = args.get(2).expect(usage).parse().expect(usage);
    let count: usize = args.get(3).expect(usage).parse().expect(usage);
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let cfg = random_bytes(run, 300);
    let layer = random_bytes(run + 1, 4096);
    let c = reg.push_blob("bench/put", &cfg).await.unwrap();
    let l = reg.push_blob("bench/put", &layer).await.unwrap();
    let manifest = image_manifest((&c, cfg.len()), &[(&l, layer.len())]);
    let t = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..count)
        .map(|i| {
            let (reg, manifest) = (reg.clone(), manifest.clone());
            async move {
                let t = Instant::now();
                reg.push_manifest("bench/put", &format!("c{concurrency}-{run}-{i}"), &manifest, OCI_MANIFEST).await.unwrap();
                t.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let total = t.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "manifest_put c={concurrency} n={count} p50_ms {:.2} p99_ms {:.2} max_ms {:.2} rate_per_s {:.0}",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        count as f64 / total.as_secs_f64()
    );
}
