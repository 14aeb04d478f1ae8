//! Measures one registry over the distribution API: 1 GiB monolithic push, 1 GiB chunked
//! push (16 MiB PATCHes), 1 GiB pull, 10,000 tag pushes and tag listing. Prints one
//! `name value unit` line per figure. Manifest GET throughput is measured with `wrk`
//! by `tests/bench/compare.sh`, against the manifest this tool leaves at `bench/app:bench`.
//!
//! Usage: berth-bench URL [SIZE_MIB] [TAGS]. With `BENCH_AUTHORIZATION` set, every request
//! carries it as its `Authorization` header (a registry token for the repositories used).

use std::time::Instant;

use berth_proto::Digest;
use berth_tests::{image_manifest, random_bytes, Registry, OCI_MANIFEST};
use bytes::Bytes;
use futures::StreamExt;

const CHUNK: usize = 16 * 1024 * 1024;

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

async fn start(reg: &Registry, repo: &str) -> String {
    let r = reg.http.post(reg.abs(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
    assert_eq!(r.status(), 202, "POST");
    r.headers()["location"].to_str().unwrap().to_string()
}

fn with_digest(loc: &str, d: &Digest) -> String {
    format!("{loc}{}digest={d}", if loc.contains('?') { "&" } else { "?" })
}

/// POST then PUT: the upload every registry supports (Distribution 2.8 has no single-POST upload).
async fn push_small(reg: &Registry, repo: &str, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    let loc = start(reg, repo).await;
    let r = reg.http.put(reg.abs(&with_digest(&loc, &d))).body(bytes.to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201, "small PUT");
    d
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: berth-bench URL [SIZE_MIB] [TAGS]");
    let size_mib: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1024);
    let tags: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let mut reg = Registry::new(url);
    if let Ok(auth) = std::env::var("BENCH_AUTHORIZATION") {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::AUTHORIZATION, auth.parse().expect("a header value"));
        reg.http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).default_headers(h).build().unwrap();
    }
    let mib = size_mib as f64;

    // Distinct content per run so no registry can skip work it already did.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mono = Bytes::from(random_bytes(run, size_mib << 20));
    let mono_d = Digest::sha256_of(&mono);
    let chunked = Bytes::from(random_bytes(run + 1, size_mib << 20));
    let chunked_d = Digest::sha256_of(&chunked);

    // Monolithic: POST, then one PUT carrying the whole blob.
    let t = Instant::now();
    let loc = start(&reg, "bench/app").await;
    let r = reg.http.put(reg.abs(&with_digest(&loc, &mono_d))).body(mono.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201, "monolithic PUT: {}", r.text().await.unwrap());
    let s = secs(t);
    println!("push_monolithic_seconds {s:.3} s ({:.0} MiB/s)", mib / s);

    // Chunked: POST, 16 MiB PATCHes with Content-Range, empty PUT.
    let t = Instant::now();
    let mut loc = start(&reg, "bench/app").await;
    for (i, part) in chunked.chunks(CHUNK).enumerate() {
        let first = i * CHUNK;
        let r = reg
            .http
            .patch(reg.abs(&loc))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{first}-{}", first + part.len() - 1))
            .body(chunked.slice(first..first + part.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "PATCH");
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    let r = reg.http.put(reg.abs(&with_digest(&loc, &chunked_d))).send().await.unwrap();
    assert_eq!(r.status(), 201, "chunked PUT");
    let s = secs(t);
    println!("push_chunked_seconds {s:.3} s ({:.0} MiB/s)", mib / s);

    // Pull.
    let t = Instant::now();
    let r = reg.http.get(reg.abs(&format!("/v2/bench/app/blobs/{mono_d}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut n = 0usize;
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, mono.len());
    let s = secs(t);
    println!("pull_seconds {s:.3} s ({:.0} MiB/s)", mib / s);

    // A small image for manifest GETs and tags.
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(run + 2, 4096);
    let c = push_small(&reg, "bench/app", &cfg).await;
    let l = push_small(&reg, "bench/app", &layer).await;
    let manifest = image_manifest((&c, cfg.len()), &[(&l, layer.len())]);
    reg.push_manifest("bench/app", "bench", &manifest, OCI_MANIFEST).await.unwrap();

    // 10,000 tags, 16 at a time.
    push_small(&reg, "bench/tags", &cfg).await;
    push_small(&reg, "bench/tags", &layer).await;
    let t = Instant::now();
    futures::stream::iter(0..tags)
        .for_each_concurrent(16, |i| {
            let reg = reg.clone();
            let manifest = manifest.clone();
            async move {
                reg.push_manifest("bench/tags", &format!("t{i:05}"), &manifest, OCI_MANIFEST).await.unwrap();
            }
        })
        .await;
    let s = secs(t);
    println!("tag_push_per_second {:.0} /s", tags as f64 / s);

    let t = Instant::now();
    let rounds = 20;
    let mut count = 0;
    for _ in 0..rounds {
        let v: serde_json::Value = reg.http.get(reg.abs("/v2/bench/tags/tags/list")).send().await.unwrap().json().await.unwrap();
        count = v["tags"].as_array().map_or(0, |a| a.len());
    }
    println!("tag_list_ms {:.2} ms ({count} tags)", secs(t) * 1000.0 / rounds as f64);
}
