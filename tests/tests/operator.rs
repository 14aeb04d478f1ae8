//! What an operator meets on the first day: `config check` before a start, command output
//! cut short by a pipe, and the access log.

use std::path::Path;
use std::process::Command;

use berth_tests::{berth_bin, berth_command, init_tracing, Berth};

#[test]
fn config_check_names_the_key_and_the_nearest_valid_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let check = |yaml: &str| {
        let f = dir.path().join("config.yml");
        std::fs::write(&f, yaml).unwrap();
        let out = berth_command().args(["config", "check"]).arg(&f).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, said) = check("version: 0.1\nhttp:\n  addr: :5000\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/berth\n");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains(": ok"), "{said}");
    // A Distribution key Berth does not use: a warning, still ok.
    let (code, said) = check("version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("warning: proxy"), "{said}");
    // A typo in Berth's own keys: refused, with the key meant.
    let (code, said) = check("version: 0.1\nberth:\n  nodid: 2\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("berth.nodid") && said.contains("did you mean berth.nodeid?"), "{said}");
    // A file the configuration names must exist, as at start.
    let (code, said) = check("version: 0.1\nauth:\n  htpasswd:\n    realm: r\n    path: /nonexistent/htpasswd\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("auth.htpasswd.path"), "{said}");
    let (code, said) = check("version: 0.1\nhttp:\n  tls:\n    certificate: /nonexistent/tls.crt\n    key: /nonexistent/tls.key\n");
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("/nonexistent/tls.crt"), "{said}");
}

#[test]
fn output_cut_short_by_a_pipe_ends_quietly() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let out = Command::new("sh")
        .arg("-c")
        // `true` reads nothing and is gone long before the status comes back over gRPC, so
        // every write berth makes meets a closed pipe.
        .arg(format!("\"$0\" cluster status --node {} | true", node.grpc_addr))
        .arg(berth_bin())
        .env("REGISTRY_BERTH_CLUSTERTOKENFILE", berth_tests::cluster_token_file())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// The lines of a node's log with target `access`.
fn access_lines(node: &Berth) -> Vec<String> {
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    log.lines().filter(|l| l.contains("access")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_an_access_line_with_its_user() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("bob:{}\n", bcrypt::hash("builder", 5).unwrap())).unwrap();
    let auth = [("REGISTRY_AUTH_HTPASSWD_PATH", htpasswd.to_str().unwrap()), ("REGISTRY_AUTH_HTPASSWD_REALM", "r")];
    let text = Berth::start(&dir.path().join("text"), None, &auth);
    let mut env = auth.to_vec();
    env.push(("REGISTRY_LOG_FORMATTER", "json"));
    let json = Berth::start(&dir.path().join("json"), None, &env);
    let http = reqwest::Client::builder().user_agent("operator-test/1").build().unwrap();
    for node in [&text, &json] {
        assert_eq!(http.get(format!("{}/v2/", node.url)).basic_auth("bob", Some("builder")).send().await.unwrap().status(), 200);
        assert_eq!(http.get(format!("{}/v2/_catalog?n=5", node.url)).send().await.unwrap().status(), 401);
    }
    let wait_for = |node: &Berth, n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let lines = access_lines(node);
            if lines.len() >= n || std::time::Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };

    tracing::info!("text: Distribution's combined format, the user who logged in, the status and bytes");
    let lines = wait_for(&text, 2);
    assert!(lines.iter().any(|l| l.contains(r#"127.0.0.1 - bob "GET /v2/ HTTP/1.1" 200 2 "" "operator-test/1""#)), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(r#"127.0.0.1 - - "GET /v2/_catalog?n=5 HTTP/1.1" 401"#)), "{lines:#?}");

    tracing::info!("json: the same fields as keys");
    let lines = wait_for(&json, 2);
    let parsed: Vec<serde_json::Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let ok = parsed.iter().find(|v| v["fields"]["uri"] == "/v2/" && v["fields"]["user"] == "bob").unwrap_or_else(|| panic!("{lines:#?}"));
    assert_eq!((ok["target"].clone(), ok["fields"]["status"].clone()), (serde_json::json!("access"), serde_json::json!(200)));
    assert_eq!(ok["fields"]["client"], "127.0.0.1");
}

#[test]
fn every_command_explains_itself_with_an_example() {
    for cmd in [
        &["serve"][..],
        &["cluster", "status"],
        &["cluster", "add-learner"],
        &["cluster", "change-membership"],
        &["cluster", "remove"],
        &["cluster", "backup"],
        &["restore"],
        &["admin", "create-user"],
        &["admin", "set-password"],
        &["admin", "create-token"],
        &["admin", "rotate-signing-key"],
        &["admin", "users"],
        &["tls", "self-signed"],
        &["config", "check"],
        &["probe"],
    ] {
        let out = berth_command().args(cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let example = help.split_once("Example:\n  ").or_else(|| help.split_once("Examples:\n  ")).map(|(_, e)| e).unwrap_or_default();
        assert!(out.status.success() && example.contains(&format!("berth {}", cmd.join(" "))), "{cmd:?}: {help}");
    }
}

/// Opens a monolithic blob upload of `body` and sends its first half.
fn half_an_upload(node: &Berth, repo: &str, body: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let digest = berth_proto::Digest::sha256_of(body);
    let mut s = std::net::TcpStream::connect(&node.addr).unwrap();
    write!(s, "POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(&body[..body.len() / 2]).unwrap();
    s
}

#[test]
fn sigterm_lets_requests_in_flight_finish_within_draintimeout() {
    use std::io::{Read, Write};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let body = berth_tests::random_bytes(90, 64 * 1024);

    tracing::info!("an upload in flight at SIGTERM finishes and is acknowledged");
    let mut node = Berth::start(&dir.path().join("a"), None, &[("REGISTRY_HTTP_DRAINTIMEOUT", "5s")]);
    let mut s = half_an_upload(&node, "drain/a", &body);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = node.pid();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.write_all(&body[body.len() / 2..]).unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 201", "the upload in flight was not finished");
    assert!(node.terminate() < std::time::Duration::from_secs(5));

    tracing::info!("one that never finishes holds the node no longer than http.draintimeout");
    let mut node = Berth::start(&dir.path().join("b"), None, &[("REGISTRY_HTTP_DRAINTIMEOUT", "1s")]);
    let _stuck = half_an_upload(&node, "drain/b", &body);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let took = node.terminate();
    assert!(took >= std::time::Duration::from_millis(900), "gone before the drain time: {took:?}");
    assert!(took < std::time::Duration::from_secs(6), "draining took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_is_warned_about_once_per_interval() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut voters = berth_tests::voter_cluster(dir.path(), 3, &[]);
    let leader = berth_tests::wait_for_leader(&voters[0].grpc_addr, None).await;
    let down = voters.iter().position(|v| v.grpc_addr != voters[leader as usize - 1].grpc_addr).unwrap();
    let down_id = (down + 1).to_string();
    let before = std::fs::read_to_string(&voters[leader as usize - 1].log).unwrap().lines().count();
    voters[down].kill9();
    // openraft retries the peer every half second and says so in four lines each time.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let log = std::fs::read_to_string(&voters[leader as usize - 1].log).unwrap();
    let about_peer: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("WARN") && l.contains("openraft") && (l.contains(&format!("target={down_id}")) || l.contains(&format!("node {down_id} "))))
        .collect();
    assert!(!about_peer.is_empty(), "no warning about the peer at all");
    assert!(about_peer.len() <= 6, "{} lines in 4 s: {about_peer:#?}", about_peer.len());
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    init_tracing();
    if !berth_tests::require_tool("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/systemd/berth.service");
    // The unit names the installed binary; verify it against the one this build made.
    let text = std::fs::read_to_string(&unit).unwrap().replace("/usr/local/bin/berth", berth_bin().to_str().unwrap());
    let copy = dir.path().join("berth.service");
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&copy).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for berth.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    // systemd's scale: 0 (locked down) to 10 (exposed); below 2 is "OK".
    assert!(level < 2.0, "exposure {level}: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_asks_for_metrics_nodes_export() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0"),
        ("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry"),
        ("REGISTRY_BERTH_ADMIN_PASSWORD", "dashboard-admin-1"),
    ];
    let voters = berth_tests::voter_cluster(dir.path(), 1, &env);
    let fe = berth_tests::frontend(dir.path(), "fe", &voters, &env);
    let http = reqwest::Client::new();
    // Traffic that makes every kind of metric appear: a refusal, a push through the
    // frontend (forwarded, stored), a pull.
    assert_eq!(http.get(format!("{}/v2/_catalog", fe.url)).send().await.unwrap().status(), 401);
    let token = berth_tests::tokens::registry_token(&http, &fe.url, "root", "dashboard-admin-1", "repository:dash/app:pull,push").await;
    let blob = berth_tests::random_bytes(93, 5000);
    let digest = berth_proto::Digest::sha256_of(&blob);
    let r = http.post(format!("{}/v2/dash/app/blobs/uploads/?digest={digest}", fe.url)).bearer_auth(&token).body(blob).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(http.get(format!("{}/v2/dash/app/blobs/{digest}", fe.url)).bearer_auth(&token).send().await.unwrap().status(), 200);

    let mut exported = std::collections::BTreeSet::new();
    for node in [&voters[0], &fe] {
        let text = reqwest::get(format!("{}/metrics", node.debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
        exported.extend(text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_whitespace().next()).map(str::to_string));
    }
    let dashboard = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/grafana/berth.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut asked = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("berth_") || word.starts_with("registry_") {
                    let base = ["_bucket", "_sum", "_count"].iter().fold(word, |w, s| w.strip_suffix(s).unwrap_or(w));
                    asked.insert(base.to_string());
                }
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    let missing: Vec<&String> = asked.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "the dashboard asks for metrics no node exports: {missing:?}; exported: {exported:?}");
}

/// The release tarball (`deploy/release/tarball.sh`, made from this build's binary) holds a
/// `berth` that runs with no configuration and takes the README's first push and pull.
#[test]
fn the_release_tarball_holds_a_berth_that_serves_the_tour() {
    use std::io::BufRead;
    init_tracing();
    if !berth_tests::require_tool("skopeo") || !berth_tests::require_tool("objcopy") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let made = berth_tests::run(Command::new(root.join("deploy/release/tarball.sh")).arg(berth_bin()).arg(dir.path()));
    let tarball = made.trim();
    assert!(tarball.ends_with("-linux.tar.gz"), "{made}");
    berth_tests::run(Command::new("tar").args(["-xzf", tarball, "-C"]).arg(dir.path()));
    let unpacked = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir()).unwrap();
    for f in ["bin/berth", "README.md", "OPERATIONS.md", "deploy/systemd/berth.service", "deploy/nginx/berth-proxy.conf"] {
        assert!(unpacked.join(f).exists(), "{f} missing from the tarball");
    }
    let version = berth_tests::run(Command::new(unpacked.join("bin/berth")).arg("--version"));
    assert!(version.starts_with("berth "), "{version}");

    let mut child = Command::new(unpacked.join("bin/berth"))
        .arg("serve")
        .current_dir(dir.path())
        .env("REGISTRY_HTTP_ADDR", "127.0.0.1:0")
        .env("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = lines.by_ref().map_while(Result::ok).find_map(|l| l.strip_prefix("berth: listening on ").map(str::to_string)).expect("listening");
    std::thread::spawn(move || for _ in lines {});
    let host = url.trim_start_matches("http://");
    let layout = dir.path().join("layout");
    berth_tests::write_oci_layout(&layout, "v1", &[b"release tarball".to_vec()]);
    let copy = |from: String, to: String| berth_tests::run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", &from, &to]));
    copy(format!("oci:{}:v1", layout.display()), format!("docker://{host}/team/app:v1"));
    copy(format!("docker://{host}/team/app:v1"), format!("dir:{}", dir.path().join("pulled").display()));
    assert!(dir.path().join("pulled/manifest.json").exists());
    // It kept its data where the README says: ./berth-data.
    assert!(dir.path().join("berth-data/raft").is_dir());
    let _ = child.kill();
    let _ = child.wait();
}
