//! A full disk degrades writes, not reads, and heals by itself: the node runs on a small
//! tmpfs that a filler file fills up. Needs root (mount); CI runs as root.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_proto::Digest;
use berth_tests::{image_manifest, init_tracing, random_bytes, Berth, Registry, OCI_MANIFEST};
use reqwest::StatusCode;

/// A tmpfs of `mib` MiB mounted at `at`, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI runs as root and must be able to mount a tmpfs");
            eprintln!("SKIP: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("df").args(["--output=avail", "-B1"]).arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Fills the filesystem at `dir` until `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let want = free_bytes(dir).saturating_sub(leave);
    let f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    use std::io::Write;
    let mut w = std::io::BufWriter::new(f);
    while written + chunk.len() as u64 <= want {
        w.write_all(&chunk).unwrap();
        written += chunk.len() as u64;
    }
    w.flush().unwrap();
    filler
}

async fn push_image(reg: &Registry, tag: &str, seed: u64) -> Result<(), anyhow::Error> {
    let layer = random_bytes(seed, 64 * 1024);
    let cfg = format!("{{\"seed\":{seed}}}").into_bytes();
    let c = reg.push_blob("full/app", &cfg).await?;
    let l = reg.push_blob("full/app", &layer).await?;
    let m = image_manifest((&c, cfg.len()), &[(&l, layer.len())]);
    reg.push_manifest("full/app", tag, &m, OCI_MANIFEST).await?;
    Ok(())
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_reads_and_heals_without_a_restart() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), 96) else { return };
    let reserve = 16u64 << 20;
    let node = Berth::start(
        &disk.0.join("node"),
        None,
        &[("REGISTRY_BERTH_LIMITS_DISKRESERVE", &reserve.to_string()), ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let reg = Registry::new(&node.url);
    let health = format!("{}/debug/health", node.debug_url.clone().unwrap());
    push_image(&reg, "before", 1).await.unwrap();
    let (_, before) = reg.get_manifest("full/app", "before").await.unwrap();

    tracing::info!("a chunk bigger than the free space fails with 507, and gives its space back");
    let filler = fill(&disk.0, reserve + (8 << 20));
    let free_before = free_bytes(&disk.0);
    let r = reg.http.post(reg.abs("/v2/full/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = reg.http.patch(reg.abs(&loc)).body(random_bytes(9, 40 << 20)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.text().await);
    assert!(free_bytes(&disk.0) + (1 << 20) >= free_before, "the failed chunk kept its space");
    let _ = reg.http.delete(reg.abs(&loc)).send().await;

    tracing::info!("below the reserve: pushes get 507 with a clear error, reads and deletes work");
    std::fs::remove_file(&filler).unwrap();
    let filler = fill(&disk.0, reserve / 2);
    let r = reg.http.post(reg.abs("/v2/full/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("storage full"));
    let r = reg
        .http
        .put(reg.abs("/v2/full/app/manifests/again"))
        .header("Content-Type", OCI_MANIFEST)
        .body(before.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let t = Instant::now();
    let (status, body) = reg.get_manifest("full/app", "before").await.unwrap();
    assert_eq!((status, &body), (StatusCode::OK, &before));
    let read_ms = t.elapsed().as_millis();
    let r = reqwest::get(&health).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("disk"));
    push_image(&reg, "doomed", 2).await.unwrap_err();

    tracing::info!("an upload whose link was refused keeps its staged bytes; the retried PUT links them");
    std::fs::remove_file(&filler).unwrap();
    let staged = random_bytes(4, 100_000);
    let r = reg.http.post(reg.abs("/v2/full/app/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = reg.http.patch(reg.abs(&loc)).body(staged.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let put = format!("{}&digest={}", reg.abs(&loc), Digest::sha256_of(&staged));
    let filler = fill(&disk.0, reserve / 2);
    let r = reg.http.put(&put).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE, "the link must be refused below the reserve");

    tracing::info!("space returns: writes resume by themselves, nothing was lost");
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    push_image(&reg, "after", 3).await.unwrap();
    let resumed_ms = t.elapsed().as_millis();
    let r = reg.http.put(&put).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "the retried PUT: {:?}", r.text().await);
    assert_eq!(reg.get_blob("full/app", &Digest::sha256_of(&staged)).await.unwrap(), staged);
    assert_eq!(reqwest::get(&health).await.unwrap().status(), StatusCode::OK);
    assert_eq!(reg.get_manifest("full/app", "before").await.unwrap().1, before);
    let layer = random_bytes(3, 64 * 1024);
    assert_eq!(reg.get_blob("full/app", &Digest::sha256_of(&layer)).await.unwrap(), layer);
    tracing::info!(read_ms, resumed_ms, "disk-full figures: manifest read while full, first push after space returned");
    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| !s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_stays_up_and_catches_up_when_space_returns() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Node 3's data directory (its Raft log and state) is a small disk of its own.
    let Some(disk) = SmallDisk::mount(&dir.path().join("node3"), 128) else { return };
    let reserve = 16u64 << 20;
    let reserve_s = reserve.to_string();
    let env = [("REGISTRY_BERTH_LIMITS_DISKRESERVE", reserve_s.as_str())];
    let voters = berth_tests::voter_cluster(dir.path(), 3, &env);
    let leader = Registry::new(&voters[0].url);
    push_image(&leader, "before", 1).await.unwrap();

    tracing::info!("node 3's disk fills up; the majority keeps taking pushes with big manifests");
    let filler = fill(&disk.0, reserve / 4);
    let mut pushed = Vec::new();
    for i in 0..8u64 {
        // Manifest bodies travel in the log: 1 MiB each outgrows what node 3 has left.
        let layer = random_bytes(100 + i, 1000);
        let cfg = b"{}".to_vec();
        let c = leader.push_blob("full/app", &cfg).await.unwrap();
        let l = leader.push_blob("full/app", &layer).await.unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&image_manifest((&c, cfg.len()), &[(&l, layer.len())])).unwrap();
        m["annotations"] = serde_json::json!({"pad": "x".repeat(1 << 20), "n": i.to_string()});
        let body = serde_json::to_vec(&m).unwrap();
        leader.push_manifest("full/app", &format!("big{i}"), &body, OCI_MANIFEST).await.unwrap();
        pushed.push(body);
    }
    assert!(alive(voters[2].pid()), "node 3 died of a full disk");
    let status = berth_tests::berth_cluster(&["status", "--node", &voters[2].grpc_addr]);
    assert!(status.contains("leader 1"), "node 3 lost the cluster: {status}");

    tracing::info!("space returns: node 3 catches up without a restart and serves every push");
    std::fs::remove_file(&filler).unwrap();
    let reg3 = Registry::new(&voters[2].url);
    let mut served = false;
    for _ in 0..100 {
        if reg3.get_manifest("full/app", "big7").await.is_ok_and(|(s, b)| s == 200 && b == pushed[7]) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !served {
        let du = std::process::Command::new("du").args(["-ak"]).arg(dir.path().join("node3")).output().unwrap();
        let df = std::process::Command::new("df").args(["-k"]).arg(dir.path().join("node3")).output().unwrap();
        panic!("node 3 did not catch up once space returned:\n{}{}", String::from_utf8_lossy(&du.stdout), String::from_utf8_lossy(&df.stdout));
    }
    for (i, body) in pushed.iter().enumerate() {
        assert_eq!(&reg3.get_manifest("full/app", &format!("big{i}")).await.unwrap().1, body);
    }
    assert!(alive(voters[2].pid()));
    let log = std::fs::read_to_string(&voters[2].log).unwrap();
    assert!(!log.to_lowercase().contains("storage error"), "node 3's Raft core met a storage error");
}
