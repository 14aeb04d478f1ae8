//! The distribution API against a real `berth` process on the filesystem backend, plus the
//! behaviours that need a process: restarts, config switches, the debug listener.

use berth_tests::{init_tracing, random_bytes, suite, Berth, Registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_api_on_filesystem() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let reg = Registry::new(&node.url);
    suite::all(&reg).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_continues_after_restart() {
    init_tracing();
    tracing::info!("an upload started before a restart finishes after it");
    let dir = tempfile::tempdir().unwrap();
    let mut node = Berth::start(&dir.path().join("data"), None, &[]);
    let reg = Registry::new(&node.url);
    let data = random_bytes(7, 50_000);
    let r = reg.http.post(reg.abs("/v2/restart/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = reg.http.patch(reg.abs(&loc)).body(data[..20_000].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    node.restart();
    let d = berth_proto::Digest::sha256_of(&data);
    let r = reg.http.put(reg.abs(&format!("{loc}&digest={d}"))).body(data[20_000..].to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(reg.get_blob("restart", &d).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_can_be_disabled_and_metrics_are_served() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, "version: 0.1\nstorage:\n  delete:\n    enabled: false\nhttp:\n  headers:\n    X-Content-Type-Options: [nosniff]\n").unwrap();
    let node = Berth::start(&dir.path().join("data"), Some(&cfg), &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let reg = Registry::new(&node.url);
    tracing::info!("deletes refused with 405 UNSUPPORTED");
    let d = reg.push_blob("nodelete", b"keep me").await.unwrap();
    let r = reg.http.delete(reg.abs(&format!("/v2/nodelete/blobs/{d}"))).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
    assert_eq!(reg.get_blob("nodelete", &d).await.unwrap(), b"keep me");
    // OPTIONS leaves DELETE out, so GitLab does not try tag deletes that cannot work.
    let r = reg.http.request(reqwest::Method::OPTIONS, reg.abs("/v2/nodelete/manifests/v1")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["allow"].to_str().unwrap()), (200, "GET, HEAD, PUT"));

    tracing::info!("debug listener: health and metrics");
    let debug = node.debug_url.clone().unwrap();
    let r = reqwest::get(format!("{debug}/debug/health")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = reqwest::get(format!("{debug}/metrics")).await.unwrap().text().await.unwrap();
    for m in [
        "registry_http_requests_total",
        "registry_http_in_flight_requests",
        "registry_storage_action_seconds",
        "registry_storage_blob_upload_bytes",
    ] {
        assert!(text.contains(m), "{m} missing from metrics:\n{text}");
    }
    assert!(text.contains("handler=\"blob_upload\""));
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} missing")) as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_purge_the_log_and_restarts_restore_from_them() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut node = Berth::start(
        &dir.path().join("data"),
        None,
        &[("REGISTRY_BERTH_SNAPSHOTLOGS", "50"), ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")],
    );
    let reg = Registry::new(&node.url);
    tracing::info!("300 writes with a snapshot every 50 entries");
    let mut digests = Vec::new();
    for i in 0..300u64 {
        digests.push(reg.push_blob("snap/repo", &random_bytes(i, 64)).await.unwrap());
    }
    let debug = node.debug_url.clone().unwrap();
    // Snapshots are built in the background: wait for the metrics to show it.
    let (mut last, mut snap, mut purged) = (0, 0, 0);
    for _ in 0..100 {
        let m = reqwest::get(format!("{debug}/metrics")).await.unwrap().text().await.unwrap();
        (last, snap, purged) = (gauge(&m, "berth_raft_last_log_index"), gauge(&m, "berth_raft_snapshot_index"), gauge(&m, "berth_raft_purged_index"));
        if snap >= 250 && purged >= 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    println!("last log {last}, snapshot {snap}, purged {purged}");
    assert!(snap >= 250 && purged >= 200, "snapshot {snap}, purged {purged}, last {last}");
    // One snapshot file, named by `current`: each new one replaces the last.
    let snapshots = dir.path().join("data/raft/state/snapshots");
    let files: Vec<String> = std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(files.contains(&"current".to_string()), "{files:?}");
    assert_eq!(files.iter().filter(|f| f.ends_with(".snap")).count(), 1, "{files:?}");

    tracing::info!("restart restores snapshot + log tail");
    node.restart();
    let reg = Registry::new(&node.url);
    for (i, d) in digests.iter().enumerate() {
        assert_eq!(reg.get_blob("snap/repo", d).await.unwrap(), random_bytes(i as u64, 64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_from_distribution_config() {
    init_tracing();
    if !berth_tests::require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    tracing::info!("a test CA and a server certificate for 127.0.0.1");
    let test_ca = berth_tests::TestCa::new(dir.path(), "berth-test-ca");
    let (cert, key) = test_ca.issue("server");
    let ca = test_ca.cert.clone();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, format!("version: 0.1\nhttp:\n  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())).unwrap();
    let node = Berth::start(&dir.path().join("data"), Some(&cfg), &[]);
    assert!(node.url.starts_with("https://"), "{}", node.url);

    tracing::info!("a client that trusts the certificate pushes and pulls over TLS");
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(root).build().unwrap();
    let reg = Registry { url: node.url.clone(), http };
    let d = reg.push_blob("tls/repo", b"over tls").await.unwrap();
    assert_eq!(reg.get_blob("tls/repo", &d).await.unwrap(), b"over tls");

    tracing::info!("a client that does not trust it is refused");
    assert!(reqwest::get(format!("{}/v2/", node.url)).await.is_err());
}

fn curl_tls(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_http2_reloads_on_sighup_and_checks_client_certificates() {
    init_tracing();
    if !berth_tests::require_tool("openssl") || !berth_tests::require_tool("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("tls.crt"), d.join("tls.key"));

    tracing::info!("berth makes a self-signed certificate for a first try");
    berth_tests::run(berth_tests::berth_command().args(["tls", "self-signed", "--host", "127.0.0.1", "--host", "localhost"]).arg("--cert").arg(&cert).arg("--key").arg(&key));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let cfg = d.join("config.yml");
    std::fs::write(&cfg, format!("version: 0.1\nhttp:\n  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())).unwrap();
    let node = Berth::start(&d.join("data"), Some(&cfg), &[]);
    let url = format!("{}/v2/", node.url);
    let self_signed = d.join("self-signed.pem");
    std::fs::copy(&cert, &self_signed).unwrap();
    let ss = self_signed.to_str().unwrap();
    assert_eq!(curl_tls(&["--cacert", ss, "--http2", &url]), (true, "200 2".into()), "HTTP/2 by ALPN");
    assert_eq!(curl_tls(&["--cacert", ss, "--http1.1", &url]), (true, "200 1.1".into()));

    tracing::info!("a new certificate on disk and SIGHUP: new connections get it, an open one goes on");
    let pinned = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&self_signed).unwrap()).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert_eq!(pinned.get(&url).send().await.unwrap().status(), 200);
    let ca = berth_tests::TestCa::new(d, "rotated-ca");
    let (new_cert, new_key) = ca.issue("rotated");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    // SAFETY: kill(2) on a child process of this test.
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    let ca_path = ca.cert.to_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !curl_tls(&["--cacert", &ca_path, &url]).0 {
        assert!(std::time::Instant::now() < deadline, "the new certificate was not served after SIGHUP");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!curl_tls(&["--cacert", ss, &url]).0, "new connections still get the old certificate");
    assert_eq!(pinned.get(&url).send().await.unwrap().status(), 200, "the connection opened before the reload was dropped");

    tracing::info!("a broken file and SIGHUP: the certificate in use stays");
    std::fs::write(&key, "not a key").unwrap();
    unsafe { libc::kill(node.pid() as i32, libc::SIGHUP) };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(curl_tls(&["--cacert", &ca_path, &url]).0);
    drop(node);

    tracing::info!("clientcas: a client without a certificate from those CAs is refused");
    let (client_cert, client_key) = ca.issue("client");
    let cfg = d.join("mtls.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nhttp:\n  tls:\n    certificate: {}\n    key: {}\n    clientcas: [{}]\n",
            new_cert.display(),
            new_key.display(),
            ca_path
        ),
    )
    .unwrap();
    let node = Berth::start(&d.join("data2"), Some(&cfg), &[]);
    let url = format!("{}/v2/", node.url);
    assert!(!curl_tls(&["--cacert", &ca_path, &url]).0, "no client certificate, yet served");
    let (cc, ck) = (client_cert.to_str().unwrap(), client_key.to_str().unwrap());
    assert_eq!(curl_tls(&["--cacert", &ca_path, "--cert", cc, "--key", ck, &url]), (true, "200 2".into()));
}

/// Every file under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Manifest bodies are content (issue 10): the body lands in the blob store, verified; the
/// Raft log and the state database keep only what the indexes need; after a restart the body
/// is served from the store; a body damaged in the store or gone from it is an error, never
/// other bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_bodies_live_in_the_blob_store_not_the_log() {
    use berth_proto::Digest;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = Berth::start(&data, None, &[]);
    let reg = Registry::new(&node.url);
    let (config, layer) = (random_bytes(1, 300), random_bytes(2, 3000));
    let (cd, ld) = (reg.push_blob("content/app", &config).await.unwrap(), reg.push_blob("content/app", &layer).await.unwrap());
    // A marker where no index looks: a layer's annotation.
    let marker = format!("marker-{:016x}", rand::random::<u64>());
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": berth_tests::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len(),
                    "annotations": {"org.example.marker": marker}}],
    }))
    .unwrap();
    let digest = reg.push_manifest("content/app", "v1", &body, berth_tests::OCI_MANIFEST).await.unwrap();
    assert_eq!(digest, Digest::sha256_of(&body));

    let stored: Vec<_> = files_under(&data).into_iter().filter(|p| *p.file_name().unwrap() == *digest.hex()).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), body);
    let raft = files_under(&data.join("raft"));
    assert!(!raft.is_empty());
    for f in &raft {
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "the body is in {}", f.display());
    }
    assert_eq!(reg.get_manifest("content/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, body.clone()));
    assert_eq!(reg.get_manifest("content/app", &digest.to_string()).await.unwrap(), (reqwest::StatusCode::OK, body.clone()));

    tracing::info!("after a restart the body comes from the store");
    node.restart();
    let reg = Registry::new(&node.url);
    assert_eq!(reg.get_manifest("content/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, body.clone()));

    tracing::info!("damaged in the store: refused, not served");
    std::fs::remove_file(&stored[0]).unwrap();
    std::fs::write(&stored[0], b"{\"schemaVersion\":2}").unwrap();
    node.restart();
    let reg = Registry::new(&node.url);
    let (s, got) = reg.get_manifest("content/app", "v1").await.unwrap();
    assert_eq!(s, reqwest::StatusCode::INTERNAL_SERVER_ERROR, "{}", String::from_utf8_lossy(&got));
    assert!(String::from_utf8_lossy(&got).contains("damaged"), "{}", String::from_utf8_lossy(&got));
    tracing::info!("pushed again, the damaged copy is replaced");
    reg.push_manifest("content/app", "v1", &body, berth_tests::OCI_MANIFEST).await.unwrap();
    assert_eq!(std::fs::read(&stored[0]).unwrap(), body);
    assert_eq!(reg.get_manifest("content/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, body.clone()));
    tracing::info!("gone from the store: an error that says so");
    std::fs::remove_file(&stored[0]).unwrap();
    node.restart();
    let reg = Registry::new(&node.url);
    let (s, got) = reg.get_manifest("content/app", "v1").await.unwrap();
    assert_eq!(s, reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&got).contains("missing"), "{}", String::from_utf8_lossy(&got));
    tracing::info!("pushed again, it is whole again");
    reg.push_manifest("content/app", "v1", &body, berth_tests::OCI_MANIFEST).await.unwrap();
    assert_eq!(reg.get_manifest("content/app", "v1").await.unwrap(), (reqwest::StatusCode::OK, body));
}
