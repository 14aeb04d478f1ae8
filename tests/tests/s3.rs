//! The same push/pull suite on S3, against a local S3-compatible server (moto) that the test
//! starts itself.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_tests::{init_tracing, require_tool, suite, Berth, Registry};

struct Moto(Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_api_on_s3() {
    init_tracing();
    if !require_tool("moto_server") {
        return;
    }
    let port = berth_tests::ports::free_port();
    let mut moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.put(format!("{endpoint}/berth-test")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(up, "moto did not start");

    tracing::info!("berth on S3");
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(
        &dir.path().join("data"),
        None,
        &[
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_BUCKET", "berth-test"),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "test"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "test"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", &endpoint),
            ("REGISTRY_STORAGE_S3_FORCEPATHSTYLE", "true"),
            ("REGISTRY_STORAGE_S3_ROOTDIRECTORY", "/registry"),
            ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ],
    );
    let reg = Registry::new(&node.url);
    suite::all(&reg).await.unwrap();

    tracing::info!("blobs really are in the bucket");
    let listing = http.get(format!("{endpoint}/berth-test?list-type=2&prefix=registry/blobs/")).send().await.unwrap().text().await.unwrap();
    assert!(listing.contains("registry/blobs/sha256/"), "{listing}");
    assert!(!dir.path().join("data/storage").exists(), "filesystem store used instead of S3");

    tracing::info!("the store goes away: writes answer 503 with Retry-After, health says why");
    let _ = moto.0.kill();
    let _ = moto.0.wait();
    let t = std::time::Instant::now();
    let r = reg.http.post(reg.abs("/v2/s3/gone/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(t.elapsed() < Duration::from_secs(30), "a dead store took {:?} to report", t.elapsed());
    let health = reqwest::get(format!("{}/debug/health", node.debug_url.clone().unwrap())).await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(health.text().await.unwrap().contains("storage"));
}

#[test]
fn an_unreachable_object_store_stops_the_start_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}", berth_tests::ports::free_port());
    let t = std::time::Instant::now();
    let out = berth_tests::berth_command()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .envs([
            ("REGISTRY_HTTP_ADDR", "127.0.0.1:0"),
            ("REGISTRY_STORAGE_S3_REGION", "us-east-1"),
            ("REGISTRY_STORAGE_S3_BUCKET", "nowhere"),
            ("REGISTRY_STORAGE_S3_REGIONENDPOINT", closed.as_str()),
            ("REGISTRY_STORAGE_S3_ACCESSKEY", "x"),
            ("REGISTRY_STORAGE_S3_SECRETKEY", "x"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its store: {err}");
    assert!(err.contains("storage.s3") && err.contains("start-up check") && err.contains("writing"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(60), "took {:?}", t.elapsed());
}
