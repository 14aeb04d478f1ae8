//! Notifications as Distribution sends them, against a real node and a real webhook receiver
//! (a small Python HTTP server): events of pushes and deletes are kept while the receiver is
//! down, survive a SIGKILL of the node, and all arrive once it is up, in Distribution's
//! envelope, with the configured headers; an ignored action is not sent.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::{cluster_leader, init_tracing, push_image, require_tool, wait_for_leader, Berth, Registry};
use serde_json::Value;

/// Records every POST it receives as one JSON line: its path, headers of interest and body.
const RECEIVER: &str = r#"
import http.server, json, sys
out = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out.write(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
            "type": self.headers.get("Content-Type"), "body": json.loads(body)}) + "\n")
        out.flush()
        self.send_response(200)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn receive(port: u16, out: &std::path::Path) -> Receiver {
    Receiver(Command::new("python3").args(["-c", RECEIVER, &port.to_string(), out.to_str().unwrap()]).stdout(Stdio::null()).spawn().unwrap())
}

/// Every event received so far, by id (a redelivery has the same id), with the requests.
fn received(out: &std::path::Path) -> (BTreeMap<String, Value>, Vec<Value>) {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let requests: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let events = requests.iter().flat_map(|r| r["body"]["events"].as_array().cloned().unwrap_or_default()).map(|e| (e["id"].as_str().unwrap().to_string(), e)).collect();
    (events, requests)
}

