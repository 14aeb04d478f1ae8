//! Cleanup policies (GitLab's container expiration policies) against a real node: saved and
//! read back through `/api/v4/projects/:id` by a Maintainer, refused to a Developer and for
//! values GitLab refuses, run on their cadence by GitLab's rules over every repository of the
//! project, run again a cadence later, stopped by disabling, and a run cut short by SIGKILL
//! resumed after the restart as the same run. A day is seconds here (`BERTH_TEST_CLEANUP_DAY_MS`).

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::gitlab::{admin_token, V4};
use berth_tests::{init_tracing, random_bytes, require_tool, run, write_oci_layout_created, Berth};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "correct-horse-battery";

/// Pushes an image with skopeo as root, its config dated `created`.
fn push(dir: &std::path::Path, node: &Berth, repo: &str, tag: &str, seed: u64, created: Option<&str>) {
    let src = dir.join(format!("src-{repo}-{tag}").replace('/', "_"));
    write_oci_layout_created(&src, tag, &[random_bytes(seed, 2000)], created);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("root:{ADMIN_PASSWORD}"),
        &format!("oci:{}:{tag}", src.display()),
        &format!("docker://{}/{repo}:{tag}", node.addr),
    ]));
}

/// The tags of `repo` as skopeo lists them, sorted.
async fn tags(node: &Berth, repo: &str) -> Vec<String> {
    let out = run(Command::new("skopeo").args([
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &format!("root:{ADMIN_PASSWORD}"),
        &format!("docker://{}/{repo}", node.addr),
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut t: Vec<String> = v["Tags"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default();
    t.sort();
    t
}

/// The project's policy as the API shows it; 503 while the cluster elects a leader.
async fn try_policy(api: &V4, pid: u64) -> Result<Value, Value> {
    let (s, p) = api.call(Method::GET, &format!("/projects/{pid}"), None).await;
    match s {
        StatusCode::OK => Ok(p["container_expiration_policy"].clone()),
        StatusCode::SERVICE_UNAVAILABLE => Err(p),
        _ => panic!("{s}: {p}"),
    }
}

/// The project's policy as the API shows it.
async fn policy(api: &V4, pid: u64) -> Value {
    try_policy(api, pid).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `done` holds for the policy, or fails after `secs`.
async fn wait_policy(api: &V4, pid: u64, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = try_policy(api, pid).await;
        if let Ok(p) = &p {
            if done(p) {
                return p.clone();
            }
        }
        assert!(Instant::now() < deadline, "{what}: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node with Berth's own token auth and the first administrator, and root's API client.
fn start(dir: &std::path::Path, extra_env: &[(&str, &str)]) -> (Berth, V4) {
    let mut env = vec![("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry"), ("REGISTRY_BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    env.extend_from_slice(extra_env);
    let node = Berth::start(&dir.join("data"), None, &env);
    let root = V4 { http: reqwest::Client::new(), base: node.url.clone(), token: admin_token(&node) };
    (node, root)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (as the API writes times) in ms since the epoch.
fn time_ms(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let (era, yoe) = (y2.div_euclid(400), y2.rem_euclid(400));
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let frac = s.get(20..23).and_then(|f| f.parse::<i64>().ok()).filter(|_| s.as_bytes()[19] == b'.').unwrap_or(0);
    ((days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) * 1000 + frac) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_runs_on_its_cadence_by_gitlabs_rules_until_disabled() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, root) = start(dir.path(), &[("BERTH_TEST_CLEANUP_DAY_MS", "4000"), ("REGISTRY_HTTP_DEBUG_ADDR", "127.0.0.1:0")]);
    let pid = root.post("/projects", json!({"path": "grp/app", "visibility": "private"})).await["id"].as_u64().unwrap();
    let mut tokens = Vec::new();
    for (user, level) in [("dev", 30), ("maint", 40)] {
        let id = root.post("/users", json!({"username": user, "password": format!("{user}-password-1")})).await["id"].as_u64().unwrap();
        root.post(&format!("/projects/{pid}/members"), json!({"user_id": id, "access_level": level})).await;
        tokens.push(root.post(&format!("/users/{id}/personal_access_tokens"), json!({"name": "api", "scopes": ["api"]})).await["token"].as_str().unwrap().to_string());
    }
    let (dev, maint) = (root.with_token(&tokens[0]), root.with_token(&tokens[1]));

    tracing::info!("a project that never saved a policy shows GitLab's defaults");
    let p = policy(&maint, pid).await;
    assert_eq!(
        (&p["cadence"], &p["enabled"], &p["keep_n"], &p["older_than"], &p["name_regex"], &p["name_regex_keep"], &p["next_run_at"]),
        (&json!("1d"), &json!(false), &json!(10), &json!("90d"), &json!(".*"), &Value::Null, &Value::Null),
        "{p}"
    );

    let dated = [("old-1", "2020-01-01"), ("old-2", "2020-01-02"), ("old-3", "2020-01-03"), ("old-4", "2020-01-04"), ("keep-1", "2020-01-01"), ("latest", "2020-01-01")];
    for (i, (tag, day)) in dated.iter().enumerate() {
        push(dir.path(), &node, "grp/app", tag, i as u64, Some(&format!("{day}T00:00:00Z")));
    }
    push(dir.path(), &node, "grp/app", "fresh", 10, None);
    push(dir.path(), &node, "grp/app/sub", "old-a", 11, Some("2020-01-01T00:00:00Z"));
    push(dir.path(), &node, "grp/app/sub", "old-b", 12, Some("2020-01-05T00:00:00Z"));

    tracing::info!("values GitLab refuses, and a Developer, are refused");
    let put = |body: Value| json!({"container_expiration_policy_attributes": body});
    let path = format!("/projects/{pid}");
    for bad in [json!({"cadence": "2d"}), json!({"keep_n": 3}), json!({"older_than": "1d"}), json!({"name_regex": "("}), json!({"colour": "red"})] {
        let (s, v) = maint.call(Method::PUT, &path, Some(put(bad.clone()))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    assert_eq!(dev.call(Method::PUT, &path, Some(put(json!({"enabled": true})))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(policy(&maint, pid).await["enabled"], json!(false), "a refused change changes nothing");

    tracing::info!("a Maintainer enables a policy: the next run is a cadence away");
    let rules = json!({"enabled": true, "cadence": "1d", "keep_n": 1, "older_than": "7d", "name_regex": "old-.*|keep-.*", "name_regex_keep": "keep-.*"});
    let saved_at = berth_proto::now_ms();
    let (s, v) = maint.call(Method::PUT, &path, Some(put(rules))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = &v["container_expiration_policy"];
    assert_eq!((&p["enabled"], &p["keep_n"], &p["name_regex_keep"]), (&json!(true), &json!(1), &json!("keep-.*")), "{p}");
    let next = time_ms(&p["next_run_at"]);
    assert!(next >= saved_at + 3000 && next <= saved_at + 6000, "next run {next} vs saved at {saved_at}");

    tracing::info!("the run: keep_n spares the newest match per repository, keep wins, latest and unmatched tags stay");
    let p = wait_policy(&maint, pid, 60, "no run ended", |p| !p["last_run"].is_null()).await;
    let last = &p["last_run"];
    assert_eq!((&last["repositories"], &last["tags_deleted"], &last["error"]), (&json!(2), &json!(4), &Value::Null), "{p}");
    assert!(time_ms(&last["started_at"]) + 1000 >= next, "the run started before it was due: {p}");
    assert_eq!(tags(&node, "grp/app").await, vec!["fresh", "keep-1", "latest", "old-4"]);
    assert_eq!(tags(&node, "grp/app/sub").await, vec!["old-b"]);
    // The next run is scheduled a cadence after this one started.
    let gap = time_ms(&p["next_run_at"]) - time_ms(&last["started_at"]);
    assert!((3000..=5000).contains(&gap), "next run {gap} ms after the last: {p}");

    tracing::info!("a cadence later it runs again and takes what is newly old");
    push(dir.path(), &node, "grp/app", "old-0", 20, Some("2019-01-01T00:00:00Z"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while tags(&node, "grp/app").await.contains(&"old-0".to_string()) {
        assert!(Instant::now() < deadline, "no later run deleted old-0: {}", policy(&maint, pid).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tags(&node, "grp/app").await, vec!["fresh", "keep-1", "latest", "old-4"]);
    assert!(policy(&maint, pid).await["runs"].as_u64().unwrap() >= 2);

    tracing::info!("disabled, it no longer runs");
    let (s, v) = maint.call(Method::PUT, &path, Some(put(json!({"enabled": false})))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["container_expiration_policy"]["next_run_at"], Value::Null, "{v}");
    let p = wait_policy(&maint, pid, 30, "a run did not end", |p| p["current_run"].is_null()).await;
    let runs = p["runs"].as_u64().unwrap();
    push(dir.path(), &node, "grp/app", "old-00", 21, Some("2019-01-01T00:00:00Z"));
    tokio::time::sleep(Duration::from_secs(9)).await;
    let p = policy(&maint, pid).await;
    assert_eq!(p["runs"].as_u64().unwrap(), runs, "{p}");
    assert!(tags(&node, "grp/app").await.contains(&"old-00".to_string()));

    let metrics = reqwest::get(format!("{}/metrics", node.debug_url.as_ref().unwrap())).await.unwrap().text().await.unwrap();
    let value = |name: &str| metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok());
    assert!(value("berth_cleanup_runs_started_total").unwrap() >= 2.0, "{metrics}");
    assert!(value("berth_cleanup_tags_deleted_total").unwrap() >= 5.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_short_by_a_crash_resumes_as_the_same_run() {
    crash_mid_run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_leader_dies_is_carried_on_by_the_next_leader() {
    crash_mid_run(3).await;
}

/// A policy run over three repositories, with `voters` voters sharing one store: once it has
/// recorded the first repository the leader is killed (and, alone, restarted); the leader
/// after it carries the same run on from the second repository to the end.
async fn crash_mid_run(voters: usize) {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The pause after each repository is long enough to kill the leader in the middle of a run.
    let extra = [("BERTH_TEST_CLEANUP_DAY_MS", "3000"), ("BERTH_TEST_CLEANUP_PAUSE_MS", "2500")];
    let (mut nodes, root) = if voters == 1 {
        let (node, root) = start(dir.path(), &extra);
        (vec![node], root)
    } else {
        let mut env = vec![("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry"), ("REGISTRY_BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)];
        env.extend_from_slice(&extra);
        let nodes = berth_tests::voter_cluster(dir.path(), voters, &env);
        let root = V4 { http: reqwest::Client::new(), base: nodes[voters - 1].url.clone(), token: admin_token(&nodes[0]) };
        (nodes, root)
    };
    let pid = root.post("/projects", json!({"path": "grp", "visibility": "private"})).await["id"].as_u64().unwrap();
    let repos = ["grp/a", "grp/b", "grp/c"];
    for (i, repo) in repos.iter().enumerate() {
        let node = &nodes[voters - 1];
        push(dir.path(), node, repo, "old-1", 10 * i as u64, Some("2020-01-01T00:00:00Z"));
        push(dir.path(), node, repo, "old-2", 10 * i as u64 + 1, Some("2020-01-02T00:00:00Z"));
        push(dir.path(), node, repo, "v1", 10 * i as u64 + 2, Some("2020-01-02T00:00:00Z"));
    }
    let (s, v) = root
        .call(Method::PUT, &format!("/projects/{pid}"), Some(json!({"container_expiration_policy_attributes": {"enabled": true, "keep_n": null, "older_than": null, "name_regex": "old-.*"}})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    tracing::info!("the run gets through one repository; its leader is killed");
    let p = wait_policy(&root, pid, 60, "the run did not get through a repository", |p| p["current_run"]["repositories_done"] == json!(1)).await;
    let started = p["current_run"]["started_at"].clone();
    assert_eq!(p["runs"], json!(1));
    let leader = berth_tests::cluster_leader(&nodes[0].grpc_addr).expect("a leader") as usize;
    nodes[leader - 1].kill9();
    let survivor = if voters == 1 {
        nodes[0].restart();
        0
    } else {
        (0..voters).find(|&i| i != leader - 1).unwrap()
    };
    let api = V4 { http: reqwest::Client::new(), base: nodes[survivor].url.clone(), token: root.token.clone() };

    tracing::info!("the next leader carries the same run on from the second repository and ends it");
    let p = wait_policy(&api, pid, 60, "the run did not end", |p| p["last_run"]["started_at"] == started).await;
    let last = &p["last_run"];
    assert_eq!((&last["repositories"], &last["tags_deleted"], &last["error"]), (&json!(3), &json!(6), &Value::Null), "{p}");
    for repo in repos {
        assert_eq!(tags(&nodes[survivor], repo).await, vec!["v1"], "{repo}");
    }
}
