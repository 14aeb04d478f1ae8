//! Two sites on loopback, each with its own blob store: a primary voter and a secondary
//! learner (`berth.role: learner`, `berth.geo.site`). Pushes at the primary are copied to the
//! secondary and verified there; content committed before the secondary joined is
//! backfilled; a pull at the secondary of content not copied yet is fetched through; a push at
//! the secondary is copied back; a secondary killed mid-copy resumes; with the primary gone
//! the secondary still serves every pull.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_proto::Digest;
use berth_tests::{push_image, random_bytes, Berth, Registry, OCI_MANIFEST};

/// One site's node and its store.
struct SiteNode {
    node: Berth,
    store: PathBuf,
}

fn store_path(store: &Path, d: &Digest) -> PathBuf {
    store.join("blobs").join(d.algorithm().as_str()).join(&d.hex()[..2]).join(d.hex())
}

/// True if the site's store holds `d` with the right bytes.
fn holds(store: &Path, d: &Digest) -> bool {
    std::fs::read(store_path(store, d)).is_ok_and(|b| Digest::sha256_of(&b) == *d)
}

fn primary(dir: &Path, env: &[(&str, &str)]) -> SiteNode {
    let store = dir.join("primary-blobs");
    let s = store.to_str().unwrap().to_string();
    let mut e = vec![("REGISTRY_BERTH_NODEID", "1"), ("REGISTRY_BERTH_GEO_SITE", "primary"), ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", s.as_str())];
    e.extend_from_slice(env);
    SiteNode { node: Berth::start(&dir.join("node1"), None, &e), store }
}

fn secondary(dir: &Path, primary: &SiteNode, env: &[(&str, &str)]) -> SiteNode {
    let store = dir.join("secondary-blobs");
    let s = store.to_str().unwrap().to_string();
    let mut e = vec![
        ("REGISTRY_BERTH_NODEID", "2"),
        ("REGISTRY_BERTH_ROLE", "learner"),
        ("REGISTRY_BERTH_JOIN", primary.node.grpc_addr.as_str()),
        ("REGISTRY_BERTH_GEO_SITE", "secondary"),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", s.as_str()),
    ];
    e.extend_from_slice(env);
    SiteNode { node: Berth::start(&dir.join("node2"), None, &e), store }
}

/// `berth geo status --json` at `node`.
fn geo_status(node: &Berth) -> serde_json::Value {
    let out = berth_tests::berth_command().args(["geo", "status", "--json", "--node", &node.grpc_addr]).output().unwrap();
    assert!(out.status.success(), "geo status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until `site` holds everything and its backfill is done, as `node` sees it.
fn wait_caught_up(node: &Berth, site: &str, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let status = geo_status(node);
        let s = status.as_array().unwrap().iter().find(|s| s["site"] == site).cloned();
        if let Some(s) = s.filter(|s| s["missing"] == 0 && s["backfilled"] == true) {
            return s;
        }
        assert!(started.elapsed() < within, "{site} did not catch up: {status:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The blobs and manifest of the image `push_image` makes from `seed`.
fn image_digests(manifest: &[u8]) -> Vec<Digest> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![Digest::sha256_of(manifest), Digest::parse(m["config"]["digest"].as_str().unwrap()).unwrap()];
    for l in m["layers"].as_array().unwrap() {
        out.push(Digest::parse(l["digest"].as_str().unwrap()).unwrap());
    }
    out
}

/// Pulls `repo:tag` at `reg` and checks every byte against what was pushed.
async fn pull_verified(reg: &Registry, repo: &str, tag: &str, manifest: &[u8]) {
    let (status, body) = reg.get_manifest(repo, tag).await.unwrap();
    assert_eq!(status, 200, "{repo}:{tag} at {}", reg.url);
    assert_eq!(body, manifest, "{repo}:{tag}");
    for d in &image_digests(manifest)[1..] {
        let bytes = reg.get_blob(repo, d).await.unwrap();
        assert_eq!(Digest::sha256_of(&bytes), *d);
    }
}

async fn metric(node: &Berth, name: &str) -> f64 {
    let url = format!("{}/metrics", node.debug_url.as_ref().expect("debug listener"));
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_pushed_at_either_site_reaches_the_other_verified() {
    berth_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let p = primary(dir.path(), &[]);
    let preg = Registry::new(&p.node.url);
    // Before the secondary exists: backfilled when it joins.
    let mut images = Vec::new();
    for i in 0..3 {
        images.push((format!("early/app{i}"), push_image(&preg, &format!("early/app{i}"), "v1", 100 + i).await));
    }
    let s = secondary(dir.path(), &p, &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let sreg = Registry::new(&s.node.url);
    for i in 0..5 {
        images.push((format!("late/app{i}"), push_image(&preg, &format!("late/app{i}"), "v1", 200 + i).await));
    }
    let site = wait_caught_up(&p.node, "secondary", Duration::from_secs(60));
    // 8 images of 3 pieces of content each.
    assert_eq!(site["held"], 24, "{site:#}");
    for (repo, manifest) in &images {
        for d in image_digests(manifest) {
            assert!(holds(&s.store, &d), "{repo}: {d} is not in the secondary's store");
        }
        pull_verified(&sreg, repo, "v1", manifest).await;
    }
    assert_eq!(metric(&s.node, "berth_geo_fetch_through_total").await, 0.0, "every pull was served from the secondary's own copy");
    assert!(metric(&s.node, "berth_geo_copied_bytes_total").await > 8.0 * 5000.0);

    // Verification finds a copy damaged and one gone, and repairs both from the primary.
    let damaged = image_digests(&images[0].1)[2].clone();
    let gone = image_digests(&images[5].1)[1].clone();
    let path = store_path(&s.store, &damaged);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"bit rot").unwrap();
    std::fs::remove_file(store_path(&s.store, &gone)).unwrap();
    let verify = |args: &[&str]| {
        let mut c = berth_tests::berth_command();
        c.args(["geo", "verify", "--node", &s.node.grpc_addr]).args(args);
        c.output().unwrap()
    };
    let out = verify(&["--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a dry run with problems fails: {text}");
    assert!(text.contains("checked 24 of 24") && text.contains("1 missing, 1 damaged; 0 repaired"), "{text}");
    assert!(text.contains(&damaged.to_string()) && text.contains(&gone.to_string()), "{text}");
    assert!(!holds(&s.store, &damaged), "a dry run repairs nothing");
    let out = verify(&[]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("1 missing, 1 damaged; 2 repaired, 0 queued"), "{text}");
    assert!(holds(&s.store, &damaged) && holds(&s.store, &gone), "repaired");
    let out = verify(&["--percent", "50"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A push at the secondary: bytes land in its store, metadata goes to the primary's
    // leader, and the primary copies the bytes back.
    let manifest = push_image(&sreg, "from/secondary", "v1", 300).await;
    for d in image_digests(&manifest) {
        assert!(holds(&s.store, &d), "pushed at the secondary: {d}");
    }
    wait_caught_up(&s.node, "primary", Duration::from_secs(30));
    for d in image_digests(&manifest) {
        assert!(holds(&p.store, &d), "copied back to the primary: {d}");
    }
    pull_verified(&preg, "from/secondary", "v1", &manifest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_at_the_secondary_fetches_through_what_is_not_copied_yet() {
    berth_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pause = dir.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    let pause_s = pause.to_str().unwrap().to_string();
    let p = primary(dir.path(), &[]);
    let s = secondary(dir.path(), &p, &[("BERTH_TEST_GEO_PAUSE_FILE", pause_s.as_str()), ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let (preg, sreg) = (Registry::new(&p.node.url), Registry::new(&s.node.url));
    // A large layer, to see it streamed through whole.
    let layer = random_bytes(7, 8 << 20);
    let config = random_bytes(8, 300);
    let ld = preg.push_blob("big/app", &layer).await.unwrap();
    let cd = preg.push_blob("big/app", &config).await.unwrap();
    let manifest = berth_tests::image_manifest((&cd, config.len()), &[(&ld, layer.len())]);
    preg.push_manifest("big/app", "v1", &manifest, OCI_MANIFEST).await.unwrap();
    // The secondary's learner has the metadata once it has applied the log.
    let started = Instant::now();
    loop {
        let (status, _) = sreg.get_manifest("big/app", "v1").await.unwrap();
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the secondary never saw the manifest: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!holds(&s.store, &ld), "replication is paused");
    pull_verified(&sreg, "big/app", "v1", &manifest).await;
    assert!(holds(&s.store, &ld), "fetched through and kept");
    assert!(metric(&s.node, "berth_geo_fetch_through_total{result=\"copied\"}").await >= 2.0);
    // Content nobody committed is still a 404, fetched from nowhere.
    let stranger = Digest::sha256_of(b"never pushed");
    let r = reqwest::get(format!("{}/v2/big/app/blobs/{stranger}", s.node.url)).await.unwrap();
    assert_eq!(r.status(), 404);

    // A frontend of the secondary site (no state of its own) has a node of its site bring
    // committed content into the store they share.
    let store_s = s.store.to_str().unwrap().to_string();
    let fe = berth_tests::frontend(
        dir.path(),
        "frontend",
        std::slice::from_ref(&s.node),
        &[("REGISTRY_BERTH_GEO_SITE", "secondary"), ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", store_s.as_str())],
    );
    let fresh = random_bytes(10, 1 << 20);
    let fd = preg.push_blob("big/app", &fresh).await.unwrap();
    let freg = Registry::new(&fe.url);
    let started = Instant::now();
    let got = loop {
        match freg.get_blob("big/app", &fd).await {
            Ok(b) => break b,
            Err(e) => assert!(started.elapsed() < Duration::from_secs(20), "through the frontend: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got, fresh);
    assert!(holds(&s.store, &fd), "brought into the secondary's store");
    drop(fe);

    // A source whose copy is damaged: the reader's stream ends in an error once the copy fails
    // its digest (never a clean end with wrong bytes), and nothing is stored.
    let rotten = preg.push_blob("big/app", &random_bytes(9, 3 << 20)).await.unwrap();
    let path = store_path(&p.store, &rotten);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let got = sreg.get_blob("big/app", &rotten).await;
    assert!(got.is_err(), "a damaged source is not served as the blob");
    assert!(!store_path(&s.store, &rotten).exists(), "nor stored");
    std::fs::remove_file(&path).unwrap();
    preg.push_blob("big/app", &random_bytes(9, 3 << 20)).await.unwrap();

    // Replication resumes, and a secondary killed mid-copy carries on after a restart.
    let mut images = Vec::new();
    for i in 0..20 {
        images.push((format!("many/app{i}"), push_image(&preg, &format!("many/app{i}"), "v1", 400 + i).await));
    }
    let mut s = s;
    std::fs::remove_file(&pause).unwrap();
    let started = Instant::now();
    while metric(&s.node, "berth_geo_copies_total{result=\"copied\"}").await < 5.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no copy started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.node.kill9();
    s.node.restart();
    wait_caught_up(&p.node, "secondary", Duration::from_secs(60));
    for (repo, manifest) in &images {
        for d in image_digests(manifest) {
            assert!(holds(&s.store, &d), "{repo}: {d}");
        }
    }

    // With the primary gone, the secondary serves every pull from its own copy.
    let mut p = p;
    p.node.kill9();
    let sreg = Registry::new(&s.node.url);
    for (repo, manifest) in &images {
        pull_verified(&sreg, repo, "v1", manifest).await;
    }
    pull_verified(&sreg, "big/app", "v1", &manifest).await;
    // Writes need the primary's leader: refused, not lost.
    let r = reqwest::Client::new().post(format!("{}/v2/during/outage/blobs/uploads/?digest={}", s.node.url, Digest::sha256_of(b"x"))).body("x").send().await.unwrap();
    assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
}

/// Sets (or replaces) an environment variable of a node for its next start.
fn set_env(node: &mut Berth, key: &str, value: &str) {
    node.env.retain(|(k, _)| k != key);
    node.env.push((key.to_string(), value.to_string()));
}

fn berth_geo(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = berth_tests::berth_command();
    c.arg("geo").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "berth geo {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The disaster-recovery drill: the primary site is lost; the secondary serves every pull,
/// is promoted, takes pushes; the old primary comes back unchanged and cannot touch the new
/// cluster (what it acknowledged meanwhile stays out of it); demoted, it rejoins as a
/// secondary and receives everything the new primary acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drill_promote_the_secondary_and_bring_the_old_primary_back_as_one() {
    berth_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut p = primary(dir.path(), &[]);
    let mut s = secondary(dir.path(), &p, &[]);
    let preg = Registry::new(&p.node.url);
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        acknowledged.push((format!("app{i}"), push_image(&preg, &format!("app{i}"), "v1", 500 + i).await));
    }
    wait_caught_up(&p.node, "secondary", Duration::from_secs(60));

    // The primary site is lost: every pull is served at the secondary.
    p.node.kill9();
    let sreg = Registry::new(&s.node.url);
    for (repo, manifest) in &acknowledged {
        pull_verified(&sreg, repo, "v1", manifest).await;
    }

    // Promotion, on the stopped secondary node.
    s.node.kill9();
    let data = s.node.data_dir.to_str().unwrap().to_string();
    let out = berth_geo(&["promote", "--data-dir", &data], &[("REGISTRY_BERTH_NODEID", "2"), ("REGISTRY_BERTH_GRPCADDR", &s.node.grpc_addr)]);
    assert!(out.contains("promoted site secondary") && out.contains("held every piece of content"), "{out}");
    set_env(&mut s.node, "REGISTRY_BERTH_ROLE", "voter");
    s.node.restart();
    let sreg = Registry::new(&s.node.url);
    for i in 0..2 {
        let repo = format!("after/app{i}");
        acknowledged.push((repo.clone(), push_image(&sreg, &repo, "v1", 600 + i).await));
    }
    for (repo, manifest) in &acknowledged {
        pull_verified(&sreg, repo, "v1", manifest).await;
    }

    // The old primary returns as it was: a cluster of its own, which the new one refuses.
    p.node.restart();
    let preg = Registry::new(&p.node.url);
    let stray = push_image(&preg, "stray/app", "v1", 700).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = sreg.get_manifest("stray/app", "v1").await.unwrap();
    assert_eq!(status, 404, "a push acknowledged by the old primary after the promotion is not mixed in");
    for (repo, manifest) in &acknowledged {
        pull_verified(&sreg, repo, "v1", manifest).await;
    }
    let log = std::fs::read_to_string(&s.node.log).unwrap();
    assert!(log.contains("refusing a Raft message from another cluster"), "the old primary's leader tried to reach node 2 and was refused");

    // Demoted, the old primary joins the new cluster as its secondary site.
    p.node.kill9();
    let pdata = p.node.data_dir.to_str().unwrap().to_string();
    let out = berth_geo(&["demote", "--data-dir", &pdata], &[]);
    assert!(out.contains("moved this node's Raft data"), "{out}");
    set_env(&mut p.node, "REGISTRY_BERTH_ROLE", "learner");
    set_env(&mut p.node, "REGISTRY_BERTH_JOIN", &s.node.grpc_addr);
    p.node.restart();
    wait_caught_up(&s.node, "primary", Duration::from_secs(60));
    let preg = Registry::new(&p.node.url);
    for (repo, manifest) in &acknowledged {
        for d in image_digests(manifest) {
            assert!(holds(&p.store, &d), "{repo}: {d} at the old primary's store");
        }
        pull_verified(&preg, repo, "v1", manifest).await;
    }
    let (status, _) = preg.get_manifest("stray/app", "v1").await.unwrap();
    assert_eq!(status, 404, "the stray push stays in the old data set aside, not in the cluster");
    assert!(!stray.is_empty());
    let status = geo_status(&s.node);
    let sites: Vec<_> = status.as_array().unwrap().iter().map(|s| (s["site"].as_str().unwrap().to_string(), s["nodes"].as_array().unwrap().len())).collect();
    assert_eq!(sites, vec![("primary".to_string(), 1), ("secondary".to_string(), 1)], "{status:#}");
}

/// `deploy/local/sites.sh`: two sites with a balancer each; skopeo pushes at the primary and,
/// with the primary site killed, copies the image back from the secondary byte for byte.
#[test]
fn sites_sh_runs_two_sites_that_skopeo_pushes_to_and_pulls_from() {
    berth_tests::init_tracing();
    if !berth_tests::require_tool("skopeo") || !berth_tests::require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sites = dir.path().join("sites");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/sites.sh");
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(&script);
        c.args(args).arg("--dir").arg(&sites).env("BERTH_BIN", berth_tests::berth_bin());
        berth_tests::run(&mut c)
    };
    struct Down<'a>(&'a dyn Fn(&[&str]) -> String);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            (self.0)(&["down"]);
        }
    }
    let out = run(&["up", "--voters", "1", "--learners", "1"]);
    let _down = Down(&run);
    assert!(out.contains("secondary at"), "{out}");
    let lb = |site: &str| std::fs::read_to_string(sites.join(site).join("lb")).unwrap().trim().trim_start_matches("http://").to_string();
    let (primary, secondary) = (lb("primary"), lb("secondary"));

    let src = dir.path().join("src");
    berth_tests::write_oci_layout(&src, "v1", &[random_bytes(1, 300_000), random_bytes(2, 50_000)]);
    let skopeo = |args: &[&str]| berth_tests::run(std::process::Command::new("skopeo").args(args));
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://{primary}/sites/app:v1")]);

    // Caught up, as `sites.sh status` shows it.
    let started = Instant::now();
    loop {
        let status = run(&["status"]);
        let secondary_line = status.lines().find(|l| l.starts_with("secondary ")).unwrap_or_default().to_string();
        let cols: Vec<&str> = secondary_line.split_whitespace().collect();
        // config, two layers and the manifest; nothing missing.
        if cols.len() > 4 && cols[2] == "4" && cols[3] == "0" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{status}");
        std::thread::sleep(Duration::from_millis(300));
    }
    run(&["kill-site", "primary"]);
    let back = dir.path().join("back");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{secondary}/sites/app:v1"), &format!("oci:{}:v1", back.display())]);
    let blobs = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d.join("blobs/sha256")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(blobs(&back), blobs(&src), "the same image, from the secondary alone");
    let out = run(&["start-site", "primary"]);
    assert!(out.contains("site primary started"), "{out}");
}
