//! Metadata at scale: fills a registry with many repositories, manifests and tags through the
//! HTTP API, then measures the reads that must stay fast however much is stored. Used by
//! `tests/bench/scale.sh` for BENCHMARKS.md.
//!
//! ```text
//! berth-scale fill URL REPOS MANIFESTS TAGS BIG_REPO_TAGS CONCURRENCY
//! berth-scale measure URL REPOS BIG_REPO_TAGS
//! berth-scale large-push|large-read URL COUNT BYTES
//! berth-scale garbage URL COUNT CONCURRENCY
//! ```
//!
//! `fill` makes repositories `scale/r00000`.. each with MANIFESTS/REPOS distinct manifests
//! (one config and one layer, linked once per repository) and (TAGS-BIG_REPO_TAGS)/REPOS tags
//! spread over them, plus `scale/big` with BIG_REPO_TAGS tags. Every PUT must answer 201.
//! `measure` prints p50/p99 latencies of: the big repository's first tag page (n=100), its
//! pages after a random `last=`, catalog pages after a random `last=`, and manifest GETs by tag.
//! `large-push` pushes COUNT distinct manifests of about BYTES each to `scale/large` (the bulk
//! is a layer annotation, which no index keeps); `large-read` reads each back and checks it.
//! `garbage` uploads COUNT distinct 1 KiB blobs to `gc/garbage` that no manifest uses: work
//! for the garbage collector (`tests/bench/gc.sh`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_tests::{random_bytes, Registry, OCI_MANIFEST};
use futures::StreamExt;

const BIG: &str = "scale/big";

fn repo(i: u64) -> String {
    format!("scale/r{i:05}")
}
fn tag(j: u64) -> String {
    format!("v{j:06}")
}

/// A manifest that differs from every other by its annotation.
fn manifest(config: &str, layer: &str, n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 300},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 4096}],
        "annotations": {"org.example.n": n.to_string()},
    }))
    .unwrap()
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, usage: &str) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{usage}"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: berth-scale fill URL REPOS MANIFESTS TAGS BIG_REPO_TAGS CONCURRENCY | measure URL REPOS BIG_REPO_TAGS | large-push|large-read URL COUNT BYTES | garbage URL COUNT CONCURRENCY";
    let reg = Registry::new(args.get(2).expect(usage));
    match args.get(1).map(String::as_str) {
        Some("fill") => {
            let (repos, manifests, tags, big, conc): (u64, u64, u64, u64, usize) =
                (arg(&args, 3, usage), arg(&args, 4, usage), arg(&args, 5, usage), arg(&args, 6, usage), arg(&args, 7, usage));
            fill(&reg, repos, manifests, tags, big, conc).await
        }
        Some("measure") => measure(&reg, arg(&args, 3, usage), arg(&args, 4, usage)).await,
        Some("large-push") => large(&reg, arg(&args, 3, usage), arg(&args, 4, usage), false).await,
        Some("large-read") => large(&reg, arg(&args, 3, usage), arg(&args, 4, usage), true).await,
        Some("garbage") => garbage(&reg, arg(&args, 3, usage), arg(&args, 4, usage)).await,
        _ => panic!("{usage}"),
    }
}

async fn garbage(reg: &Registry, count: u64, conc: usize) {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let t = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(conc, |i| {
            let reg = reg.clone();
            async move {
                reg.push_blob("gc/garbage", &random_bytes(seed.wrapping_add(i), 1024)).await.unwrap();
            }
        })
        .await;
    let secs = t.elapsed().as_secs_f64();
    println!("garbage {count} blobs uploaded in {secs:.1} s ({:.0}/s)", count as f64 / secs);
}

