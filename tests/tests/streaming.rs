//! A 2 GiB blob pushed in one streamed PATCH and pulled back keeps the server's peak RSS
//! under 150 MiB: bytes stream through, they are never buffered whole.

use std::sync::{Arc, Mutex};

use berth_tests::{init_tracing, Berth, Registry};
use futures::StreamExt;
use sha2::Digest as _;

const SIZE: u64 = 2 * 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_blob_streams_in_bounded_memory() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let reg = Registry::new(&node.url);

    tracing::info!("push 2 GiB");
    let r = reg.http.post(reg.abs("/v2/big/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let hasher = Arc::new(Mutex::new(sha2::Sha256::new()));
    let base = berth_tests::random_bytes(99, CHUNK);
    let h = hasher.clone();
    let body = futures::stream::iter(0..SIZE / CHUNK as u64).map(move |i| {
        let mut chunk = base.clone();
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        h.lock().unwrap().update(&chunk);
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    });
    let r = reg.http.patch(reg.abs(&loc)).body(reqwest::Body::wrap_stream(body)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let digest = berth_proto::Digest::from_raw(berth_proto::Algorithm::Sha256, &hasher.lock().unwrap().clone().finalize());
    let r = reg.http.put(reg.abs(&format!("{loc}&digest={digest}"))).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    tracing::info!("pull 2 GiB");
    let r = reg.http.get(reg.abs(&format!("/v2/big/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    assert_eq!(n, SIZE);
    assert_eq!(hex::encode(h.finalize()), digest.hex());

    let peak = node.peak_rss_kib();
    println!("peak RSS of berth after 2 GiB push + pull: {} MiB", peak / 1024);
    assert!(peak < 150 * 1024, "peak RSS {peak} KiB");
}
