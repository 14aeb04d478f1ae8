//! Online garbage collection against a real node and its filesystem store: what nothing keeps
//! leaves the disk after `gc.reviewafter`, what a tag keeps stays and pulls whole, and pushes
//! racing the collector never lose what they were acknowledged for.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::Digest;
use berth_tests::{image_manifest, init_tracing, random_bytes, Berth, Registry, OCI_MANIFEST, R};
use reqwest::StatusCode;

/// The content files of a single node's store (under its data directory), by digest hex.
fn stored(data: &Path) -> BTreeSet<String> {
    stored_in(&data.join("storage"))
}

/// The content files (blobs and manifest bodies) of the store rooted at `root`, by digest hex.
fn stored_in(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("blobs"), &mut files);
    files.into_iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string())).filter(|n| n.len() == 64).collect()
}

/// A node that collects quickly: items are swept one second after nothing keeps them.
fn quick_gc(review: &str) -> Vec<(&'static str, String)> {
    vec![
        ("REGISTRY_GC_REVIEWAFTER", review.to_string()),
        ("REGISTRY_GC_BLOBS_INTERVAL", "100ms".into()),
        ("REGISTRY_GC_MANIFESTS_INTERVAL", "100ms".into()),
        ("REGISTRY_HTTP_DEBUG_ADDR", berth_tests::ports::free_addr()),
    ]
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    fn blobs(&self) -> Vec<&Vec<u8>> {
        std::iter::once(&self.config).chain(self.layers.iter()).collect()
    }
    fn manifest(&self) -> Vec<u8> {
        let cd = Digest::sha256_of(&self.config);
        let layers: Vec<(Digest, usize)> = self.layers.iter().map(|l| (Digest::sha256_of(l), l.len())).collect();
        let refs: Vec<(&Digest, usize)> = layers.iter().map(|(d, n)| (d, *n)).collect();
        image_manifest((&cd, self.config.len()), &refs)
    }
    fn hexes(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.blobs().into_iter().map(|b| Digest::sha256_of(b).hex().to_string()).collect();
        out.insert(Digest::sha256_of(&self.manifest()).hex().to_string());
        out
    }
    async fn push(&self, reg: &Registry, repo: &str, tag: &str) -> R<Digest> {
        for b in self.blobs() {
            reg.push_blob(repo, b).await?;
        }
        reg.push_manifest(repo, tag, &self.manifest(), OCI_MANIFEST).await
    }
    /// Pulls by tag and checks every byte.
    async fn pull(&self, reg: &Registry, repo: &str, tag: &str) -> R<()> {
        let (status, body) = reg.get_manifest(repo, tag).await?;
        anyhow::ensure!(status == StatusCode::OK && body == self.manifest(), "manifest {repo}:{tag}: {status}");
        for b in self.blobs() {
            let got = reg.get_blob(repo, &Digest::sha256_of(b)).await?;
            anyhow::ensure!(got == *b, "blob {} of {repo}:{tag} differs", Digest::sha256_of(b));
        }
        Ok(())
    }
}

async fn delete(reg: &Registry, repo: &str, reference: &str) -> StatusCode {
    reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/{reference}"))).send().await.unwrap().status()
}

