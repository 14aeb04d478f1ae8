//! SIGKILL during a stream of pushes: after every restart, every acknowledged push is intact
//! and no content address holds bytes that do not hash to it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::Digest;
use berth_tests::{image_manifest, init_tracing, random_bytes, Berth, Registry};

#[derive(Clone)]
struct Acked {
    tag: String,
    manifest: Vec<u8>,
    layer: Digest,
    layer_bytes: Vec<u8>,
}

/// Pushes images until the registry fails; records each one acknowledged (manifest 201).
async fn pusher(reg: Registry, worker: usize, round: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let cfg = serde_json::to_vec(&serde_json::json!({"os": "linux", "architecture": "amd64"})).unwrap();
    for n in 0.. {
        let seed = (round * 1000 + worker * 100_000 + n) as u64;
        let layer_bytes = random_bytes(seed, 20_000 + (seed as usize % 50_000));
        let Ok(c) = reg.push_blob("crash/app", &cfg).await else { return };
        let Ok(layer) = reg.push_blob("crash/app", &layer_bytes).await else { return };
        let manifest = image_manifest((&c, cfg.len()), &[(&layer, layer_bytes.len())]);
        let tag = format!("r{round}-w{worker}-{n}");
        if reg.push_manifest("crash/app", &tag, &manifest, berth_tests::OCI_MANIFEST).await.is_err() {
            return;
        }
        acked.lock().unwrap().push(Acked { tag, manifest, layer, layer_bytes });
    }
}

/// Content addresses checked, and those holding bytes of another digest.
fn check_content_addresses(root: &std::path::Path) -> (usize, Vec<std::path::PathBuf>) {
    let (mut checked, mut bad) = (0, Vec::new());
    let blobs = root.join("blobs/sha256");
    for prefix in std::fs::read_dir(&blobs).into_iter().flatten() {
        for f in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_str().unwrap();
            if Digest::sha256_of(&bytes).hex() != name {
                bad.push(path.clone());
            }
            checked += 1;
        }
    }
    (checked, bad)
}

/// How many acknowledged pushes do not read back byte for byte.
async fn lost(reg: &Registry, all: &[Acked]) -> usize {
    let mut lost = 0;
    for a in all {
        let (status, body) = reg.get_manifest("crash/app", &a.tag).await.unwrap();
        if status != 200 || body != a.manifest || reg.get_blob("crash/app", &a.layer).await.ok().as_ref() != Some(&a.layer_bytes) {
            lost += 1;
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pushes_loses_nothing_acknowledged() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Berth::start(&data, None, &[]);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..4 {
        tracing::info!(round, "pushing, then SIGKILL");
        let reg = Registry::new(&node.url);
        let workers: Vec<_> =
            (0..4).map(|w| tokio::spawn(pusher(reg.clone(), w, round, acked.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(700 + 300 * round as u64)).await;
        node.kill9();
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        tracing::info!(round, "restart and verify");
        node.restart();
        let reg = Registry::new(&node.url);
        let all = acked.lock().unwrap().clone();
        let lost = lost(&reg, &all).await;
        let (checked, bad) = check_content_addresses(&data.join("storage"));
        println!("round {round}: acknowledged pushes {}, lost {lost}, content addresses verified {checked}", all.len());
        assert_eq!(lost, 0);
        assert!(bad.is_empty(), "content addresses holding other bytes: {bad:?}");
    }
    let all = acked.lock().unwrap().clone();
    assert!(all.len() > 20, "too few pushes were acknowledged to mean anything");

    tracing::info!("the checks themselves: a lost layer and a corrupted address are both caught");
    let storage = data.join("storage");
    let victim = &all[all.len() / 2];
    let path = |d: &Digest| storage.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex());
    std::fs::remove_file(path(&victim.layer)).unwrap();
    let other = all.iter().find(|a| a.layer != victim.layer).unwrap();
    std::fs::write(path(&other.layer), b"not what the digest says").unwrap();
    let reg = Registry::new(&node.url);
    assert!(lost(&reg, &all).await >= 2, "the checker missed a lost and a corrupted layer");
    assert_eq!(check_content_addresses(&storage).1, vec![path(&other.layer)]);
}