async fn fill(reg: &Registry, repos: u64, manifests: u64, tags: u64, big: u64, conc: usize) {
    let cfg = random_bytes(1, 300);
    let layer = random_bytes(2, 4096);
    let (c, l) = (berth_proto::Digest::sha256_of(&cfg).to_string(), berth_proto::Digest::sha256_of(&layer).to_string());
    let per_repo_m = (manifests / repos).max(1);
    let per_repo_t = (tags.saturating_sub(big) / repos).max(1);
    let t = Instant::now();
    // Blobs first: each repository links the same two.
    let all: Vec<String> = (0..repos).map(repo).chain([BIG.to_string()]).collect();
    futures::stream::iter(all.clone())
        .for_each_concurrent(conc, |r| {
            let (reg, cfg, layer) = (reg.clone(), cfg.clone(), layer.clone());
            async move {
                reg.push_blob(&r, &cfg).await.unwrap();
                reg.push_blob(&r, &layer).await.unwrap();
            }
        })
        .await;
    println!("blobs linked in {} repositories in {:.1} s", all.len(), t.elapsed().as_secs_f64());
    // Then every tag; a repository's first PUT of each manifest stores it.
    let ops = all.iter().enumerate().flat_map(|(i, r)| {
        let n = if r == BIG { big } else { per_repo_t };
        (0..n).map(move |j| (r.clone(), j, i as u64 * per_repo_m + j % per_repo_m))
    });
    let done = Arc::new(AtomicU64::new(0));
    let total = repos * per_repo_t + big;
    let t = Instant::now();
    futures::stream::iter(ops)
        .for_each_concurrent(conc, |(r, j, m)| {
            let (reg, done, body) = (reg.clone(), done.clone(), manifest(&c, &l, m));
            async move {
                let mut tries = 0;
                loop {
                    match reg.push_manifest(&r, &tag(j), &body, OCI_MANIFEST).await {
                        Ok(_) => break,
                        Err(e) if tries < 5 => {
                            tries += 1;
                            eprintln!("retrying {r}:{}: {e}", tag(j));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("{r}:{}: {e}", tag(j)),
                    }
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 50_000 == 0 {
                    eprintln!("{n} of {total} tags, {:.0}/s", n as f64 / t.elapsed().as_secs_f64());
                }
            }
        })
        .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "filled: {} repositories, {} distinct manifests, {total} tags in {secs:.0} s ({:.0} tag PUTs/s at concurrency {conc})",
        all.len(),
        repos * per_repo_m + per_repo_m.min(big),
        total as f64 / secs
    );
}

/// p50 and p99 of `n` sequential requests from `url(i)`, each of which must answer 200.
async fn latency(reg: &Registry, what: &str, n: u64, accept: &str, url: impl Fn(u64) -> String) {
    let http = reqwest::Client::new();
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n {
        let u = reg.abs(&url(i));
        let t = Instant::now();
        let r = http.get(&u).header("Accept", accept).send().await.unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        times.push(t.elapsed());
        assert_eq!(status, 200, "{u}: {}", String::from_utf8_lossy(&body));
    }
    times.sort();
    let ms = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].as_secs_f64() * 1000.0;
    println!("{what}: n={n} p50_ms {:.2} p99_ms {:.2} max_ms {:.2}", ms(0.5), ms(0.99), ms(1.0));
}

async fn measure(reg: &Registry, repos: u64, big: u64) {
    // A fixed sequence of pseudo-random picks, so runs compare.
    let pick = |i: u64, n: u64| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) % n.max(1);
    latency(reg, "big repository, first tag page (n=100)", 200, "*/*", |_| format!("/v2/{BIG}/tags/list?n=100")).await;
    latency(reg, "big repository, tag page after a random last= (n=100)", 200, "*/*", |i| {
        format!("/v2/{BIG}/tags/list?n=100&last={}", tag(pick(i, big)))
    })
    .await;
    latency(reg, "catalog page after a random last= (n=100)", 200, "*/*", |i| format!("/v2/_catalog?n=100&last={}", repo(pick(i, repos)))).await;
    latency(reg, "manifest GET by tag, random repository", 2000, OCI_MANIFEST, |i| {
        format!("/v2/{}/manifests/{}", repo(pick(i, repos)), tag(0))
    })
    .await;
}

async fn large(reg: &Registry, count: u64, bytes: usize, read: bool) {
    const REPO: &str = "scale/large";
    let cfg = random_bytes(1, 300);
    let layer = random_bytes(2, 4096);
    let (c, l) = (berth_proto::Digest::sha256_of(&cfg).to_string(), berth_proto::Digest::sha256_of(&layer).to_string());
    if !read {
        reg.push_blob(REPO, &cfg).await.unwrap();
        reg.push_blob(REPO, &layer).await.unwrap();
    }
    let body = |i: u64| {
        let pad: String = random_bytes(1000 + i, bytes / 2).iter().map(|b| format!("{b:02x}")).collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": 300},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": 4096,
                        "annotations": {"org.example.padding": pad}}],
        }))
        .unwrap()
    };
    let t = Instant::now();
    for i in 0..count {
        if read {
            let (status, got) = reg.get_manifest(REPO, &format!("large-{i}")).await.unwrap();
            assert_eq!(status, 200);
            assert!(got == body(i), "large-{i} came back different");
        } else {
            reg.push_manifest(REPO, &format!("large-{i}"), &body(i), OCI_MANIFEST).await.unwrap();
        }
    }
    let what = if read { "read back and checked" } else { "pushed" };
    println!("large: {count} manifests of {} bytes {what} in {:.1} s", body(0).len(), t.elapsed().as_secs_f64());
}