async fn metric(node: &Berth, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// Untagging an image frees its manifest, then the blobs only it used, then their bytes; a
/// layer another tagged image shares stays, and so does that image, whole. A referrer goes
/// with its subject; a blob uploaded and never used goes too. Pushed again, the same content
/// comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_nothing_keeps_leaves_the_disk_and_the_rest_stays_whole() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = quick_gc("1s");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = Berth::start(&data, None, &env);
    let reg = Registry::new(&node.url);
    let repo = "gc/app";
    let shared = random_bytes(100, 4000);
    let a = Image { config: random_bytes(1, 300), layers: vec![shared.clone(), random_bytes(2, 5000)] };
    let b = Image { config: random_bytes(3, 300), layers: vec![shared.clone(), random_bytes(4, 6000)] };
    let a_digest = a.push(&reg, repo, "a").await.unwrap();
    b.push(&reg, repo, "b").await.unwrap();
    // A signature of `a` (a referrer: no tag, kept by its subject).
    let sig_blob = random_bytes(5, 100);
    let sig_digest = reg.push_blob(repo, &sig_blob).await.unwrap();
    let sig = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sig_digest.to_string(), "size": sig_blob.len()},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": a_digest.to_string(), "size": a.manifest().len()},
    }))
    .unwrap();
    let sig_manifest = reg.push_manifest(repo, &Digest::sha256_of(&sig).to_string(), &sig, OCI_MANIFEST).await.unwrap();
    // Uploaded, never used.
    let stray = reg.push_blob(repo, &random_bytes(6, 700)).await.unwrap();

    tracing::info!("while everything is kept, nothing goes");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = stored(&data);
    for h in a.hexes().iter().chain(b.hexes().iter()) {
        assert!(before.contains(h), "{h} went while a tag kept it; stored: {before:?}; log:\n{}", std::fs::read_to_string(&node.log).unwrap_or_default());
    }
    assert!(before.contains(sig_manifest.hex()) && before.contains(sig_digest.hex()));
    assert!(!before.contains(stray.hex()), "a blob no manifest used stayed past the review delay");
    assert_eq!(reg.http.head(reg.abs(&format!("/v2/{repo}/blobs/{stray}"))).send().await.unwrap().status(), StatusCode::NOT_FOUND);

    tracing::info!("untagged, `a` goes with its signature; what `b` uses stays");
    assert_eq!(delete(&reg, repo, "a").await, StatusCode::ACCEPTED);
    let only_a: BTreeSet<String> = a.hexes().difference(&b.hexes()).cloned().chain([sig_manifest.hex().to_string(), sig_digest.hex().to_string()]).collect();
    wait_until("a's content deleted", Duration::from_secs(30), || stored(&data).is_disjoint(&only_a)).await;
    let after = stored(&data);
    assert_eq!(after, b.hexes(), "exactly what `b` uses is left");
    b.pull(&reg, repo, "b").await.unwrap();
    assert_eq!(reg.get_manifest(repo, &a_digest.to_string()).await.unwrap().0, StatusCode::NOT_FOUND);
    assert!(metric(&node, "berth_gc_deleted_bytes_total").await >= 5000.0);
    assert!(metric(&node, "berth_gc_swept_total{kind=\"manifest\",result=\"deleted\"}").await >= 2.0);

    tracing::info!("pushed again, `a` is whole again");
    a.push(&reg, repo, "a").await.unwrap();
    a.pull(&reg, repo, "a").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.pull(&reg, repo, "a").await.unwrap();

    tracing::info!("with every tag gone, the store empties");
    assert_eq!(delete(&reg, repo, "a").await, StatusCode::ACCEPTED);
    assert_eq!(delete(&reg, repo, "b").await, StatusCode::ACCEPTED);
    wait_until("the store empties", Duration::from_secs(30), || stored(&data).is_empty()).await;
    let catalog: serde_json::Value = reg.http.get(reg.abs("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!([]), "the repository went with its last content");
}

/// Clients push, check and untag the same few images over and over while the collector
/// sweeps them as fast as it may (zero review delay): every push it acknowledges pulls whole,
/// right after and again a little later while it is still tagged. A push may lose a blob to
/// the collector before its manifest (a zero delay gives a push no time), which is no loss.
/// When everything is untagged, the store empties: no copy placed while a deletion ran is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_the_collector_lose_nothing_acknowledged() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = quick_gc("0s");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = Berth::start(&data, None, &env);
    race(Arena { regs: vec![Registry::new(&node.url)], store: data.join("storage"), debug: debug_urls(&[&node]), midway: None }).await;
}

/// The same race on three voters sharing one blob store, each push through one node and its
/// pulls through the others (as clients behind a balancer see it), the collector running on
/// the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_the_collector_across_a_cluster_lose_nothing_acknowledged() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut env = quick_gc("0s");
    env.retain(|(k, _)| *k != "REGISTRY_HTTP_DEBUG_ADDR");
    env.push(("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes = berth_tests::voter_cluster(dir.path(), 3, &env);
    let refs: Vec<&Berth> = nodes.iter().collect();
    race(Arena { regs: nodes.iter().map(|n| Registry::new(&n.url)).collect(), store: dir.path().join("blobs"), debug: debug_urls(&refs), midway: None }).await;
}

/// The race through nginx in front of three voters and a frontend (`deploy/local/cluster.sh`),
/// with the leader, which runs the collector, SIGKILLed half-way: a new leader's collector
/// carries on (and finishes the marks the dead one left, after a lease the test shortens),
/// no acknowledged push is lost, and the store still empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_behind_a_balancer_survives_its_leader_and_loses_nothing() {
    init_tracing();
    if !berth_tests::require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/cluster.sh");
    let mut cluster = berth_chaos::LocalCluster::new(&script, &dir.path().join("cluster"), Some(&berth_tests::berth_bin()));
    for (k, v) in quick_gc("0s").into_iter().filter(|(k, _)| *k != "REGISTRY_HTTP_DEBUG_ADDR") {
        cluster = cluster.with_env(k, &v);
    }
    cluster = cluster.with_env("BERTH_TEST_GC_MARK_LEASE_MS", "2000");
    let cluster = std::sync::Arc::new(cluster);
    cluster.up(3, 1).unwrap();
    let _down = cluster.down_on_drop();
    let lb = cluster.lb().unwrap();
    let c = cluster.clone();
    let midway: Box<dyn FnOnce() + Send> = Box::new(move || {
        let leader = c.leader().expect("a leader");
        tracing::info!(leader, "killing the leader");
        c.kill(leader).unwrap();
    });
    race(Arena { regs: vec![Registry::new(&lb)], store: dir.path().join("cluster/blobs"), debug: vec![], midway: Some(midway) }).await;
}

