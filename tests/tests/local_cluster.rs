//! `deploy/local/cluster.sh` as a user runs it: 3 voters and 2 frontends behind nginx, with
//! skopeo and docker pushing and pulling through the load balancer (no session affinity, so
//! the requests of one push are spread over every node), content checked byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_chaos::LocalCluster;
use berth_tests::{berth_bin, init_tracing, random_bytes, require_tool, run, tar_with_file, write_oci_layout};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_docker_through_the_load_balancer() {
    init_tracing();
    if !require_tool("nginx") || !require_tool("skopeo") || !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/cluster.sh");
    let cluster = LocalCluster::new(&script, &dir.path().join("cluster"), Some(&berth_bin()));
    cluster.up(3, 2).unwrap();
    let _down = cluster.down_on_drop();

    let nodes = cluster.nodes().unwrap();
    assert_eq!(nodes.iter().filter(|n| n.role == "voter").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n.role == "frontend").count(), 2);
    let status = cluster.run(&["status"]).unwrap();
    assert!(cluster.leader().is_some(), "{status}");
    assert_eq!(status.matches(" up").count(), 5, "{status}");
    let lb = cluster.lb().unwrap();
    let host = lb.trim_start_matches("http://").to_string();

    tracing::info!("skopeo: an OCI image in through the load balancer and back out");
    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(61, 900_000), random_bytes(62, 40_000), random_bytes(63, 3_000)]);
    let skopeo = |args: &[&str]| run(Command::new("skopeo").args(args));
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://{host}/lb/oci:v1")]);
    let back = dir.path().join("back");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{host}/lb/oci:v1"), &format!("oci:{}:v1", back.display())]);
    assert_eq!(files(&src.join("blobs/sha256")), files(&back.join("blobs/sha256")));

    tracing::info!("a node dies; pulls through the load balancer keep working");
    let follower = nodes.iter().find(|n| n.role == "voter" && Some(n.id) != cluster.leader()).unwrap().id;
    cluster.kill(follower).unwrap();
    let again = dir.path().join("again");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{host}/lb/oci:v1"), &format!("oci:{}:v1", again.display())]);
    assert_eq!(files(&src.join("blobs/sha256")), files(&again.join("blobs/sha256")));
    cluster.start(follower).unwrap();

    tracing::info!("docker: push, rmi, pull through the load balancer; same image id");
    let rootfs = dir.path().join("rootfs.tar");
    std::fs::write(&rootfs, tar_with_file("payload.bin", &random_bytes(64, 600_000))).unwrap();
    let local = format!("berth-lb-local:{}", std::process::id());
    let remote = format!("{host}/lb/docker:1");
    run(Command::new("docker").args(["import"]).arg(&rootfs).arg(&local));
    let id = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &local]));
    run(Command::new("docker").args(["tag", &local, &remote]));
    run(Command::new("docker").args(["push", &remote]));
    run(Command::new("docker").args(["rmi", &local, &remote]));
    run(Command::new("docker").args(["pull", &remote]));
    let pulled = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &remote]));
    run(Command::new("docker").args(["rmi", &remote]));
    assert_eq!(id.trim(), pulled.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_through_the_load_balancer() {
    init_tracing();
    if !require_tool("nginx") || !require_tool("skopeo") || !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/cluster.sh");
    let password = "lb-admin-password";
    let cluster = LocalCluster::new(&script, &dir.path().join("cluster"), Some(&berth_bin()))
        .with_env("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry")
        .with_env("REGISTRY_BERTH_ADMIN_PASSWORD", password);
    cluster.up(3, 2).unwrap();
    let _down = cluster.down_on_drop();
    let lb = cluster.lb().unwrap();
    let host = lb.trim_start_matches("http://").to_string();
    let voter = cluster.nodes().unwrap().into_iter().find(|n| n.role == "voter").unwrap();

    tracing::info!("identity set up through the load balancer (every request may hit another node)");
    let root_pat = run(Command::new(berth_bin())
        .env("REGISTRY_BERTH_CLUSTERTOKENFILE", cluster.dir.join("cluster-token"))
        .args(["admin", "--node", &voter.grpc, "create-token", "--username", "root"]));
    let http = reqwest::Client::new();
    let api = |path: &str, body: serde_json::Value| {
        let (http, url, pat) = (http.clone(), format!("{lb}/api/v4{path}"), root_pat.trim().to_string());
        async move {
            let r = http.post(url).header("PRIVATE-TOKEN", pat).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let dev = api("/users", serde_json::json!({"username": "dev", "password": "dev-password-1"})).await["id"].clone();
    api("/projects", serde_json::json!({"path": "lb/app"})).await;
    api("/projects/lb%2Fapp/members", serde_json::json!({"user_id": dev, "access_level": 30})).await;
    let pat = api(&format!("/users/{dev}/personal_access_tokens"), serde_json::json!({"name": "ci", "scopes": ["read_registry", "write_registry"]})).await;
    let pat = pat["token"].as_str().unwrap().to_string();
    // A deploy token of the group above the project (a group's tokens reach all its projects).
    api("/groups", serde_json::json!({"path": "lb"})).await;
    let deploy = api("/groups/lb/deploy_tokens", serde_json::json!({"name": "k8s", "scopes": ["read_registry"]})).await;
    let deploy_creds = format!("{}:{}", deploy["username"].as_str().unwrap(), deploy["token"].as_str().unwrap());
    let ci_deploy = api("/projects/lb%2Fapp/deploy_tokens", serde_json::json!({"name": "ci", "scopes": ["read_registry", "write_registry"]})).await;
    let read_pat = api(&format!("/users/{dev}/personal_access_tokens"), serde_json::json!({"name": "ro", "scopes": ["read_registry"]})).await;

    tracing::info!("docker login with a personal access token, push, pull, through the load balancer");
    let cfg = dir.path().join("docker-config");
    berth_tests::docker_login(&cfg, &host, "dev", &pat);
    let remote = format!("{host}/lb/app:1");
    let (pushed, pulled) = berth_tests::docker_push_pull(&cfg, dir.path(), 65, &remote);
    assert_eq!(pushed, pulled);

    tracing::info!("docker login with a project deploy token, push, pull, through the load balancer");
    let cfg = dir.path().join("docker-config-deploy");
    berth_tests::docker_login(&cfg, &host, ci_deploy["username"].as_str().unwrap(), ci_deploy["token"].as_str().unwrap());
    let (pushed, pulled) = berth_tests::docker_push_pull(&cfg, dir.path(), 66, &format!("{host}/lb/app:deploy"));
    assert_eq!(pushed, pulled);

    tracing::info!("docker with a read_registry token: the push is denied");
    let cfg = dir.path().join("docker-config-ro");
    berth_tests::docker_login(&cfg, &host, "dev", read_pat["token"].as_str().unwrap());
    let docker = |args: &[&str]| Command::new("docker").env("DOCKER_CONFIG", &cfg).args(args).output().unwrap();
    let ro_tag = format!("{host}/lb/app:ro");
    assert!(docker(&["pull", &remote]).status.success(), "a read_registry token pulls");
    assert!(docker(&["tag", &remote, &ro_tag]).status.success());
    let denied = docker(&["push", &ro_tag]);
    docker(&["rmi", &remote, &ro_tag]);
    let said = String::from_utf8_lossy(&denied.stderr).to_string() + &String::from_utf8_lossy(&denied.stdout);
    assert!(!denied.status.success() && said.contains("denied"), "{said}");

    tracing::info!("a read-only group deploy token pulls through the load balancer and cannot push");
    let out = dir.path().join("pulled");
    run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--src-creds", &deploy_creds, &format!("docker://{remote}")]).arg(format!("dir:{}", out.display())));
    assert!(out.join("manifest.json").exists());
    let push = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false", "--src-creds", &deploy_creds, "--dest-creds", &deploy_creds])
        .arg(format!("docker://{remote}"))
        .arg(format!("docker://{host}/lb/app:2"))
        .output()
        .unwrap();
    assert!(!push.status.success(), "a read-only deploy token pushed");

    tracing::info!("login limits see each client behind the balancer (X-Forwarded-For from a trusted proxy)");
    // A guesser at 127.0.0.2 fails until every node limits it (each node counts on its own,
    // and the balancer spreads the attempts over all five)...
    let guesser = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let mut limited = 0;
    for _ in 0..400 {
        let r = guesser.get(format!("{lb}/jwt/auth?service=container_registry")).basic_auth("dev", Some("not-the-password")).send().await.unwrap();
        limited = if r.status() == 429 { limited + 1 } else { 0 };
        if limited == 10 {
            break;
        }
    }
    assert_eq!(limited, 10, "the guesser was never limited on every node");
    // ...while dev, whose requests reach the nodes from the same balancer address, gets in.
    for _ in 0..10 {
        let t = berth_tests::tokens::registry_token(&http, &lb, "dev", &pat, "repository:lb/app:pull").await;
        assert!(!t.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_after_down_brings_the_same_cluster_back() {
    init_tracing();
    if !require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/cluster.sh");
    let cluster = LocalCluster::new(&script, &dir.path().join("cluster"), Some(&berth_bin()));
    cluster.up(3, 1).unwrap();
    let _down = cluster.down_on_drop();
    let lb = cluster.lb().unwrap();
    let blob = random_bytes(77, 10_000);
    let digest = berth_proto::Digest::sha256_of(&blob);
    let http = reqwest::Client::new();
    let r = http.post(format!("{lb}/v2/again/app/blobs/uploads/?digest={digest}")).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);

    tracing::info!("down, then up on the same directory: the same nodes, data and load balancer");
    cluster.down().unwrap();
    cluster.up(3, 1).unwrap();
    assert_eq!(cluster.lb().unwrap(), lb);
    assert_eq!(cluster.nodes().unwrap().len(), 4);
    let r = http.get(format!("{lb}/v2/again/app/blobs/{digest}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
}