async fn metric(node: &Berth, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", node.debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_for_a_receiver_that_is_down_and_survive_a_crash() {
    init_tracing();
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = berth_tests::ports::free_port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nstorage:\n  delete:\n    enabled: true\nnotifications:\n  events:\n    includereferences: true\n  endpoints:\n    - name: hook\n      url: http://127.0.0.1:{port}/events\n      headers:\n        Authorization: [Bearer s3cret]\n      timeout: 500ms\n      threshold: 3\n      backoff: 300ms\n    - name: deletes-only\n      url: http://127.0.0.1:{port}/deletes\n      ignore:\n        actions: [push]\n"
        ),
    )
    .unwrap();
    let mut node = Berth::start(&dir.path().join("data"), Some(&cfg), &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let reg = Registry::new(&node.url);
    // The endpoints are registered within a second of the node leading.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    tracing::info!("an image is pushed and a tag deleted while the receiver is down");
    let manifest = push_image(&reg, "team/app", "v1", 7).await;
    push_image(&reg, "team/app", "v2", 8).await;
    let resp = reg.http.delete(reg.abs("/v2/team/app/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "berth_notifications_failures_total").await < 3.0 {
        assert!(Instant::now() < deadline, "no delivery was tried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&node, "berth_notifications_pending").await >= 7.0);

    tracing::info!("the node is killed and restarted: the events are still there");
    node.kill9();
    node.restart();
    let out = dir.path().join("received.jsonl");
    let _receiver = receive(port, &out);

    tracing::info!("the receiver is up: every event arrives");
    let want = 7; // v1: two blobs and the manifest; v2 the same; the tag delete
    let deadline = Instant::now() + Duration::from_secs(20);
    let (events, requests) = loop {
        let (events, requests) = received(&out);
        let deletes = requests.iter().filter(|r| r["path"] == "/deletes").count();
        // Both endpoints get the delete, under the same id.
        if events.len() >= want && deletes >= 1 {
            break (events, requests);
        }
        assert!(Instant::now() < deadline, "received {} events: {requests:?}", events.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hook: Vec<&Value> = requests.iter().filter(|r| r["path"] == "/events").collect();
    for r in &hook {
        assert_eq!(r["auth"], "Bearer s3cret", "{r}");
        assert_eq!(r["type"], "application/vnd.docker.distribution.events.v1+json");
    }
    let hook_events: BTreeMap<&String, &Value> = events.iter().filter(|(id, _)| hook.iter().any(|r| r["body"]["events"].as_array().unwrap().iter().any(|e| e["id"] == id.as_str()))).collect();
    assert_eq!(hook_events.len(), want, "{hook_events:?}");
    let digest = berth_proto::Digest::sha256_of(&manifest).to_string();
    let pushed = hook_events.values().find(|e| e["target"]["digest"] == digest.as_str()).expect("the manifest's push event");
    assert_eq!(pushed["action"], "push");
    assert_eq!(pushed["target"]["repository"], "team/app");
    assert_eq!(pushed["target"]["tag"], "v1");
    assert_eq!(pushed["target"]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(pushed["target"]["length"], manifest.len());
    assert!(pushed["target"]["url"].as_str().unwrap().ends_with(&format!("/v2/team/app/manifests/{digest}")), "{pushed}");
    assert!(pushed["timestamp"].as_str().unwrap().ends_with('Z'));
    let blobs = hook_events.values().filter(|e| e["target"]["mediaType"] == "application/octet-stream").count();
    assert_eq!(blobs, 4);
    let deleted: Vec<&&Value> = hook_events.values().filter(|e| e["action"] == "delete").collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["target"]["tag"], "v1");
    // The endpoint that ignores pushes got the delete only.
    let only: Vec<Value> = requests.iter().filter(|r| r["path"] == "/deletes").flat_map(|r| r["body"]["events"].as_array().unwrap().clone()).collect();
    assert!(only.iter().all(|e| e["action"] == "delete") && !only.is_empty(), "{only:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "berth_notifications_pending").await > 0.0 {
        assert!(Instant::now() < deadline, "events still pending");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&node, "berth_notifications_events_total{endpoint=\"hook\",result=\"sent\"}").await >= want as f64);
}

/// Events recorded while the receiver is down are in the replicated state: when the leader
/// that recorded them dies, the next leader delivers them, and the events of pushes after the
/// failover too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_delivers_what_the_dead_one_had_not() {
    init_tracing();
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = berth_tests::ports::free_port();
    let cfg = dir.path().join("config.yml");
    std::fs::write(&cfg, format!("version: 0.1\nnotifications:\n  endpoints:\n    - name: hook\n      url: http://127.0.0.1:{port}/events\n      timeout: 500ms\n      backoff: 200ms\n")).unwrap();
    let mut nodes = berth_tests::voter_cluster_with(None, dir.path(), 3, Some(&cfg), &[("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let leader = cluster_leader(&nodes[0].grpc_addr).expect("a leader") as usize;
    tracing::info!("the leader registers the endpoint");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = reqwest::get(format!("{}/metrics", nodes[leader - 1].debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
        if text.contains("berth_notifications_pending{endpoint=\"hook\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "the endpoint was not registered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("an image is pushed through a follower while the receiver is down");
    let follower = (0..3).find(|&i| i != leader - 1).unwrap();
    let first = push_image(&Registry::new(&nodes[follower].url), "ha/app", "one", 1).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&nodes[leader - 1], "berth_notifications_failures_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the leader did not try to deliver");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("the leader dies with the events undelivered; the receiver comes up");
    nodes[leader - 1].kill9();
    wait_for_leader(&nodes[follower].grpc_addr, Some(leader as u64)).await;
    let out = dir.path().join("received.jsonl");
    let _receiver = receive(port, &out);
    let second = push_image(&Registry::new(&nodes[follower].url), "ha/app", "two", 2).await;

    let digests = [berth_proto::Digest::sha256_of(&first).to_string(), berth_proto::Digest::sha256_of(&second).to_string()];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (events, _) = received(&out);
        let manifests: Vec<&Value> = events.values().filter(|e| digests.iter().any(|d| e["target"]["digest"] == d.as_str())).collect();
        // Each image: two blobs and the manifest.
        if events.len() >= 6 && manifests.len() == 2 {
            assert_eq!(events.len(), 6, "{events:?}");
            break;
        }
        assert!(Instant::now() < deadline, "received {} events: {events:?}", events.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