fn debug_urls(nodes: &[&Berth]) -> Vec<String> {
    nodes.iter().map(|n| n.debug_url.clone().unwrap()).collect()
}

/// What a race runs against: where requests go (in turn), the store to watch, the debug URLs
/// whose garbage-collection metrics count, and what to do to the cluster half-way.
struct Arena {
    regs: Vec<Registry>,
    store: PathBuf,
    debug: Vec<String>,
    midway: Option<Box<dyn FnOnce() + Send>>,
}

/// Whether an error is the cluster electing a leader (a refused or dropped request, 502-504):
/// no acknowledgement was given, so it loses nothing.
fn transient(e: &str) -> bool {
    ["UNAVAILABLE", "503", "502", "504", "error sending request", "connection"].iter().any(|s| e.contains(s))
}

/// Evaluates `$e` (a result), again for up to 15 s while `$chaos` says the cluster may be
/// electing a leader.
macro_rules! patiently {
    ($chaos:expr, $e:expr) => {{
        let start = Instant::now();
        loop {
            match $e {
                Err(e) if $chaos && start.elapsed() < Duration::from_secs(15) => {
                    tracing::debug!("retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        }
    }};
}

/// Three clients push, check and untag three images sharing a layer for 12 s, through the
/// arena's registries in turn; then, with every tag gone, the store must empty.
async fn race(arena: Arena) {
    let Arena { regs, store, debug, midway } = arena;
    let chaos = midway.is_some();
    let shared = random_bytes(200, 3000);
    let images: Vec<Image> = (0..3).map(|i| Image { config: random_bytes(300 + i, 200), layers: vec![shared.clone(), random_bytes(400 + i, 2000)] }).collect();
    let images = std::sync::Arc::new(images);
    let deadline = Instant::now() + Duration::from_secs(12);
    if let Some(m) = midway {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::spawn_blocking(m).await.unwrap();
        });
    }
    let mut tasks = Vec::new();
    for client in 0..3usize {
        let (regs, images) = (regs.clone(), images.clone());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (0u32, 0u32);
            let mut round = 0usize;
            while Instant::now() < deadline {
                round += 1;
                let image = &images[(client + round) % images.len()];
                let at = |k: usize| &regs[(client + round + k) % regs.len()];
                let (repo, tag) = ("race/app", format!("c{client}"));
                match image.push(at(0), repo, &tag).await {
                    Ok(_) => {
                        acked += 1;
                        patiently!(chaos, image.pull(at(1), repo, &tag).await)
                            .unwrap_or_else(|e| panic!("client {client} round {round}: acknowledged push does not pull: {e:#}"));
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        patiently!(chaos, image.pull(at(2), repo, &tag).await)
                            .unwrap_or_else(|e| panic!("client {client} round {round}: acknowledged push lost later: {e:#}"));
                        let deleted: R<()> = patiently!(chaos, match delete(at(0), repo, &tag).await {
                            StatusCode::ACCEPTED => Ok(()),
                            s => Err(anyhow::anyhow!("delete: {s}")),
                        });
                        deleted.unwrap_or_else(|e| panic!("client {client} round {round}: {e:#}"));
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        assert!(e.contains("MANIFEST_BLOB_UNKNOWN") || (chaos && transient(&e)), "client {client}: unexpected refusal: {e}");
                        refused += 1;
                    }
                }
            }
            (acked, refused)
        }));
    }
    let (mut acked, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked += a;
        refused += r;
    }
    tracing::info!(acked, refused, registries = regs.len(), chaos, "racing pushes");
    assert!(acked >= 10, "only {acked} pushes were acknowledged ({refused} refused)");
    let sum = |name: &'static str| {
        let debug = debug.clone();
        async move {
            let mut total = 0.0;
            for d in &debug {
                let text = reqwest::get(format!("{d}/metrics")).await.unwrap().text().await.unwrap();
                total += text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum::<f64>();
            }
            total
        }
    };
    let start = Instant::now();
    while !stored_in(&store).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the store does not empty: {:?}; queue {} deleting {}",
            stored_in(&store),
            sum("berth_gc_queue_length").await,
            sum("berth_gc_deleting").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !debug.is_empty() {
        assert!(sum("berth_gc_swept_total{kind=\"content\",result=\"deleted\"}").await >= 1.0, "the collector deleted nothing");
    }
}

