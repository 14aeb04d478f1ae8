//! Berth tried as an attacker and as a failing machine would: forged upload state, the
//! cluster plane without credentials, malformed references and ranges, broken and stalled
//! bodies, crashes mid-upload, idle connections by the thousand. Raw sockets where a client
//! library would hide the attack. SECURITY.md lists each test with what it tries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_proto::{Digest, ResumableSha256};
use berth_tests::{init_tracing, Berth, Registry};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;

const SECRET: &str = "a-known-http-secret-for-the-forgery-test";

fn node(dir: &Path, env: &[(&str, &str)]) -> Berth {
    let mut e = vec![("REGISTRY_HTTP_SECRET", SECRET)];
    e.extend_from_slice(env);
    Berth::start(&dir.join("node"), None, &e)
}

/// One raw HTTP/1.1 exchange on `s`: writes `req`, reads one response (headers and a
/// Content-Length body). Returns (status, head, body).
fn exchange(s: &mut TcpStream, req: &[u8]) -> (u16, String, Vec<u8>) {
    s.write_all(req).unwrap();
    if req.starts_with(b"HEAD ") {
        let (st, head, _) = read_head(s);
        return (st, head, Vec::new());
    }
    read_response(s)
}

fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let (status, head, len) = read_head(s);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

/// Reads a response's status line and headers; returns them with the announced body length.
fn read_head(s: &mut TcpStream) -> (u16, String, usize) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    (status, head, len)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn connect(b: &Berth) -> TcpStream {
    let s = TcpStream::connect(&b.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

/// Signs an upload `_state` payload exactly as the server does, with the real secret.
fn forge_state(payload: &serde_json::Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

fn state_of(location: &str) -> serde_json::Value {
    let tok = location.split("_state=").nth(1).unwrap();
    let payload = tok.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn a_forged_upload_state_signed_with_the_real_secret_poisons_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]);
    let reg = Registry::new(&b.url);
    let good = b"the layer everybody pulls".to_vec();
    let evil = b"a backdoor".to_vec();
    let good_digest = Digest::sha256_of(&good);

    tracing::info!("upload evil bytes, then forge a state that claims they hash to the good digest");
    let r = reg.http.post(reg.abs("/v2/victim/app/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = reg.http.patch(reg.abs(&loc)).body(evil.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let mut claim = state_of(&loc);
    let mut h = ResumableSha256::new();
    h.update(&good);
    claim["offset"] = serde_json::json!(good.len());
    claim["hash"] = serde_json::json!(URL_SAFE_NO_PAD.encode(h.encode()));
    let forged = format!("{}?_state={}", loc.split('?').next().unwrap(), forge_state(&claim));
    let r = reg.http.put(format!("{}&digest={good_digest}", reg.abs(&forged))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));

    tracing::info!("a forged state for a fresh upload cannot move its offset either");
    let r = reg.http.post(reg.abs("/v2/victim/app/blobs/uploads/")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let mut claim = state_of(&loc);
    claim["offset"] = serde_json::json!(5);
    let forged = format!("{}?_state={}", loc.split('?').next().unwrap(), forge_state(&claim));
    let r = reg.http.get(reg.abs(&forged)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-0", "the server's offset, not the forged one");
    let r = reg.http.patch(reg.abs(&forged)).body(evil.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    tracing::info!("nothing is stored or linked under the good digest");
    let r = reg.http.head(reg.abs(&format!("/v2/victim/app/blobs/{good_digest}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let shared = dir.path().join("node").join("blobs").join("sha256").join(&good_digest.hex()[..2]).join(good_digest.hex());
    assert!(!shared.exists(), "bytes were stored under {good_digest}");
    // The real content still uploads fine afterwards.
    assert_eq!(reg.push_blob("victim/app", &good).await.unwrap(), good_digest);
    assert_eq!(reg.get_blob("victim/app", &good_digest).await.unwrap(), good);
}

#[tokio::test]
async fn uploads_resume_from_the_durable_offset_after_a_broken_chunk_or_a_crash() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut b = node(dir.path(), &[]);
    let reg = Registry::new(&b.url);
    let content = berth_tests::random_bytes(7, 300_000);
    let (one, two) = content.split_at(100_000);

    tracing::info!("first chunk acknowledged");
    let r = reg.http.post(reg.abs("/v2/resume/me/blobs/uploads/")).send().await.unwrap();
    let first_loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = reg
        .http
        .patch(reg.abs(&first_loc))
        .header("Content-Range", format!("0-{}", one.len() - 1))
        .body(one.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let path = r.headers()["location"].to_str().unwrap().to_string();

    tracing::info!("a second chunk breaks off half-way: the client hangs up");
    let mut s = connect(&b);
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nContent-Range: {}-{}\r\n\r\n",
        two.len(),
        one.len(),
        content.len() - 1
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&two[..50_000]).unwrap();
    drop(s);

    tracing::info!("GET on the *first* Location reports the durable offset");
    let r = await_offset(&reg, &first_loc, one.len()).await;
    assert_eq!(r, one.len());

    tracing::info!("a third chunk is cut by SIGKILL mid-body; after the restart the offset is still durable");
    let mut s = connect(&b);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&two[..100_000]).unwrap();
    b.kill9();
    drop(s);
    b.restart();
    let reg = Registry::new(&b.url);
    let r = reg.http.get(reg.abs(&first_loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"].to_str().unwrap(), format!("0-{}", one.len() - 1));
    let loc = r.headers()["location"].to_str().unwrap().to_string();

    tracing::info!("the client continues from there to a verified blob");
    let r = reg
        .http
        .patch(reg.abs(&loc))
        .header("Content-Range", format!("{}-{}", one.len(), content.len() - 1))
        .body(two.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{:?}", r.text().await);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let digest = Digest::sha256_of(&content);
    let r = reg.http.put(format!("{}&digest={digest}", reg.abs(&loc))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(reg.get_blob("resume/me", &digest).await.unwrap(), content);
}

/// Polls the upload's offset until it is `want` (the broken request may still be finishing).
async fn await_offset(reg: &Registry, loc: &str, want: usize) -> usize {
    let mut seen = 0;
    for _ in 0..100 {
        let r = reg.http.get(reg.abs(loc)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let range = r.headers()["range"].to_str().unwrap().to_string();
        seen = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

#[tokio::test]
async fn protocol_edges_answer_as_the_spec_and_distribution_do() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]);
    let reg = Registry::new(&b.url);
    let blob = b"0123456789".to_vec();
    let d = reg.push_blob("edge/app", &blob).await.unwrap();
    let config = reg.push_blob("edge/app", b"{}").await.unwrap();
    let manifest = berth_tests::image_manifest((&config, 2), &[(&d, blob.len())]);
    reg.push_manifest("edge/app", "v1", &manifest, "application/vnd.oci.image.manifest.v1+json").await.unwrap();
    let mut s = connect(&b);

    tracing::info!("a reference that cannot exist: 404 MANIFEST_UNKNOWN to GET and HEAD, 400 to PUT");
    for bad in ["-bad", ".x", &"a".repeat(129), "sha256:zz"] {
        let (st, _, body) = exchange(&mut s, &get(&format!("/v2/edge/app/manifests/{bad}"), ""));
        assert_eq!(st, 404, "{bad}");
        assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));
        let (st, _, _) = exchange(&mut s, format!("HEAD /v2/edge/app/manifests/{bad} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(st, 404, "{bad}");
    }
    let r = reg
        .http
        .put(reg.abs("/v2/edge/app/manifests/-bad"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    tracing::info!("ranges per RFC 9110");
    let blob_path = format!("/v2/edge/app/blobs/{d}");
    let (st, head, body) = exchange(&mut s, &get(&blob_path, "Range: bytes=2-4\r\n"));
    assert_eq!((st, body.as_slice()), (206, &b"234"[..]));
    assert_eq!(header(&head, "content-range"), Some("bytes 2-4/10"));
    for ignored in ["items=0-1", "bytes=4-2", "bytes=x-y", "bytes=0-1,4-5"] {
        let (st, _, body) = exchange(&mut s, &get(&blob_path, &format!("Range: {ignored}\r\n")));
        assert_eq!((st, body.as_slice()), (200, blob.as_slice()), "{ignored}");
    }
    let (st, head, body) = exchange(&mut s, &get(&blob_path, "Range: bytes=10-20\r\n"));
    assert_eq!(st, 416);
    assert_eq!(header(&head, "content-range"), Some("bytes */10"));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("RANGE_INVALID") && !body.contains("BLOB_UNKNOWN"), "{body}");

    tracing::info!("every 405 says what is allowed");
    for (req, allow) in [
        ("POST /v2/edge/app/tags/list", "GET, HEAD"),
        ("PATCH /v2/edge/app/manifests/v1", "GET, HEAD, PUT, DELETE"),
        (&*format!("PUT {blob_path}"), "GET, HEAD, DELETE"),
        ("DELETE /v2/", "GET, HEAD"),
    ] {
        let (st, head, _) = exchange(&mut s, format!("{req} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes());
        assert_eq!(st, 405, "{req}");
        assert_eq!(header(&head, "allow"), Some(allow), "{req}");
    }

    tracing::info!("OPTIONS says what is allowed (GitLab asks it before deleting a tag)");
    for (req, allow) in [("OPTIONS /v2/edge/app/manifests/v1", "GET, HEAD, PUT, DELETE"), ("OPTIONS /v2/", "GET, HEAD")] {
        let (st, head, _) = exchange(&mut s, format!("{req} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!((st, header(&head, "allow")), (200, Some(allow)), "{req}");
    }

    tracing::info!("a manifest with a duplicate key is invalid");
    let text = String::from_utf8(manifest.clone()).unwrap();
    let dup = text.replacen("\"schemaVersion\":2", "\"schemaVersion\":2,\"schemaVersion\":2", 1);
    assert_ne!(dup, text, "fixture changed shape");
    let r = reg
        .http
        .put(reg.abs("/v2/edge/app/manifests/dup"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(dup)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("MANIFEST_INVALID"));

    tracing::info!("a blob a manifest still references cannot be deleted out from under it");
    let r = reg.http.delete(reg.abs(&blob_path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(reg.get_manifest("edge/app", "v1").await.unwrap().0, StatusCode::OK);
    assert_eq!(reg.get_blob("edge/app", &d).await.unwrap(), blob);

    tracing::info!("a retried delete (its first answer lost) gets the same answer");
    let mdigest = Digest::sha256_of(&manifest);
    for _ in 0..2 {
        let r = reg.http.delete(reg.abs(&format!("/v2/edge/app/manifests/{mdigest}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let never = Digest::sha256_of(b"never pushed");
    let r = reg.http.delete(reg.abs(&format!("/v2/edge/app/manifests/{never}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // With the manifest gone, its blob may go too.
    let r = reg.http.delete(reg.abs(&blob_path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    tracing::info!("path traversal in raw bytes reaches nothing outside the registry");
    for path in ["/v2/../../etc/passwd", "/v2/edge/app/blobs/uploads/..%2F..%2Fetc", "/v2/edge/../../app/tags/list"] {
        let (st, _, body) = exchange(&mut s, &get(path, ""));
        assert!(matches!(st, 400 | 404), "{path}: {st}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path}");
    }
}

#[tokio::test]
async fn small_blobs_on_a_kept_alive_connection_do_not_wait_for_delayed_acks() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]);
    let reg = Registry::new(&b.url);
    let small = vec![b'c'; 300];
    let d = reg.push_blob("fast/app", &small).await.unwrap();
    let config = reg.push_blob("fast/app", b"{}").await.unwrap();
    let manifest = berth_tests::image_manifest((&config, 2), &[(&d, small.len())]);
    reg.push_manifest("fast/app", "v1", &manifest, "application/vnd.oci.image.manifest.v1+json").await.unwrap();
    // One kept-alive connection, read the way real clients read (large buffered reads; a
    // byte-at-a-time reader would ACK at once and hide the stall).
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let median = async |path: String| {
        let mut times = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            let r = client.get(reg.abs(&path)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.bytes().await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        times[10]
    };
    let manifest_median = median("/v2/fast/app/manifests/v1".to_string()).await;
    let blob_median = median(format!("/v2/fast/app/blobs/{d}")).await;
    tracing::info!(?manifest_median, ?blob_median, "median GET latency on one connection");
    // A delayed ACK costs 40 ms; both must be far below that.
    assert!(blob_median < Duration::from_millis(15).max(manifest_median * 5), "blob {blob_median:?} vs manifest {manifest_median:?}");
}

#[tokio::test]
async fn stalled_bodies_are_cut_and_slow_ones_finish() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[("REGISTRY_BERTH_LIMITS_MINBODYRATE", "1000"), ("REGISTRY_BERTH_LIMITS_BODYRATEWINDOW", "1s")]);
    let reg = Registry::new(&b.url);
    let start = |reg: &Registry| {
        let reg = reg.clone();
        async move {
            let r = reg.http.post(reg.abs("/v2/slow/app/blobs/uploads/")).send().await.unwrap();
            r.headers()["location"].to_str().unwrap().to_string()
        }
    };

    tracing::info!("a client that sends 2 KB/s for 3 s keeps going");
    let loc = start(&reg).await;
    let mut s = connect(&b);
    s.write_all(format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n").as_bytes()).unwrap();
    for _ in 0..12 {
        s.write_all(&[b'x'; 500]).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    let (st, head, _) = read_response(&mut s);
    assert_eq!(st, 202);
    assert_eq!(header(&head, "range"), Some("0-5999"));

    tracing::info!("a client that stops sending is cut within the window, and its upload stays usable");
    let loc = start(&reg).await;
    let mut s = connect(&b);
    let t = Instant::now();
    s.write_all(format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 6000\r\n\r\n").as_bytes()).unwrap();
    s.write_all(&[b'x'; 1500]).unwrap();
    let (st, _, body) = read_response(&mut s);
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(t.elapsed() < Duration::from_secs(5), "cut after {:?}", t.elapsed());
    let r = reg.http.patch(reg.abs(&loc)).body(vec![b'y'; 10]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

fn raise_own_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

#[tokio::test]
async fn ten_thousand_idle_connections_neither_starve_nor_bloat_the_node() {
    init_tracing();
    let want = 10_000usize;
    let limit = raise_own_fd_limit();
    assert!(limit as usize > want + 500, "the open-file limit ({limit}) is too low for this test");
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[("REGISTRY_BERTH_LIMITS_IDLETIMEOUT", "4s"), ("REGISTRY_BERTH_LIMITS_HEADERTIMEOUT", "3s")]);
    let before = rss_kib(b.pid());

    tracing::info!("open {want} connections; half send nothing, half a partial request line");
    let mut held = Vec::with_capacity(want);
    for i in 0..want {
        let mut s = TcpStream::connect(&b.addr).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /v2/ HT").unwrap();
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(b.pid());

    tracing::info!("a new client is still served at once");
    let t = Instant::now();
    let mut s = connect(&b);
    let (st, _, _) = exchange(&mut s, &get("/v2/", ""));
    let answered = t.elapsed();
    assert_eq!(st, 200);
    assert!(answered < Duration::from_secs(1), "/v2/ took {answered:?}");
    let grown_mib = during.saturating_sub(before) / 1024;
    tracing::info!(before_kib = before, during_kib = during, grown_mib, ?answered, "with {want} idle connections");
    assert!(grown_mib < 100, "RSS grew by {grown_mib} MiB");

    tracing::info!("the server closes every one of them within its timeouts");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut open = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        let mut buf = [0u8; 512];
        // Closed: EOF (or a 408/400 answer followed by EOF). Still open: WouldBlock.
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    open += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    assert_eq!(open, 0, "{open} of {want} idle connections were still open");
    let after = rss_kib(b.pid());
    tracing::info!(after_kib = after, "after they were closed");
}

#[tokio::test]
async fn the_cluster_plane_answers_only_cluster_members() {
    use berth_proto::rpc::cluster_service_client::ClusterServiceClient;
    use berth_proto::rpc::metadata_service_client::MetadataServiceClient;
    use berth_proto::rpc::raft_service_client::RaftServiceClient;
    use berth_proto::rpc::{Payload, StatusRequest};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", b.grpc_addr)).unwrap().connect().await.unwrap();

    tracing::info!("no token: every service refuses, the secret-bearing query included");
    let query = Payload { data: vec![0] };
    let code = MetadataServiceClient::new(channel.clone()).query(query.clone()).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::Unauthenticated);
    let code = RaftServiceClient::new(channel.clone()).append_entries(Payload { data: vec![] }).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::Unauthenticated);
    let code = ClusterServiceClient::new(channel.clone()).status(StatusRequest {}).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::Unauthenticated);

    tracing::info!("a wrong token is refused the same way");
    let mut req = tonic::Request::new(query);
    req.metadata_mut().insert("berth-cluster-token", "f".repeat(64).parse().unwrap());
    let code = MetadataServiceClient::new(channel.clone()).query(req).await.unwrap_err().code();
    assert_eq!(code, tonic::Code::Unauthenticated);

    tracing::info!("the CLI with another token file fails; with the cluster's it works");
    let other = dir.path().join("other-token");
    std::fs::write(&other, "0".repeat(64)).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = berth_tests::berth_command()
        .env("REGISTRY_BERTH_CLUSTERTOKENFILE", &other)
        .args(["cluster", "status", "--node", &b.grpc_addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cluster token"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(berth_tests::berth_cluster(&["status", "--node", &b.grpc_addr]).contains("leader 1"));
}

#[test]
fn a_lone_node_opens_no_listener_it_was_not_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(berth_tests::berth_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut saw_grpc = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        saw_grpc |= line.contains("grpc listening");
        if line.starts_with("berth: listening on") {
            break;
        }
    }
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
        .collect();
    // Local addresses of the node's listening sockets, as /proc writes them.
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.get(3) == Some(&"0A") && cols.get(9).is_some_and(|i| inodes.iter().any(|x| x == i))).then(|| cols[1].to_string())
        })
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!saw_grpc, "a lone node opened a gRPC listener");
    // Its HTTP port, and the debug listener (health, metrics) on loopback only: 127.0.0.1:5001
    // (absent when another node on this machine holds that port).
    let debug = "0100007F:1389";
    let others: Vec<&String> = listening.iter().filter(|a| *a != debug).collect();
    assert_eq!(others.len(), 1, "a lone node listens on its HTTP port and nothing else beyond loopback: {listening:?}");
    let token = dir.path().join("cluster-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the cluster token is private to its user");
}

#[tokio::test]
async fn the_connection_cap_holds_and_idle_connections_make_room() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[("REGISTRY_BERTH_LIMITS_MAXCONNECTIONS", "20"), ("REGISTRY_BERTH_LIMITS_IDLETIMEOUT", "2s")]);
    tracing::info!("20 idle connections take every slot");
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&b.addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(&b.addr).unwrap();
    s.write_all(&get("/v2/", "")).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut byte = [0u8; 1];
    let early = s.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the 21st connection was served past the cap: {early:?}"
    );
    tracing::info!("once the idle ones are closed, the waiting client is served");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let (st, _, _) = read_response(&mut s);
    assert_eq!(st, 200);
    tracing::info!(waited = ?t.elapsed(), "served");
    drop(idle);
}

#[tokio::test]
async fn the_grpc_listener_is_capped_and_drops_silent_connections() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let b = node(dir.path(), &[("REGISTRY_BERTH_LIMITS_MAXCONNECTIONS", "3"), ("REGISTRY_BERTH_LIMITS_IDLETIMEOUT", "2s")]);
    tracing::info!("a neighbour without the token takes every gRPC slot and says nothing");
    let mut silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&b.grpc_addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tracing::info!("a member still gets through once the silent ones are cut");
    let t = Instant::now();
    let grpc = b.grpc_addr.clone();
    let status = tokio::task::spawn_blocking(move || berth_tests::berth_cluster(&["status", "--node", &grpc]));
    let status = tokio::time::timeout(Duration::from_secs(20), status).await.expect("the member was starved").unwrap();
    assert!(status.contains("leader 1"), "{status}");
    tracing::info!(waited = ?t.elapsed(), "member served");
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let mut closed = false;
        for _ in 0..10 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(_) => continue,
            }
        }
        assert!(closed, "a silent gRPC connection was kept");
    }
}

/// A manifest over `berth.limits.maxmanifestbytes` is refused with 413 `SIZE_INVALID` and
/// stores nothing; one within it is stored. The limit is 4 MiB unless configured.
#[tokio::test]
async fn manifests_over_the_configured_size_are_refused_and_store_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let padded = |pad: usize, config: &Digest| {
        let mut m: serde_json::Value = serde_json::from_slice(&berth_tests::image_manifest((config, 2), &[])).unwrap();
        m["annotations"] = serde_json::json!({"pad": "x".repeat(pad)});
        serde_json::to_vec(&m).unwrap()
    };
    for (limit, env) in [(4usize << 20, vec![]), (2048, vec![("REGISTRY_BERTH_LIMITS_MAXMANIFESTBYTES", "2048")])] {
        let home = dir.path().join(limit.to_string());
        std::fs::create_dir_all(&home).unwrap();
        let b = node(&home, &env);
        let reg = Registry::new(&b.url);
        let config = reg.push_blob("size/app", b"{}").await.unwrap();
        let over = padded(limit, &config);
        assert!(over.len() > limit);
        let r = reg
            .http
            .put(reg.abs("/v2/size/app/manifests/big"))
            .header("Content-Type", berth_tests::OCI_MANIFEST)
            .body(over)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "limit {limit}");
        let body = r.text().await.unwrap();
        assert!(body.contains("SIZE_INVALID") && body.contains("maxmanifestbytes"), "{body}");
        assert_eq!(reg.get_manifest("size/app", "big").await.unwrap().0, StatusCode::NOT_FOUND);
        let within = padded(limit - 400, &config);
        assert!(within.len() <= limit);
        reg.push_manifest("size/app", "ok", &within, berth_tests::OCI_MANIFEST).await.unwrap();
        assert_eq!(reg.get_manifest("size/app", "ok").await.unwrap().1, within);
    }
}

/// Waits until the node's log says, for the `times`th time, that its configured registry
/// limits are in the cluster's state.
async fn limits_in_force(b: &Berth, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read_to_string(&b.log).unwrap_or_default().matches("registry limits set").count() < times {
        assert!(Instant::now() < deadline, "the limits were never set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PUTs `body` as `repo:tag` and returns the status and error text.
async fn put_manifest(reg: &Registry, repo: &str, tag: &str, body: &[u8]) -> (StatusCode, String) {
    let r = reg
        .http
        .put(reg.abs(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", berth_tests::OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// A client cannot grow the registry without bound: tags per repository and repositories per
/// namespace are limited when configured (`berth.limits.maxtagsperrepository`,
/// `maxrepositoriespernamespace`), decided in log order so that concurrent pushes cannot
/// overshoot; past a limit is 403 `DENIED` naming the key, and nothing is stored. Moving an
/// existing tag is not a new tag; deleting one makes room; a raised limit takes effect when the
/// voter restarts with it.
#[tokio::test]
async fn tags_and_repositories_stop_at_their_configured_limits() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let limits = [("REGISTRY_BERTH_LIMITS_MAXTAGSPERREPOSITORY", "3"), ("REGISTRY_BERTH_LIMITS_MAXREPOSITORIESPERNAMESPACE", "2")];
    let mut b = node(dir.path(), &limits);
    limits_in_force(&b, 1).await;
    let reg = Registry::new(&b.url);
    let config = reg.push_blob("team/app", b"{}").await.unwrap();
    let image = |n: usize| {
        let mut m: serde_json::Value = serde_json::from_slice(&berth_tests::image_manifest((&config, 2), &[])).unwrap();
        m["annotations"] = serde_json::json!({"n": n.to_string()});
        serde_json::to_vec(&m).unwrap()
    };
    for t in ["a", "b", "c"] {
        reg.push_manifest("team/app", t, &image(0), berth_tests::OCI_MANIFEST).await.unwrap();
    }
    let (s, text) = put_manifest(&reg, "team/app", "d", &image(1)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("DENIED") && text.contains("berth.limits.maxtagsperrepository") && text.contains("holds 3 tags"), "{text}");
    assert_eq!(reg.get_manifest("team/app", "d").await.unwrap().0, StatusCode::NOT_FOUND);
    tracing::info!("moving a tag is not a new one; deleting one makes room");
    reg.push_manifest("team/app", "c", &image(2), berth_tests::OCI_MANIFEST).await.unwrap();
    assert_eq!(reg.get_manifest("team/app", "c").await.unwrap().1, image(2));
    let r = reg.http.delete(reg.abs("/v2/team/app/manifests/a")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    reg.push_manifest("team/app", "d", &image(1), berth_tests::OCI_MANIFEST).await.unwrap();

    tracing::info!("a third repository in the namespace is refused, by upload and by mount");
    reg.push_blob("team/web", b"web").await.unwrap();
    let upload = reg.push_blob("team/db", b"db").await;
    let e = upload.expect_err("a third repository in team/ was accepted").to_string();
    assert!(e.contains("403") || e.contains("DENIED"), "{e}");
    let r = reg.http.post(reg.abs(&format!("/v2/team/db/blobs/uploads/?mount={config}&from=team/app"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("berth.limits.maxrepositoriespernamespace"));
    let catalog: serde_json::Value = reg.http.get(reg.abs("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    assert_eq!(catalog["repositories"], serde_json::json!(["team/app", "team/web"]));
    tracing::info!("other namespaces are not affected");
    reg.push_blob("other/db", b"db").await.unwrap();

    tracing::info!("raised limits take effect when the voter restarts with them");
    b.kill9();
    let mut raised = node(dir.path(), &[("REGISTRY_BERTH_LIMITS_MAXTAGSPERREPOSITORY", "0"), ("REGISTRY_BERTH_LIMITS_MAXREPOSITORIESPERNAMESPACE", "0")]);
    limits_in_force(&raised, 2).await;
    let reg = Registry::new(&raised.url);
    reg.push_blob("team/db", b"db").await.unwrap();
    reg.push_manifest("team/app", "e", &image(3), berth_tests::OCI_MANIFEST).await.unwrap();
    raised.kill9();
}
