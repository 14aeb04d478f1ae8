//! The push workload and the checker: pushers push small images through one URL (the load
//! balancer) and remember each push the registry acknowledged (201 for the manifest); the
//! checker pulls every one of them back and verifies it byte for byte.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context};
use berth_proto::Digest;
use rand::{RngCore, SeedableRng};

/// An image whose push was acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Repository.
    pub repo: String,
    /// Tag it was pushed by.
    pub tag: String,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// Its blobs: digest and the seed and length that regenerate the bytes.
    pub blobs: Vec<(Digest, u64, usize)>,
}

/// Deterministic bytes for a seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// An HTTP client for the workload: no redirects, bounded request time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client")
}

/// Pushes one blob; Ok only on 201.
pub async fn push_blob(http: &reqwest::Client, url: &str, repo: &str, data: &[u8]) -> anyhow::Result<Digest> {
    let d = Digest::sha256_of(data);
    let r = http.post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}")).body(data.to_vec()).send().await?;
    ensure!(r.status() == 201, "blob push: {}", r.status());
    Ok(d)
}

/// Pushes a config blob, a layer and a manifest tagged `tag`; Ok only when all were acknowledged.
pub async fn push_image(http: &reqwest::Client, url: &str, repo: &str, tag: &str, seed: u64) -> anyhow::Result<Acked> {
    let (cs, ls) = (seed * 2, seed * 2 + 1);
    let (clen, llen) = (150 + (seed % 50) as usize, 2000 + (seed % 3000) as usize);
    let cd = push_blob(http, url, repo, &bytes(cs, clen)).await?;
    let ld = push_blob(http, url, repo, &bytes(ls, llen)).await?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": clen},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": llen}],
    }))?;
    let r = http
        .put(format!("{url}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await?;
    ensure!(r.status() == 201, "manifest push: {}", r.status());
    Ok(Acked { repo: repo.into(), tag: tag.into(), manifest, blobs: vec![(cd, cs, clen), (ld, ls, llen)] })
}

/// Pushers running in the background.
pub struct Workload {
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts `pushers` tasks pushing to `url`; seeds start at `first_seed`.
    pub fn start(url: &str, pushers: usize, first_seed: u64) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first_seed));
        let tasks = (0..pushers)
            .map(|p| {
                let (url, acked, failed, stop, next) = (url.to_string(), acked.clone(), failed.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        let seed = next.fetch_add(1, Ordering::Relaxed);
                        match push_image(&http, &url, &format!("chaos/p{p}"), &format!("s{seed}"), seed).await {
                            Ok(a) => acked.lock().unwrap().push(a),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Workload { acked, failed, stop, tasks }
    }

    /// Acknowledged pushes so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the pushers; returns what was acknowledged and how many pushes failed.
    pub async fn stop(self) -> (Vec<Acked>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

/// Pulls every acknowledged image back through `url` (8 at a time); returns a description of
/// each one that is missing or different.
pub async fn check(url: &str, acked: &[Acked]) -> Vec<String> {
    let chunks: Vec<Vec<Acked>> = acked.chunks(acked.len().div_ceil(8).max(1)).map(<[Acked]>::to_vec).collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let url = url.to_string();
            tokio::spawn(async move {
                let http = client();
                let mut lost = Vec::new();
                for a in chunk {
                    if let Err(e) = check_one(&http, &url, &a).await {
                        lost.push(format!("{}:{}: {e:#}", a.repo, a.tag));
                    }
                }
                lost
            })
        })
        .collect();
    let mut lost = Vec::new();
    for t in tasks {
        lost.extend(t.await.unwrap_or_else(|e| vec![format!("checker task failed: {e}")]));
    }
    lost
}

async fn check_one(http: &reqwest::Client, url: &str, a: &Acked) -> anyhow::Result<()> {
    // A read may land on a node that is still catching up; linearizable reads make it wait,
    // but a node that is restarting can refuse: retry those.
    let mut tries = 0;
    let body = loop {
        let r = http
            .get(format!("{url}/v2/{}/manifests/{}", a.repo, a.tag))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => break r.bytes().await?,
            Ok(r) if r.status() != 503 || tries > 20 => anyhow::bail!("manifest GET: {}", r.status()),
            Err(e) if tries > 20 => return Err(e).context("manifest GET"),
            _ => {}
        }
        tries += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(body.as_ref() == a.manifest.as_slice(), "manifest bytes differ");
    for (d, seed, len) in &a.blobs {
        let r = http.get(format!("{url}/v2/{}/blobs/{d}", a.repo)).send().await?;
        ensure!(r.status() == 200, "blob {d}: {}", r.status());
        let got = r.bytes().await?;
        ensure!(Digest::sha256_of(&got) == *d && got.as_ref() == bytes(*seed, *len).as_slice(), "blob {d} differs");
    }
    Ok(())
}