/// A push of content that the collector has marked and is deleting (held open for a second
/// per piece by a test hook) waits for the deletion to end, stores the bytes again and lands
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_during_a_deletion_waits_and_lands_whole() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut env = quick_gc("0s");
    env.push(("BERTH_TEST_GC_MARK_PAUSE_MS", "1000".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = Berth::start(&data, None, &env);
    let reg = Registry::new(&node.url);
    let image = Image { config: random_bytes(21, 300), layers: vec![random_bytes(22, 3000)] };
    image.push(&reg, "gc/wait", "t").await.unwrap();
    assert_eq!(delete(&reg, "gc/wait", "t").await, StatusCode::ACCEPTED);
    let start = Instant::now();
    while metric(&node, "berth_gc_deleting").await < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing was marked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    image.push(&reg, "gc/wait", "t").await.unwrap();
    image.pull(&reg, "gc/wait", "t").await.unwrap();
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("waits for garbage collection"), "the push did not meet the deletion");
    tokio::time::sleep(Duration::from_secs(4)).await;
    image.pull(&reg, "gc/wait", "t").await.unwrap();
    assert_eq!(stored(&data), image.hexes(), "the image is whole on disk, and nothing else is");
}

/// `berth garbage-collect` finds what the online collector cannot see (bytes in the store the
/// state never learnt of, here planted as a crash between placing an upload and committing
/// its link would leave them), reports without changing anything on `--dry-run`, and with
/// `--review-after 0s` empties the review queue now, as Distribution's command does; what a
/// tag keeps stays and pulls whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collect_finds_what_the_online_collector_cannot_see() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Berth::start(&data, None, &[]);
    let reg = Registry::new(&node.url);
    let keep = Image { config: random_bytes(11, 300), layers: vec![random_bytes(12, 4000)] };
    let old = Image { config: random_bytes(13, 300), layers: vec![random_bytes(14, 5000)] };
    keep.push(&reg, "gc/cli", "keep").await.unwrap();
    old.push(&reg, "gc/cli", "old").await.unwrap();
    assert_eq!(delete(&reg, "gc/cli", "old").await, StatusCode::ACCEPTED);
    let orphan = random_bytes(15, 7000);
    let od = Digest::sha256_of(&orphan);
    let path = data.join("storage/blobs/sha256").join(&od.hex()[..2]).join(od.hex());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &orphan).unwrap();
    let gc = |args: &[&str]| {
        let mut c = berth_tests::berth_command();
        c.env("REGISTRY_BERTH_DATADIR", &data).arg("garbage-collect").arg("--node").arg(&node.grpc_addr).args(args);
        berth_tests::run(&mut c)
    };

    let before = stored(&data);
    let report = gc(&["--dry-run", "--delete-untagged"]);
    assert!(report.contains("1 that nothing links or holds (0.0 MiB)"), "{report}");
    assert!(report.contains("0 unused blob links, 1 manifests no tag keeps"), "{report}");
    assert!(report.contains("dry run: nothing changed"), "{report}");
    assert_eq!(stored(&data), before, "a dry run deleted something");

    let report = gc(&["--review-after", "0s"]);
    assert!(report.contains("swept: 1 manifests, 2 blob links; deleted 4 pieces of content"), "{report}");
    assert!(report.contains("review queue: 0 items waiting, 0 being deleted"), "{report}");
    assert_eq!(stored(&data), keep.hexes(), "exactly what the tag keeps is left");
    keep.pull(&reg, "gc/cli", "keep").await.unwrap();
}
